"""The pandera schema of the per-row metadata: known violations, one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lvmqa.errors import DatasetFormatError
from lvmqa.io import open_dataset
from tests.conftest import unit_rows


def bank(path: Path, articles: list[int], chunks: list[int]) -> Path:
    n = len(articles)
    np.savez(path, vectors=unit_rows(np.random.default_rng(0), n, 8),
             article_indices=np.array(articles, dtype=np.int32),
             chunk_indices=np.array(chunks, dtype=np.int32),
             concept_texts=np.array([f"t{i}" for i in range(n)], dtype=object))
    return path


def test_a_valid_bank_passes(tmp_path: Path) -> None:
    ds = open_dataset(bank(tmp_path / "ok.npz", [0] * 8, list(range(8))))
    assert ds.n == 3


def test_negative_article_index_is_refused_with_the_row(tmp_path: Path) -> None:
    path = bank(tmp_path / "neg.npz", [0] * 7 + [-3], list(range(8)))
    with pytest.raises(DatasetFormatError) as info:
        open_dataset(path)
    message = str(info.value)
    assert "article_indices" in message and "-3 at row 7" in message and "\n" not in message


def test_duplicate_keys_in_a_bank_are_refused(tmp_path: Path) -> None:
    path = bank(tmp_path / "dup.npz", [0] * 8, [0, 1, 2, 3, 4, 5, 5, 6])
    with pytest.raises(DatasetFormatError, match=r"duplicate \(article, chunk\) key.*row 6"):
        open_dataset(path)


def test_negative_chunk_in_per_sequence_metadata_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    meta = np.array([{"article_index": 0, "target_chunk_index": -1 if i == 2 else i}
                     for i in range(4)], dtype=object)
    np.savez(tmp_path / "seq.npz", context_sequences=unit_rows(rng, 20, 8).reshape(4, 5, 8),
             target_vectors=unit_rows(rng, 4, 8), metadata=meta)
    with pytest.raises(DatasetFormatError, match=r"metadata\.chunk.*-1 at row 2"):
        open_dataset(tmp_path / "seq.npz")
