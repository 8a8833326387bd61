"""Known-answer tests of lvmqa.integrity: ids, the ordering test, runs, the profile."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lvmqa.checks import run_check
from lvmqa.coherence import RowIds, coherence_pass_of_arrays
from lvmqa.integrity import (
    break_test,
    broken_windows,
    ordering_test,
    pair_classes,
    position_profile_test,
    random_like_series,
    runs_test,
    window_break_test,
    window_integrity,
)
from tests.synthetic import file_windows, session_for, unit, walk_articles


# ----------------------------------------------------------------------- builders
def ingestion_order(article: np.ndarray, batch: int, burst: int = 1) -> np.ndarray:
    """Rows ordered by ingestion: ``batch`` articles at a time, round-robin, ``burst``
    chunks per turn, the way parallel workers interleave insertions (the 790k defect)."""
    order: list[int] = []
    articles = np.unique(article)
    for first in range(0, len(articles), batch):
        queues = [list(np.flatnonzero(article == a)) for a in articles[first : first + batch]]
        while any(queues):
            for q in queues:
                order.extend(q[:burst])
                del q[:burst]
    return np.array(order)


def bank_arrays(rows: np.ndarray, article: np.ndarray, chunk: np.ndarray) -> dict[str, Any]:
    n = len(rows)
    return {
        "vectors": rows,
        "article_indices": article.astype(np.int32),
        "chunk_indices": chunk.astype(np.int32),
        "cpe_ids": np.array([f"cpe-{i:05d}" for i in range(n)], dtype=object),
        "concept_texts": np.array(
            [f"article {a} chunk {c}" for a, c in zip(article, chunk, strict=True)], dtype=object
        ),
        "article_titles": np.array([f"Title {a}" for a in article], dtype=object),
    }


def ids_of(article: list[int], chunk: list[int]) -> RowIds:
    n = len(article)
    return RowIds(
        np.array(article), np.ones(n, bool), np.array(chunk), np.ones(n, bool), None, "file"
    )


# ----------------------------------------------------------------------- runs
def test_runs_test_known_answers() -> None:
    mixed = runs_test(np.array([0.1, 0.1, 0.9, 0.9, 0.1, 0.9]), 0.3)
    # runs LL|HH|L|H = 4; n1 = n2 = 3: E = 2*3*3/6 + 1 = 4, so z = 0
    assert (mixed.n, mixed.n_low, mixed.runs, mixed.expected_runs) == (6, 3, 4, 4.0)
    assert mixed.z == pytest.approx(0.0)
    assert mixed.mean_low_run == pytest.approx(1.5)
    assert mixed.expected_low_run == pytest.approx(2.0)
    alternating = runs_test(np.array([0.1, 0.9] * 3), 0.3)
    assert alternating.z == pytest.approx((6 - 4) / math.sqrt(3 * 2 / 5))
    clustered = runs_test(np.array([0.1] * 50 + [0.9] * 50), 0.3)
    assert clustered.runs == 2
    assert clustered.z == pytest.approx((2 - 51) / math.sqrt(50 * 49 / 99))
    assert clustered.pattern == "clustered"
    assert runs_test(np.array([0.9, 0.8, np.nan]), 0.3).pattern == "none"
    assert runs_test(np.array([0.1, 0.2]), 0.3).pattern == "all"


# ----------------------------------------------------------------- ordering test
def test_ordering_test_verdicts() -> None:
    rng = np.random.default_rng(0)
    rows, article, _ = walk_articles(rng, [60] * 20, 32)
    ordered = coherence_pass_of_arrays(*file_windows(rows))
    verdict = ordering_test(ordered.lag_cosines, random_pair_mean=ordered.random_pair_mean)
    assert verdict.verdict == "ordered", verdict.reason
    assert verdict.decay > 0
    assert verdict.decay_ci[0] > 0
    assert verdict.decay_ratio > 0.3
    assert all(np.diff(verdict.profile) < 0)  # a random walk decays monotonically

    pairs = coherence_pass_of_arrays(*file_windows(rows[ingestion_order(article, 2)]))
    interleaved = ordering_test(pairs.lag_cosines)
    assert interleaved.verdict == "broken"
    assert 2 in interleaved.rising_lags
    assert "interleaved" in interleaved.reason

    shuffled_pass = coherence_pass_of_arrays(*file_windows(rows[rng.permutation(len(rows))]))
    shuffled = ordering_test(shuffled_pass.lag_cosines)
    assert shuffled.verdict == "broken"
    assert "no article structure" in shuffled.reason

    tiny = coherence_pass_of_arrays(*file_windows(rows[:60]))
    assert ordering_test(tiny.lag_cosines).verdict == "inconclusive"


def test_dilution_clusters_low_pairs_while_misplaced_rows_scatter_them() -> None:
    rng = np.random.default_rng(1)
    rows, _, _ = walk_articles(rng, [50] * 40, 32, 0.5)
    diluted = rows.copy()
    for start in range(100, len(rows) - 100, 400):  # whole incoherent stretches, in order
        diluted[start : start + 80] = unit(rng.standard_normal((80, 32)))
    misplaced = rows.copy()
    moved = rng.choice(len(rows), size=len(rows) // 10, replace=False)
    misplaced[moved] = rows[rng.permutation(moved)]  # single rows put in foreign places
    results = {}
    for name, data in (("diluted", diluted), ("misplaced", misplaced)):
        p = coherence_pass_of_arrays(*file_windows(data))
        results[name] = (ordering_test(p.lag_cosines).verdict, runs_test(p.file_order, 0.3))
    assert results["diluted"][0] == "ordered"
    assert results["diluted"][1].pattern == "clustered"
    assert results["misplaced"][1].pattern == "scattered"
    assert results["diluted"][1].z < results["misplaced"][1].z


# ------------------------------------------------------------ position profile
def test_position_profile_rises_only_for_ordered_windows() -> None:
    rng = np.random.default_rng(2)
    rows, _, _ = walk_articles(rng, [40] * 15, 32)
    ordered = position_profile_test(coherence_pass_of_arrays(*file_windows(rows)).position_cosines)
    assert ordered.rises
    assert ordered.monotonic
    assert ordered.rise_ci[0] > 0
    shuffled = rows[rng.permutation(len(rows))]
    flat = position_profile_test(coherence_pass_of_arrays(*file_windows(shuffled)).position_cosines)
    assert flat.rises is False
    single = position_profile_test(
        coherence_pass_of_arrays(*file_windows(rows, 1)).position_cosines
    )
    assert single.rises is None


# ------------------------------------------------------------------ window ids
def test_window_integrity_known_answers() -> None:
    # C = 2; window g has contexts rows g-2, g-1 (identified) and target row g.
    ids = ids_of([0, 0, 0, 1, 1, 1], [0, 1, 2, 2, 1, 3])
    identity = np.ones((6, 2), dtype=bool)
    identity[0, :] = False
    identity[1, 0] = False  # rows g-2 < 0 cannot be identified
    w = window_integrity(ids, identity)
    # g=2: 0,0,0 chunks 0,1,2 fine; g=3, g=4 cross; g=5: chunks 2,1,3 go backwards.
    np.testing.assert_array_equal(w.crossing, [np.nan, np.nan, 0, 1, 1, 0])
    np.testing.assert_array_equal(w.non_consecutive, [np.nan, np.nan, 0, 0, 0, 1])
    np.testing.assert_array_equal(w.wrong_order, [np.nan, np.nan, 0, 0, 0, 1])
    assert (w.share(w.crossing), w.share(w.non_consecutive), w.share(w.wrong_order)) == (
        0.5,
        0.25,
        0.25,
    )
    assert w.contexts_identified_share == 1.0

    flags = np.array([1.0, np.nan, 1.0, np.nan, np.nan, np.nan])
    consecutive = np.array([np.nan, 1.0, np.nan, np.nan, np.nan, np.nan])
    w2 = window_integrity(ids, identity, flags, consecutive)
    assert w2.crossing[0] == 1
    assert w2.metadata_windows == 1
    assert w2.crossing[2] == 0
    assert w2.metadata_disagreements == 1
    assert np.isnan(w2.crossing[1])  # consecutive chunks alone do not say "one article"


def test_window_integrity_without_ids_uses_file_flags_only() -> None:
    identity = np.zeros((4, 3), dtype=bool)
    w = window_integrity(None, identity, np.array([0.0, 1.0, np.nan, 0.0]))
    np.testing.assert_array_equal(w.crossing, [0, 1, np.nan, 0])
    assert w.share(w.crossing) == pytest.approx(1 / 3)


def test_pair_classes_split_low_pairs_by_article_crossing() -> None:
    ids = ids_of([0, 0, 1, 1, 1], [0, 1, 0, 1, 2])
    m = pair_classes(ids, np.array([0.9, 0.1, 0.8, 0.2]), 0.3)
    assert m["file_order_crossing_share"] == 0.25
    assert m["low_pairs_crossing_share"] == 0.5
    assert m["within_article_low_share"] == pytest.approx(1 / 3)
    assert m["across_article_low_share"] == 1.0
    assert m["within_article_mean"] == pytest.approx((0.9 + 0.8 + 0.2) / 3)


# ------------------------------------------------------------------ the check
def test_origin_790k_layout_joined_to_its_bank(tmp_path: Path) -> None:
    """Target ids only (no article in the file): ids come from the source bank and the
    contexts are identified as the previous rows, so crossings are exact."""
    rng = np.random.default_rng(3)
    rows, article, chunk = walk_articles(rng, [30] * 24, 24)
    bank = bank_arrays(rows, article, chunk)
    order = ingestion_order(article, 8)
    contexts, targets = file_windows(rows[order])
    c = 5
    session = session_for(
        tmp_path,
        {
            "bank": bank,
            "790k": {
                "context_sequences": contexts,
                "target_vectors": targets,
                "target_ids": bank["cpe_ids"][order][c:],
                "target_texts": bank["concept_texts"][order][c:],
            },
        },
        {"790k": {"source": "bank"}},
    )
    result = run_check(session.context("790k"), "sequence_integrity")
    m = result.metrics
    art = article[order]
    n = len(targets)
    expected = [bool((art[g : g + c] != art[g + c]).any()) for g in range(n)]
    assert m["ids_source"] == "source bank"
    assert m["windows_checked"] >= n - c
    assert m["crossing_share"] == pytest.approx(np.mean(expected[c:]), abs=c / n)
    assert m["crossing_share"] > 0.9
    assert m["low_pairs_crossing_share"] == 1.0  # every low pair is an article crossing
    assert m["ordering_verdict"] == "broken"
    assert m["position_profile_rises"] is False
    assert m["article_order_gain"] > 0.3
    assert result.status == "failed"
    failed = {g.metric for g in result.gates if not g.passed}
    assert failed == {"crossing_share", "position_profile_rises"}
    assert "previous rows" in result.details["context_inference"]
    assert "does NOT rise" in result.message


def test_bank_windows_inside_articles_pass(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    rows, article, chunk = walk_articles(rng, [25] * 20, 24)
    shuffled = rng.permutation(len(rows))  # bank rows stored in any order
    session = session_for(
        tmp_path, {"bank": bank_arrays(rows[shuffled], article[shuffled], chunk[shuffled])}
    )
    result = run_check(session.context("bank"), "sequence_integrity")
    m = result.metrics
    assert result.status == "passed", result.message
    assert (m["crossing_share"], m["non_consecutive_share"], m["wrong_order_share"]) == (0, 0, 0)
    assert m["windows_checked"] == m["windows_checked"] + m["windows_unchecked"] == 20 * 20
    assert m["ordering_verdict"] == "ordered"
    assert m["position_profile_rises"] is True
    assert {g.kind for g in result.gates} == {"structural", "statistical"}


def test_without_ids_the_statistical_test_gates(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rows, article, _ = walk_articles(rng, [40] * 16, 24)
    good = file_windows(rows)
    bad = file_windows(rows[ingestion_order(article, 4)])
    session = session_for(
        tmp_path,
        {
            "good": {"context_sequences": good[0], "target_vectors": good[1]},
            "bad": {"context_sequences": bad[0], "target_vectors": bad[1]},
        },
    )
    good_result = run_check(session.context("good"), "sequence_integrity")
    bad_result = run_check(session.context("bad"), "sequence_integrity")
    assert good_result.status == "passed", good_result.message
    assert bad_result.status == "failed"
    for result in (good_result, bad_result):
        assert result.metrics["windows_checked"] == 0
        assert result.metrics["ids_source"] is None
        assert {g.metric for g in result.gates} == {"ordering_broken", "position_profile_rises"}
    assert bad_result.metrics["ordering_verdict"] == "broken"
    assert 4 in bad_result.metrics["rising_lags"]
    assert "no window could be checked" in bad_result.details["ids_note"]


def test_dilution_with_ids_keeps_low_pairs_inside_articles(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    rows, article, _ = walk_articles(rng, [40] * 20, 24, 0.5)
    weak = np.isin(article, [3, 9, 15])  # whole articles of incoherent chunks
    rows[weak] = unit(rng.standard_normal((int(weak.sum()), 24)))
    contexts, targets = file_windows(rows)
    session = session_for(
        tmp_path,
        {
            "diluted": {
                "context_sequences": contexts,
                "target_vectors": targets,
                "article_ids": article[5:],
            }
        },
    )
    m = run_check(session.context("diluted"), "sequence_integrity").metrics
    assert m["low_pairs_pattern"] == "clustered"
    assert m["low_pairs_crossing_share"] < 0.3  # the low pairs are inside articles
    assert m["within_article_low_share"] > 0.1
    assert m["ordering_verdict"] == "ordered"


def test_shuffled_intact_windows_are_not_an_ordering_defect(tmp_path: Path) -> None:
    """A shuffled training file (e.g. after a random split) has a meaningless file order
    but intact windows: the file-order test is reported, not gated."""
    rng = np.random.default_rng(7)
    rows, _, _ = walk_articles(rng, [40] * 16, 24)
    contexts, targets = file_windows(rows)
    order = rng.permutation(len(targets))
    session = session_for(
        tmp_path,
        {"shuffled": {"context_sequences": contexts[order], "target_vectors": targets[order]}},
    )
    result = run_check(session.context("shuffled"), "sequence_integrity")
    m = result.metrics
    assert result.status == "passed", result.message
    assert m["sliding_window_share"] < 0.05
    assert m["ordering_verdict"] == "broken"  # reported ...
    assert {g.metric for g in result.gates} == {"position_profile_rises"}  # ... not gated
    assert m["position_profile_rises"] is True
    assert "not sliding windows" in result.details["ids_note"]


def test_random_like_series_and_break_test_known_answers() -> None:
    series = random_like_series(np.array([0.0, 0.5, -0.1, np.nan]), 0.05)
    np.testing.assert_array_equal(series, [2.0, 0.0, 2.0, np.nan])
    rng = np.random.default_rng(8)
    rows, article, _ = walk_articles(rng, [40] * 30, 32)
    clean = coherence_pass_of_arrays(*file_windows(rows))
    alone = break_test(clean, None, min_excess_pp=5.0)
    assert alone.baseline_share is None
    assert not alone.significant
    assert alone.share == pytest.approx(
        min(1.0, np.nanmean(random_like_series(clean.file_order, clean.random_pair_mean)))
    )
    # Bursts of 3 chunks from 2 interleaved articles: ~1/3 of neighbours are unrelated.
    bursty = coherence_pass_of_arrays(*file_windows(rows[ingestion_order(article, 2, 3)]))
    result = break_test(bursty, clean, min_excess_pp=5.0)
    assert result.significant
    assert result.excess_pp == pytest.approx(100 * (result.share - alone.share))
    assert result.excess_ci_pp is not None
    assert result.excess_ci_pp[0] > 0
    assert 0.25 < result.share < 0.45


def test_partial_interleaving_without_ids_is_caught_against_the_baseline(
    tmp_path: Path,
) -> None:
    """Bursty interleaving still decays with distance (most neighbours are related);
    the break test against the baseline gives it away."""
    rng = np.random.default_rng(9)
    rows, article, _ = walk_articles(rng, [40] * 24, 24)
    base = file_windows(rows[: 12 * 40])
    new_rows, new_article = rows[12 * 40 :], article[12 * 40 :]
    bursty = file_windows(new_rows[ingestion_order(new_article, 4, 3)])
    session = session_for(
        tmp_path,
        {
            "base": {"context_sequences": base[0], "target_vectors": base[1]},
            "bursty": {"context_sequences": bursty[0], "target_vectors": bursty[1]},
            "alone": {"context_sequences": bursty[0], "target_vectors": bursty[1]},
        },
        {"bursty": {"baseline": "base"}},
    )
    judged = run_check(session.context("bursty"), "sequence_integrity")
    assert judged.metrics["ordering_verdict"] == "broken"
    assert judged.metrics["rising_lags"] == []  # the decay test alone would not see it
    assert judged.metrics["low_pairs_pattern"] == "scattered"
    assert judged.metrics["random_like_excess_pp"] > 20
    assert judged.status == "failed"
    alone = run_check(session.context("alone"), "sequence_integrity")
    assert alone.metrics["ordering_verdict"] == "ordered"  # no ids, no baseline: undetectable
    assert "no baseline" in alone.details["baseline_note"]


def test_broken_windows_count_windows_with_one_step_below_the_threshold() -> None:
    steps = np.array([[0.5, 0.6, 0.7], [0.5, 0.01, 0.7], [np.nan, np.nan, np.nan],
                      [np.nan, 0.02, 0.9]])
    out = broken_windows(steps, 0.05)
    assert out[:2].tolist() == [0.0, 1.0] and np.isnan(out[2]) and out[3] == 1.0


def test_window_breaks_find_partial_interleaving_and_spare_clean_data(tmp_path: Path) -> None:
    """A fifth of the articles written in alternating bursts: their windows straddle
    articles, so more windows hold a random-like step than in the baseline; a second
    clean sample of the same process does not."""
    from lvmqa.coherence import coherence_pass

    rng = np.random.default_rng(40)
    lengths = [int(x) for x in rng.integers(25, 40, 60)]
    base_rows, _, _ = walk_articles(rng, lengths, 32)
    clean_rows, _, _ = walk_articles(rng, lengths, 32)
    rows, art, _ = walk_articles(rng, lengths, 32)
    mixed = art < 12  # the first 12 articles: two writers alternate bursts of 2 chunks
    order = list(np.flatnonzero(~mixed))
    for a in range(0, 12, 2):
        first, second = list(np.flatnonzero(art == a)), list(np.flatnonzero(art == a + 1))
        while first or second:
            order += first[:2] + second[:2]
            first, second = first[2:], second[2:]
    files = {}
    for name, data in (("base", base_rows), ("clean", clean_rows), ("partial", rows[order])):
        contexts, targets = file_windows(data)
        files[name] = {"context_sequences": contexts, "target_vectors": targets}
    session = session_for(tmp_path, files)
    passes = {name: coherence_pass(session.context(name)) for name in files}
    hit = window_break_test(passes["partial"], passes["base"], min_excess_pp=5.0)
    miss = window_break_test(passes["clean"], passes["base"], min_excess_pp=5.0)
    assert hit.significant and hit.excess_pp is not None and hit.excess_pp > 5
    assert not miss.significant
