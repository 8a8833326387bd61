"""Counterfactual attribution: remedies measured with known answers, and never circular."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lvmqa import attribution as attr
from lvmqa.diagnosis import diagnose
from lvmqa.results import CheckResult, Gate
from tests.synthetic import session_for, unit, walk_articles

C = 5
DIM = 24


def _sliding(targets: np.ndarray, lead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Windows that slide over ``lead + targets`` (the origin's builder): row g's
    contexts are the C rows before it."""
    rows = np.concatenate([lead, targets])
    contexts = np.stack([rows[j : j + len(targets)] for j in range(C)], axis=1)
    return contexts, targets


def _arrays(targets: np.ndarray, lead: np.ndarray, art: np.ndarray, chunk: np.ndarray
            ) -> dict[str, Any]:
    contexts, targets = _sliding(targets, lead)
    meta = np.empty(len(targets), dtype=object)
    for i in range(len(targets)):
        meta[i] = {"article_index": int(art[i]), "target_chunk_index": int(chunk[i])}
    return {"context_sequences": contexts, "target_vectors": targets, "metadata": meta}


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("nd,nd->n", unit(a), unit(b))


@pytest.fixture(scope="module")
def articles() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    rows, art, chunk = walk_articles(rng, [int(x) for x in rng.integers(20, 40, 40)], DIM)
    lead = unit(rng.standard_normal((C, DIM)))
    return rows, art, chunk, lead


def _session(tmp_path: Path, files: dict[str, dict[str, Any]], baseline: bool = True) -> Any:
    entries = {"current": {"baseline": "baseline"}} if baseline else {}
    return session_for(tmp_path, files, entries)


def _interleaved(art: np.ndarray, rng: np.random.Generator, burst: int = 3) -> np.ndarray:
    """Rows of the articles in ingestion order: bursts of a few chunks from random
    articles, each article's chunks still in order (the origin's 790k failure)."""
    queues = {a: list(np.flatnonzero(art == a)) for a in np.unique(art)}
    order: list[int] = []
    while queues:
        a = rng.choice(list(queues))
        take, queues[a] = queues[a][:burst], queues[a][burst:]
        order += take
        if not queues[a]:
            del queues[a]
    return np.array(order)


# ------------------------------------------------------------------ the statistics
@given(
    st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=60),
    st.integers(1, 7),
    st.integers(0, 2**32 - 1),
)
def test_clustered_mean_is_the_plain_mean(values: list[float], k: int, seed: int) -> None:
    v = np.array(values)
    rng = np.random.default_rng(seed)
    v[rng.random(v.size) < 0.2] = np.nan
    clusters = rng.integers(0, k, v.size)
    c = attr.clustered(v, clusters, k)
    if np.isfinite(v).any():
        assert c.mean == pytest.approx(float(np.nanmean(v)), abs=1e-12)
        # Unit weights are the sample itself.
        assert c.resampled(np.ones((1, k)))[0] == pytest.approx(c.mean, abs=1e-12)
    else:
        assert np.isnan(c.mean)


def test_poisson_weights_are_seeded() -> None:
    a = attr.poisson_weights(50, 4, np.random.default_rng(1))
    b = attr.poisson_weights(50, 4, np.random.default_rng(1))
    assert a.shape == (4, 50) and (a == b).all() and a.mean() == pytest.approx(1, abs=0.2)


# ---------------------------------------------------------------- known answers
def test_sorting_recovers_exactly_the_whole_drop(tmp_path: Path, articles: Any) -> None:
    """Current = the baseline's rows in ingestion order: sorting gives back the baseline
    file order pair for pair, so the recovered share is exactly 1."""
    rows, art, chunk, lead = articles
    order = _interleaved(art, np.random.default_rng(3))
    session = _session(tmp_path, {
        "baseline": _arrays(rows, lead, art, chunk),
        "current": _arrays(rows[order], lead, art[order], chunk[order]),
    })
    ctx = session.context("current")
    out = attr.coherence_attribution(ctx, {})
    assert out is not None and out["gap_significant"] and out["reference"] == "baseline"
    base = float(np.mean(_cos(rows[:-1], rows[1:])))
    current = float(np.mean(_cos(rows[order][:-1], rows[order][1:])))
    assert out["reference_mean"] == pytest.approx(base, abs=1e-6)
    assert out["current_mean"] == pytest.approx(current, abs=1e-6)
    (sort,) = [r for r in out["remedies"] if r["code"] == "ordering_or_boundary"]
    assert sort["remedied_mean"] == pytest.approx(base, abs=1e-6)
    assert sort["recovered_share"] == pytest.approx(1.0, abs=1e-4)
    lo, hi = sort["recovered_share_ci"]
    assert lo <= 1.0 <= hi


