"""The coherence pass's fast paths give the answers of their plain definitions.

Each fast path (float32 summaries, gathered block bootstrap, segment identity, mapped
members at odd offsets, blockwise window verdicts) is checked against a direct,
obviously correct computation of the same quantity.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import lvmqa.io
from lvmqa.coherence import (
    ACF_FULL_MAX,
    HIST_EDGES,
    MAX_BLOCKS,
    PERCENTILES,
    CoherenceAccumulator,
    RowIds,
    block_bootstrap_means,
    block_length,
    coherence_pass_of_arrays,
    column_means,
    stream_coherence_pass,
    summarize_cosines,
)
from lvmqa.errors import LvmqaError
from lvmqa.integrity import window_integrity
from lvmqa.io import open_dataset
from lvmqa.metrics import NormAccumulator, norm_statistics
from tests.conftest import random_sequences
from tests.synthetic import file_windows, walk_articles


# ------------------------------------------------------------- float32 summaries
def reference_summary(values: np.ndarray, low: float) -> dict[str, object]:
    """The definitions, in float64, with numpy's own percentile and a bin search."""
    finite = values[np.isfinite(values)].astype(np.float64)
    idx = np.clip(np.searchsorted(HIST_EDGES, finite, side="right") - 1, 0, 11)
    return {
        "n": finite.size,
        "mean": finite.mean(),
        "std": finite.std(),
        "low_share": float((finite < low).mean()),
        "histogram": np.bincount(idx, minlength=12),
        "percentiles": np.percentile(finite, PERCENTILES),
    }


# Cosines, the bin edges and their float32 neighbours (where rounding could misplace a
# value), the low thresholds' neighbours, NaN and values outside [-0.2, 1.0].
EDGE_NEIGHBOURS = [
    float(v)
    for e in [*HIST_EDGES, 0.3, 0.7]
    for v in (
        np.float32(e),  # 0.7, 0.9 and -0.1 round below the edge, the others above
        np.nextafter(np.float32(e), np.float32(-np.inf)),
        np.nextafter(np.float32(e), np.float32(np.inf)),
    )
]
cosines = st.one_of(
    st.floats(-1.0, 1.0, width=32),
    st.sampled_from([*EDGE_NEIGHBOURS, float("nan"), -0.9, 1.0]),
)


@settings(max_examples=200, deadline=None)
@given(
    values=arrays(np.float32, st.integers(1, 300), elements=cosines),
    low=st.sampled_from([0.3, 0.7, 0.1, -0.05]),
)
def test_float32_summary_equals_the_float64_definitions(values: np.ndarray, low: float) -> None:
    got = summarize_cosines(values, low)
    if not np.isfinite(values).any():
        assert (got.n, got.n_excluded, got.histogram.sum()) == (0, values.size, 0)
        return
    ref = reference_summary(values, low)
    assert got.n == ref["n"]
    np.testing.assert_array_equal(got.histogram, ref["histogram"])  # exact, edges included
    assert got.low_share == ref["low_share"]  # exact at the threshold's neighbours too
    assert got.mean == pytest.approx(ref["mean"], abs=1e-12)
    assert got.std == pytest.approx(ref["std"], abs=1e-6)
    np.testing.assert_allclose(list(got.percentiles.values()), ref["percentiles"], atol=1e-12)


def test_float64_and_float32_summaries_agree() -> None:
    values = np.random.default_rng(0).uniform(-0.5, 1.0, 10_001)
    a = summarize_cosines(values, 0.3)
    b = summarize_cosines(values.astype(np.float32), 0.3)
    ref = reference_summary(values, 0.3)
    np.testing.assert_array_equal(a.histogram, ref["histogram"])
    assert a.low_share == ref["low_share"]
    assert b.mean == pytest.approx(a.mean, abs=1e-7)


