"""Known-answer tests of lvmqa.coherence: the streaming pass, statistics and drift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lvmqa.checks import CheckContext, Session, run_check
from lvmqa.coherence import (
    HIST_EDGES,
    RowIds,
    article_order_pairs,
    block_bootstrap_means,
    block_length,
    coherence_pass_of_arrays,
    compare_cosines,
    cosine_histogram,
    histogram_labels,
    pair_cosines,
    stream_coherence_pass,
    summarize_cosines,
)
from lvmqa.errors import DatasetFormatError
from lvmqa.io import open_dataset
from tests.synthetic import file_windows, session_for, unit, walk_articles


# ----------------------------------------------------------------------- builders
def interleaved(rng: np.random.Generator, article: np.ndarray) -> np.ndarray:
    """A row order that interleaves articles at random but keeps each one's chunk order."""
    order = rng.permutation(len(article))
    for a in np.unique(article):
        slots = np.flatnonzero(article[order] == a)
        order[slots] = np.flatnonzero(article == a)
    return order


def context(session: Session, name: str) -> CheckContext:
    return session.context(name)


# ------------------------------------------------------------- the pass, exactly
def test_chain_with_known_consecutive_cosines() -> None:
    # Unit vectors in a plane at angles theta_i: cos(row i, row j) = cos(theta_j - theta_i)
    # exactly; random positive scales must not matter (cosine ignores norms).
    rng = np.random.default_rng(0)
    deltas = np.array([0.1, 0.5, 1.2, 2.0, 0.3, 3.0, 0.0, 1.0, 2.5, 0.7, 1.6, 0.2, 0.9])
    theta = np.concatenate([[0.0], np.cumsum(deltas)])
    plane = np.stack([np.cos(theta), np.sin(theta), np.zeros_like(theta)], axis=1)
    rows = (plane * rng.uniform(0.5, 3.0, size=(len(theta), 1))).astype(np.float32)
    c = 3
    contexts, targets = file_windows(rows, c)
    p = coherence_pass_of_arrays(contexts, targets)
    n = len(targets)

    np.testing.assert_allclose(p.file_order, np.cos(deltas[c:]), atol=1e-6)
    for k in range(1, 5):
        expected = np.cos(theta[c + k : c + n] - theta[c : c + n - k])
        np.testing.assert_allclose(p.lag(k), expected, atol=1e-6)
    g = np.arange(n)[:, None]
    j = np.arange(c)[None, :]
    np.testing.assert_allclose(p.position_cosines, np.cos(theta[g + c] - theta[g + j]), atol=1e-6)
    np.testing.assert_allclose(p.step_cosines, np.cos(deltas[g + j[:, :-1]]), atol=1e-6)
    assert p.context_is_previous_target[c:].all()  # sliding windows are recognised
    assert not p.context_is_previous_target[0].any()  # row 0's contexts are no targets


def test_histogram_bins_and_counts() -> None:
    values = np.array([-0.9, -0.2, -0.1000001, -0.1, 0.0, 0.05, 0.3, 0.999, 1.0, 1.5, np.nan])
    counts = cosine_histogram(values)
    expected = np.zeros(12, dtype=np.int64)
    for b in (0, 0, 0, 1, 2, 2, 5, 11, 11, 11):
        expected[b] += 1
    np.testing.assert_array_equal(counts, expected)
    assert len(HIST_EDGES) == 13
    assert histogram_labels()[0] == "[-1.0, -0.1)"
    assert histogram_labels()[5] == "[0.3, 0.4)"
    assert histogram_labels()[-1] == "[0.9, 1.0]"


def test_file_order_histogram_sums_to_n_minus_1() -> None:
    rng = np.random.default_rng(1)
    rows, _, _ = walk_articles(rng, [30, 25, 40], 16)
    contexts, targets = file_windows(rows)
    p = coherence_pass_of_arrays(contexts, targets)
    summary = summarize_cosines(p.file_order, 0.3)
    assert summary.histogram.sum() == len(targets) - 1 == summary.n
    assert summary.n_excluded == 0
    assert summary.low_share == pytest.approx(np.mean(p.file_order < 0.3))
    np.testing.assert_allclose(
        list(summary.percentiles.values()),
        np.percentile(p.file_order.astype(np.float64), [10, 25, 50, 75, 90]),
    )


