"""Hash-retrieval metrics: hand-computed cases, plain brute-force references, tie enumeration."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.metrics import (
    average_precision_at_k,
    average_precision_at_k_tie_aware,
    hamming_matrix,
    map_at_k,
    map_at_k_tie_aware,
    precision_at_k_curve,
    precision_recall_by_radius,
)


# ------------------------------------------------------------------------------ plain references
def ref_hamming(q: np.ndarray, db: np.ndarray) -> list[list[int]]:
    """Python popcount of the XOR, byte by byte."""
    return [
        [sum(bin(int(a) ^ int(b)).count("1") for a, b in zip(qr, dr, strict=True)) for dr in db] for qr in q
    ]


def ref_ap(dist_row: list[int], rel_row: list[bool], k: int) -> float:
    """AP@K of one query: stable sort by distance, mean precision at relevant ranks in the top K."""
    order = np.argsort(np.array(dist_row), kind="stable")[: min(k, len(dist_row))]
    hits, total = 0, 0.0
    for r, j in enumerate(order):
        if rel_row[j]:
            hits += 1
            total += hits / (r + 1)
    return total / hits if hits else 0.0


def ref_ap_ranked(rel_ranked: list[bool]) -> float:
    """AP of an already ranked (and already cut) relevance list."""
    hits, total = 0, 0.0
    for r, is_rel in enumerate(rel_ranked):
        if is_rel:
            hits += 1
            total += hits / (r + 1)
    return total / hits if hits else 0.0


def ref_tie_aware_ap(dist_row: list[int], rel_row: list[bool], k: int) -> float:
    """Average AP@K over every permutation inside every tie group (full enumeration)."""
    groups = [[j for j in range(len(dist_row)) if dist_row[j] == d] for d in sorted(set(dist_row))]
    kk = min(k, len(dist_row))
    values = []
    for perms in itertools.product(*[itertools.permutations(g) for g in groups]):
        order = [j for p in perms for j in p][:kk]
        values.append(ref_ap_ranked([rel_row[j] for j in order]))
    return sum(values) / len(values)


def tied_codes(rng: np.random.Generator, n: int, n_distinct: int, n_bytes: int = 2) -> np.ndarray:
    """uint8 [n, n_bytes] drawn from only ``n_distinct`` codes, so distances tie a lot."""
    pool = rng.integers(0, 256, size=(n_distinct, n_bytes), dtype=np.uint8)
    return pool[rng.integers(0, n_distinct, size=n)]


# ------------------------------------------------------------------------------ hand-computed case
# 8-bit codes (one byte each). Database (code, label):
#   db0 = 0b00000000 (label 0), db1 = 0b00000001 (1), db2 = 0b00000011 (0), db3 = 0b00000111 (1),
#   db4 = 0b00001111 (0)
# q0 = 0b00000000, label 0: distances 0,1,2,3,4 -> ranking db0..db4, relevance 1,0,1,0,1
#   AP@5 = (1/1 + 2/3 + 3/5) / 3 = (15 + 10 + 9)/15 / 3 = 34/45
#   AP@3 = (1/1 + 2/3) / 2 = 5/6;  AP@2 = (1/1) / 1 = 1
# q1 = 0b00001111, label 1: distances 4,3,2,1,0 -> ranking db4,db3,db2,db1,db0, relevance 0,1,0,1,0
#   AP@5 = (1/2 + 2/4) / 2 = 1/2;  AP@1 = 0 (nothing relevant in the top 1; still counts)
HAND_DB = np.array([[0b00000000], [0b00000001], [0b00000011], [0b00000111], [0b00001111]], dtype=np.uint8)
HAND_DB_LABELS = np.array([0, 1, 0, 1, 0])
HAND_Q = np.array([[0b00000000], [0b00001111]], dtype=np.uint8)
HAND_Q_LABELS = np.array([0, 1])


def test_hand_example_ap_values() -> None:
    ap5 = average_precision_at_k(HAND_Q, HAND_DB, HAND_Q_LABELS, HAND_DB_LABELS, 5)
    assert ap5 == pytest.approx([34 / 45, 1 / 2], abs=1e-12)
    ap3 = average_precision_at_k(HAND_Q, HAND_DB, HAND_Q_LABELS, HAND_DB_LABELS, 3)
    # q1 top 3 = db4, db3, db2 -> relevance 0,1,0 -> AP@3 = (1/2) / 1 = 1/2
    assert ap3 == pytest.approx([5 / 6, 1 / 2], abs=1e-12)
    ap2 = average_precision_at_k(HAND_Q, HAND_DB, HAND_Q_LABELS, HAND_DB_LABELS, 2)
    # q1 top 2 = db4, db3 -> relevance 0,1 -> (1/2) / 1 = 1/2
    assert ap2 == pytest.approx([1.0, 1 / 2], abs=1e-12)


def test_hand_example_map() -> None:
    # mAP@5 = (34/45 + 1/2) / 2 = (68 + 45)/90 / 2 = 113/180
    expected = Fraction(34, 45) / 2 + Fraction(1, 2) / 2
    assert expected == Fraction(113, 180)
    assert map_at_k(HAND_Q, HAND_DB, HAND_Q_LABELS, HAND_DB_LABELS, 5) == pytest.approx(113 / 180, abs=1e-12)
    # mAP@1: q0 -> 1 (db0 relevant), q1 -> 0 (db4 irrelevant) and it counts: (1 + 0) / 2 = 1/2
    assert map_at_k(HAND_Q, HAND_DB, HAND_Q_LABELS, HAND_DB_LABELS, 1) == pytest.approx(0.5, abs=1e-12)
    # K > N is K = N
    assert map_at_k(HAND_Q, HAND_DB, HAND_Q_LABELS, HAND_DB_LABELS, 50) == pytest.approx(113 / 180, abs=1e-12)
    assert map_at_k(HAND_Q, HAND_DB, HAND_Q_LABELS, HAND_DB_LABELS, None) == pytest.approx(113 / 180)


# Three identical database codes, labels 1, 0, 0; query code 0, label 0: one tie group of 3 items with
# 2 relevant, database order puts the irrelevant item first.
#   plain (stable) ranking: relevance 0,1,1
#     AP@3 = (1/2 + 2/3) / 2 = 7/12;  AP@2 = (1/2) / 1 = 1/2;  AP@1 = 0
#   tie-aware: the irrelevant item is at position 0, 1 or 2 with probability 1/3 each
#     K=3: relevance 0,1,1 -> 7/12; 1,0,1 -> (1 + 2/3)/2 = 5/6; 1,1,0 -> 1;  mean = (7 + 10 + 12)/36 = 29/36
#     K=2: relevance 0,1 -> 1/2; 1,0 -> 1; 1,1 -> 1;  mean = (1/2 + 1 + 1)/3 = 5/6
#     K=1: relevant first with probability 2/3 -> AP 1, else 0;  mean = 2/3
TIE_DB = np.zeros((3, 1), dtype=np.uint8)
TIE_DB_LABELS = np.array([1, 0, 0])
TIE_Q = np.zeros((1, 1), dtype=np.uint8)
TIE_Q_LABELS = np.array([0])


@pytest.mark.parametrize(
    ("k", "plain", "tie_aware"),
    [(3, 7 / 12, 29 / 36), (2, 1 / 2, 5 / 6), (1, 0.0, 2 / 3), (10, 7 / 12, 29 / 36)],
)
def test_hand_example_ties(k: int, plain: float, tie_aware: float) -> None:
    assert map_at_k(TIE_Q, TIE_DB, TIE_Q_LABELS, TIE_DB_LABELS, k) == pytest.approx(plain, abs=1e-12)
    assert map_at_k_tie_aware(TIE_Q, TIE_DB, TIE_Q_LABELS, TIE_DB_LABELS, k) == pytest.approx(
        tie_aware, abs=1e-12
    )


# ------------------------------------------------------------------------------ brute force
@pytest.mark.parametrize("n_bytes", [1, 2, 4, 8, 9])
def test_hamming_matrix_matches_python_popcount(n_bytes: int) -> None:
    rng = np.random.default_rng(n_bytes)
    q = rng.integers(0, 256, size=(7, n_bytes), dtype=np.uint8)
    db = rng.integers(0, 256, size=(11, n_bytes), dtype=np.uint8)
    got = hamming_matrix(q, db, chunk=3)
    assert got.dtype == np.int32 and got.shape == (7, 11)
    assert got.tolist() == ref_hamming(q, db)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3).flatmap(
        lambda nb: st.tuples(
            st.lists(st.binary(min_size=nb, max_size=nb), min_size=1, max_size=5),
            st.lists(st.binary(min_size=nb, max_size=nb), min_size=1, max_size=6),
        )
    )
)
def test_hamming_matrix_property(data: tuple[list[bytes], list[bytes]]) -> None:
    q = np.array([list(b) for b in data[0]], dtype=np.uint8)
    db = np.array([list(b) for b in data[1]], dtype=np.uint8)
    assert hamming_matrix(q, db).tolist() == ref_hamming(q, db)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_matches_bruteforce_with_many_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_q, n_db = 12, 70
    db = tied_codes(rng, n_db, n_distinct=6)  # 16-bit codes, only 6 distinct -> big tie groups
    q = tied_codes(rng, n_q, n_distinct=4)
    q_lab, db_lab = rng.integers(0, 3, n_q), rng.integers(0, 3, n_db)
    dist = ref_hamming(q, db)
    for k in [1, 3, 10, 33, 70, 71, 500]:
        expected = [ref_ap(dist[i], [db_lab[j] == q_lab[i] for j in range(n_db)], k) for i in range(n_q)]
        got = average_precision_at_k(q, db, q_lab, db_lab, k, chunk=5)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
        assert map_at_k(q, db, q_lab, db_lab, k) == pytest.approx(float(np.mean(expected)), abs=1e-12)


def test_query_without_relevant_in_top_k_scores_zero_and_counts() -> None:
    # db: two items at distance 0 with label 1, one at distance 8 with label 0; query label 0
    db = np.array([[0], [0], [255]], dtype=np.uint8)
    db_lab = np.array([1, 1, 0])
    q = np.array([[0], [255]], dtype=np.uint8)  # q0 finds the label-0 item last, q1 first
    q_lab = np.array([0, 0])
    ap = average_precision_at_k(q, db, q_lab, db_lab, 2)
    assert ap.tolist() == [0.0, 1.0]
    assert map_at_k(q, db, q_lab, db_lab, 2) == pytest.approx(0.5)  # not 1.0: the zero counts
    # a query whose class is absent from the database also scores 0
    assert average_precision_at_k(q[:1], db, np.array([7]), db_lab, 3).tolist() == [0.0]


def test_chunking_does_not_change_results() -> None:
    rng = np.random.default_rng(5)
    q, db = tied_codes(rng, 23, 5, 4), tied_codes(rng, 50, 7, 4)
    ql, dl = rng.integers(0, 4, 23), rng.integers(0, 4, 50)
    for fn in (average_precision_at_k, average_precision_at_k_tie_aware):
        np.testing.assert_allclose(fn(q, db, ql, dl, 20, chunk=1), fn(q, db, ql, dl, 20, chunk=1000))


# ------------------------------------------------------------------------------ tie-aware
@pytest.mark.parametrize("seed", range(12))
def test_tie_aware_matches_full_permutation_enumeration(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n_db = int(rng.integers(1, 9))  # <= 8 items: at most 8! orders
    db = tied_codes(rng, n_db, n_distinct=int(rng.integers(1, 4)), n_bytes=1)
    q = tied_codes(rng, 3, n_distinct=3, n_bytes=1)
    q_lab, db_lab = rng.integers(0, 2, 3), rng.integers(0, 2, n_db)
    dist = ref_hamming(q, db)
    for k in sorted({1, 2, max(1, n_db // 2), n_db, n_db + 3}):
        expected = [
            ref_tie_aware_ap(dist[i], [db_lab[j] == q_lab[i] for j in range(n_db)], k) for i in range(3)
        ]
        got = average_precision_at_k_tie_aware(q, db, q_lab, db_lab, k)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_tie_aware_two_straddling_groups_enumeration() -> None:
    # groups at distance 0 (3 items) and 1 (4 items), K = 5 cuts through the second group
    db = np.array([[0], [0], [0], [1], [1], [1], [1]], dtype=np.uint8)
    db_lab = np.array([0, 1, 0, 1, 1, 0, 1])
    q, q_lab = np.zeros((1, 1), dtype=np.uint8), np.array([1])
    dist = ref_hamming(q, db)[0]
    rel = [bool(x == 1) for x in db_lab]
    for k in range(1, 9):
        got = average_precision_at_k_tie_aware(q, db, q_lab, db_lab, k)[0]
        assert got == pytest.approx(ref_tie_aware_ap(dist, rel, k), abs=1e-12)


def test_tie_aware_equals_plain_without_ties() -> None:
    rng = np.random.default_rng(9)
    n_db = 40
    # distinct distances to the query 0: database item j has popcount j % ... -> use 64-bit codes with
    # exactly d_j set bits, d_j all different (0..39)
    db = np.packbits(np.arange(64)[None, :] < rng.permutation(n_db)[:, None], axis=1)
    q = np.zeros((1, 8), dtype=np.uint8)
    assert len(set(hamming_matrix(q, db)[0].tolist())) == n_db
    db_lab = rng.integers(0, 3, n_db)
    for q_label in range(3):
        for k in [1, 5, 17, 40, 100]:
            a = average_precision_at_k(q, db, np.array([q_label]), db_lab, k)
            b = average_precision_at_k_tie_aware(q, db, np.array([q_label]), db_lab, k)
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_tie_aware_is_order_invariant_within_ties() -> None:
    # permuting the database changes plain AP under ties but never the tie-aware value
    rng = np.random.default_rng(3)
    q, db = tied_codes(rng, 6, 3), tied_codes(rng, 60, 4)
    ql, dl = rng.integers(0, 3, 6), rng.integers(0, 3, 60)
    perm = rng.permutation(60)
    for k in [5, 30, 60]:
        np.testing.assert_allclose(
            average_precision_at_k_tie_aware(q, db, ql, dl, k),
            average_precision_at_k_tie_aware(q, db[perm], ql, dl[perm], k),
            rtol=0,
            atol=1e-12,
        )


# ------------------------------------------------------------------------------ curves
def test_precision_at_k_matches_bruteforce() -> None:
    rng = np.random.default_rng(11)
    n_q, n_db = 9, 45
    q, db = tied_codes(rng, n_q, 4), tied_codes(rng, n_db, 6)
    ql, dl = rng.integers(0, 3, n_q), rng.integers(0, 3, n_db)
    dist = ref_hamming(q, db)
    ks = [1, 2, 7, 45, 60]
    expected = []
    for k in ks:
        kk = min(k, n_db)
        per_q = []
        for i in range(n_q):
            order = np.argsort(np.array(dist[i]), kind="stable")[:kk]
            per_q.append(sum(dl[j] == ql[i] for j in order) / kk)
        expected.append(np.mean(per_q))
    got = precision_at_k_curve(q, db, ql, dl, ks, chunk=4)
    assert got.shape == (len(ks),)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("empty", ["exclude", "zero"])
def test_precision_recall_by_radius_matches_bruteforce(empty: str) -> None:
    rng = np.random.default_rng(12)
    n_q, n_db, bits = 10, 40, 16
    q, db = tied_codes(rng, n_q, 8), tied_codes(rng, n_db, 6)
    ql, dl = rng.integers(0, 4, n_q), rng.integers(0, 4, n_db)
    ql[0] = 9  # a class absent from the database: no recall defined for this query
    dist = ref_hamming(q, db)
    exp_p, exp_r = [], []
    for r in range(bits + 1):
        precs, recs = [], []
        for i in range(n_q):
            got_items = [j for j in range(n_db) if dist[i][j] <= r]
            n_rel_db = sum(dl[j] == ql[i] for j in range(n_db))
            n_hit = sum(dl[j] == ql[i] for j in got_items)
            if got_items:
                precs.append(n_hit / len(got_items))
            elif empty == "zero":
                precs.append(0.0)
            if n_rel_db:
                recs.append(n_hit / n_rel_db)
        exp_p.append(np.mean(precs) if precs else np.nan)
        exp_r.append(np.mean(recs))
    precision, recall = precision_recall_by_radius(q, db, ql, dl, empty=empty, chunk=3)
    assert precision.shape == recall.shape == (bits + 1,)
    np.testing.assert_allclose(precision, exp_p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(recall, exp_r, rtol=0, atol=1e-12)
    assert recall[-1] == pytest.approx(1.0)  # radius = bits retrieves everything


def test_precision_by_radius_nan_when_nothing_retrieved() -> None:
    q = np.array([[0]], dtype=np.uint8)
    db = np.array([[255]], dtype=np.uint8)  # distance 8
    p, r = precision_recall_by_radius(q, db, np.array([0]), np.array([0]), max_radius=8)
    assert np.isnan(p[:8]).all() and p[8] == 1.0
    assert r.tolist() == [0.0] * 8 + [1.0]
    p0, _ = precision_recall_by_radius(q, db, np.array([0]), np.array([0]), max_radius=3, empty="zero")
    assert p0.tolist() == [0.0] * 4


def test_input_validation() -> None:
    q = np.zeros((2, 2), dtype=np.uint8)
    with pytest.raises(ValueError, match="code lengths differ"):
        hamming_matrix(q, np.zeros((3, 1), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        hamming_matrix(q.astype(np.int64), q)
    with pytest.raises(ValueError, match="k must be"):
        map_at_k(q, q, np.zeros(2), np.zeros(2), 0)
    with pytest.raises(ValueError, match="labels"):
        map_at_k(q, q, np.zeros(3), np.zeros(2), 1)
