"""The commands that talk to a running service over HTTP (:mod:`service.client`):

- ``cmah search FILE... --url URL``: search with pictures and 3D files (each one's modality sniffed from its
  content), printed as a table per file or as JSON;
- ``cmah index add PATH... --url URL``: send indexing jobs to the service (admin token from
  ``CMAH_ADMIN_TOKEN``) and follow each with a progress bar until it ends.

Exit status: 0 when everything worked; 2 with one line on stderr per problem for bad input (a missing or
unreadable file, an unreachable service, a refusal of the service, files the service could not read); 1
when a job failed (or was cancelled).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

from tqdm import tqdm

from ..client import CMAHClient, CMAHError
from ..schemas import BatchFileError, JobStatus, SearchHit
from .common import CLIError, file_kind

EXIT_OK, EXIT_JOB_FAILED, EXIT_BAD_INPUT = 0, 1, 2
TOKEN_ENV = "CMAH_ADMIN_TOKEN"


def _say(command: str, line: str) -> None:
    print(f"cmah {command}: error: {line}", file=sys.stderr)  # noqa: T201


# ---------------------------------------------------------------------------------------------- search
def _table(hits: list[SearchHit]) -> list[str]:
    if not hits:
        return ["  (no results)"]
    rows = [("rank", "dist", "id", "label", "source", "name")]
    rows += [(str(h.rank), str(h.distance), str(h.id), h.label or "-", h.source, h.name) for h in hits]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    numeric = 3
    return ["  " + "  ".join(v.rjust(w) if c < numeric else v.ljust(w)
                             for c, (v, w) in enumerate(zip(r, widths, strict=True))).rstrip() for r in rows]


def cmd_search(args: argparse.Namespace) -> int:
    with CMAHClient(args.url, timeout=args.timeout) as client:
        try:
            answers = client.search_many(args.files, args.target, k=args.k, bits=args.bits, label=args.label,
                                         source=args.source, max_distance=args.max_distance,
                                         distinct=args.distinct)
        except CMAHError as exc:
            raise CLIError(exc.detail if exc.status is None else f"{args.url}: {exc}") from None
    bad = 0
    out: list[dict] = []
    lines: list[str] = []
    for file, (path, entry) in zip(args.files, answers, strict=True):
        query, target = path.split("-to-")
        if isinstance(entry, BatchFileError):
            bad += 1
            _say("search", f"{file}: {entry.error}: {entry.detail}")
            out.append({"file": file, "query": query, "target": target, "error": entry.error,
                        "detail": entry.detail})
            continue
        out.append({"file": file, "query": query, "target": target,
                    "results": [h.model_dump() for h in entry.results]})
        if lines:
            lines.append("")
        lines.append(f"{file}: {query} -> {target}, {args.bits} bits, {len(entry.results)} result(s)")
        lines += _table(entry.results)
    if args.json:
        print(json.dumps({"bits": args.bits, "k": args.k, "queries": out}, indent=2))  # noqa: T201
    elif lines:
        print("\n".join(lines))  # noqa: T201
    return EXIT_BAD_INPUT if bad else EXIT_OK


def add_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Register ``cmah search``."""
    s = sub.add_parser(name, help=help, description="Search a running service with pictures and 3D files: "
                       "each file's kind is judged by its content; files of one kind go in batch requests.")
    s.add_argument("files", nargs="+", metavar="FILE", help="pictures and 3D files")
    s.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8000")
    s.add_argument("--target", choices=["points", "images"],
                   help="what to find (default: the other modality: points for a picture, images for a 3D file)")
    s.add_argument("-k", type=int, default=10, help="results per file (1..1000; default 10)")
    s.add_argument("--bits", type=int, default=64, choices=[16, 32, 64], help="code length (default 64)")
    s.add_argument("--label", action="append", help="only items with this label (repeatable: any of them)")
    s.add_argument("--source", action="append", help="only items of this source, e.g. demo or job:<id> "
                   "(repeatable)")
    s.add_argument("--max-distance", type=int, help="only hits at most this Hamming distance away")
    s.add_argument("--distinct", choices=["name"], help="one hit per name (repeats collapsed)")
    s.add_argument("--json", action="store_true", help="print JSON instead of tables")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds per network operation (default 60)")
    s.set_defaults(func=cmd_search)


# ---------------------------------------------------------------------------------------------- index add --url
def _is_archive(path: Path) -> bool:
    if path.suffix.lower() in (".npz", ".zip"):
        return True
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _plan(paths: list[str], label: str | None) -> tuple[list[Path], list[tuple[Path, str]], int]:
    """What to send: archives uploaded as they are (``.npz`` datasets, ``.zip``), and the pictures and 3D files
    to pack into one zip (``(file, name in the zip)``: relative to the folder given); files of other types
    inside folders are skipped (counted)."""
    archives: list[Path] = []
    members: dict[str, Path] = {}
    skipped = 0

    def member(f: Path, arcname: str) -> None:
        if arcname in members:
            raise CLIError(f"{f} and {members[arcname]} would both be {arcname!r} in the uploaded zip: "
                           "add them in two commands")
        members[arcname] = f

    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                rel = f.relative_to(p).as_posix()
                kind = file_kind(f)
                if kind == "dataset" or (kind is None and f.suffix.lower() == ".zip"):
                    archives.append(f)
                elif kind is not None:
                    member(f, rel)
                elif rel.lower() == "labels.csv" and label is None:
                    member(f, rel)  # the folder's own labels ("file,label" rows, paths relative to it)
                else:
                    skipped += 1
        elif p.is_file():
            if _is_archive(p):
                archives.append(p)
                continue
            if file_kind(p) is None:
                from model.io import sniff_kind

                with open(p, "rb") as fh:
                    if sniff_kind(fh.read(1 << 16)) is None:
                        raise CLIError(f"{p}: not a dataset .npz, a .zip, a 3D file or a picture")
            member(p, p.name)
        else:
            raise CLIError(f"{p}: no such file or folder")
    return archives, list((f, n) for n, f in members.items()), skipped