def test_summary_of_known_values() -> None:
    s = summarize_cosines(np.array([0.1, 0.2, 0.4, 0.5, np.nan]), 0.30)
    assert (s.n, s.n_excluded) == (4, 1)
    assert s.mean == pytest.approx(0.3)
    assert s.std == pytest.approx(np.std([0.1, 0.2, 0.4, 0.5]))
    assert s.low_share == pytest.approx(0.5)
    assert s.percentiles[50] == pytest.approx(0.3)


def test_random_pair_mean_is_exact() -> None:
    rng = np.random.default_rng(2)
    rows, _, _ = walk_articles(rng, [12, 9, 15], 6, 1.0)
    contexts, targets = file_windows(rows, 2)
    p = coherence_pass_of_arrays(contexts, targets)
    t = unit(targets.astype(np.float64))
    gram = t @ t.T
    n = len(t)
    brute = (gram.sum() - np.trace(gram)) / (n * (n - 1))
    assert p.random_pair_mean == pytest.approx(brute, abs=1e-6)


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(12, 40),
    dim=st.integers(3, 8),
    c=st.integers(1, 4),
)
def test_cosine_statistics_are_rotation_invariant(seed: int, n: int, dim: int, c: int) -> None:
    rng = np.random.default_rng(seed)
    contexts = rng.standard_normal((n, c, dim)).astype(np.float32)
    targets = rng.standard_normal((n, dim)).astype(np.float32)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    q = q.astype(np.float32)
    a = coherence_pass_of_arrays(contexts, targets)
    b = coherence_pass_of_arrays(contexts @ q, targets @ q)
    for field in ("lag_cosines", "position_cosines", "step_cosines"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), atol=2e-5)
    sa, sb = summarize_cosines(a.file_order, 0.3), summarize_cosines(b.file_order, 0.3)
    assert sa.mean == pytest.approx(sb.mean, abs=2e-5)
    assert a.random_pair_mean == pytest.approx(b.random_pair_mean, abs=2e-5)


# ----------------------------------------------------------------- streaming
@pytest.mark.parametrize("rows", [1, 2, 7, 37, 256, 10_000])
def test_streamed_pass_equals_in_memory(tmp_path: Path, rows: int) -> None:
    rng = np.random.default_rng(3)
    bank, _, _ = walk_articles(rng, [40, 33, 50, 20], 24)
    contexts, targets = file_windows(bank)
    path = tmp_path / "seq.npz"
    np.savez(path, context_sequences=contexts, target_vectors=targets)
    streamed = stream_coherence_pass(open_dataset(path), rows=rows)
    whole = coherence_pass_of_arrays(contexts, targets)
    for field in ("lag_cosines", "position_cosines", "step_cosines"):
        np.testing.assert_allclose(getattr(streamed, field), getattr(whole, field), atol=1e-6)
    np.testing.assert_array_equal(
        streamed.context_is_previous_target, whole.context_is_previous_target
    )
    assert streamed.random_pair_mean == pytest.approx(whole.random_pair_mean, abs=1e-6)


def test_sliding_window_shortcut_equals_computing_from_the_contexts() -> None:
    # Contexts that are earlier targets take their cosines from the lags; scaled copies
    # (same cosines, different vectors) are not identified and are computed directly.
    rng = np.random.default_rng(19)
    rows, _, _ = walk_articles(rng, [30, 20, 45], 64)
    rows[17] = 0.0  # zero: cannot be identified, windows 13..17 are computed
    rows[40, 20] = np.nan  # NaN outside the hashed segments: identified, still invalid
    contexts, targets = file_windows(rows)
    derived = coherence_pass_of_arrays(contexts, targets)
    computed = coherence_pass_of_arrays(contexts * np.float32(2.0), targets)
    whole = derived.context_is_previous_target.all(axis=1)
    assert np.flatnonzero(~whole[5:]).tolist() == [8, 9, 10, 11, 12]  # windows 13..17
    assert not computed.context_is_previous_target.any()
    np.testing.assert_allclose(derived.position_cosines, computed.position_cosines, atol=1e-6)
    np.testing.assert_allclose(derived.step_cosines, computed.step_cosines, atol=1e-6)
    assert derived.invalid_context_vectors == computed.invalid_context_vectors == 10


