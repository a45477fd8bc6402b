"""index.scan_kernel: the compiled scan equals the brute-force reference (ids and distances, ties
included) on every path -- one thread, query groups, database chunks + merge -- and the flat index
uses it when numba is there and FAISS when it is not."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import index.flat as flat_module
from index import HashStore
from index.codes import BITS_CHOICES, WORD_DTYPES
from index.flat import KERNEL_SCAN_NS, MIH_REPROBE, MIH_REPROBE_MAX_FACTOR, FaissFlatIndex, load_scan_kernel
from index.mih import SCAN_NS

if load_scan_kernel() is None:  # pragma: no cover - numba is a dependency; the fallback is tested below
    pytest.skip("numba not installed", allow_module_level=True)

import index.scan_kernel as sk  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]


def as_words(codes: np.ndarray) -> np.ndarray:
    return codes.view(WORD_DTYPES[codes.shape[1]])[:, 0]


def kernel(codes: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int, **kwargs: object):
    return sk.search(as_words(codes), ids, as_words(queries), k, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def parallel_always(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small searches take the multi-threaded paths too."""
    monkeypatch.setattr(sk, "PARALLEL_MIN_WORK", 0)


@pytest.mark.parametrize("bits", BITS_CHOICES)
@pytest.mark.parametrize("kind", ["random", "clustered"])
@pytest.mark.parametrize("order", ["ascending", "shuffled"])  # ascending: the tie cut-off applies
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [1, 40, 3000])
def test_kernel_matches_reference(
    ref: SimpleNamespace,
    rng: np.random.Generator,
    parallel_always: None,
    bits: int,
    kind: str,
    order: str,
    threads: int,
    n: int,
) -> None:
    codes = ref.make_codes(kind, rng, n, bits)
    codes[n // 2 : n // 2 + n // 5] = codes[0]  # a block of exact duplicates
    ids = rng.choice(10 * n, size=n, replace=False).astype(np.int64)
    if order == "ascending":
        ids.sort()
    queries = np.concatenate([codes[:5], ref.make_codes(kind, rng, 5, bits)])
    for k in sorted({1, 3, 10, 57, max(n - 1, 1), n, n + 7}):
        expected = ref.search(queries, codes, ids, k)
        ref.assert_same(kernel(codes, ids, queries, k, ascending=order == "ascending", threads=threads), expected)
        # one query at a time: with 2 threads each query is split over database chunks and merged
        for r in (0, 7):
            got = kernel(codes, ids, queries[r : r + 1], k, ascending=order == "ascending", threads=threads)
            ref.assert_same(got, (expected[0][r : r + 1], expected[1][r : r + 1]))


@pytest.mark.parametrize("bits", BITS_CHOICES)
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_across_cache_blocks(
    ref: SimpleNamespace, rng: np.random.Generator, parallel_always: None, bits: int, threads: int
) -> None:
    """More rows than one database block of a task (64 Ki rows of 16-bit codes), two data kinds."""
    n = sk.block_rows(WORD_DTYPES[bits // 8]) + 4_321
    for kind in ("random", "clustered"):
        codes = ref.make_codes(kind, rng, n, bits)
        ids = np.arange(5, 5 + n, dtype=np.int64)
        queries = np.concatenate([codes[[0, n - 1]], ref.make_codes(kind, rng, 4, bits)])
        for k in (10, 1000):
            expected = ref.search(queries, codes, ids, k)
            ref.assert_same(kernel(codes, ids, queries, k, ascending=True, threads=threads), expected)
            ref.assert_same(
                kernel(codes, ids[::-1].copy(), queries, k, threads=threads), ref.search(queries, codes, ids[::-1], k)
            )


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("order", ["ascending", "descending", "shuffled"])
def test_one_huge_tie_band(
    ref: SimpleNamespace, rng: np.random.Generator, parallel_always: None, threads: int, order: str
) -> None:
    """5,000 identical codes (and a few others): the k smallest ids of the band, whatever the storage order."""
    n = 5_000
    codes = np.zeros((n, 4), dtype=np.uint8)
    codes[::997] = 0xFF  # a few far items
    ids = np.arange(100, 100 + 3 * n, 3, dtype=np.int64)
    ids = {"ascending": ids, "descending": ids[::-1].copy(), "shuffled": rng.permutation(ids)}[order]
    queries = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [0xFF, 0xFF, 0xFF, 0xFF]], dtype=np.uint8)
    for k in (1, 5, 100, n - 1, n, n + 1):
        got = kernel(codes, ids, queries, k, ascending=order == "ascending", threads=threads)
        ref.assert_same(got, ref.search(queries, codes, ids, k))


@pytest.mark.parametrize("threads", [1, 2])
def test_huge_ids(ref: SimpleNamespace, rng: np.random.Generator, parallel_always: None, threads: int) -> None:
    """Ids up to 2**63 - 2 (no packed sort key anywhere)."""
    codes = ref.clustered_codes(rng, 2_000, 64)
    ids = np.sort((1 << 62) + rng.choice(1 << 40, size=2_000, replace=False).astype(np.int64))
    ids[-1] = np.iinfo(np.int64).max - 1
    queries = np.concatenate([codes[[0, 1999]], ref.clustered_codes(rng, 3, 64)])
    for ascending in (True, False):
        for k in (1, 10, 1999, 2000):
            got = kernel(codes, ids, queries, k, ascending=ascending, threads=threads)
            ref.assert_same(got, ref.search(queries, codes, ids, k))


def test_empty_inputs_and_validation(rng: np.random.Generator) -> None:
    words = rng.integers(0, 1 << 32, size=100, dtype=np.uint64).astype(np.uint32)
    d, i = sk.search(words[:0], np.empty(0, np.int64), words[:2], 3)
    assert d.tolist() == i.tolist() == [[-1] * 3] * 2
    d, i = sk.search(words, np.arange(100), words[:0], 3)
    assert d.shape == i.shape == (0, 3)
    with pytest.raises(ValueError):
        sk.search(words.astype(np.float32), np.arange(100), words[:1], 3)
    with pytest.raises(ValueError):
        sk.search(words, np.arange(99), words[:1], 3)
    with pytest.raises(ValueError):
        sk.search(words, np.arange(100), words[:1], 0)
    with pytest.raises(ValueError):
        sk.warm_up(np.int8)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_plan_tasks_cover_every_pair_once(threads: int) -> None:
    for nq in (1, 2, 3, 5, 9):
        for n in (1, sk.SUB - 1, sk.SUB, sk.SUB + 1, 5_000):
            tasks = sk.plan_tasks(nq, n, threads)
            seen = np.zeros((nq, n), dtype=np.int64)
            for q0, q1, lo, hi, _ in tasks:
                seen[q0:q1, lo:hi] += 1
                assert lo % sk.SUB == 0
            assert (seen == 1).all()
            if threads == 1 or nq >= threads:  # query groups over all rows
                assert len(tasks) == min(nq, threads) and (tasks[:, 4] == 0).all()
            else:  # every query split into chunks 0, 1, ...
                for q in range(nq):
                    assert tasks[tasks[:, 0] == q, 4].tolist() == list(range((tasks[:, 0] == q).sum()))


def test_workqueue_layer_runs_serially_when_busy(
    ref: SimpleNamespace, rng: np.random.Generator, parallel_always: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """numba's workqueue layer must not be entered twice: a second parallel call runs serially."""
    codes = ref.clustered_codes(rng, 3_000, 32)
    ids = rng.permutation(3_000).astype(np.int64)
    queries = codes[:4]
    expected = ref.search(queries, codes, ids, 25)
    calls: list[str] = []
    monkeypatch.setattr(sk, "threading_layer", lambda: "workqueue")
    serial, parallel = sk._search_serial, sk._search_parallel
    monkeypatch.setattr(sk, "_search_serial", lambda *a: calls.append("serial") or serial(*a))
    monkeypatch.setattr(sk, "_search_parallel", lambda *a: calls.append("parallel") or parallel(*a))
    ref.assert_same(kernel(codes, ids, queries, 25, threads=2), expected)
    with sk._parallel_lock:  # another search holds the layer
        ref.assert_same(kernel(codes, ids, queries, 25, threads=2), expected)
    assert calls == ["parallel", "serial"]


def test_concurrent_searches(ref: SimpleNamespace, rng: np.random.Generator, parallel_always: None) -> None:
    codes = ref.clustered_codes(rng, 4_000, 64)
    ids = rng.permutation(4_000).astype(np.int64)
    queries = codes[:8]
    expected = ref.search(queries, codes, ids, 15)
    errors: list[BaseException] = []

    def work(threads: int) -> None:
        try:
            for r in range(8):
                for q in (queries, queries[r : r + 1]):
                    got = kernel(codes, ids, q, 15, threads=threads)
                    ref.assert_same(
                        got, (expected[0][r : r + len(q)], expected[1][r : r + len(q)]) if len(q) == 1 else expected
                    )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(1 + t % 2,)) for t in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors


# ------------------------------------------------------------------------------------ the flat index
def test_flat_index_warms_the_kernel_at_creation() -> None:
    """A fresh interpreter: the kernels a search of an index may call are compiled (or loaded from
    the cache) when the index is created -- with scan="numba" before the constructor returns, with
    scan="auto" in the background while FAISS answers -- and only those (one thread: serial only)."""
    script = """
import time
import numpy as np
from numba import from_dtype
from index.flat import FaissFlatIndex
import index.scan_kernel as sk

def compiled(dispatcher, dtype):
    return any(sig[0].dtype == from_dtype(np.dtype(dtype)) for sig in dispatcher.signatures)

FaissFlatIndex(16, threads=1, scan="numba")
assert compiled(sk._search_serial, np.uint16) and not compiled(sk._search_parallel, np.uint16)
FaissFlatIndex(32, threads=2, scan="numba")
assert compiled(sk._search_serial, np.uint32)
assert compiled(sk._search_parallel, np.uint32) == (sk.max_threads() > 1)

index = FaissFlatIndex(64, threads=1)  # "auto": not ready yet (nothing for uint64 in this process)
assert index.scan == "faiss" and index._kernel_pending is not None
codes = np.random.default_rng(0).integers(0, 256, size=(50, 8), dtype=np.uint8)
index.add(np.arange(50), codes)
d, i = index.search(codes[:3], 5)  # answered by FAISS meanwhile
assert (d[:, 0] == 0).all() and i[:, 0].tolist() == [0, 1, 2]
deadline = time.monotonic() + 800
while not sk.is_ready(np.uint64) and time.monotonic() < deadline:
    time.sleep(0.05)
assert compiled(sk._search_serial, np.uint64)
index.search(codes[:3], 5)
assert index.scan == "numba" and index._kernel_pending is None
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_kernels_load_from_numba_disk_cache() -> None:
    """``cache=True`` works for these kernels (nothing in them that numba cannot cache, such as a
    closure): once compiled here, a fresh interpreter loads the serial kernel from numba's disk cache
    (``NUMBA_CACHE_DIR`` or ``__pycache__``, inherited) and compiles nothing."""
    sk.warm_up(np.uint16)  # compiles and writes the cache, or loads it
    script = """
import numpy as np
import index.scan_kernel as sk
sk.warm_up(np.uint16)
stats = sk._search_serial.stats
assert sum(stats.cache_hits.values()) == 1 and not stats.cache_misses, stats
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_background_warm_up_switches_when_ready(
    ref: SimpleNamespace, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scan="auto" with a kernel not ready: FAISS answers (exactly) until the warm-up thread is done."""
    monkeypatch.setattr(sk, "_warm", set())
    monkeypatch.setattr(sk, "_started", set())
    release = threading.Event()
    real = sk._warm_up

    def slow_warm_up(dtype: np.dtype, parallel: bool) -> None:
        release.wait(60)
        real(dtype, parallel)

    monkeypatch.setattr(sk, "_warm_up", slow_warm_up)
    codes = ref.clustered_codes(rng, 600, 32)
    ids = np.arange(600, dtype=np.int64)
    index = FaissFlatIndex(32, threads=1, mih=False)
    index.add(ids, codes)
    assert index.scan == "faiss"
    ref.assert_same(index.search(codes[:4], 20), ref.search(codes[:4], codes, ids, 20))
    assert index.scan == "faiss"
    release.set()
    deadline = time.monotonic() + 600
    while not sk.is_ready(np.uint32) and time.monotonic() < deadline:
        time.sleep(0.01)
    ref.assert_same(index.search(codes[:4], 20), ref.search(codes[:4], codes, ids, 20))
    assert index.scan == "numba"


def test_flat_index_falls_back_to_faiss_without_numba(
    ref: SimpleNamespace, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    monkeypatch.setitem(sys.modules, "index.scan_kernel", None)
    monkeypatch.setattr(flat_module, "_kernel_module", None)
    monkeypatch.setattr(flat_module, "_kernel_error", None)
    index = FaissFlatIndex(32)
    assert index.scan == "faiss" and index.scan_ns == SCAN_NS
    codes = ref.clustered_codes(rng, 500, 32)
    index.add(np.arange(500), codes)
    ref.assert_same(index.search(codes[:5], 30), ref.search(codes[:5], codes, np.arange(500), 30))
    with pytest.raises(ValueError, match="numba"):
        FaissFlatIndex(32, scan="numba")
    with pytest.raises(ValueError, match="scan must be one of"):
        FaissFlatIndex(32, scan="simd")


def test_package_works_without_numba(tmp_path: Path) -> None:
    """A fresh interpreter: importing the package does not import numba; with numba unimportable the
    store still opens, scans with FAISS and returns exact results."""
    script = f"""
import sys
import numpy as np
import index.store, index.flat
assert "numba" not in sys.modules, "numba imported eagerly"
sys.modules["numba"] = None
from index import HashStore
from index.exact import brute_force_search
rng = np.random.default_rng(0)
codes = rng.integers(0, 256, size=(300, 8), dtype=np.uint8)
with HashStore({str(tmp_path / "s")!r}) as store:
    items = [{{"modality": "image", "name": str(j), "codes": {{64: codes[j]}}}} for j in range(300)]
    ids = np.asarray(store.add(items))
    assert store.backend.flat_index("image", 64).scan == "faiss"
    d, i = store.search("image", codes[:4], 64, 12)
ed, ei = brute_force_search(codes[:4], codes, ids, 12)
assert (d == ed).all() and (i == ei).all()
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_store_scan_option(tmp_path: Path, ref: SimpleNamespace, rng: np.random.Generator) -> None:
    codes = ref.clustered_codes(rng, 400, 64)
    items = [{"modality": "points", "name": f"p{j}", "codes": {64: codes[j]}} for j in range(400)]
    results = {}
    for scan in ("faiss", "numba"):
        with HashStore(tmp_path / scan, scan=scan) as store:
            ids = np.asarray(store.add(items))
            assert store.backend.flat_index("points", 64).scan == scan
            results[scan] = store.search("points", codes[:6], 64, 40)
        ref.assert_same(results[scan], ref.search(codes[:6], codes, ids, 40))
    with HashStore(tmp_path / "numba") as store:  # reopened from the snapshot: default scan
        assert store.backend.flat_index("points", 64).scan == "numba"
    with pytest.raises(ValueError):
        HashStore(tmp_path / "bad", scan="gpu")
    with HashStore(tmp_path / "bad") as store:  # the failed open released the directory
        assert store.count() == 0


def test_mih_budget_and_choice_follow_the_scan(rng: np.random.Generator) -> None:
    index = FaissFlatIndex(32, mih_min_items=0, threads=1, scan="numba")
    index.add(np.arange(70_000), rng.integers(0, 256, size=(70_000, 4), dtype=np.uint8))
    assert index.scan_ns == KERNEL_SCAN_NS[32]
    tables = index.refresh_mih()
    assert tables.scan_ns == KERNEL_SCAN_NS[32] and tables.budget_ns == pytest.approx(70_000 * KERNEL_SCAN_NS[32])
    index.scan = "faiss"
    assert tables.scan_ns == SCAN_NS and index.scan_ns == SCAN_NS
    index.scan = "auto"
    assert index.scan == "numba"

    # measured times decide once both paths ran; the other path is re-timed every MIH_REPROBE x
    # (its slowdown, at most MIH_REPROBE_MAX_FACTOR) searches
    index._mih_seconds[:] = [0.25, 1.0]
    index._scan_seconds[:] = [0.75, 0.5]
    index._mih_skips = 0
    picks = [index._use_mih(1) for _ in range(6 * MIH_REPROBE)]  # MIH 3x faster: scan every 48th
    assert picks.count(False) == 2 and not picks[3 * MIH_REPROBE - 1]
    index._mih_skips = 0
    picks = [index._use_mih(64) for _ in range(4 * MIH_REPROBE)]  # MIH 2x slower: MIH every 32nd
    assert picks.count(True) == 2 and picks[2 * MIH_REPROBE - 1]
    index._scan_seconds[0] = 2500.0  # 10,000x slower: capped
    index._mih_skips = 0
    picks = [index._use_mih(1) for _ in range(MIH_REPROBE * MIH_REPROBE_MAX_FACTOR)]
    assert picks.count(False) == 1
    # and a search records its time on the path it took
    index._mih_seconds[:] = index._scan_seconds[:] = [0.0, 0.0]
    index._mih_cost = 0.0
    q = rng.integers(0, 256, size=(4, 4), dtype=np.uint8)
    index.search(q[:1], 5)
    assert index._mih_seconds[0] > 0 and index._scan_seconds == [0.0, 0.0]
    assert not index._use_mih(1)  # the scan has not been timed on single queries: it is next
    index.search(q[1:2], 5)
    assert index._scan_seconds[0] > 0
    index.mih_enabled = False
    index.search(q, 5)
    assert index._scan_seconds[1] > 0
    index.mih_enabled = True
    assert index._use_mih(4)  # MIH not timed on batches yet: it is next


def test_kernel_threads_split_single_queries(rng: np.random.Generator) -> None:
    index = FaissFlatIndex(64, threads=2, scan="numba")
    index.add(np.arange(300_000), rng.integers(0, 256, size=(300_000, 8), dtype=np.uint8))
    expected = 1 if sk.max_threads() < 2 else 2
    assert index._scan_parallelism(1) == expected  # FAISS would scan one query on one thread
    index.scan = "faiss"
    assert index._scan_parallelism(1) == 1
