"""Oracle recall and duplicates on hand-built vectors with known answers, with real FAISS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lvmqa import retrieval
from lvmqa.checks import RunOptions, Session, run_check
from lvmqa.errors import LvmqaError
from lvmqa.registry import DatasetEntry, Registry
from lvmqa.results import CheckResult
from lvmqa.retrieval import (
    build_index,
    clamp_factory,
    exact_duplicate_groups,
    exact_knn,
    find_duplicates,
    locate_rows,
    oracle_recall,
    recall_message,
)


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def with_exact_copies(x: np.ndarray, share: float, seed: int = 1) -> tuple[np.ndarray, int]:
    """Overwrite ``share`` of the rows with copies of other rows; copies come after sources."""
    n = len(x)
    copies = round(share * n)
    rng = np.random.default_rng(seed)
    rows = rng.permutation(n)
    sources, targets = np.sort(rows[:copies]), np.sort(rows[copies : 2 * copies])
    x = x.copy()
    lo, hi = np.minimum(sources, targets), np.maximum(sources, targets)
    x[hi] = x[lo]  # the copy is the later row of each pair
    return x, copies


def clustered(n: int, d: int, clusters: int, spread: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force_first(x: np.ndarray) -> np.ndarray:
    """Reference: for each row, the first row with the same bits (-0.0 folded into 0.0)."""
    keys = [bytes((row + np.float32(0.0)).tobytes()) for row in x]
    first: dict[bytes, int] = {}
    return np.array([first.setdefault(k, i) for i, k in enumerate(keys)], dtype=np.int64)


# ------------------------------------------------------------------- exact search


def test_exact_knn_matches_numpy_over_several_blocks() -> None:
    x = unit_rows(3000, 24)
    q = x[::97]
    dist, ids = exact_knn(x, q, 7, block_rows=500)  # 6 blocks merged by the heap
    scores = q @ x.T
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(dist, np.take_along_axis(scores, expected, 1), rtol=1e-5)


def test_a_float32_memmap_is_searched_in_place(tmp_path: Path) -> None:
    x = unit_rows(2000, 16)
    path = tmp_path / "targets.npy"
    np.save(path, x)
    mapped = np.load(path, mmap_mode="r")
    block = next(retrieval.iter_blocks(mapped, 512))[1]
    assert np.shares_memory(block, mapped)  # no copy of float32 rows
    half = next(retrieval.iter_blocks(mapped.astype(np.float16), 512))[1]
    assert half.dtype == np.float32  # other dtypes are converted block by block
    assert oracle_recall(mapped, sample_size=100)["recall_at_1"] == 1.0


def test_locate_rows_finds_each_vector_and_its_cosine() -> None:
    x = unit_rows(500, 32)
    scaled = x * 2.0  # inner-product search, cosine reported
    cos, rows = locate_rows(scaled, x[[7, 300]])
    np.testing.assert_array_equal(rows, [7, 300])
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)
    nan_cos, nan_rows = locate_rows(x, np.full((1, 32), np.nan, dtype=np.float32))
    assert np.isnan(nan_cos[0])
    assert nan_rows[0] == -1


# ------------------------------------------------------------------- oracle recall


def test_distinct_random_vectors_have_perfect_recall() -> None:
    m = oracle_recall(unit_rows(2000, 32), sample_size=None)
    assert m["n_queries"] == 2000
    for k in (1, 5, 1000):
        assert m[f"recall_at_{k}"] == 1.0
        assert m[f"dup_aware_recall_at_{k}"] == 1.0
    assert m["exact_duplicate_share"] == 0.0
    assert m["index_kind"] == "exact"
    assert recall_message(m).startswith("recall@1 = 1.000; exact search")


def test_exact_duplicates_lower_strict_recall_at_1_but_not_duplicate_aware_recall() -> None:
    x, copies = with_exact_copies(unit_rows(2000, 32), 0.08)
    m = oracle_recall(x, sample_size=None)
    assert m["exact_duplicate_share"] == copies / 2000 == 0.08
    assert m["query_in_duplicate_group_share"] == 2 * copies / 2000
    assert m["dup_aware_recall_at_1"] == 1.0
    # Each pair ties at rank 1; FAISS keeps the first row it meets, so the later copy
    # misses itself. Bitwise ties can round differently in BLAS tiles, hence the slack.
    assert m["recall_at_1"] == pytest.approx(1 - 0.08, abs=0.005)
    assert m["recall_at_5"] == 1.0  # both members of a pair fit in the top 5
    assert "because 8.0% of targets are exact duplicates" in recall_message(m)


def test_groups_larger_than_k_lose_strict_recall_at_k() -> None:
    x = unit_rows(600, 16)
    x[100:108] = x[99]  # one group of 9 identical rows
    m = oracle_recall(x, sample_size=None, ks=(1, 5, 9))
    assert m["dup_aware_recall_at_5"] == 1.0
    assert m["recall_at_9"] == 1.0
    # At most 5 of the 9 members can be in their own top 5.
    assert m["recall_at_5"] <= 1 - 4 / 600 + 1e-12


def test_k_is_clamped_to_the_number_of_rows() -> None:
    m = oracle_recall(unit_rows(300, 8), sample_size=50)
    assert m["ks_effective"] == {"1": 1, "5": 5, "1000": 300}
    assert m["recall_at_1000"] == 1.0
    assert m["n_queries"] == 50


def test_the_query_sample_is_seeded() -> None:
    x, _ = with_exact_copies(unit_rows(3000, 16), 0.2)
    a = oracle_recall(x, sample_size=200, seed=3)
    b = oracle_recall(x, sample_size=200, seed=3)
    c = oracle_recall(x, sample_size=200, seed=4)
    assert a == b
    assert a["query_in_duplicate_group_share"] != c["query_in_duplicate_group_share"]


def test_an_approximate_index_error_is_separated_from_exact_recall() -> None:
    x = clustered(6000, 32, clusters=20, spread=0.15)
    m = oracle_recall(x, sample_size=500, factory="IVF16,SQ4", nprobe=1)
    assert m["index_kind"] == "approximate"
    assert m["nprobe"] == 1
    assert m["exact_recall_at_1"] == 1.0
    assert m["exact_recall_at_5"] == 1.0
    # 4-bit codes cannot tell apart tight cluster members: the index loses its own row.
    assert m["index_error_at_1"] > 0.2
    assert m["index_error_at_1"] == pytest.approx(1.0 - m["recall_at_1"])
    assert 0 < m["neighbour_recall_at_5"] < 1
    assert "IVF16,SQ4 (nprobe 1) loses" in recall_message(m)
    again = oracle_recall(x, sample_size=500, factory="IVF16,SQ4", nprobe=1)
    assert again == m  # k-means training is seeded


def test_ivf_flat_self_queries_find_their_own_row_but_not_all_neighbours() -> None:
    x = clustered(6000, 32, clusters=20, spread=0.4)
    m = oracle_recall(x, sample_size=300, factory="IVF64,Flat", nprobe=1)
    # A self-query probes the cell its own vector was filed in: no own-row error...
    assert m["index_error_at_1"] == 0.0
    assert m["recall_at_1"] == 1.0
    # ...but neighbours in other cells are missed at nprobe 1.
    assert m["neighbour_recall_at_5"] < 0.95


def test_nlist_is_clamped_to_what_the_rows_can_train() -> None:
    factory, note = clamp_factory("IVF1024,Flat", 2000)
    assert factory == "IVF51,Flat"
    assert note is not None
    assert "only 2,000 exist" in note
    assert clamp_factory("IVF32,Flat", 2000) == ("IVF32,Flat", None)
    assert clamp_factory("HNSW32", 10) == ("HNSW32", None)
    m = oracle_recall(unit_rows(2000, 16), sample_size=100, factory="IVF1024,Flat")
    assert m["index_factory"] == "IVF51,Flat"
    assert "index_note" in m


def test_a_bad_factory_is_one_clear_error() -> None:
    with pytest.raises(LvmqaError, match="FAISS cannot build this index") as info:
        build_index(unit_rows(100, 16), "NoSuchIndex42")
    assert info.value.key == "index_factory"


# ------------------------------------------------------------------- duplicates


def test_exact_duplicate_groups_mark_the_first_row_of_each_group() -> None:
    x = unit_rows(50, 8)
    x[[10, 30, 49]] = x[3]
    x[20] = x[11]
    x[40, 0] = -0.0
    x[41] = x[40]
    x[41, 0] = 0.0  # equal as numbers: the same vector
    first = exact_duplicate_groups(x)
    assert first[[3, 10, 30, 49]].tolist() == [3, 3, 3, 3]
    assert first[[11, 20]].tolist() == [11, 11]
    assert first[41] == 40
    assert (first == np.arange(50)).sum() == 50 - 5


def test_hash_collisions_never_merge_different_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    x = unit_rows(40, 8)
    x[[5, 25]] = x[2]
    # Every row gets the same hash: only the exact comparison separates them.
    monkeypatch.setattr(retrieval, "_mix64", lambda h: np.zeros_like(h))
    np.testing.assert_array_equal(exact_duplicate_groups(x), brute_force_first(x))


@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 40), st.integers(1, 6)),
        elements=st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, np.nan]),
    ),
    st.integers(1, 64),
)
def test_exact_duplicate_groups_equal_brute_force(x: np.ndarray, block_rows: int) -> None:
    np.testing.assert_array_equal(
        exact_duplicate_groups(x, block_rows=block_rows), brute_force_first(x)
    )


def test_duplicate_shares_count_rows_that_repeat_an_earlier_row() -> None:
    x, copies = with_exact_copies(unit_rows(1000, 32), 0.05)
    m = find_duplicates(x)
    assert m["exact_duplicate_share"] == copies / 1000
    assert m["exact_duplicate_rows"] == m["exact_duplicate_groups"] == copies
    assert m["largest_exact_group"] == 2
    assert m["near_duplicate_share"] == 0.0
    assert m["near_duplicate_exhaustive"]
    assert len(m["details"]["exact_groups"]) == 10


def near_copy(v: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly ``cosine`` from unit ``v``."""
    u = rng.normal(size=v.shape)
    u -= (u @ v) * v
    u /= np.linalg.norm(u)
    return (cosine * v + np.sqrt(1 - cosine**2) * u).astype(np.float32)