def test_in_memory_blocks_equal_one_block() -> None:
    rng = np.random.default_rng(4)
    contexts = rng.standard_normal((600, 3, 10)).astype(np.float32)
    targets = rng.standard_normal((600, 10)).astype(np.float32)
    whole = coherence_pass_of_arrays(contexts, targets)
    for block in (1, 3, 255, 256, 257, 599):
        part = coherence_pass_of_arrays(contexts, targets, block_rows=block)
        np.testing.assert_allclose(part.lag_cosines, whole.lag_cosines, atol=1e-6)
        np.testing.assert_allclose(part.position_cosines, whole.position_cosines, atol=1e-6)


def test_read_error_inside_the_prefetch_thread_reaches_the_caller(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    contexts = rng.standard_normal((500, 5, 64)).astype(np.float32)
    path = tmp_path / "seq.npz"
    np.savez(path, context_sequences=contexts, target_vectors=contexts[:, 0])
    ds = open_dataset(path)
    with open(path, "r+b") as handle:  # truncated after opening: the read fails mid-pass
        handle.truncate(path.stat().st_size // 3)
    with pytest.raises(DatasetFormatError, match="truncated"):
        stream_coherence_pass(ds, rows=50)


def test_zero_and_nan_vectors_are_excluded_and_counted() -> None:
    rng = np.random.default_rng(6)
    contexts = rng.standard_normal((20, 3, 8)).astype(np.float32)
    targets = rng.standard_normal((20, 8)).astype(np.float32)
    targets[4] = 0.0
    targets[9, 2] = np.nan
    contexts[2, 1] = 0.0
    contexts[3, 0, 0] = np.inf
    p = coherence_pass_of_arrays(contexts, targets)
    assert (p.invalid_targets, p.invalid_context_vectors, p.valid_targets) == (2, 2, 18)
    fo = p.file_order  # pairs (3,4), (4,5), (8,9), (9,10) touch a bad target
    assert set(np.flatnonzero(np.isnan(fo))) == {3, 4, 8, 9}
    assert np.isnan(p.step_cosines[2]).all()  # context 1 is in both steps of window 2
    assert np.isnan(p.position_cosines[4]).all()
    assert np.isfinite(p.random_pair_mean)
    s = summarize_cosines(fo, 0.3)
    assert (s.n, s.n_excluded, s.histogram.sum()) == (15, 4, 15)


# ------------------------------------------------------------ article order
def ids_of(article: list[int], chunk: list[int] | None) -> RowIds:
    n = len(article)
    return RowIds(
        np.array(article),
        np.ones(n, bool),
        np.array(chunk if chunk else [0] * n),
        np.full(n, chunk is not None),
        None,
        "file",
    )


def test_article_order_pairs_sort_by_article_then_chunk() -> None:
    ids = ids_of([2, 1, 2, 1, 3, 2, 2], [1, 0, 0, 1, 0, 2, 1])
    first, second, by_chunk = article_order_pairs(ids)
    assert by_chunk
    # article 1: rows 1 (c0), 3 (c1); article 2: rows 2 (c0), 0 (c1), 6 (c1 again), 5 (c2)
    # A duplicated (article, chunk) key is not an adjacency.
    assert list(zip(first.tolist(), second.tolist(), strict=True)) == [(1, 3), (2, 0), (6, 5)]


def test_article_order_without_chunks_keeps_file_order_inside_articles() -> None:
    first, second, by_chunk = article_order_pairs(ids_of([5, 4, 5, 4, 5], None))
    assert not by_chunk
    assert list(zip(first.tolist(), second.tolist(), strict=True)) == [(1, 3), (0, 2), (2, 4)]


def test_pair_cosines_near_and_far_match_brute_force() -> None:
    rng = np.random.default_rng(7)
    targets = rng.standard_normal((300, 12)).astype(np.float32)
    contexts = np.repeat(targets[:, None, :], 2, axis=1)
    p = coherence_pass_of_arrays(contexts, targets)
    first = rng.integers(0, 300, size=400)
    second = (first + rng.integers(1, 120, size=400)) % 300
    second[second == first] = (first[second == first] + 1) % 300
    reads: list[tuple[int, int]] = []

    def read_rows(start: int, stop: int) -> np.ndarray:
        reads.append((start, stop))
        return targets[start:stop].copy()

    got = pair_cosines(first, second, p, read_rows)
    t = unit(targets.astype(np.float64))
    np.testing.assert_allclose(got, np.einsum("nd,nd->n", t[first], t[second]), atol=1e-5)
    assert reads
    assert all(stop - start <= 4096 for start, stop in reads)


# -------------------------------------------------------------------- bootstrap
def test_block_bootstrap_of_a_constant_is_the_constant() -> None:
    rng = np.random.default_rng(8)
    boot = block_bootstrap_means(np.full((50, 2), 0.25), 7, 20, rng)
    np.testing.assert_allclose(boot, 0.25)


def test_block_bootstrap_excludes_nan_and_is_seeded() -> None:
    x = np.array([1.0, np.nan, 3.0, 5.0, np.nan, 7.0] * 10)
    a = block_bootstrap_means(x, 3, 50, np.random.default_rng(9))
    b = block_bootstrap_means(x, 3, 50, np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all()
    assert a.min() >= 1.0
    assert a.max() <= 7.0


def test_block_length_grows_with_autocorrelation() -> None:
    rng = np.random.default_rng(10)
    iid = rng.standard_normal(20_000)
    persistent = np.repeat(rng.standard_normal(200), 100) + 0.1 * rng.standard_normal(20_000)
    assert block_length(iid) == int(np.ceil(20_000 ** (1 / 3)))
    assert block_length(persistent) >= 100  # blocks must span the 100-row "articles"


# ------------------------------------------------------------------------ drift
def heterogeneous_articles(rng: np.random.Generator, n_articles: int) -> np.ndarray:
    lengths = (rng.poisson(25, n_articles) + 6).tolist()
    steps = rng.uniform(0.4, 1.4, n_articles).tolist()  # article-level quality varies
    rows, _, _ = walk_articles(rng, lengths, 32, steps)
    return rows


def test_two_halves_of_the_same_clean_source_do_not_drift() -> None:
    rng = np.random.default_rng(11)
    first = coherence_pass_of_arrays(*file_windows(heterogeneous_articles(rng, 150)))
    second = coherence_pass_of_arrays(*file_windows(heterogeneous_articles(rng, 150)))
    for name in ("file_order", "within_window"):
        comp = compare_cosines(
            name, getattr(first, name), getattr(second, name), rng=np.random.default_rng(0)
        )
        assert comp.verdict == "none", comp.describe()
        assert comp.mean_drift_ci[0] < 0 < comp.mean_drift_ci[1]


@pytest.mark.parametrize("defect", ["shuffled", "diluted"])
def test_shuffled_or_diluted_data_drifts_significantly(defect: str) -> None:
    rng = np.random.default_rng(12)
    base = coherence_pass_of_arrays(*file_windows(heterogeneous_articles(rng, 150)))
    rows = heterogeneous_articles(rng, 150)
    if defect == "shuffled":
        rows = rows[rng.permutation(len(rows))]
    else:  # a third of the rows replaced by incoherent ones, in contiguous stretches
        for start in range(0, len(rows) - 60, 180):
            rows[start : start + 60] = unit(rng.standard_normal((60, rows.shape[1])))
    current = coherence_pass_of_arrays(*file_windows(rows))
    comp = compare_cosines(
        "file_order", base.file_order, current.file_order, rng=np.random.default_rng(0)
    )
    assert comp.verdict == "significant", comp.describe()
    assert comp.mean_drift_pct < -5
    assert comp.mean_drift_ci[1] < 0
    table = comp.bin_table()
    assert len(table) == 12
    assert sum(r["baseline_pct"] for r in table) == pytest.approx(100.0)
    assert sum(r["change_pp"] for r in table) == pytest.approx(0.0, abs=1e-9)


def test_drift_beyond_threshold_but_within_noise_is_moderate() -> None:
    rng = np.random.default_rng(13)
    base = rng.uniform(0.0, 1.0, 25)
    current = rng.uniform(0.0, 1.0, 25) - 0.06  # ~-12 % but 25 noisy values
    comp = compare_cosines("file_order", base, current, rng=np.random.default_rng(0))
    assert comp.mean_drift_pct < -5
    assert comp.mean_drift_ci[0] < 0 < comp.mean_drift_ci[1]
    assert comp.verdict == "moderate"


def test_small_but_certain_drift_is_moderate_and_improvement_is_none() -> None:
    rng = np.random.default_rng(14)
    base = rng.normal(0.50, 0.05, 20_000)
    worse = rng.normal(0.49, 0.05, 20_000)  # -2 %: real, but within the -5 % tolerance
    comp = compare_cosines("file_order", base, worse, rng=np.random.default_rng(0))
    assert comp.mean_drift_ci[1] < 0
    assert comp.mean_drift_pct > -5
    assert comp.verdict == "moderate"
    better = rng.normal(0.60, 0.05, 20_000)
    assert compare_cosines("file_order", base, better).verdict == "none"


# ---------------------------------------------------------------- the checks
def test_coherence_check_on_a_file_without_ids(tmp_path: Path) -> None:
    rng = np.random.default_rng(15)
    contexts, targets = file_windows(walk_articles(rng, [40, 40, 40], 16)[0])
    session = session_for(
        tmp_path, {"plain": {"context_sequences": contexts, "target_vectors": targets}}
    )
    result = run_check(context(session, "plain"), "coherence")
    assert result.status == "passed"
    # No calibrated level for this data: the one gate is the uncalibrated excess over
    # random pairs, which could fail (see the next test).
    assert [g.metric for g in result.gates] == ["adjacent_excess_over_random_ci_low"]
    m = result.metrics
    assert m["file_order_n"] == len(targets) - 1 == sum(m["file_order_histogram"])
    assert m["article_order_mean"] is None
    assert "article order NA" in result.message
    assert len(m["position_profile"]) == 5
    assert m["position_profile"][-1] == pytest.approx(m["last_context_to_target_mean"])
    assert result.details["lowest_articles"]["rows"] == []


def test_coherence_fails_when_adjacent_vectors_are_no_closer_than_random(
    tmp_path: Path,
) -> None:
    """Vectors unrelated to their order (shuffled rows, vectors of other texts): the
    excess over random pairs is ~0, its CI reaches 0, and the gate fails on any encoder."""
    rng = np.random.default_rng(16)
    rows = unit(rng.standard_normal((400, 16)))
    contexts, targets = file_windows(rows)
    session = session_for(
        tmp_path, {"noise": {"context_sequences": contexts, "target_vectors": targets}}
    )
    result = run_check(context(session, "noise"), "coherence")
    assert result.status == "failed"
    low, high = result.metrics["adjacent_excess_over_random_ci"]
    assert low <= 0 <= high + 0.05
    assert abs(result.metrics["adjacent_excess_over_random"]) < 0.05


def test_coherence_check_survives_zero_and_nan_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(21)
    contexts, targets = file_windows(walk_articles(rng, [40, 40], 16)[0])
    targets[[3, 50]] = 0.0
    targets[10, 5] = np.nan
    seen: list[tuple[int, int]] = []
    session = session_for(
        tmp_path, {"holes": {"context_sequences": contexts, "target_vectors": targets}}
    )
    ctx = context(session, "holes")
    stream_coherence_pass(ctx.dataset, rows=16, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (len(targets), len(targets))
    result = run_check(ctx, "coherence")
    assert result.status == "passed"
    assert result.metrics["invalid_targets"] == 3
    assert result.metrics["file_order_excluded"] == 6  # each bad row spoils two pairs
    assert np.isfinite(result.metrics["file_order_mean"])
    assert run_check(ctx, "sequence_integrity").status in ("passed", "failed")


def test_absolute_gates_only_where_the_registry_sets_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(16)
    contexts, targets = file_windows(walk_articles(rng, [40, 40, 40], 16)[0])
    arrays = {"context_sequences": contexts, "target_vectors": targets}
    session = session_for(
        tmp_path,
        {"strict": arrays},
        {"strict": {"thresholds": {"min_coherence_mean": 0.99, "max_low_coherence_share": 0.5}}},
    )
    result = run_check(context(session, "strict"), "coherence")
    assert result.status == "failed"
    assert {g.metric: (g.kind, g.passed) for g in result.gates} == {
        "file_order_mean": ("registry", False),
        "file_order_low_share": ("registry", True),
        "adjacent_excess_over_random_ci_low": ("statistical", True),
    }


def test_lowest_coherence_articles_name_the_incoherent_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(17)
    rows, article, chunk = walk_articles(rng, [30, 30, 30, 30], 24)
    noisy = article == 2
    rows[noisy] = unit(rng.standard_normal((int(noisy.sum()), 24)))
    texts = np.array([f"a{a} c{c}" for a, c in zip(article, chunk, strict=True)], dtype=object)
    order = interleaved(rng, article)  # articles interleaved, chunks in order inside each
    contexts, targets = file_windows(rows[order])
    session = session_for(
        tmp_path,
        {
            "mixed": {
                "context_sequences": contexts,
                "target_vectors": targets,
                "article_ids": article[order][5:],
                "target_texts": texts[order][5:],
            }
        },
    )
    result = run_check(context(session, "mixed"), "coherence")
    table = result.details["lowest_articles"]
    assert table["rows"][0]["article"] == 2
    example = table["rows"][0]["examples"][0]
    assert example["first"].startswith("a2 ")
    assert example["second"].startswith("a2 ")
    m = result.metrics
    # Sorting by article recovers coherence that the interleaved file order destroys.
    assert m["article_order_mean"] > m["file_order_mean"] + 0.3
    assert result.details["article_order_by_chunk"] is False


def test_drift_check_skips_without_a_baseline_and_runs_with_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(18)
    clean = file_windows(heterogeneous_articles(rng, 60))
    shuffled_rows = heterogeneous_articles(rng, 60)
    broken = file_windows(shuffled_rows[rng.permutation(len(shuffled_rows))])
    session = session_for(
        tmp_path,
        {
            "base": {"context_sequences": clean[0], "target_vectors": clean[1]},
            "new": {"context_sequences": broken[0], "target_vectors": broken[1]},
        },
        {"new": {"baseline": "base"}},
    )
    assert run_check(context(session, "base"), "coherence_drift").status == "skipped"
    result = run_check(context(session, "new"), "coherence_drift")
    assert result.status == "failed"
    assert result.metrics["compared"] == ["file_order", "within_window", "last_context_to_target"]
    assert result.metrics["file_order_drift_verdict"] == "significant"
    assert all(g.kind == "statistical" for g in result.gates)
    assert "article_order" in result.details["not_compared"]
    assert len(result.details["tables"]["file_order"]) == 12


def test_file_order_drift_of_shuffled_intact_windows_is_reported_not_gated(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(20)
    clean = file_windows(heterogeneous_articles(rng, 60))
    contexts, targets = file_windows(heterogeneous_articles(rng, 60))
    order = rng.permutation(len(targets))  # rows shuffled after building: windows intact
    session = session_for(
        tmp_path,
        {
            "base": {"context_sequences": clean[0], "target_vectors": clean[1]},
            "split": {"context_sequences": contexts[order], "target_vectors": targets[order]},
        },
        {"split": {"baseline": "base"}},
    )
    result = run_check(context(session, "split"), "coherence_drift")
    assert result.metrics["file_order_drift_verdict"] == "significant"
    assert "file_order" not in result.metrics["gated"]
    assert "not sliding windows" in result.details["not_gated"]["file_order"]
    assert result.metrics["within_window_drift_verdict"] == "none"
    assert result.status == "passed", result.message
