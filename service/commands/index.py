"""``cmah index``: the service's data directory from the command line (the service must not be running
on it: the store takes an exclusive lock).

- ``info``: items per modality and source, and whether the current weights made the codes.
- ``add PATH...``: index dataset ``.npz`` files, 3D files, pictures, or folders of them (``--url``: send them
  to a running service as indexing jobs instead, :mod:`service.commands.remote`).
- ``reencode``: give every item the codes of the current weights (after the weights changed).
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from index.store import CODES_MODEL_KEY, HashStore
from model.dataset import load_dataset
from model.io import InputError, load_points, read_image, sniff_kind
from model.manifest import weights_id

from ..codes_model import CodesModelError, check_codes_model, short
from ..reencode import reencode_items
from ..settings import Settings
from .common import file_kind

logger = logging.getLogger(__name__)

#: Shapes or pictures encoded and stored per transaction by ``cmah index add``.
ADD_BATCH = 32


class IndexCommandError(Exception):
    """A user-facing error of ``cmah index`` (one line, exit status 2)."""


def _settings(args: argparse.Namespace) -> Settings:
    s = Settings()
    update = {k: Path(v) for k, v in (("data_dir", args.data_dir), ("weights_dir", args.weights)) if v is not None}
    return s.model_copy(update=update) if update else s


@contextmanager
def _open(settings: Settings) -> Iterator[HashStore]:
    with HashStore(settings.data_dir, backend=settings.backend, milvus_uri=settings.milvus_uri) as store:
        yield store


def _writer(settings: Settings, store: HashStore):  # -> ItemWriter (torch is imported lazily)
    from model.device import set_cpu_threads
    from model.encode import Encoder

    from ..indexing import ItemWriter

    threads = set_cpu_threads(settings.torch_threads)
    encoder = Encoder.from_weights(settings.weights_dir, device=settings.device)
    encoder.use_cpu_threads(threads, settings.cpu_parallel)
    return ItemWriter(settings.data_dir, store, encoder, threading.Lock())


# ---------------------------------------------------------------------------------------------- info
def cmd_info(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not (settings.data_dir / "items.sqlite3").is_file():
        raise IndexCommandError(f"{settings.data_dir}: no index here (it is created by `cmah serve` or "
                                "`cmah index add`)")
    current = weights_id(settings.weights_dir)
    with _open(settings) as store:
        check = check_codes_model(store, current)
        lines = [f"data directory: {settings.data_dir}",
                 f"items: {store.count()} ({store.count('image')} image, {store.count('points')} points)"]
        lines += [f"  source {src or '(none)'}: {n}" for src, n in store.source_counts().items()]
    verdict = {
        "empty": "no items yet",
        "same": f"made by these weights ({short(current)}…)",
    }.get(check.state, "NOT usable with these weights: " + check.problem(settings.data_dir, settings.weights_dir))
    lines.append(f"codes: {verdict}")
    print("\n".join(lines))  # noqa: T201
    return 0


# ---------------------------------------------------------------------------------------------- add
@dataclass
class _Found:
    datasets: list[Path] = field(default_factory=list)
    clouds: list[Path] = field(default_factory=list)
    pictures: list[Path] = field(default_factory=list)
    skipped: int = 0            # files of other types inside folders


def _find(paths: list[str]) -> _Found:
    """Sort the arguments (files, and folders walked recursively in name order) by kind; a file named
    on the command line that does not exist or has an unknown type is an error."""
    found = _Found()
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                kind = file_kind(f)
                if kind is None:
                    found.skipped += 1
                else:
                    getattr(found, kind + "s").append(f)
            continue
        if not p.is_file():
            raise IndexCommandError(f"{p}: no such file or folder")
        kind = file_kind(p)
        if kind is None:
            with open(p, "rb") as fh:
                sniffed = sniff_kind(fh.read(1 << 16))
            if sniffed is None:
                raise IndexCommandError(f"{p}: not a dataset .npz, a 3D file or a picture")
            kind = "picture" if sniffed[0] == "image" else "cloud"
        getattr(found, kind + "s").append(p)
    return found


def cmd_add(args: argparse.Namespace) -> int:
    if args.url:  # a running service: indexing jobs over HTTP
        from .remote import cmd_add_remote

        return cmd_add_remote(args)
    if args.server_path:
        raise IndexCommandError("--server-path needs --url (the PATHs are then files on that server)")
    settings = _settings(args)
    found = _find(args.paths)
    # a bad dataset file fails here, before anything is added
    total = sum(len(load_dataset(d)) for d in found.datasets) + len(found.clouds) + len(found.pictures)
    if total == 0:
        raise IndexCommandError("nothing to add (no dataset, 3D file or picture found)")
    source = args.source
    with _open(settings) as store:
        writer = _writer(settings, store)
        check = check_codes_model(store, writer.encoder.weights_id)  # type: ignore[arg-type]
        if not check.ok:  # (the writer refuses too, but cannot name --weights)
            raise CodesModelError(check.problem(settings.data_dir, settings.weights_dir))
        failed: list[str] = []
        shapes = pictures = 0
        with tqdm(total=total, desc="indexing", unit="item", disable=args.quiet) as bar:
            for d in found.datasets:
                before = 0

                def advanced(done: int, _n: int) -> None:
                    nonlocal before
                    bar.update(done - before)
                    before = done

                shapes += writer.add_dataset(d, source or d.name, batch_size=ADD_BATCH, progress=advanced)
            for kind, files in (("cloud", found.clouds), ("picture", found.pictures)):
                for s in range(0, len(files), ADD_BATCH):
                    names, data = [], []
                    for f in files[s:s + ADD_BATCH]:
                        try:
                            data.append(load_points(f) if kind == "cloud" else read_image(f))
                            names.append(f.name)
                        except InputError as exc:
                            failed.append(f"{f}: {exc}")
                    labels = [args.label] * len(names)
                    if kind == "cloud" and data:
                        writer.add_clouds(np.stack(data), names, labels, source or "cli")
                        shapes += len(data)
                    elif data:
                        writer.add_images(data, names, labels, source or "cli")
                        pictures += len(data)
                    bar.update(len(files[s:s + ADD_BATCH]))
        count = store.count()
    for line in failed:
        logger.warning("not indexed: %s", line)
    msg = (f"added {shapes} shape(s) (a points and an image item each) and {pictures} picture(s); "
           f"{count} items in {settings.data_dir}")
    if found.skipped:
        msg += f"; {found.skipped} file(s) of other types in the folders skipped"
    if failed:
        msg += f"; {len(failed)} file(s) could not be read (first: {failed[0]})"
    print(msg)  # noqa: T201
    return 2 if failed else 0


# ---------------------------------------------------------------------------------------------- reencode
def cmd_reencode(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not (settings.data_dir / "items.sqlite3").is_file():
        raise IndexCommandError(f"{settings.data_dir}: no index here")
    with _open(settings) as store:
        if args.assume_current:
            current = weights_id(settings.weights_dir)
            store.set_value(CODES_MODEL_KEY, current)
            print(f"recorded weights {short(current)}… as the ones that made the codes of "  # noqa: T201
                  f"{store.count()} items (nothing re-encoded)")
            return 0
        writer = _writer(settings, store)
        current = writer.encoder.weights_id
        check = check_codes_model(store, current)  # type: ignore[arg-type]
        if check.ok and not args.force:
            print(f"nothing to do: the codes were made by these weights ({short(current)}…); "  # noqa: T201
                  "--force re-encodes anyway")
            return 0
        with tqdm(total=store.count(), desc="re-encoding", unit="item", disable=args.quiet) as bar:
            def progress(done: int, _total: int) -> None:
                bar.update(done - bar.n)

            counts = reencode_items(writer, current, drop_missing=args.drop_missing,  # type: ignore[arg-type]
                                    progress=progress)
    print(f"re-encoded {counts['reencoded']} items with weights {short(current)}…"  # noqa: T201
          + (f"; deleted {counts['dropped']} without a stored cloud or picture" if counts["dropped"] else ""))
    return 0


def add_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Register ``cmah index`` and its subcommands."""
    ix = sub.add_parser(name, help=help, description=__doc__.split("\n\n")[0] if __doc__ else None)
    isub = ix.add_subparsers(dest="index_command", required=True, metavar="SUBCOMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", help="the service's data directory (default: CMAH_DATA_DIR or ./.cmah-data)")
        p.add_argument("--weights", help="weights directory (default: CMAH_WEIGHTS_DIR or the shipped weights)")

    i = isub.add_parser("info", help="items per modality and source; do these weights match the codes")
    common(i)
    i.set_defaults(func=cmd_info)

    a = isub.add_parser("add", help="index dataset .npz files, 3D files, pictures or folders of them")
    a.add_argument("paths", nargs="+", metavar="PATH")
    common(a)
    a.add_argument("--source", help="the items' source (default: the .npz file name, or 'cli')")
    a.add_argument("--label", help="label of the 3D files and pictures added (datasets carry their own)")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    from .remote import add_remote_flags

    add_remote_flags(a)
    a.set_defaults(func=cmd_add)

    r = isub.add_parser("reencode", help="give every item the codes of these weights (after new weights)")
    common(r)
    r.add_argument("--drop-missing", action="store_true",
                   help="delete the items the data directory keeps no cloud or picture of (else: refuse)")
    r.add_argument("--assume-current", action="store_true",
                   help="only record these weights as the ones that made the codes (when you know they did)")
    r.add_argument("--force", action="store_true", help="re-encode even when the weights already match")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_reencode)
