"""Imports as on the GPU machine: the project's packages that its image lacks raise ImportError.

``scripts/gpu/device_run.sh --dry-run`` puts this folder first on ``PYTHONPATH``, so Python runs this
file at start-up (``sitecustomize``) and the dry run fails here, not on the GPU machine, when a code
path it runs needs FAISS, pydantic, FastAPI & co. The GPU machine's image has torch, timm, numpy,
pillow, tqdm, safetensors, matplotlib, scikit-learn, numba and prometheus-client, not these (see
/work/.library/device/KINDS.md, "Python packages already there"). ``CMAH_DEVICE_SIM_BLOCK``
(comma-separated top-level module names) replaces the list.
"""

import importlib.abc
import os
import sys

BLOCKED = frozenset(os.environ.get("CMAH_DEVICE_SIM_BLOCK", "faiss,fastapi,starlette,uvicorn,pydantic,"
                                   "pydantic_core,pydantic_settings,multipart,python_multipart,plyfile,"
                                   "pymilvus,milvus_lite,open3d").split(","))


class _NotOnTheDevice(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed on the GPU machine; "
                                      "scripts/gpu/device_sim)", name=name)
        return None


sys.meta_path.insert(0, _NotOnTheDevice())
