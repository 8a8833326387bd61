"""The external bucket sort gives the cosines of consecutive rows in any order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lvmqa.coherence as coherence
from lvmqa.coherence import article_order
from lvmqa.io import open_dataset
from lvmqa.spill import consecutive_cosines
from tests.synthetic import file_windows, session_for, walk_articles


def brute_force(targets: np.ndarray, order: np.ndarray) -> np.ndarray:
    t = targets[order].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        norms = np.linalg.norm(t, axis=1)
        norms[~np.isfinite(norms) | (norms == 0)] = np.nan
        return np.einsum("nd,nd->n", t[:-1], t[1:]) / (norms[:-1] * norms[1:])


@pytest.mark.parametrize("bucket_rows", [2, 7, 50, 10_000])
def test_consecutive_cosines_in_a_random_order(tmp_path: Path, bucket_rows: int) -> None:
    rng = np.random.default_rng(21)
    n, dim = 311, 24
    contexts = rng.standard_normal((n, 2, dim)).astype(np.float32)
    targets = rng.standard_normal((n, dim)).astype(np.float32)
    targets[17] = 0.0  # zero and NaN rows give NaN cosines with both neighbours
    targets[40, 3] = np.nan
    path = tmp_path / "s.npz"
    np.savez(path, context_sequences=contexts, target_vectors=targets)
    ds = open_dataset(path, context_length=2)
    ranked = rng.permutation(n)[:250]  # 61 rows are outside the order
    rank = np.full(n, -1)
    rank[ranked] = np.arange(ranked.size)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.sqrt(np.einsum("nd,nd->n", targets, targets)).astype(np.float32)
    norms[~np.isfinite(norms) | (norms == 0)] = np.nan
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    got = consecutive_cosines(
        ds, rank, norms, folder=str(spill_dir), bucket_bytes=bucket_rows * dim * 4,
        read_bytes=37 * dim * 4,
    )
    expected = brute_force(targets, ranked)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got[~np.isnan(got)], expected[~np.isnan(expected)], atol=1e-6)
    assert not any(spill_dir.iterdir())  # the temporary file never had a name


def test_article_order_of_a_shuffled_file_sorts_instead_of_gathering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(22)
    rows, article, chunk = walk_articles(rng, [60, 45, 80, 30, 52], 32)
    contexts, targets = file_windows(rows)
    shuffle = rng.permutation(len(targets))
    arrays = {
        "context_sequences": contexts[shuffle],
        "target_vectors": targets[shuffle],
        "metadata": np.array(
            [
                {"article_index": int(a), "target_chunk_index": int(c)}
                for a, c in zip(article[5:][shuffle], chunk[5:][shuffle], strict=True)
            ],
            dtype=object,
        ),
    }
    gathered = article_order(session_for(tmp_path, {"s": arrays}).context("s"))
    monkeypatch.setattr(coherence, "SPILL_MIN_PAIRS", 1)
    calls: list[int] = []
    real = coherence.consecutive_cosines

    def counting(*args: object, **kwargs: object) -> np.ndarray:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(coherence, "consecutive_cosines", counting)
    (tmp_path / "again").mkdir()
    sorted_ = article_order(session_for(tmp_path / "again", {"s": arrays}).context("s"))
    assert calls  # the far pairs came from the sort
    assert gathered is not None and sorted_ is not None and sorted_.by_chunk
    np.testing.assert_array_equal(gathered.first, sorted_.first)
    np.testing.assert_allclose(sorted_.cosines, gathered.cosines, atol=1e-6)
    # Known answer: consecutive chunks of a random walk, straight from the vectors.
    a, b = sorted_.first, sorted_.second
    t = targets[shuffle].astype(np.float64)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    np.testing.assert_allclose(sorted_.cosines, np.einsum("nd,nd->n", t[a], t[b]), atol=1e-5)
