"""Known answers for low-quality pages found from the data (lvmqa.lowquality)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvmqa.checks import Session
from lvmqa.io import open_dataset
from lvmqa.lowquality import (
    MIN_SCORE,
    Reference,
    analyse,
    article_statistics,
    flag_threshold,
    flagged_articles,
    flagged_row_mask,
    is_bullet,
    is_fragment,
    prefix_key,
    significant_count,
    tail_scale,
)
from lvmqa.registry import load_registry
from lvmqa.texts import check_text_quality

C, D = 3, 24
WORDS = [
    "river",
    "valley",
    "mountain",
    "archive",
    "method",
    "parser",
    "module",
    "kernel",
    "network",
    "harbour",
    "signal",
    "library",
    "function",
    "option",
    "value",
    "record",
    "system",
    "village",
    "empire",
    "reactor",
]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def write_sequences(
    path: Path,
    targets: np.ndarray,
    articles: list[int],
    chunks: list[int],
    texts: list[str] | None,
    titles: list[str] | None = None,
) -> Path:
    n = len(targets)
    rng = np.random.default_rng(0)
    meta = np.empty(n, dtype=object)
    for i in range(n):
        record: dict[str, Any] = {"article_index": articles[i], "target_chunk_index": chunks[i]}
        if titles is not None:
            record["article_title"] = titles[i]
        meta[i] = record
    members: dict[str, Any] = {
        "context_sequences": unit(rng.standard_normal((n, C, targets.shape[1]))),
        "target_vectors": targets.astype(np.float32),
        "metadata": meta,
    }
    if texts is not None:
        members["target_texts"] = np.array(texts, dtype=object)
    np.savez(path, **members)
    return path


# --- text shape --------------------------------------------------------------------------------


def test_text_shape_known_answers() -> None:
    assert is_fragment("Installation")
    assert is_fragment("four words only here.")  # under five words
    assert is_fragment("a long line without any closing punctuation at all")
    assert not is_fragment("The parser reads the file and returns a list of strings.")
    assert is_bullet("- Fixed a crash")
    assert is_bullet("  * item")
    assert is_bullet("12. Twelfth entry")
    assert is_bullet("b) second option")
    assert not is_bullet("-5 degrees is cold.")
    assert not is_bullet("Bullets are listed below.")
    assert prefix_key("Fixed: the crash, again") == "fixed the"
    assert prefix_key("Alone") == ""


# --- lag statistics on hand-built vectors ------------------------------------------------------


def test_article_statistics_on_hand_built_vectors(tmp_path: Path) -> None:
    e = np.eye(4, dtype=np.float32)
    diagonal = unit(e[0] + e[1])
    # article 7: chunks 0..3 = e0, e0, e1, (e0+e1)/sqrt2, stored out of order with a
    # duplicate of chunk 1; article 9: chunks 0, 1 = e2, e3
    rows = [
        (7, 2, e[1]),
        (9, 1, e[3]),
        (7, 0, e[0]),
        (7, 3, diagonal),
        (9, 0, e[2]),
        (7, 1, e[0]),
        (7, 1, e[0]),
    ]
    targets = np.stack([v for _, _, v in rows])
    texts = ["- item one", "Fine prose sentence for the test.", "x", "y", "z", "w", "w"]
    path = write_sequences(
        tmp_path / "s.npz", targets, [a for a, _, _ in rows], [c for _, c, _ in rows], texts
    )
    ds = open_dataset(path)
    stats = article_statistics(ds, ds.meta, texts)
    assert stats is not None
    a, b = stats.loc[7], stats.loc[9]
    s = 1 / math.sqrt(2)
    # lag 1: cos(e0,e0)=1, cos(e0,e1)=0, cos(e1,diag)=s ; lag 2: 0, 1*s=s ; lag 3: s
    assert a["chunks"] == 4 and a["n_cos1"] == 3  # the duplicate chunk counts once
    assert a["coherence"] == pytest.approx((1 + 0 + s) / 3, abs=1e-6)
    assert a["n_far"] == 3
    assert a["lag_decay"] == pytest.approx((1 + s) / 3 - (0 + s + s) / 3, abs=1e-6)
    assert b["coherence"] == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(b["lag_decay"])  # two chunks: no pair two apart
    # text shape of article 7 in chunk order: "x", "w", "- item one", "y"
    assert a["bullet_share"] == pytest.approx(0.25)
    assert a["fragment_share"] == pytest.approx(1.0)
    assert a["log_median_chars"] == pytest.approx(math.log1p(1.0))


# --- the threshold -----------------------------------------------------------------------------


def test_threshold_known_answers() -> None:
    scores = np.array([0.0, 1.0, 1.0, 2.0, 3.0])  # median 1, upper quartile 2
    ref = Reference("self", {}, scores)
    beta = 1 / math.log(2)
    assert tail_scale(scores) == pytest.approx(beta)
    # 10 articles, budget 0.1: p = 0.01, threshold = median + beta * ln(0.5 / p)
    expected = 1 + beta * math.log(50)
    assert flag_threshold(ref, 10, budget=0.1, empirical=False) == pytest.approx(expected)
    # a clean baseline's maximum, extrapolated, also bounds it: p * 6 < 1
    extrapolated = 3 + beta * math.log(1 / (0.01 * 6))
    assert flag_threshold(ref, 10, budget=0.1, empirical=True) == pytest.approx(
        max(expected, extrapolated)
    )
    tight = Reference("self", {}, np.zeros(5))
    assert flag_threshold(tight, 10, empirical=False) == MIN_SCORE
    assert flag_threshold(ref, 0, empirical=False) == math.inf


def test_significant_count_is_the_poisson_tail() -> None:
    assert significant_count(0.1, 0.01) == 2  # P(X >= 2) = 0.0047
    assert significant_count(0.5, 0.01) == 4  # P(X >= 3) = 0.014, P(X >= 4) = 0.0018
    assert significant_count(0.1, 0.1) == 1


@given(st.floats(0.01, 3.0), st.integers(1, 10_000), st.integers(1, 10_000))
def test_threshold_grows_with_the_number_of_articles_tested(
    budget: float, n: int, extra: int
) -> None:
    scores = np.random.default_rng(n).exponential(size=50)
    ref = Reference("baseline b", {}, scores)
    for empirical in (False, True):
        low = flag_threshold(ref, n, budget=budget, empirical=empirical)
        high = flag_threshold(ref, n + extra, budget=budget, empirical=empirical)
        assert MIN_SCORE <= low <= high


# --- end to end: a baseline, a clean set and a diluted set --------------------------------------


def prose(rng: np.random.Generator) -> str:
    words = rng.choice(WORDS, size=int(rng.integers(8, 20)))
    return f"{words[0].capitalize()} {' '.join(words[1:])}."


def corpus(
    rng: np.random.Generator, n_articles: int, chunks: int, *, first_id: int
) -> tuple[list[np.ndarray], list[int], list[int], list[str], list[str]]:
    """Prose articles: random walks on the sphere, sentences of varied words."""
    vectors, articles, positions, texts, titles = [], [], [], [], []
    for a in range(first_id, first_id + n_articles):
        v = unit(rng.standard_normal(D))
        for c in range(chunks):
            v = unit(v + 0.45 * rng.standard_normal(D) / math.sqrt(D) * 3)
            vectors.append(v)
            articles.append(a)
            positions.append(c)
            texts.append(prose(rng))
            titles.append(f"Topic {a}")
    return vectors, articles, positions, texts, titles


def changelogs(
    rng: np.random.Generator, n_articles: int, chunks: int, *, first_id: int
) -> tuple[list[np.ndarray], list[int], list[int], list[str], list[str]]:
    """Changelog pages: unrelated entries (independent vectors), short bullet lines."""
    vectors, articles, positions, texts, titles = [], [], [], [], []
    for a in range(first_id, first_id + n_articles):
        for c in range(chunks):
            vectors.append(unit(rng.standard_normal(D)))
            articles.append(a)
            positions.append(c)
            texts.append(f"- Fixed bug {int(rng.integers(100, 999))}")
            titles.append(f"Release notes {a}")
    return vectors, articles, positions, texts, titles


def write_corpus(path: Path, *parts: tuple[list[Any], ...], shuffle_seed: int = 1) -> Path:
    vectors, articles, chunks, texts, titles = ([x for p in parts for x in p[i]] for i in range(5))
    order = np.random.default_rng(shuffle_seed).permutation(len(vectors))
    return write_sequences(
        path,
        np.stack(vectors)[order],
        [articles[i] for i in order],
        [chunks[i] for i in order],
        [texts[i] for i in order],
        [titles[i] for i in order],
    )


def session(tmp_path: Path) -> Session:
    rng = np.random.default_rng(3)
    write_corpus(tmp_path / "base.npz", corpus(rng, 40, 12, first_id=0))
    write_corpus(tmp_path / "clean.npz", corpus(rng, 30, 12, first_id=100))
    write_corpus(
        tmp_path / "diluted.npz",
        corpus(rng, 30, 12, first_id=200),
        changelogs(rng, 5, 12, first_id=900),
    )
    (tmp_path / "lvmqa.toml").write_text(
        '[datasets.base]\npath = "base.npz"\n'
        '[datasets.clean]\npath = "clean.npz"\nbaseline = "base"\n'
        '[datasets.diluted]\npath = "diluted.npz"\nbaseline = "base"\n'
        '[datasets.diluted-alone]\npath = "diluted.npz"\n',
        encoding="utf-8",
    )
    return Session(load_registry(tmp_path / "lvmqa.toml"))


def test_changelog_pages_are_found_against_the_baseline(tmp_path: Path) -> None:
    s = session(tmp_path)
    ctx = s.context("diluted")
    analysis = analyse(ctx)
    assert analysis.reference == "baseline base"
    assert sorted(analysis.flagged) == [900, 901, 902, 903, 904]
    mask = flagged_row_mask(ctx)
    assert mask.tolist() == (ctx.dataset.meta["article"] >= 900).tolist()
    pages = flagged_articles(ctx)
    assert {p["title"] for p in pages} == {f"Release notes {a}" for a in range(900, 905)}
    assert all(p["reason"] == "low_quality" and p["rows"] == 12 for p in pages)

    result = check_text_quality(ctx)
    gate = next(g for g in result.gates if g.name == "low_quality_significant_row_share")
    assert gate.kind == "relative" and not gate.passed
    assert result.metrics["low_quality_article_count"] == 5
    assert result.metrics["low_quality_row_share"] == pytest.approx(60 / 420)
    listed = result.details["low_quality_articles"][0]
    assert listed["title"].startswith("Release notes") and listed["examples"][0].startswith("- ")
    assert listed["statistics"]["bullet_share"]["value"] == 1.0
    assert "low-quality pages" in result.message


def test_a_clean_set_flags_nothing_with_or_without_a_baseline(tmp_path: Path) -> None:
    s = session(tmp_path)
    for name in ("clean", "base"):
        ctx = s.context(name)
        assert analyse(ctx).flagged == []
        result = check_text_quality(ctx)
        assert result.status == "passed", result.failed_gates
        assert result.metrics["low_quality_row_share"] == 0.0
    assert analyse(s.context("base")).reference == "self"


def test_without_a_baseline_the_dataset_is_its_own_reference(tmp_path: Path) -> None:
    ctx = session(tmp_path).context("diluted-alone")
    analysis = analyse(ctx)
    assert analysis.reference == "self"
    assert sorted(analysis.flagged) == [900, 901, 902, 903, 904]  # 1 in 7 articles
    gate = next(
        g for g in check_text_quality(ctx).gates if g.name == "low_quality_significant_row_share"
    )
    assert gate.kind == "statistical" and not gate.passed


def test_without_article_ids_nothing_is_scored_and_the_reason_is_given(tmp_path: Path) -> None:
    n = 8
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        context_sequences=unit(rng.standard_normal((n, C, D))),
        target_vectors=unit(rng.standard_normal((n, D))),
        target_texts=np.array(
            ["List of rivers"] + [prose(rng) for _ in range(n - 1)], dtype=object
        ),
    )
    (tmp_path / "lvmqa.toml").write_text('[datasets.d]\npath = "d.npz"\n', encoding="utf-8")
    ctx = Session(load_registry(tmp_path / "lvmqa.toml")).context("d")
    assert not analyse(ctx).available
    assert flagged_row_mask(ctx).tolist() == [True] + [False] * (n - 1)  # the blocklist still
    result = check_text_quality(ctx)
    assert "low_quality_significant_row_share" in result.details["ungated_metrics"]
    assert "article ids" in result.details["ungated_metrics"]["low_quality_significant_row_share"]
    assert "low-quality pages not scored: no article ids" in result.message


def test_a_list_heading_first_marks_the_page_a_heading_inside_marks_the_row(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(5)
    texts = ["List of rivers", prose(rng), prose(rng), prose(rng), "List of options", prose(rng)]
    path = write_sequences(
        tmp_path / "d.npz",
        unit(rng.standard_normal((6, D))),
        [1, 1, 1, 2, 2, 2],
        [0, 1, 2, 0, 1, 2],
        texts,
    )
    (tmp_path / "lvmqa.toml").write_text(f'[datasets.d]\npath = "{path.name}"\n', encoding="utf-8")
    ctx = Session(load_registry(tmp_path / "lvmqa.toml")).context("d")
    assert flagged_row_mask(ctx).tolist() == [True, True, True, False, True, False]
    reasons = {p["article"]: p["reason"] for p in flagged_articles(ctx)}
    assert reasons == {1: "blocklist", 2: "blocklist"}


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_statistics_do_not_depend_on_the_row_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    parts = corpus(rng, 3, 6, first_id=0), changelogs(rng, 1, 5, first_id=50)
    with tempfile.TemporaryDirectory() as folder:
        frames = []
        for shuffle in (1, 2):
            ds = open_dataset(
                write_corpus(Path(folder) / f"{shuffle}.npz", *parts, shuffle_seed=shuffle)
            )
            texts = [str(t) for t in ds.target_texts] if ds.target_texts is not None else None
            stats = article_statistics(ds, ds.meta, texts)
            assert stats is not None
            frames.append(stats.sort_index())
        pd.testing.assert_frame_equal(frames[0], frames[1], check_exact=False, atol=1e-6)


def test_filter_drops_the_flagged_pages(tmp_path: Path) -> None:
    from lvmqa.filtering import PAGE_REASON, filter_dataset
    from lvmqa.lowquality import low_quality_row_mask

    ctx = session(tmp_path).context("diluted")
    manifest = filter_dataset(
        ctx.dataset.path,
        tmp_path / "out" / "filtered",
        min_coherence=None,
        drop_rows=low_quality_row_mask(ctx),
    )
    assert manifest.dropped_by_primary_reason[PAGE_REASON] == 60
    kept = open_dataset(manifest.paths.dataset)
    assert kept.n == 360 and bool((kept.meta["article"] < 900).all())
