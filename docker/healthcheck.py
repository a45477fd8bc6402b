"""Container health check: exit 0 when the service's /ready answers 200, 1 otherwise.

Used by the HEALTHCHECK of docker/Dockerfile* and by docker-compose.yml. Needs nothing but the
standard library (the images have no curl). URL: the first argument, else $CMAH_HEALTHCHECK_URL, else
http://127.0.0.1:8000/ready.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/ready"


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else os.environ.get("CMAH_HEALTHCHECK_URL", DEFAULT_URL)
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:  # a local http URL
            status = resp.status
            body = resp.read(500).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:  # 503 while the model loads or the demo gallery is built
        status = exc.code
        body = exc.read(500).decode("utf-8", "replace")
    except (OSError, ValueError) as exc:  # refused, timed out, bad URL
        sys.stderr.write(f"healthcheck: {url}: {exc}\n")
        return 1
    sys.stdout.write(f"healthcheck: {url}: {status} {body}\n")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