def test_dropping_duplicates_matches_its_definition(tmp_path: Path, articles: Any) -> None:
    """Copies of rows inserted at random places: the remedy drops every copy, and the
    remedied statistic is the plain mean over consecutive kept rows."""
    rows, art, chunk, lead = articles
    rng = np.random.default_rng(5)
    src = rng.choice(len(rows), 40, replace=False)
    at = np.sort(rng.choice(len(rows), 40, replace=False))
    order = np.insert(np.arange(len(rows)), at, src)
    session = _session(tmp_path, {
        "baseline": _arrays(rows, lead, art, chunk),
        "current": _arrays(rows[order], lead, art[order], chunk[order]),
    })
    out = attr.coherence_attribution(session.context("current"), {})
    assert out is not None and out["gap_significant"]
    (dup,) = [r for r in out["remedies"] if r["code"] == "duplicates"]
    duplicated = np.isin(order, src)
    kept = rows[order][~duplicated]
    expected = float(np.mean(_cos(kept[:-1], kept[1:])))
    assert dup["rows_dropped"] == int(duplicated.sum()) == 80
    assert dup["remedied_mean"] == pytest.approx(expected, abs=1e-6)
    assert dup["recovered_share_alone"] > 0.8
    # Sorting also recovers most of it (it pairs duplicate keys with nothing): with no
    # failed check to tell them apart, Shapley splits the recovery between the two.
    (sort,) = [r for r in out["remedies"] if r["code"] == "ordering_or_boundary"]
    assert dup["recovered_share"] + sort["recovered_share"] == pytest.approx(
        max(dup["recovered_share_alone"], sort["recovered_share_alone"]), abs=0.15
    )


def test_clean_data_has_no_gap_to_explain(tmp_path: Path, articles: Any) -> None:
    rows, art, chunk, lead = articles
    half = int(np.flatnonzero(art == 20)[0])
    session = _session(tmp_path, {
        "baseline": _arrays(rows[:half], lead, art[:half], chunk[:half]),
        "current": _arrays(rows[half:], lead, art[half:], chunk[half:]),
    })
    out = attr.coherence_attribution(session.context("current"), {})
    assert out is not None and not out["gap_significant"] and out["remedies"] == []


