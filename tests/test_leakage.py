"""Known answers for ``split_leakage``: planted shared articles, exact and near duplicates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lvmqa.checks import Session
from lvmqa.errors import CheckSkipped
from lvmqa.leakage import (
    article_overlap,
    check_split_leakage,
    nearest_cosines,
    row_digests,
    sample_rows,
)
from lvmqa.registry import load_registry

D = 32


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_split(path: Path, targets: np.ndarray, *, articles: list[int] | None = None) -> Path:
    n = len(targets)
    members: dict[str, Any] = {
        "context_sequences": np.repeat(targets[:, None], 5, axis=1),
        "target_vectors": targets,
        "target_texts": np.array([f"text {i}" for i in range(n)], dtype=object),
    }
    if articles is not None:
        meta = np.empty(n, dtype=object)
        for i in range(n):
            meta[i] = {"article_index": articles[i], "target_chunk_index": i}
        members["metadata"] = meta
    np.savez(path, **members)
    return path


def registry(tmp_path: Path, splits: str, train_name: str = "train") -> Session:
    extra = (
        f'[datasets.{train_name}]\npath = "{train_name}.npz"\n{splits}\n'
        '[datasets.quoting]\npath = "quoting.npz"\n'
        if train_name != "train"
        else ""
    )
    train_splits = "" if extra else splits
    (tmp_path / "lvmqa.toml").write_text(
        f'[datasets.train]\npath = "train.npz"\n{train_splits}\n'
        '[datasets.val]\npath = "val.npz"\n[datasets.ood]\npath = "ood.npz"\n' + extra,
        encoding="utf-8",
    )
    return Session(load_registry(tmp_path / "lvmqa.toml"))


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """train: articles 0-9 (4 rows each); val: articles 8-13, with 3 rows copied from train
    exactly (2 from other articles, 1 from shared article 8) and 1 perturbed to cosine
    ~0.9995; ood: articles 20-24, disjoint and fresh."""
    rng = np.random.default_rng(7)
    train = unit_rows(rng, 40)
    write_split(tmp_path / "train.npz", train, articles=list(np.repeat(np.arange(10), 4)))
    val = unit_rows(rng, 24)
    val[0] = train[5]
    val[1] = train[17]
    val[2] = train[33]  # article 8, which val shares: a duplicate inside a shared article
    nudged = train[9] + 0.03 * unit_rows(rng, 1)[0]
    val[3] = nudged / np.linalg.norm(nudged)
    write_split(tmp_path / "val.npz", val, articles=list(np.repeat(np.arange(8, 14), 4)))
    write_split(
        tmp_path / "ood.npz", unit_rows(rng, 20), articles=list(np.repeat(range(20, 25), 4))
    )
    return tmp_path


def test_planted_leaks_are_counted_exactly(planted: Path) -> None:
    session = registry(planted, 'val = "val"\nood = "ood"')
    result = check_split_leakage(session.context("train"))
    m = result.metrics
    assert m["val_article_key"] == "article"
    assert m["val_article_count"] == 6
    assert m["val_article_overlap_count"] == 2  # articles 8 and 9
    assert m["val_article_overlap_share"] == pytest.approx(2 / 6)
    assert m["val_row_overlap_share"] == pytest.approx(8 / 24)
    assert m["val_shared_exact_duplicate_count"] == 3
    assert m["val_shared_exact_duplicate_cross_article_count"] == 2  # rows 0 and 1
    assert m["val_shared_near_duplicate_count"] == 4  # 3 exact + 1 nudged
    assert m["val_shared_near_duplicate_cross_article_count"] == 3
    example = result.details["val_shared_duplicate_examples"][0]
    assert example["split"] == {"row": 0, "article": 8, "text": "text 0"}
    assert example["train"] == {"row": 5, "article": 1, "text": "text 5"}
    assert m["val_near_duplicate_sampled_rows"] == 24
    assert m["ood_article_overlap_count"] == 0
    assert m["ood_shared_exact_duplicate_count"] == 0
    assert m["ood_shared_near_duplicate_count"] == 0
    assert result.status == "failed"
    failed = {g.name for g in result.gates if not g.passed}
    assert failed == {
        "val_article_overlap_count",
        "val_shared_exact_duplicate_same_article_count",
        "val_shared_near_duplicate_same_article_count",
        "val_shared_exact_duplicate_share",
        "val_shared_near_duplicate_share",
    }
    assert m["val_shared_exact_duplicate_same_article_count"] == 1  # row 2, article 8
    assert all(g.kind == ("absolute" if g.name.endswith("share") else "structural")
               for g in result.gates)
    assert "LEAKAGE" in result.message


def test_disjoint_splits_pass(planted: Path) -> None:
    session = registry(planted, 'ood = "ood"')
    result = check_split_leakage(session.context("train"))
    assert result.status == "passed", result.failed_gates


def test_quoted_sentences_in_other_articles_are_reported_not_leakage(planted: Path) -> None:
    """Wikipedia articles quote each other: 1 identical sentence in 500 is not leakage."""
    rng = np.random.default_rng(3)
    train = unit_rows(rng, 400)
    write_split(planted / "big.npz", train, articles=list(np.repeat(np.arange(100), 4)))
    ood = unit_rows(rng, 400)
    ood[7] = train[11]  # a quotation: same sentence, different article
    write_split(planted / "quoting.npz", ood, articles=list(np.repeat(np.arange(200, 300), 4)))
    session = registry(planted, 'ood = "quoting"', train_name="big")
    result = check_split_leakage(session.context("big"))
    assert result.metrics["ood_shared_exact_duplicate_count"] == 1
    assert result.metrics["ood_shared_exact_duplicate_cross_article_count"] == 1
    assert result.status == "passed", result.failed_gates
    assert result.metrics["splits"] == ["ood"]


def test_skips_without_splits(planted: Path) -> None:
    session = registry(planted, "")
    with pytest.raises(CheckSkipped, match="no val/ood splits"):
        check_split_leakage(session.context("train"))


def write_titled_bank(path: Path, titles: list[str], rng: np.random.Generator) -> Path:
    """A bank with titles but no article/chunk ids: one chain in file order."""
    np.savez(
        path, vectors=unit_rows(rng, len(titles)), article_titles=np.array(titles, dtype=object)
    )
    return path


def test_banks_without_ids_are_compared_by_title(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    # context 5: the windows' targets are rows 5..11 -> train {A, B x6}, val {B, C x6}
    write_titled_bank(tmp_path / "train.npz", ["A"] * 6 + ["B"] * 6, rng)
    write_titled_bank(tmp_path / "val.npz", ["B"] * 6 + ["C"] * 6, rng)
    write_split(tmp_path / "ood.npz", unit_rows(rng, 6))
    result = check_split_leakage(registry(tmp_path, 'val = "val"').context("train"))
    m = result.metrics
    assert m["val_article_key"] == "title"
    assert (m["val_article_count"], m["val_article_overlap_count"]) == (2, 1)
    assert m["val_row_overlap_share"] == pytest.approx(1 / 7)
    assert m["val_shared_exact_duplicate_count"] == 0
    assert result.details["val_shared_articles"] == ["B"]


def test_overlap_by_title_when_ids_are_missing() -> None:
    overlap = article_overlap(["A", "A", "B", None], ["B", "C", "C", None], "title")
    assert (overlap.split_articles, overlap.shared_articles, overlap.split_rows_in_shared) == (
        2,
        1,
        1,
    )
    assert overlap.article_share == 0.5
    assert overlap.row_share == 0.25


def test_digests_fold_signed_zero_and_cast_to_float32() -> None:
    a = np.array([[0.0, 1.5]], dtype=np.float64)
    b = np.array([[-0.0, 1.5]], dtype=np.float32)
    assert row_digests(a) == row_digests(b)
    assert row_digests(a) != row_digests(np.array([[0.0, 1.5000001]], dtype=np.float32))


def test_nearest_cosines_with_real_faiss() -> None:
    base = np.eye(4, dtype=np.float32)
    queries = np.array([[2.0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=np.float32)
    sims, ids = nearest_cosines(iter([base[:2], base[2:]]), queries, 4)
    np.testing.assert_allclose(sims, [1.0, np.sqrt(0.5), 0.0], atol=1e-6)
    assert ids[:2].tolist() == [0, 1] or ids[:2].tolist() == [0, 2]


def test_sample_rows_is_seeded_and_complete_when_small() -> None:
    assert sample_rows(5, 10, 0).tolist() == [0, 1, 2, 3, 4]
    assert sample_rows(1000, 10, 3).tolist() == sample_rows(1000, 10, 3).tolist()
    assert sample_rows(1000, 10, 3).tolist() != sample_rows(1000, 10, 4).tolist()