def near_duplicate_data(n: int = 2000, d: int = 32) -> tuple[np.ndarray, int]:
    """Rows 2j become near copies of rows 2j - 1: 30 above 0.995, 50 below it."""
    rng = np.random.default_rng(7)
    x = unit_rows(n, d, seed=8)
    rows = 2 * rng.permutation(np.arange(1, n // 2))[:80]  # even rows; sources stay untouched
    for r in rows[:30]:
        x[r] = near_copy(x[r - 1], 0.998, rng)
    for r in rows[30:]:
        x[r] = near_copy(x[r - 1], 0.99, rng)
    return x, 30


def test_near_duplicates_above_the_threshold_are_counted_exactly() -> None:
    x, above = near_duplicate_data()
    m = find_duplicates(x, near_threshold=0.995)
    assert m["exact_duplicate_share"] == 0.0
    assert m["near_duplicate_share"] == pytest.approx(above / 2000)
    cosines = [p["cosine"] for p in m["details"]["near_pairs"]]
    assert cosines == pytest.approx([0.998] * 10, abs=1e-5)
    looser = find_duplicates(x, near_threshold=0.985)
    assert looser["near_duplicate_share"] == pytest.approx(80 / 2000, abs=2 / 2000)


def test_near_duplicates_are_estimated_from_a_sample_on_large_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, above = near_duplicate_data()
    monkeypatch.setattr(retrieval, "EXHAUSTIVE_WORK", 0)
    m = find_duplicates(x, near_sample=800, seed=1)
    assert not m["near_duplicate_exhaustive"]
    assert m["near_duplicate_queries"] == 800
    truth = above / 2000
    assert m["near_duplicate_share_ci_low"] <= truth <= m["near_duplicate_share_ci_high"]
    assert m["near_duplicate_share_ci_high"] - m["near_duplicate_share_ci_low"] < 0.03


def test_exact_copies_do_not_hide_near_duplicates() -> None:
    rng = np.random.default_rng(0)
    x = unit_rows(300, 16)
    x[1:15] = x[0]  # 14 exact copies fill the top 10 of row 0 and its copies
    x[200] = near_copy(x[0], 0.999, rng)
    m = find_duplicates(x)
    assert m["exact_duplicate_rows"] == 14
    assert m["near_duplicate_share"] == pytest.approx(1 / 300)  # row 200 only


def test_duplicate_texts_and_texts_whose_vectors_differ() -> None:
    x = unit_rows(10, 8)
    x[5] = x[1]
    texts = np.array(["a", "b", "c", "a", "e", "b", None, "", "", "c"], dtype=object)
    m = find_duplicates(x, texts)
    # Rows 3 ("a"), 5 ("b") and 9 ("c") repeat earlier texts; empty texts are not counted.
    assert m["duplicate_text_share"] == pytest.approx(3 / 10)
    assert m["duplicate_text_groups"] == 3
    # Row 5 repeats row 1's vector too; rows 3 and 9 carry another vector for the same text.
    assert m["duplicate_text_vector_mismatch_share"] == pytest.approx(2 / 10)
    assert m["details"]["exact_groups"][0]["texts"] == ["b", "b"]


# ----------------------------------------------------------- checks on real files


def run_on(
    path: Path, check_id: str, thresholds: dict[str, float] | None = None, **options: object
) -> CheckResult:
    entry = DatasetEntry("data", path, thresholds=thresholds or {})
    session = Session(Registry(None, {}, {"data": entry}), RunOptions(debug=True, **options))  # type: ignore[arg-type]
    return run_check(session.context("data"), check_id)


def write_sequences(path: Path, targets: np.ndarray, texts: list[str] | None = None) -> Path:
    contexts = np.repeat(targets[:, None, :], 5, axis=1)
    arrays: dict[str, np.ndarray] = {"context_sequences": contexts, "target_vectors": targets}
    if texts is not None:
        arrays["target_texts"] = np.array(texts, dtype=object)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_check_oracle_recall_gates_on_duplicate_aware_recall(tmp_path: Path) -> None:
    x, _ = with_exact_copies(unit_rows(1500, 16), 0.08)
    result = run_on(write_sequences(tmp_path / "dups.npz", x), "oracle_recall", recall_sample=500)
    assert result.status == "passed", result.message
    assert result.metrics["n_queries"] == 500
    assert result.metrics["recall_at_1"] < 0.97 < result.metrics["dup_aware_recall_at_1"]
    assert [g.metric for g in result.gates] == ["dup_aware_recall_at_5", "dup_aware_recall_at_1000"]
    assert {g.kind for g in result.gates} == {"absolute"}
    assert "of targets are exact duplicates" in result.message


def test_check_oracle_recall_fails_a_lossy_index(tmp_path: Path) -> None:
    x = clustered(3000, 32, clusters=10, spread=0.1)
    result = run_on(
        write_sequences(tmp_path / "c.npz", x),
        "oracle_recall",
        recall_sample=300,
        index_factory="IVF8,SQ4",
        nprobe=1,
    )
    assert result.status == "failed"
    assert result.metrics["index_error_at_5"] > 0.03
    assert result.metrics["exact_recall_at_5"] == 1.0


def test_check_duplicates_fails_above_one_percent_unless_the_registry_allows_more(
    tmp_path: Path,
) -> None:
    x, copies = with_exact_copies(unit_rows(800, 16), 0.05)
    texts = [f"chunk {i}" for i in range(800)]
    path = write_sequences(tmp_path / "dups.npz", x, texts)
    result = run_on(path, "duplicates")
    assert result.status == "failed"
    assert result.metrics["exact_duplicate_share"] == copies / 800
    assert result.metrics["duplicate_text_share"] == 0.0
    assert result.details["exact_groups"][0]["size"] == 2
    assert "5.00% of targets repeat an earlier vector exactly" in result.message
    relaxed = run_on(path, "duplicates", thresholds={"duplicate_share": 0.1})
    assert relaxed.status == "passed"
    assert {g.kind for g in relaxed.gates} == {"registry"}


# ------------------------------------------- the neighbour pass vs its definitions


def tie_heavy(n: int = 1500, d: int = 8, seed: int = 3) -> np.ndarray:
    """Small-integer vectors (exact float arithmetic: many exact ties between distinct
    rows), duplicate groups of 2, 7 and 40 rows, zero rows, a NaN and an Inf row."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    x[100:107] = x[99]
    x[rng.choice(np.arange(200, n), 40, replace=False)] = x[150]
    x[[300, 900]] = 0.0
    x[400, 3] = np.nan
    x[401, 0] = np.inf
    x[500] = x[499]
    return x


def heap_positions(x: np.ndarray, rows: np.ndarray, first: np.ndarray, k: int) -> tuple:
    """Reference: positions of own row and group in the exact top-k lists (the old path)."""
    _, ids = exact_knn(x, x[rows], k)
    own = ids == rows[:, None]
    group = (first[np.maximum(ids, 0)] == first[rows][:, None]) & (ids >= 0)
    pos = lambda hit: np.where(hit.any(1), hit.argmax(1), k)  # noqa: E731
    return pos(own), pos(group)


@pytest.mark.parametrize("k", [1, 5, 30, 1000])
@pytest.mark.parametrize("block_rows", [None, 7, 256])
def test_pass_ranks_equal_the_positions_in_the_exact_top_k_lists(
    k: int, block_rows: int | None
) -> None:
    x = tie_heavy()
    first = exact_duplicate_groups(x)
    rows = np.unique(np.r_[np.arange(0, 1500, 3), [99, 100, 106, 150, 300, 400, 401, 499, 500]])
    npass = retrieval.neighbour_pass(
        x, first, recall_rows=rows, k=k, near_rows=rows[:0], block_rows=block_rows
    )
    own, group = heap_positions(x, rows, first, min(k, len(x)))
    np.testing.assert_array_equal(np.minimum(npass.own_rank, k), own)
    np.testing.assert_array_equal(np.minimum(npass.group_rank, k), group)
    if k >= 30:  # the 40-row group straddles position k: those queries took the heap
        assert 0 < npass.heap_queries < len(rows) // 4


def test_recall_of_random_unit_rows_equals_the_top_k_lists() -> None:
    x, _ = with_exact_copies(unit_rows(3000, 24, seed=4), 0.05)
    m = oracle_recall(x, sample_size=700, ks=(1, 5, 50), seed=2)
    rows = np.sort(np.random.default_rng(2).choice(3000, 700, replace=False))
    first = exact_duplicate_groups(x)
    own, group = heap_positions(x, rows, first, 50)
    for k in (1, 5, 50):
        assert m[f"recall_at_{k}"] == np.count_nonzero(own < k) / 700
        assert m[f"dup_aware_recall_at_{k}"] == np.count_nonzero(group < k) / 700
    assert m["recall_at_1"] < 1.0 == m["dup_aware_recall_at_1"]


def near_reference(x: np.ndarray, rows: np.ndarray, threshold: float) -> tuple:
    """Definitions: a row is near-redundant when it is not an exact copy and an earlier
    row of another group lies at cosine >= threshold; pairs are all such (a < b)."""
    first = exact_duplicate_groups(x)
    x64 = x.astype(np.float64)
    norms = np.linalg.norm(x64, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (x64[rows] @ x64.T) / (norms[rows, None] * norms[None, :])
    other = first[None, :] != first[rows, None]
    near = np.nan_to_num(cos, nan=-np.inf) >= threshold
    near &= other
    col = np.arange(len(x))[None, :]
    earlier = (near & (col < rows[:, None])).any(1) & (first[rows] == rows)
    qi, j = np.nonzero(near & (col > rows[:, None]))
    pairs = sorted(zip(cos[qi, j], rows[qi], j, strict=True), reverse=True)[:10]
    return earlier, [(int(a), int(b)) for _, a, b in pairs], [float(c) for c, _, _ in pairs]


@pytest.mark.parametrize("block_rows", [None, 33])
def test_near_duplicates_equal_the_definition(block_rows: int | None) -> None:
    rng = np.random.default_rng(1)
    x = unit_rows(1200, 16, seed=9)
    sources = rng.choice(np.arange(10, 1100), 60, replace=False)
    for i, r in enumerate(sources):  # distinct cosines: the order of the pairs is certain
        x[r + rng.integers(1, 90) * (-1) ** i] = near_copy(x[r], 0.99305 + 0.0001 * i, rng)
    scale = rng.uniform(0.5, 2.0, size=(len(x), 1)).astype(np.float32)
    x = x * scale  # cosines, not inner products, decide
    x[5:9] = x[4]  # exact copies do not count as near-duplicates of each other
    x[[50, 51]] = 0.0
    x[60, 2] = np.nan
    rows = np.arange(len(x))
    first = exact_duplicate_groups(x)
    npass = retrieval.neighbour_pass(
        x, first, recall_rows=rows[:0], k=1, near_rows=rows, near_threshold=0.995,
        block_rows=block_rows,
    )
    earlier, pairs, cosines = near_reference(x, rows, 0.995)
    np.testing.assert_array_equal(npass.near_earlier & (first == rows), earlier)
    assert [(a, b) for _, a, b in npass.near_pairs] == pairs
    assert [c for c, _, _ in npass.near_pairs] == pytest.approx(cosines, rel=1e-6)
    m = find_duplicates(x, near_threshold=0.995)
    assert m["near_duplicate_share"] == earlier.mean()


def test_the_near_sample_contains_the_recall_queries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retrieval, "EXHAUSTIVE_WORK", 0)
    recall = np.sort(np.random.default_rng(0).choice(5000, 300, replace=False))
    near = retrieval.near_query_rows(5000, 16, 800, 0, recall)
    assert len(near) == len(np.unique(near)) == 800
    assert np.isin(recall, near).all()
    x, _ = near_duplicate_data()
    rows = retrieval.near_query_rows(2000, 32, 800, 1, recall[recall < 2000])
    earlier, _, _ = near_reference(x, rows, 0.995)
    assert earlier.sum() > 0


def test_recall_and_duplicates_checks_share_one_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = retrieval.neighbour_pass

    def counted(*args: object, **kwargs: object) -> retrieval.NeighbourPass:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(retrieval, "neighbour_pass", counted)
    x, _ = with_exact_copies(unit_rows(1200, 16), 0.02)
    entry = DatasetEntry("data", write_sequences(tmp_path / "d.npz", x), thresholds={})
    session = Session(Registry(None, {}, {"data": entry}), RunOptions(debug=True))  # type: ignore[arg-type]
    ctx = session.context("data")
    recall = run_check(ctx, "oracle_recall")
    dups = run_check(ctx, "duplicates")
    assert len(calls) == 1
    assert recall.metrics["dup_aware_recall_at_1"] == 1.0
    assert dups.metrics["exact_duplicate_share"] == pytest.approx(0.02, abs=1e-3)
