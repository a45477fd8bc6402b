"""The Compose profile ``scale`` (docs/deployment.md, "Scale-out"), resolved by ``docker-compose config``: the
Milvus stack, one indexer with the only volume, three stateless search replicas on the same image and shared
settings, and nginx on one port sending admin requests to the indexer and the rest to the replicas."""

from __future__ import annotations

import re
from pathlib import Path

from test_deploy_config import ROOT, resolved

REPLICAS = {"search-1", "search-2", "search-3"}
NGINX_CONF = ROOT / "docker" / "nginx-scale.conf"


def test_scale_profile_resolves() -> None:
    cfg = resolved("scale")
    services = cfg["services"]
    assert set(services) == {"api", "etcd", "minio", "milvus", "indexer", "lb"} | REPLICAS
    indexer = services["indexer"]
    shared = {k: v for k, v in indexer["environment"].items() if k != "CMAH_ROLE" and k != "CMAH_ADMIN_TOKEN"}
    assert indexer["environment"]["CMAH_ROLE"] == "indexer"
    assert shared["CMAH_BACKEND"] == "milvus" and shared["CMAH_MILVUS_URI"] == "http://milvus:19530"
    assert shared["CMAH_S3_ENDPOINT"] == "http://minio:9000" and shared["CMAH_S3_BUCKET"]
    assert shared["CMAH_S3_ACCESS_KEY"] == services["milvus"]["environment"]["MINIO_ACCESS_KEY_ID"]
    (vol,) = indexer["volumes"]
    assert vol["type"] == "volume" and vol["target"] == "/data" and vol["source"] in cfg["volumes"]
    assert indexer["build"]["args"]["CMAH_EXTRAS"] == "milvus"
    assert indexer["depends_on"]["milvus"]["condition"] == "service_healthy"
    assert "ports" not in indexer  # reached through the load balancer only
    for name in REPLICAS:
        svc = services[name]
        env = svc["environment"]
        assert env["CMAH_ROLE"] == "search" and {k: env[k] for k in shared} == shared
        assert not svc.get("volumes") and "ports" not in svc  # stateless, behind the load balancer
        assert svc["image"] == indexer["image"]
        assert "/ready" in " ".join(svc["healthcheck"]["test"])
        assert svc["depends_on"]["indexer"]["condition"] == "service_healthy"
        assert env["CMAH_INDEXER_URL"].endswith(":8003")
    lb = services["lb"]
    assert re.search(r"^nginx:\d+\.\d+\.\d+", lb["image"])
    (port,) = lb["ports"]
    assert (port["published"], port["target"]) == ("8003", 8080)
    (conf,) = lb["volumes"]
    assert Path(conf["source"]) == NGINX_CONF and conf["read_only"]
    assert "/lb-health" in " ".join(lb["healthcheck"]["test"])
    assert {lb["depends_on"][r]["condition"] for r in REPLICAS} == {"service_healthy"}


def test_nginx_sends_admin_to_the_indexer_and_the_rest_to_the_replicas() -> None:
    text = NGINX_CONF.read_text()
    upstream = re.search(r"upstream cmah_search \{(.*?)\}", text, re.S)
    assert upstream is not None
    assert set(re.findall(r"server (search-\d):8000", upstream.group(1))) == REPLICAS
    admin = re.search(r"location /api/v1/admin/ \{(.*?)\}", text, re.S)
    assert admin is not None and "proxy_pass http://indexer:8000;" in admin.group(1)
    rest = re.search(r"location / \{(.*?)\}", text, re.S)
    assert rest is not None and "proxy_pass http://cmah_search;" in rest.group(1)
    # a stopped or starting replica is skipped, POST searches included (they are read-only)
    assert re.search(r"proxy_next_upstream [^;]*\berror\b[^;]*\bhttp_503\b[^;]*\bnon_idempotent\b", rest.group(1))
    assert "listen 8080;" in text