def test_column_means_of_few_long_columns_equal_nanmean() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5_000, 6)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    x[:, 5] = np.nan  # an all-NaN column: NaN, no warning
    got = column_means(x)
    np.testing.assert_allclose(got[:5], np.nanmean(x[:, :5].astype(np.float64), axis=0))
    assert np.isnan(got[5])
    wide = column_means(x.T)  # many short columns: the other branch
    with np.errstate(invalid="ignore"):
        wide_x = x.T.astype(np.float64)
        expected = np.nansum(wide_x, axis=0) / np.isfinite(wide_x).sum(axis=0)
    np.testing.assert_allclose(wide, np.where(np.isfinite(x.T).any(axis=0), expected, np.nan))


# --------------------------------------------------------------- block bootstrap
def naive_block_bootstrap(
    x: np.ndarray, block: int, reps: int, rng: np.random.Generator, step: int = 1
) -> np.ndarray:
    """Resample whole blocks explicitly and take the NaN-excluding means; block starts
    are multiples of ``step`` and the block a multiple of it."""
    n, s = x.shape
    block = -(-block // step) * step
    n_blocks = math.ceil(n / block)
    out = np.empty((reps, s))
    draws: list[np.ndarray] = []
    batch = max(1, min(reps, (2 << 20) // (8 * s * n_blocks)))  # the same draws, in order
    grid = (n - block) // step + 1
    for first in range(0, reps, batch):
        size = (min(batch, reps - first), n_blocks)
        draws.extend(step * rng.integers(0, grid, size=size))
    for r, starts in enumerate(draws):
        rows = np.concatenate([x[a : a + block] for a in starts])
        with np.errstate(invalid="ignore"):
            out[r] = np.nanmean(rows, axis=0) if np.isfinite(rows).any() else np.nan
    return out


@pytest.mark.parametrize("with_nan", [False, True])
@pytest.mark.parametrize("block", [1, 7, 40])
def test_block_bootstrap_equals_explicit_resampling(with_nan: bool, block: int) -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((300, 3))
    if with_nan:
        x[:4, 1] = np.nan  # leading NaNs, like the lag table
        x[rng.random(300) < 0.1, 2] = np.nan
    got = block_bootstrap_means(x, block, 30, np.random.default_rng(5))
    expected = naive_block_bootstrap(x, block, 30, np.random.default_rng(5))
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    for step in (2, 3, block):  # starts on a grid (the default past BOOTSTRAP_GRID_MIN rows)
        got = block_bootstrap_means(x, block, 30, np.random.default_rng(5), start_step=step)
        expected = naive_block_bootstrap(x, block, 30, np.random.default_rng(5), min(step, block))
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


# -------------------------------------------------------------- identification
def test_contexts_differing_in_any_sampled_segment_are_not_identified() -> None:
    rng = np.random.default_rng(12)
    rows, _, _ = walk_articles(rng, [40], 768)
    contexts, targets = file_windows(rows)
    for column in (3, 390, 760):  # the start, middle and end segments of a 768-D vector
        changed = contexts.copy()
        changed[20, 2, column] += np.float32(1e-3)
        p = coherence_pass_of_arrays(changed, targets)
        assert not p.context_is_previous_target[20, 2]
        assert p.context_is_previous_target[20, [0, 1, 3, 4]].all()
        exact = coherence_pass_of_arrays(changed, targets, block_rows=7)
        np.testing.assert_allclose(p.position_cosines, exact.position_cosines, atol=1e-6)


@pytest.mark.parametrize("dim", [768, 50, 47, 10])
def test_identity_is_the_same_with_and_without_the_cache_line_copy(dim: int) -> None:
    # 768 takes the 64-byte-line path; 50 and 47 the float copies (unaligned / odd); 10
    # a single whole-vector segment. All identify exactly the sliding contexts.
    rng = np.random.default_rng(13)
    rows, _, _ = walk_articles(rng, [30, 25], dim)
    contexts, targets = file_windows(rows)
    contexts[7, 1] *= np.float32(1.5)  # a scaled copy is a different vector
    p = coherence_pass_of_arrays(contexts, targets, block_rows=9)
    expected = np.ones_like(p.context_is_previous_target)
    expected[:5] = (np.arange(5)[:, None] - 5 + np.arange(5)[None, :]) >= 0
    expected[7, 1] = False
    np.testing.assert_array_equal(p.context_is_previous_target, expected)


def test_hashes_from_another_thread_give_the_same_pass() -> None:
    rng = np.random.default_rng(14)
    rows, _, _ = walk_articles(rng, [50, 40], 64)
    contexts, targets = file_windows(rows)
    plain = coherence_pass_of_arrays(contexts, targets, block_rows=16)
    acc = CoherenceAccumulator(len(targets), 5, 64)
    for a in range(0, len(targets), 16):
        block = (contexts[a : a + 16], targets[a : a + 16])
        acc.add(*block, acc.identity_hashes(*block))
    hashed = acc.finish()
    np.testing.assert_array_equal(hashed.lag_cosines, plain.lag_cosines)
    np.testing.assert_array_equal(
        hashed.context_is_previous_target, plain.context_is_previous_target
    )


# ------------------------------------------------------- members at odd offsets
def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def write_at_offset(path: Path, contexts: np.ndarray, targets: np.ndarray, pad: int) -> None:
    """An npz whose members start ``pad`` bytes later (a first member's name is longer)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("p" * (1 + pad) + ".npy", npy_bytes(np.zeros(1)))
        archive.writestr("context_sequences.npy", npy_bytes(contexts))
        archive.writestr("target_vectors.npy", npy_bytes(targets))


def test_unaligned_members_stream_exact_values_into_aligned_targets(tmp_path: Path) -> None:
    rng = np.random.default_rng(15)
    rows, _, _ = walk_articles(rng, [60, 45], 32)
    contexts, targets = file_windows(rows)
    whole = coherence_pass_of_arrays(contexts, targets)
    mapped_aligned = set()
    for pad in range(4):  # the targets' data offset takes every value mod 4
        path = tmp_path / f"odd{pad}.npz"
        write_at_offset(path, contexts, targets, pad)
        ds = open_dataset(path)
        seen = []
        for chunk in ds.iter_chunks(16, reuse=3):
            assert chunk.targets.flags.aligned  # read into the ring where a map is not
            mapped_aligned.add(chunk.contexts.flags.aligned)
            seen.append((chunk.contexts.copy(), chunk.targets.copy()))
        np.testing.assert_array_equal(np.concatenate([c for c, _ in seen]), contexts)
        np.testing.assert_array_equal(np.concatenate([t for _, t in seen]), targets)
        streamed = stream_coherence_pass(ds, rows=16)
        np.testing.assert_allclose(streamed.lag_cosines, whole.lag_cosines, atol=1e-6)
        np.testing.assert_array_equal(
            streamed.context_is_previous_target, whole.context_is_previous_target
        )
    assert mapped_aligned == {True, False}  # both kinds of context maps were exercised


# ------------------------------------------------------------ window verdicts
def test_blockwise_window_verdicts_equal_the_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    import lvmqa.integrity as integrity

    rng = np.random.default_rng(16)
    n, c = 500, 5
    article = np.sort(rng.integers(0, 30, n))
    chunk = np.concatenate([np.arange((article == a).sum()) for a in np.unique(article)])
    chunk[rng.random(n) < 0.05] += 3  # skips
    identity = rng.random((n, c)) < 0.9
    known = rng.random(n) < 0.95
    ids = RowIds(article, known, chunk, np.ones(n, bool), None, "file")
    monkeypatch.setattr(integrity, "WINDOW_BLOCK", 37)
    got = window_integrity(ids, identity)
    for g in range(n):
        rows = [g - c + j for j in range(c)]
        usable = [identity[g, j] and r >= 0 and known[r] and known[g] for j, r in enumerate(rows)]
        differs = any(u and article[r] != article[g] for u, r in zip(usable, rows, strict=True))
        cross = 1.0 if differs else (0.0 if all(usable) else np.nan)
        assert got.crossing[g] == cross or (np.isnan(cross) and np.isnan(got.crossing[g]))
        if cross == 0.0:
            steps = np.diff([*chunk[rows], chunk[g]])
            assert got.non_consecutive[g] == float((steps != 1).any())
            assert got.wrong_order[g] == float((steps < 0).any())


# ----------------------------------------------------------------- block length
def test_block_length_of_a_long_series_from_stretches() -> None:
    # Past ACF_FULL_MAX values the ACF comes from evenly spaced stretches; it must still
    # see 100-row "articles", and the block floor n / MAX_BLOCKS bounds the blocks.
    rng = np.random.default_rng(17)
    n = ACF_FULL_MAX + 100_000
    iid = rng.standard_normal(n).astype(np.float32)
    assert block_length(iid) == math.ceil(n / MAX_BLOCKS)  # above n^(1/3) at this size
    articles = np.repeat(rng.standard_normal(n // 100 + 1), 100)[:n]
    persistent = articles + 0.1 * rng.standard_normal(n)
    assert 200 <= block_length(persistent) <= 2 * 5000
    assert math.ceil(n / block_length(persistent)) <= MAX_BLOCKS


# ------------------------------------------------------------------------ norms
def test_norm_accumulator_classifies_rows_exactly() -> None:
    rng = np.random.default_rng(18)
    x = rng.standard_normal((9000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[10] = 0.0  # zero
    x[11] = 1e-30  # underflows in float32 squares: still a (near-)zero vector
    x[12, 3] = np.nan
    x[13, 4] = np.inf
    x[14, [1, 2]] = [np.nan, -np.inf]  # both: counted as NaN and as Inf, like numpy's any()
    x[15] = 3e30  # finite, but its float32 squares overflow: a huge, valid norm
    x[8000] *= 2.0  # a non-unit row past the first sub-block
    acc = NormAccumulator()
    acc.add(x[:5000], 0)
    acc.add(x[5000:], 5000)
    m = acc.summary("t")
    assert (m["t_nan_count"], m["t_inf_count"], m["t_zero_count"]) == (2, 2, 2)
    finite = x[~np.isnan(x).any(1) & ~np.isinf(x).any(1)].astype(np.float64)
    norms = np.linalg.norm(finite, axis=1)
    assert m["t_norm_max"] == pytest.approx(norms.max(), rel=1e-6)  # 3e30 * 4, not Inf
    assert m["t_norm_mean"] == pytest.approx(norms.mean(), rel=1e-6)
    assert m["t_norm_std"] == pytest.approx(norms.std(), rel=1e-5)
    assert {10, 11, 12, 13, 14, 15, 8000} <= set(acc.worst_rows)


def bad_vector_windows(tmp_path: Path, pad: int) -> Path:
    """Sliding windows with NaN / Inf / zero / overflowing vectors in targets and contexts,
    some only in a context (outside its identity segments), at an odd member offset."""
    rng = np.random.default_rng(21)
    rows, _, _ = walk_articles(rng, [70, 50, 40], 64)
    contexts, targets = file_windows(rows)
    contexts, targets = contexts.copy(), targets.copy()
    targets[[7, 90]] = np.nan
    targets[12, 3] = np.inf
    targets[30] = 0.0
    targets[44] = 3e30  # finite, its float32 squares overflow
    contexts[55, 2, 20] = np.nan  # a context that equals no target any more
    contexts[56, 0, 21] = -np.inf
    contexts[60, 4] = 0.0
    contexts[61, 1] *= 1.5
    path = tmp_path / f"bad{pad}.npz"
    write_at_offset(path, contexts, targets, pad)
    return path


@pytest.mark.parametrize(("pad", "rows"), [(0, None), (1, 16), (3, 37)])
def test_the_coherence_pass_gives_the_norms_pass_statistics(
    tmp_path: Path, pad: int, rows: int | None
) -> None:
    ds = open_dataset(bad_vector_windows(tmp_path, pad))
    shared = stream_coherence_pass(ds, rows=rows).norm_statistics
    assert shared == norm_statistics(ds, rows)  # same accumulators, same order: equal
    assert (shared["target_nan_count"], shared["target_inf_count"]) == (2, 1)
    contexts = np.asarray(ds.context_rows(0, ds.n), dtype=np.float64).reshape(-1, ds.dim)
    assert shared["context_nan_count"] == np.isnan(contexts).any(axis=1).sum() == 1
    assert shared["context_inf_count"] == np.isinf(contexts).any(axis=1).sum() == 1
    finite = contexts[np.isfinite(contexts).all(axis=1)]
    norms = np.linalg.norm(finite, axis=1)
    assert shared["context_zero_count"] == np.count_nonzero(norms == 0) > 0
    assert shared["context_norm_mean"] == pytest.approx(norms.mean(), rel=1e-6)
    assert shared["context_norm_max"] == pytest.approx(norms.max(), rel=1e-6)


def test_norms_and_coherence_checks_read_the_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lvmqa.checks import RunOptions, Session, run_check
    from lvmqa.registry import DatasetEntry, Registry

    passes: list[int] = []
    real = lvmqa.io.Dataset.iter_chunks

    def counted(self: lvmqa.io.Dataset, *args: object, **kwargs: object) -> object:
        passes.append(1)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lvmqa.io.Dataset, "iter_chunks", counted)
    path = bad_vector_windows(tmp_path, 0)
    entry = DatasetEntry("data", path, thresholds={})
    session = Session(Registry(None, {}, {"data": entry}), RunOptions(debug=True))  # type: ignore[arg-type]
    ctx = session.context("data")
    norms = run_check(ctx, "norms")
    run_check(ctx, "coherence")
    assert len(passes) == 1
    assert norms.metrics["target_nan_count"] == 2
    assert norms.status == "failed"


# --------------------------------------------------------------------- sha256
def test_background_sha256_equals_the_streamed_hash(tmp_path: Path) -> None:
    rng = np.random.default_rng(19)
    path = tmp_path / "s.npz"
    np.savez(path, context_sequences=rng.standard_normal((50, 5, 8)).astype(np.float32),
             target_vectors=rng.standard_normal((50, 8)).astype(np.float32))
    expected = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    ds = open_dataset(path)
    ds.hash_in_background()
    ds.hash_in_background()  # once
    assert ds.sha256() == expected == ds.sha256()


def test_the_hash_is_read_only_when_a_report_asks_for_it(tmp_path: Path) -> None:
    path = random_sequences(tmp_path / "s.npz")
    ds = open_dataset(path)
    assert ds.sha256_if_requested() is None  # nothing asked: no full read of the file
    ds.hash_in_background()
    expected = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert ds.sha256_if_requested() == expected


@pytest.mark.parametrize("report", [False, True])
def test_a_run_without_report_never_hashes_the_file(
    quality_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, report: bool
) -> None:
    hashed: list[Path] = []
    real = lvmqa.io.file_sha256

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(lvmqa.io, "file_sha256", counting)
    path = random_sequences(quality_pytester.path / "good.npz")
    extra = ["--lvmqa-json=out.json"] if report else []
    result = quality_pytester.runpytest_inprocess(
        "quality_tests", f"--dataset={path}", "-k", "norms", *extra
    )
    assert result.ret == 0 and "passed" in result.parseoutcomes()
    assert hashed == ([path] if report else [])
    if report:
        data = json.loads((quality_pytester.path / "out.json").read_text())
        assert data["datasets"]["good"]["sha256"] == real(path)


def test_background_sha256_error_reaches_the_caller(tmp_path: Path) -> None:
    rng = np.random.default_rng(20)
    path = tmp_path / "s.npz"
    np.savez(path, context_sequences=rng.standard_normal((5, 5, 4)).astype(np.float32),
             target_vectors=rng.standard_normal((5, 4)).astype(np.float32))
    ds = open_dataset(path)
    path.unlink()  # gone before the thread reads it
    ds.hash_in_background()
    with pytest.raises((FileNotFoundError, LvmqaError)):  # one line: "file not found"
        ds.sha256()
