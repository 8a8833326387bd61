"""Known answers for ``split_leakage``: planted shared articles, exact and near duplicates."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
        "val_article_overlap_confirmed_count",
        "val_shared_exact_duplicate_same_article_count",
        "val_shared_near_duplicate_same_article_count",
        "val_shared_exact_duplicate_share",
        "val_shared_near_duplicate_share",
    }
    assert m["val_shared_exact_duplicate_same_article_count"] == 1  # row 2, article 8
    # article 8 shares a target with training; article 9 only shares its id: a warning
    assert m["val_article_overlap_confirmed_count"] == 1
    assert m["val_article_overlap_unconfirmed_count"] == 1
    assert m["val_article_id_collisions_unconfirmed"] == 1
    assert result.details["val_confirmed_shared_articles"] == [8]
    assert all(
        g.kind == ("absolute" if g.name.endswith("share") else "structural") for g in result.gates
    )
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


# --- a shared title or id is evidence, not a leak: content must confirm it ---------------------


def write_doc_split(
    path: Path,
    targets: np.ndarray,
    articles: list[int],
    titles: list[str],
    texts: list[str],
) -> Path:
    meta = np.empty(len(targets), dtype=object)
    for i in range(len(targets)):
        meta[i] = {
            "article_index": articles[i],
            "target_chunk_index": i,
            "article_title": titles[i],
        }
    np.savez(
        path,
        context_sequences=np.repeat(targets[:, None], 5, axis=1),
        target_vectors=targets,
        target_texts=np.array(texts, dtype=object),
        metadata=meta,
    )
    return path


def sentences(prefix: str, n: int) -> list[str]:
    return [f"{prefix} sentence number {i} explains one more detail of it." for i in range(n)]


def docs_session(tmp_path: Path) -> Session:
    (tmp_path / "lvmqa.toml").write_text(
        '[datasets.train]\npath = "train.npz"\nood = "ood"\n[datasets.ood]\npath = "ood.npz"\n',
        encoding="utf-8",
    )
    return Session(load_registry(tmp_path / "lvmqa.toml"))


def test_two_documents_titled_introduction_are_not_a_leak(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    # both files number their documents from 0 and both have an "Introduction"
    write_doc_split(
        tmp_path / "train.npz",
        unit_rows(rng, 8),
        [0] * 4 + [1] * 4,
        ["Introduction"] * 4 + ["Networking"] * 4,
        sentences("Train intro", 4) + sentences("Networking", 4),
    )
    write_doc_split(
        tmp_path / "ood.npz",
        unit_rows(rng, 8),
        [0] * 4 + [1] * 4,
        ["Introduction"] * 4 + ["Printing"] * 4,
        sentences("OOD intro", 4) + sentences("Printing", 4),
    )
    result = check_split_leakage(docs_session(tmp_path).context("train"))
    m = result.metrics
    assert result.status == "passed", result.failed_gates
    assert m["ood_article_key"] == "article"  # ids win ties now
    assert m["ood_article_overlap_count"] == 2  # ids 0 and 1 collide
    assert m["ood_article_overlap_confirmed_count"] == 0
    assert m["ood_article_overlap_unconfirmed_count"] == 2
    assert m["ood_title_collisions_unconfirmed"] == 1  # "Introduction"
    assert m["ood_article_id_collisions_unconfirmed"] == 2
    assert m["ood_shared_text_count"] == 0


def test_an_identical_text_confirms_a_shared_title(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    train_texts = sentences("Intro", 4) + sentences("Networking", 4)
    write_doc_split(
        tmp_path / "train.npz",
        unit_rows(rng, 8),
        [0] * 4 + [1] * 4,
        ["Introduction"] * 4 + ["Networking"] * 4,
        train_texts,
    )
    # the same page under another id, re-encoded (different vectors): its texts give it away
    write_doc_split(
        tmp_path / "ood.npz",
        unit_rows(rng, 4),
        [70] * 4,
        ["Introduction"] * 4,
        train_texts[:4],
    )
    result = check_split_leakage(docs_session(tmp_path).context("train"))
    m = result.metrics
    assert m["ood_shared_text_count"] == 4
    # no id is shared, yet the page is: the texts agree and so do the titles
    assert m["ood_article_overlap_count"] == 0
    assert m["ood_article_overlap_confirmed_count"] == 1
    assert m["ood_title_collisions_unconfirmed"] == 0  # the title is confirmed by its texts
    assert m["ood_shared_text_same_article_count"] == 4  # same title on both sides
    assert "ood_shared_text_examples" in result.details
    assert result.status == "failed"


def test_a_duplicate_target_confirms_under_either_identity(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    train = unit_rows(rng, 8)
    write_doc_split(
        tmp_path / "train.npz",
        train,
        [0] * 4 + [1] * 4,
        ["Alpha"] * 4 + ["Beta"] * 4,
        sentences("Alpha", 4) + sentences("Beta", 4),
    )
    ood = unit_rows(rng, 4)
    ood[2] = train[6]  # Beta's chunk, in a file that numbers Beta as article 0
    write_doc_split(tmp_path / "ood.npz", ood, [0] * 4, ["Beta"] * 4, sentences("Other", 4))
    result = check_split_leakage(docs_session(tmp_path).context("train"))
    m = result.metrics
    # ids agree on 0 (Alpha vs Beta: a collision); the titles agree on Beta (a leak)
    assert m["ood_shared_exact_duplicate_same_article_count"] == 1
    assert m["ood_title_collisions_unconfirmed"] == 0
    assert m["ood_article_overlap_confirmed_count"] == 1
    assert result.status == "failed"


@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.integers(0, 5), min_size=4, max_size=12),
    st.lists(st.sampled_from("ABC"), min_size=12, max_size=12),
)
def test_shared_keys_without_shared_content_never_fail(ids: list[int], titles: list[str]) -> None:
    rng = np.random.default_rng(len(ids))
    n = len(ids)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_doc_split(
            root / "train.npz",
            unit_rows(rng, 12),
            sorted(ids * 3)[:12] if n * 3 >= 12 else [0] * 12,
            titles,
            sentences("Train", 12),
        )
        write_doc_split(root / "ood.npz", unit_rows(rng, n), ids, titles[:n], sentences("Ood", n))
        result = check_split_leakage(docs_session(root).context("train"))
        assert result.status == "passed", result.failed_gates
        assert result.metrics["ood_article_overlap_confirmed_count"] == 0