def test_without_ids_the_sort_is_estimated_from_the_lag_profile(
    tmp_path: Path, articles: Any
) -> None:
    """Three writers at a time, one chunk each in turn: an article's next chunk sits 3
    rows further, within the pass's lags, so the estimate sees it."""
    rows, art, _, lead = articles
    order = []
    for group in np.array_split(np.unique(art), len(np.unique(art)) // 3):
        queues = [list(np.flatnonzero(art == a)) for a in group]
        while any(queues):
            order += [q.pop(0) for q in queues if q]
    order = np.array(order)
    contexts, targets = _sliding(rows[order], lead)
    base_ctx, base_t = _sliding(rows, lead)
    session = _session(tmp_path, {
        "baseline": {"context_sequences": base_ctx, "target_vectors": base_t},
        "current": {"context_sequences": contexts, "target_vectors": targets},
    })
    out = attr.coherence_attribution(session.context("current"), {})
    assert out is not None and out["gap_significant"]
    (sort,) = out["remedies"]
    assert sort["code"] == "ordering_or_boundary" and sort["estimate"]
    assert sort["recovered_share"] > 0.3


# ---------------------------------------------------------------- non-circularity
def test_pair_halves_alternate_inside_each_article(tmp_path: Path, articles: Any) -> None:
    rows, art, chunk, lead = articles
    session = _session(tmp_path, {"current": _arrays(rows, lead, art, chunk)}, baseline=False)
    view = attr.row_view(session.context("current"))
    half = attr.pair_half(view)
    for a in np.unique(art)[:5]:
        assert half[art == a].tolist() == [i % 2 for i in range((art == a).sum())]


def test_pages_chosen_from_noise_recover_nothing_on_held_out_pairs(tmp_path: Path) -> None:
    """Every page is drawn from the same process, so no page is worse than another.
    Dropping the pages whose coherence *looks* lowest raises the in-sample mean (the
    seed's circular claim) but not the mean of the pairs the choice did not see."""
    rng = np.random.default_rng(11)
    rows, art, chunk = walk_articles(rng, [20] * 400, DIM, 1.1)
    lead = unit(rng.standard_normal((C, DIM)))
    session = _session(tmp_path, {"current": _arrays(rows, lead, art, chunk)}, baseline=False)
    view = attr.row_view(session.context("current"))
    half = attr.pair_half(view)
    pair_cos = np.r_[np.nan, _cos(rows[:-1], rows[1:])]
    same = np.r_[False, art[1:] == art[:-1]]

    def lowest_pages(on: int | None) -> np.ndarray:
        use = same if on is None else same & (half == on)
        sums = np.bincount(art[use], weights=pair_cos[use], minlength=400)
        means = sums / np.bincount(art[use], minlength=400)
        worst = np.argsort(means)[:40]
        return np.isin(art, worst)

    maker = attr.SeriesMaker(view)
    folds = attr._folds(view, lowest_pages, True, {})
    assert folds is not None and len(folds) == 2
    held = []
    for measure, drops in folds:
        before = maker.make(False, None).clustered(view, measure).mean
        after = maker.make(False, drops["low_coherence_dilution"]).clustered(view, measure).mean
        held.append(after - before)
    current = attr.current_series(view).mean
    circular = attr.current_series(view, lowest_pages(None)).mean - current
    assert circular > 0.001  # what the circular measurement would claim
    assert abs(float(np.mean(held))) < circular / 3


def test_shapley_splits_what_remedies_recover_together() -> None:
    def value(subset: frozenset[str]) -> np.ndarray:
        # a and b only help together; c adds 0.2 on its own
        return np.array([(0.6 if {"a", "b"} <= subset else 0.0) + (0.2 if "c" in subset else 0)])

    out = attr.shapley(["a", "b", "c"], value)
    assert out["a"][0] == pytest.approx(0.3) and out["b"][0] == pytest.approx(0.3)
    assert out["c"][0] == pytest.approx(0.2)
    assert sum(v[0] for v in out.values()) == pytest.approx(value(frozenset("abc"))[0])


# ------------------------------------------------------------------- the ranking
def _failed(check: str, metric: str, value: float, **metrics: Any) -> CheckResult:
    gate = Gate(metric, metric, value, "<=", 0.0)
    return CheckResult(check, "failed", {metric: value, **metrics}, f"{check} failed", [gate])


def _gap(*remedies: tuple[str, float]) -> dict[str, Any]:
    return {"coherence": {
        "statistic": "file_order", "reference": "baseline", "reference_mean": 0.42,
        "current_mean": 0.31, "gap": 0.11, "gap_ci": [0.09, 0.13], "gap_significant": True,
        "remedies": [
            {"code": code, "remedy": attr.REMEDY_WORDS[code], "recovered_share": share,
             "recovered_share_ci": [share - 0.05, share + 0.05], "held_out": False,
             "explains_nothing": share + 0.05 < attr.EXPLAINS_NOTHING}
            for code, share in remedies
        ],
        "not_measured": {},
    }}


def test_causes_rank_by_the_share_their_remedy_recovers() -> None:
    results = {
        "sequence_integrity": _failed("sequence_integrity", "crossing_share", 0.4,
                                      windows_checked=100, crossing_count=40),
        "duplicates": _failed("duplicates", "exact_duplicate_share", 0.05),
        "coherence_drift": _failed("coherence_drift", "file_order_mean_drift_pct", -20.0),
    }
    dx = diagnose("d", results, attribution=_gap(("duplicates", 0.9),
                                                  ("ordering_or_boundary", 0.2)))
    codes = [c["code"] for c in dx["root_causes"]]
    assert codes == ["duplicates", "ordering_or_boundary"]
    assert dx["root_causes"][0]["confidence"] == pytest.approx(0.9)
    assert "recovers 90 %" in dx["root_causes"][0]["evidence"][0]
    dx = diagnose("d", results, attribution=_gap(("duplicates", 0.03),
                                                  ("ordering_or_boundary", 0.95)))
    assert next(c["code"] for c in dx["root_causes"]) == "ordering_or_boundary"


def test_a_remedy_that_explains_nothing_is_ruled_out_with_its_number() -> None:
    results = {
        "sequence_integrity": _failed("sequence_integrity", "crossing_share", 0.4),
        "coherence_drift": _failed("coherence_drift", "file_order_mean_drift_pct", -20.0),
    }
    dx = diagnose("d", results, attribution=_gap(("ordering_or_boundary", 0.97),
                                                  ("duplicates", -0.01)))
    assert [c["code"] for c in dx["root_causes"]] == ["ordering_or_boundary"]
    assert any("removing duplicated targets recovers -1 %" in r for r in dx["rules_out"])
