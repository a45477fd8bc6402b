"""Durability: a writer process killed with SIGKILL loses no acknowledged item."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from index import HashStore
from index.codes import BITS_CHOICES, hex_to_codes

REPO_ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from index import HashStore

    data_dir, seed = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(seed)
    store = HashStore(data_dir, snapshot_every=9)  # snapshots are also written while items stream in
    i = 0
    while True:
        batch = []
        for _ in range(1 + i % 3):
            codes = {b: rng.integers(0, 256, b // 8, dtype=np.uint8) for b in (16, 32, 64)}
            batch.append({"modality": ("image", "points")[i % 2], "name": f"n{i}", "codes": codes})
            i += 1
        ids = store.add(batch)
        for item_id, item in zip(ids, batch):
            print(item_id, item["codes"][64].tobytes().hex(), flush=True)
    """
)


def _run_and_kill(data_dir: Path, seed: int, acks_wanted: int) -> dict[int, str]:
    """Start the writer, read acknowledgements, SIGKILL it; returns {id: hex of its 64-bit code}."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    acked: dict[int, str] = {}
    deadline = time.monotonic() + 60
    try:
        assert proc.stdout is not None
        while len(acked) < acks_wanted and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            item_id, hex64 = line.split()
            acked[int(item_id)] = hex64
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err
    assert len(acked) >= acks_wanted, f"writer acknowledged only {len(acked)} items: {err[-2000:]}"
    return acked


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_item(tmp_path: Path) -> None:
    acked: dict[int, str] = {}
    for round_no, wanted in enumerate((60, 45)):  # kill, recover, kill again
        acked.update(_run_and_kill(tmp_path, seed=round_no, acks_wanted=wanted))
        with HashStore(tmp_path) as store:
            for modality in ("image", "points"):
                for bits in BITS_CHOICES:
                    assert store.index_count(modality, bits) == store.count(modality)
            total = store.count()
            assert total >= len(acked)
            for item_id, hex64 in acked.items():
                rec = store.get(item_id)
                assert rec is not None, f"acknowledged id {item_id} lost"
                np.testing.assert_array_equal(rec.codes[64], hex_to_codes(hex64, 64)[0])
                for bits in BITS_CHOICES:
                    d, ids = store.search(rec.modality, rec.codes[bits], bits, total)
                    hits = ids[0][d[0] == 0]
                    assert item_id in hits, (item_id, bits)
