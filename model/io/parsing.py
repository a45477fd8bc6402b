"""Helpers shared by the 3D parsers: numbers from tokens, bounded counts, lazy lines, fan triangulation.

Validation: header counts are bounded by the byte size before anything is allocated (a count that
cannot fit in ``max_bytes`` bytes -> ``absurd_count``; a binary body shorter than its header requires
-> ``truncated``; an ASCII body with fewer rows than declared -> ``count_mismatch``). Rows *beyond*
the declared counts in ASCII bodies are ignored (trailing data after the last element we need is
not inspected). Face indices out of range -> ``garbage``. More than ``MAX_FACES`` faces (or
triangles after fan triangulation) -> ``too_many_points``. Text is parsed lazily, line by line, and
converted to numpy in chunks, so memory stays proportional to the values read, not to the tokens.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np

from model.io.contract import MAX_FACES, MAX_POINTS, InputError, plural, quote


def is_float(tok: bytes) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def strip_comment(line: bytes) -> bytes:
    return line.split(b"#", 1)[0] if b"#" in line else line



def parse_floats(tokens: list[bytes], what: str) -> np.ndarray:
    """``tokens`` as float64; a non-numeric token -> garbage naming it."""
    try:
        return np.fromiter(map(float, tokens), dtype=np.float64, count=len(tokens))
    except ValueError:
        bad = next((t for t in tokens if not is_float(t)), b"?")
        raise InputError("garbage", f"{what}: {quote(bad)} is not a number") from None


def parse_ints(tokens: list[bytes], what: str) -> np.ndarray:
    try:
        return np.fromiter(map(int, tokens), dtype=np.int64, count=len(tokens))
    except (ValueError, OverflowError):
        for t in tokens:
            try:
                v = int(t)
            except ValueError:
                raise InputError("garbage", f"{what}: {quote(t)} is not an integer") from None
            if abs(v) > 2**62:
                raise InputError("garbage", f"{what}: index {quote(t)} is out of range") from None
        raise InputError("garbage", f"{what}: malformed integers") from None


def fan_triangulate(counts: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Triangles [T, 3] of polygons given as ``counts`` and concatenated indices ``flat`` (fan from
    the first vertex); polygons with fewer than 3 vertices are dropped."""
    counts = np.asarray(counts, dtype=np.int64)
    flat = np.asarray(flat, dtype=np.int64)
    if counts.size == 0:
        return np.empty((0, 3), dtype=np.int64)
    starts = np.cumsum(counts) - counts
    ntri = np.where(counts >= 3, counts - 2, 0)
    total = int(ntri.sum())
    if total == 0:
        return np.empty((0, 3), dtype=np.int64)
    if total > MAX_FACES:
        raise InputError("too_many_points", f"mesh has {total} triangles, above the limit of {MAX_FACES}")
    face = np.repeat(np.arange(counts.size), ntri)
    k = np.arange(total) - np.repeat(np.cumsum(ntri) - ntri, ntri)
    s = starts[face]
    return np.stack([flat[s], flat[s + k + 1], flat[s + k + 2]], axis=1)


def check_faces(n_faces: int, what: str) -> None:
    if n_faces > MAX_FACES:
        raise InputError("too_many_points", f"{what} has {n_faces} faces, above the limit of {MAX_FACES}")


def check_vertex_count(n: int, what: str) -> None:
    if n > MAX_POINTS:
        raise InputError("too_many_points",
                         f"{what} has {plural(n, 'vertex')}, above the limit of {MAX_POINTS} points")


_CHUNK_ROWS = 1 << 16


def text_lines(data: bytes, start: int = 0) -> Iterator[bytes]:
    """Stripped lines of ``data`` from byte ``start``, lazily (LF, CRLF and CR-only files)."""
    if b"\n" not in data and b"\r" in data:
        data = data.replace(b"\r", b"\n")
    f = io.BytesIO(data)
    f.seek(start)
    for line in f:
        yield line.strip()


def content_lines(data: bytes, start: int = 0, comments: bool = False) -> Iterator[bytes]:
    """Non-empty stripped lines (without ``#`` comment lines when ``comments``)."""
    for s in text_lines(data, start):
        if s and not (comments and s[:1] == b"#"):
            yield s


def take_rows(it: Iterator[bytes], n: int) -> Iterator[list[bytes]]:
    """The next ``n`` items of ``it`` in lists of at most ``_CHUNK_ROWS`` (fewer if ``it`` ends)."""
    while n > 0:
        chunk = list(islice(it, min(n, _CHUNK_ROWS)))
        if not chunk:
            return
        n -= len(chunk)
        yield chunk
        if n > 0 and len(chunk) < _CHUNK_ROWS:
            return


class Accum:
    """Collects tokens and converts them to numpy in chunks, so that memory stays O(values), not
    O(Python objects)."""

    def __init__(self, convert: Callable[[list], np.ndarray], dtype: type) -> None:
        self._convert = convert
        self._dtype = dtype
        self._parts: list[np.ndarray] = []
        self._buf: list = []

    def extend(self, items) -> None:
        self._buf.extend(items)
        if len(self._buf) >= 4 * _CHUNK_ROWS:
            self.flush()

    def append(self, item) -> None:
        self._buf.append(item)
        if len(self._buf) >= 4 * _CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._parts.append(self._convert(self._buf))
            self._buf = []

    def array(self) -> np.ndarray:
        self.flush()
        return np.concatenate(self._parts) if self._parts else np.empty(0, dtype=self._dtype)


@dataclass
class Geometry:
    vertices: np.ndarray                 # float64 [N, 3]
    triangles: np.ndarray | None = None  # int64 [T, 3] (unvalidated indices)
    what: str = "file"
