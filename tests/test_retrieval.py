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
    m = find_duplicates(x, neighbours=3)
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