def _pack(members: list[tuple[Path, str]], label: str | None, out: Path) -> Path:
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for f, name in members:
            zf.write(f, name)
        if label is not None:
            rows = "".join(f"{_csv(name)},{_csv(label)}\n" for _, name in members)
            zf.writestr("labels.csv", "file,label\n" + rows)
    return out


def _csv(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\n\r') else value


def _follow(client: CMAHClient, job_id: str, name: str, quiet: bool, poll_s: float) -> JobStatus:
    """Wait for the job, with a progress bar of its items (total known once the job has looked at its file)."""
    with tqdm(total=None, desc=name, unit="item", disable=quiet, dynamic_ncols=True) as bar:
        def progress(st: JobStatus) -> None:
            if st.total and bar.total != st.total:
                bar.total = st.total
            bar.n = st.done + st.failed
            bar.set_postfix_str(st.state + (f", {st.failed} failed" if st.failed else ""), refresh=False)
            bar.refresh()

        return client.wait_job(job_id, poll_s=poll_s, on_progress=progress)


def _send(client: CMAHClient, args: argparse.Namespace, what: str, send) -> int:
    try:
        created = send()
    except CMAHError as exc:
        _say("index", f"{what}: {exc.detail if exc.status is None else exc}")
        return EXIT_BAD_INPUT
    try:
        status = _follow(client, created.job_id, what, args.quiet, args.poll)
    except KeyboardInterrupt:
        _say("index", f"stopped waiting; job {created.job_id} goes on in the service ({created.status_url})")
        raise SystemExit(130) from None
    summary = f"job {status.id} ({what}) {status.state}: {status.done} indexed, {status.failed} failed"
    if status.state != "succeeded":
        _say("index", summary + (f": {status.error}" if status.error else ""))
        return EXIT_JOB_FAILED
    print(summary)  # noqa: T201
    for e in status.errors[:10]:
        _say("index", f"{what}: {e.name or '?'}: {e.error}: {e.detail}")
    if status.failed > len(status.errors[:10]):
        _say("index", f"{what}: ... {status.failed - len(status.errors[:10])} more not indexed (GET "
                      f"{created.status_url} lists the first 100)")
    return EXIT_BAD_INPUT if status.failed else EXIT_OK


def cmd_add_remote(args: argparse.Namespace) -> int:
    """``cmah index add PATH... --url URL``: one job per archive (and one for the loose files), in turn."""
    for flag, value in (("--data-dir", args.data_dir), ("--weights", args.weights), ("--source", args.source)):
        if value is not None:
            raise CLIError(f"{flag} does not apply with --url (the service names the source job:<id>)")
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise CLIError(f"{TOKEN_ENV} is not set: the service's admin token is needed to add items")
    with CMAHClient(args.url, token=token, timeout=args.timeout) as client:
        try:
            client.ready()  # unreachable service or bad URL: one line before anything is packed or sent
        except CMAHError as exc:
            raise CLIError(exc.detail if exc.status is None else f"{args.url}: {exc}") from None
        if args.server_path:
            codes = [_send(client, args, p, lambda p=p: client.add_path_job(p)) for p in args.paths]
            return max(codes)
        archives, members, skipped = _plan(args.paths, args.label)
        if not archives and not members:
            raise CLIError("nothing to add (no dataset, .zip, 3D file or picture found)")
        if skipped:
            print(f"{skipped} file(s) of other types in the folders skipped")  # noqa: T201
        codes = [_send(client, args, str(a), lambda a=a: client.add_job(a)) for a in archives]
        if members:
            with tempfile.TemporaryDirectory(prefix="cmah-add-") as tmp:
                packed = _pack(members, args.label, Path(tmp) / "files.zip")
                what = f"{len(members)} file(s)"
                codes.append(_send(client, args, what, lambda: client.add_job(packed, "files.zip")))
    return EXIT_JOB_FAILED if EXIT_JOB_FAILED in codes else max(codes)


def add_remote_flags(a: argparse.ArgumentParser) -> None:
    """The flags of ``cmah index add`` that send the paths to a running service instead."""
    g = a.add_argument_group("a running service (instead of a data directory)")
    g.add_argument("--url", help="send the paths to this service as indexing jobs (admin token: CMAH_ADMIN_TOKEN) "
                   "and follow them until they end; .npz and .zip files are uploaded as they are, the pictures and "
                   "3D files (named or in folders) packed into one zip")
    g.add_argument("--server-path", action="store_true",
                   help="with --url: the PATHs are .npz / .zip files on the server, under its CMAH_IMPORT_ROOT")
    g.add_argument("--poll", type=float, default=0.5, help="with --url: seconds between two status reads")
    g.add_argument("--timeout", type=float, default=300.0, help="with --url: seconds per network operation")
