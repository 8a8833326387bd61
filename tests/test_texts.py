"""Known answers for ``text_quality`` on hand-built texts, including hostile values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from lvmqa.checks import Session
from lvmqa.errors import LvmqaError
from lvmqa.registry import load_registry
from lvmqa.texts import (
    blocklist_row_mask,
    check_text_quality,
    normalise_texts,
    text_quality_report,
)

PROSE = "A sentence of ordinary encyclopedic prose about rivers."
MEGABYTE = "x" * 1_000_000


def meta_frame(articles: list[Any], chunks: list[Any], titles: list[Any]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "article": pd.array(articles, dtype="Int64"),
            "chunk": pd.array(chunks, dtype="Int64"),
            "title": pd.array(titles, dtype="string"),
        }
    )


def test_hostile_values_are_normalised_and_counted() -> None:
    values = np.array(
        [PROSE, None, b"caf\xc3\xa9 bytes", 42, float("nan"), MEGABYTE, ""], dtype=object
    )
    out = normalise_texts(values)
    assert out.texts[:4] == [PROSE, "", "café bytes", "42"]
    assert out.non_string.tolist() == [False, True, True, True, True, False, False]
    assert out.missing.tolist() == [False, True, False, False, True, False, False]


def test_counts_on_hand_built_texts() -> None:
    texts = np.array(
        [
            PROSE,
            "",
            "   ",
            "short",
            MEGABYTE,
            None,
            b"bytes text is fine",
            "List of rivers",
            PROSE + " Category: Rivers",
            PROSE,
        ],
        dtype=object,
    )
    report = text_quality_report(texts, min_text_chars=8, max_text_chars=500)
    m = report.metrics
    assert m["n_texts"] == 10
    assert m["empty_count"] == 3  # "", whitespace, None
    assert m["empty_share"] == pytest.approx(0.3)
    assert m["too_short_count"] == 1  # "short"
    assert m["too_long_count"] == 1
    assert m["text_chars_max"] == 1_000_000
    assert m["non_string_count"] == 2  # None and bytes
    # the heading "List of rivers" is a list page; "Category:" inside prose is not
    assert m["blocklist_text_count"] == 1
    assert m["blocklist_count"] == 1
    assert m["blocklist_share"] == pytest.approx(0.1)
    # no metadata: keys and per-article measures are unknown, not zero
    assert m["duplicate_key_count"] is None
    assert m["duplicate_text_in_article_count"] is None
    assert m["short_text_article_share"] is None
    # the megabyte text is previewed, never copied whole into the report
    (example,) = report.details["too_long_examples"]
    assert example["row"] == 4
    assert len(example["text"]) < 200


def test_titles_duplicates_and_list_like_articles() -> None:
    texts = [PROSE, PROSE + " 2", PROSE, "Ann", "Bob", "Cy", PROSE + " 3", PROSE + " 4"]
    meta = meta_frame(
        articles=[1, 1, 1, 2, 2, 2, 3, 3],
        chunks=[0, 1, 1, 0, 1, 2, 0, 1],  # (1, 1) twice
        titles=[
            "Rivers",
            "Rivers",
            "Rivers",
            "Smith (disambiguation)",
            "Smith (disambiguation)",
            "Smith (disambiguation)",
            "List of lakes",
            "List of lakes",
        ],
    )
    report = text_quality_report(np.array(texts, dtype=object), meta)
    m = report.metrics
    assert m["duplicate_key_count"] == 1
    assert m["duplicate_text_in_article_count"] == 1  # row 2 repeats row 0 in article 1
    assert report.details["duplicate_text_examples"][0]["first_row"] == 0
    assert m["blocklist_title_count"] == 5
    assert m["blocklist_text_count"] == 0
    assert m["blocklist_articles"] == 2
    titles = {a["title"] for a in report.details["blocklist_articles"]}
    assert titles == {"Smith (disambiguation)", "List of lakes"}
    assert m["short_text_article_share"] == pytest.approx(3 / 8)  # article 2's rows


def test_blocklist_is_case_insensitive_and_can_be_replaced_or_disabled() -> None:
    texts = ["LIST OF rivers", "disambiguation page", PROSE, "Page index"]
    assert blocklist_row_mask(texts, None).tolist() == [True, True, False, False]
    assert blocklist_row_mask(texts, None, r"page").tolist() == [False, False, False, True]
    assert blocklist_row_mask(texts, None, r".*page").tolist() == [False, True, False, True]
    assert blocklist_row_mask(texts, None, None).tolist() == [False, False, False, False]
    with pytest.raises(LvmqaError, match="blocklist"):
        blocklist_row_mask(texts, None, "(unclosed")


# --- the check through a real registry and session ---------------------------------------------


def make_session(tmp_path: Path, texts: list[Any] | None, thresholds: str = "") -> Session:
    n = len(texts) if texts is not None else 4
    rng = np.random.default_rng(0)
    members: dict[str, Any] = {
        "context_sequences": rng.normal(size=(n, 5, 8)).astype(np.float32),
        "target_vectors": rng.normal(size=(n, 8)).astype(np.float32),
    }
    if texts is not None:
        members["target_texts"] = np.array([*texts, None], dtype=object)[:-1]
    meta = np.empty(n, dtype=object)
    for i in range(n):
        meta[i] = {"article_index": i // 2, "target_chunk_index": i % 2}
    members["metadata"] = meta
    np.savez(tmp_path / "d.npz", **members)
    (tmp_path / "lvmqa.toml").write_text(
        f'[datasets.d]\npath = "d.npz"\n{thresholds}', encoding="utf-8"
    )
    return Session(load_registry(tmp_path / "lvmqa.toml"))


def test_check_passes_on_clean_prose(tmp_path: Path) -> None:
    session = make_session(tmp_path, [f"{PROSE} number {i}." for i in range(6)])
    result = check_text_quality(session.context("d"))
    assert result.status == "passed", result.failed_gates
    assert {g.name for g in result.gates} == {
        "blocklist_share",
        "empty_share",
        "too_short_share",
        "too_long_share",
        "duplicate_key_count",
        "low_quality_significant_row_share",  # pages found from the data (article ids known)
    }
    kinds = {g.name: g.kind for g in result.gates}
    assert kinds.pop("low_quality_significant_row_share") == "statistical"  # no baseline
    assert set(kinds.values()) == {"absolute"}


def test_check_fails_on_blocklisted_and_empty_texts(tmp_path: Path) -> None:
    texts = [PROSE, "List of rivers", "", PROSE + " b", None, PROSE + " c"]
    result = check_text_quality(make_session(tmp_path, texts).context("d"))
    assert result.status == "failed"
    failed = {g.name for g in result.gates if not g.passed}
    assert failed == {"blocklist_share", "empty_share"}
    assert result.metrics["empty_count"] == 2
    assert "blocklist" in result.message


def test_registry_thresholds_and_blocklist_override(tmp_path: Path) -> None:
    texts = [PROSE, "List of rivers", PROSE + " b", PROSE + " c"]
    session = make_session(
        tmp_path, texts, 'blocklist = "lakes"\n[datasets.d.thresholds]\nblocklist_share = 0.5\n'
    )
    result = check_text_quality(session.context("d"))
    gate = next(g for g in result.gates if g.name == "blocklist_share")
    assert gate.kind == "registry"
    assert gate.threshold == 0.5
    assert result.metrics["blocklist_count"] == 0  # "lakes" replaced the default pattern


def test_check_skips_without_texts(tmp_path: Path) -> None:
    session = make_session(tmp_path, None)
    from lvmqa.errors import CheckSkipped

    with pytest.raises(CheckSkipped, match="no target texts"):
        check_text_quality(session.context("d"))


def test_titles_and_keys_come_from_the_source_bank(tmp_path: Path) -> None:
    from lvmqa.windows import build_sequences

    rows = 16
    article = np.arange(rows) % 2  # two articles stored interleaved
    np.savez(
        tmp_path / "bank.npz",
        vectors=np.random.default_rng(0).normal(size=(rows, 8)).astype(np.float32),
        concept_texts=np.array([f"{PROSE} {i}" for i in range(rows)], dtype=object),
        cpe_ids=np.array([f"id-{i}" for i in range(rows)], dtype=object),
        article_indices=article.astype(np.int32),
        chunk_indices=(np.arange(rows) // 2).astype(np.int32),
        article_titles=np.array(["Rivers", "Lakes (disambiguation)"], dtype=object)[article],
    )
    build_sequences(
        tmp_path / "bank.npz", tmp_path / "seq.npz", windows="file_order", layout="origin-790k"
    )
    (tmp_path / "lvmqa.toml").write_text(
        '[datasets.seq]\npath = "seq.npz"\nsource = "bank"\n[datasets.bank]\npath = "bank.npz"\n',
        encoding="utf-8",
    )
    result = check_text_quality(Session(load_registry(tmp_path / "lvmqa.toml")).context("seq"))
    m = result.metrics
    assert m["blocklist_title_count"] == 6  # targets are bank rows 5..15; odd rows are article 1
    assert m["blocklist_articles"] == 1
    assert m["duplicate_key_count"] == 0  # keys known only through the join
    assert "joined from source bank" in result.details["source_join"]


# --- the blocklist names pages, never phrases of prose -----------------------------------------


def test_blocklist_matches_pages_not_prose() -> None:
    texts = [
        "returns a list of strings",  # the false alarm: documentation prose
        "This function returns a List of strings.",
        "See Category: rivers for more.",
        "List of rivers in Europe",  # a page heading
        "Category:Physics",
        "Mercury may refer to:",  # a disambiguation lead
        "Mercury may refer to: a planet, an element and a god.",
        "The word list of the module is long.",
        "Lists of things",
    ]
    assert blocklist_row_mask(texts, None).tolist() == [
        False,
        False,
        False,
        True,
        True,
        True,
        True,
        False,
        True,
    ]
    titles = [
        "List of rivers",
        "Mercury (disambiguation)",
        "Category:Rivers",
        "Introduction to lists of things",
        "Glossary",
        None,
    ]
    assert blocklist_row_mask(None, titles).tolist() == [True, True, True, False, False, False]


_prose_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)


@given(
    st.lists(_prose_word, min_size=1, max_size=8),
    st.sampled_from(["list of", "List of", "category:", "Category:", "disambiguation", "lists of"]),
    st.lists(_prose_word, min_size=0, max_size=8),
)
def test_a_blocklist_phrase_inside_a_sentence_never_blocks(
    before: list[str], phrase: str, after: list[str]
) -> None:
    """A sentence (closing punctuation) that merely contains the phrase is prose."""
    sentence = " ".join([*before, phrase, *after]) + "."
    assert not blocklist_row_mask([sentence], None).any()


@given(st.lists(_prose_word, min_size=1, max_size=6))
def test_any_list_or_disambiguation_title_blocks(words: list[str]) -> None:
    name = " ".join(words)
    assume(not name.startswith(("list of", "lists of")))
    titles = [f"List of {name}", f"{name.capitalize()} (disambiguation)", f"Category:{name}"]
    assert blocklist_row_mask(None, titles).all()
    assert not blocklist_row_mask(None, [f"{name.capitalize()} and lists"]).any()
