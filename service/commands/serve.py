"""``cmah serve``: the HTTP service, once its data directory has passed the preflight."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..preflight import check_store
from ..settings import Settings


def cmd_serve(args: argparse.Namespace) -> int:
    settings = Settings()
    if args.data_dir is not None:
        settings = settings.model_copy(update={"data_dir": Path(args.data_dir)})
    if args.role is not None:
        settings = settings.model_copy(update={"role": args.role})
    from ..scale import check_role_settings, preflight_replica

    check_role_settings(settings)  # a scale-out role without its Milvus server or bucket: one line
    if settings.role == "search":
        preflight_replica(settings)  # codes of other weights on the server: one line, before the model loads
    else:
        check_store(settings)  # a damaged index database: one line, before the model is even imported
    from ..app import run_server  # the app imports the model (torch): only once the store is checked

    return run_server(host=args.host, port=args.port, data_dir=args.data_dir, checked=True, role=settings.role)


def add_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Register ``cmah serve``."""
    v = sub.add_parser(name, help=help)
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--data-dir", help="where the index and metadata live (default: CMAH_DATA_DIR or ./.cmah-data)")
    v.add_argument("--role", choices=("all", "search", "indexer"),
                   help="all: the single-process service (default, CMAH_ROLE); indexer / search: the one writer and "
                        "the stateless search replicas of a scale-out deployment (docs/deployment.md)")
    v.set_defaults(func=cmd_serve)
