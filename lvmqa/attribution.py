"""Counterfactual attribution: how much of a dataset's gap each candidate remedy recovers.

The diagnosis must name the *true* cause of a broken dataset, on corpora nobody has
seen. A rule that adds hand-set confidences cannot do that: two causes that both
lower file-order coherence (windows across articles, a few inserted duplicates, some
list pages) look alike from one number. So each candidate cause's remedy is applied
*virtually*, the same statistic is measured again on the remedied data, and causes
are ranked by the share of the gap that their remedy recovers:

    share = (S_remedied - S_current) / (S_reference - S_current)

* S is what the model reads: file-order adjacency when the windows slide over the
  rows, else the within-window adjacency.
* The reference is the baseline dataset's S; without a baseline it is S after every
  remedy together (the data with every candidate defect removed).
* Remedies: sort by (article, chunk) — ordering; drop every row whose target is
  duplicated — duplicates (all copies, so no choice of "the right copy" is made from
  the statistic); drop the flagged low-quality pages — dilution.
* Rows chosen from the statistic itself would make the number circular (the seed's
  "coherence recovered to 0.4250"). Pages flagged from their coherence are therefore
  chosen on one half of each article's adjacent pairs and measured on the other half
  (both ways, averaged); the other remedies choose rows without looking at cosines.
* The CI is a Poisson cluster bootstrap over articles (blocks of rows without ids):
  the same weights for the current and the remedied series, independent weights for
  the baseline.

Gaps outside coherence (norms, alignment, leakage between splits, which leaves the
training file's coherence as it is) have remedies with their own statistic; those
shares are computed from the checks' metrics in :mod:`lvmqa.diagnosis`.
See docs/diagnosis.md.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lvmqa.errors import CheckSkipped, LvmqaError

if TYPE_CHECKING:
    from lvmqa.checks import CheckContext
    from lvmqa.coherence import CoherencePass, RowIds
    from lvmqa.results import CheckResult

BOOTSTRAP_REPS = 400
MAX_CLUSTERS = 8192  # clusters beyond this are merged by id hash: bootstrap cost is bounded
NO_ID_BLOCK_ROWS = 64  # cluster of rows when article ids are unknown
# A gap is explained when its CI excludes zero; a remedy explains nothing when its
# share's CI upper bound is under this (it is then ruled out, with its number).
EXPLAINS_NOTHING = 0.05
REMEDY_WORDS = {
    "ordering_or_boundary": "sorting by (article, chunk)",
    "duplicates": "removing duplicated targets",
    "low_coherence_dilution": "removing the flagged low-quality pages",
}


# ----------------------------------------------------------------- clustered means
@dataclass(frozen=True)
class Clustered:
    """A cosine series reduced to per-cluster sums and counts (NaN values dropped)."""

    sums: np.ndarray  # float64 (n_clusters,)
    counts: np.ndarray  # float64 (n_clusters,)

    @property
    def mean(self) -> float:
        total = float(self.counts.sum())
        return float(self.sums.sum()) / total if total else float("nan")

    def resampled(self, weights: np.ndarray) -> np.ndarray:
        """Means under bootstrap weights (reps, n_clusters)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            out: np.ndarray = (weights @ self.sums) / (weights @ self.counts)
        return out


def clustered(values: np.ndarray, clusters: np.ndarray, n_clusters: int) -> Clustered:
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    sums = np.bincount(clusters[ok], weights=values[ok], minlength=n_clusters)
    counts = np.bincount(clusters[ok], minlength=n_clusters).astype(np.float64)
    return Clustered(sums, counts)


def poisson_weights(n_clusters: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson(1) bootstrap weights: a cluster bootstrap that needs no resampled copy."""
    return rng.poisson(1.0, size=(reps, n_clusters)).astype(np.float64)


def _interval(samples: np.ndarray) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if finite.size < 10:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return (float(lo), float(hi))


# ------------------------------------------------------------------- the data view
@dataclass(frozen=True)
class RowView:
    """What the remedies need of one dataset: the pass, ids, and cluster labels."""

    n: int
    cpass: CoherencePass
    ids: RowIds | None
    cluster: np.ndarray  # int64 per row, in 0..n_clusters-1
    n_clusters: int
    sliding: bool  # the model reads file order (windows slide over the rows)
    read_rows: Callable[[int, int], np.ndarray]
    # The article-order pass's (first row, cosine) of within-article pairs, when ids are
    # known: sorting reuses them instead of reading a shuffled file's pairs again.
    article_pairs: tuple[np.ndarray, np.ndarray] | None = None


def row_view(ctx: CheckContext) -> RowView:
    from lvmqa.coherence import article_order, coherence_pass, resolve_row_ids

    def compute() -> RowView:
        cpass = coherence_pass(ctx)
        ids = resolve_row_ids(ctx)
        n = cpass.n
        if ids is not None and ids.complete:
            keys = ids.article
        else:
            keys = np.arange(n, dtype=np.int64) // NO_ID_BLOCK_ROWS
        _, cluster = np.unique(keys, return_inverse=True)
        cluster = cluster.astype(np.int64)
        n_clusters = int(cluster.max()) + 1 if n else 0
        if n_clusters > MAX_CLUSTERS:  # merge clusters by a fixed hash of their index
            cluster = (cluster * 2654435761 % (2**32)) % MAX_CLUSTERS
            n_clusters = MAX_CLUSTERS
        return RowView(
            n,
            cpass,
            ids,
            cluster,
            n_clusters,
            cpass.file_order_is_window_order,
            ctx.dataset.target_rows,
            _article_pairs(ctx, ids, article_order),
        )

    return ctx.cached("attribution_row_view", compute)


def _article_pairs(
    ctx: CheckContext, ids: RowIds | None, article_order: Callable[[Any], Any]
) -> tuple[np.ndarray, np.ndarray] | None:
    if ids is None or not ids.complete:
        return None
    order = article_order(ctx)
    return None if order is None else (order.first, order.cosines)


def _pairs_cosines(view: RowView, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    from lvmqa.coherence import pair_cosines

    if first.size == 0:
        return np.empty(0, dtype=np.float32)
    return pair_cosines(first, second, view.cpass, view.read_rows)


def _consecutive(view: RowView, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosines and clusters of consecutive rows of ``rows`` (an order of kept rows)."""
    first, second = rows[:-1], rows[1:]
    return _pairs_cosines(view, first, second), view.cluster[second]


# ------------------------------------------------------------------ pair series
@dataclass(frozen=True)
class PairSeries:
    """A statistic as pairs: each pair's cosine and the row of its later element (which
    decides its cluster and its half)."""

    cosines: np.ndarray
    second: np.ndarray

    def clustered(self, view: RowView, measure: np.ndarray | None) -> Clustered:
        keep = slice(None) if measure is None else measure[self.second]
        return clustered(self.cosines[keep], view.cluster[self.second[keep]], view.n_clusters)


def _sorted_order(view: RowView) -> tuple[np.ndarray, np.ndarray]:
    """Rows in (article, chunk) order and the cosine of each consecutive pair (computed
    once: within-article pairs from the cached article order, the rest read)."""
    from lvmqa.coherence import article_order_rows

    assert view.ids is not None
    order = article_order_rows(view.ids)
    cos_next = np.full(max(order.size - 1, 0), np.nan, dtype=np.float32)
    known = np.zeros(cos_next.size, dtype=bool)
    if view.article_pairs is not None and cos_next.size:
        # Each within-article pair is consecutive in this order (article_order_pairs).
        first, cosines = view.article_pairs
        rank = np.empty(view.n, dtype=np.int64)
        rank[order] = np.arange(order.size)
        at = rank[first]
        cos_next[at], known[at] = cosines, True
    rest = np.flatnonzero(~known)  # article boundaries and repeated keys: few
    cos_next[rest] = _pairs_cosines(view, order[rest], order[rest + 1])
    return order, cos_next


def _kept_pairs(
    view: RowView, order: np.ndarray, cos_next: np.ndarray, drop: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive pairs of ``order`` once the ``drop`` rows are gone: pairs that were
    already consecutive keep their cosine, the re-paired neighbours are computed."""
    if drop is None:
        return order, cos_next
    keep = ~drop[order]
    kept = order[keep]
    if kept.size < 2:
        return kept, np.empty(0, dtype=np.float32)
    position = np.flatnonzero(keep)
    joined = position[1:] == position[:-1] + 1
    out = np.empty(kept.size - 1, dtype=np.float32)
    out[joined] = cos_next[position[:-1][joined]]
    new = ~joined
    out[new] = _pairs_cosines(view, kept[:-1][new], kept[1:][new])
    return kept, out


class SeriesMaker:
    """The statistic S of the data under any set of remedies (sort and/or row drops)."""

    def __init__(self, view: RowView) -> None:
        self.view = view
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def can_sort(self) -> bool:
        return self.view.ids is not None and self.view.ids.complete

    def make(self, sort: bool, drop: np.ndarray | None) -> PairSeries:
        view = self.view
        if sort:
            if self._sorted is None:
                self._sorted = _sorted_order(view)
            kept, cos = _kept_pairs(view, *self._sorted, drop)
            ids = view.ids
            assert ids is not None
            # A repeated (article, chunk) key is a duplicate, not an adjacency; article
            # boundaries stay, as in a correctly built file.
            art, chunk = ids.article[kept], ids.chunk[kept]
            distinct = (art[1:] != art[:-1]) | (chunk[1:] != chunk[:-1])
            distinct |= ~ids.chunk_known[kept][1:]
            return PairSeries(cos[distinct], kept[1:][distinct])
        if view.sliding:
            kept, cos = _kept_pairs(view, np.arange(view.n), view.cpass.file_order, drop)
            return PairSeries(cos, kept[1:])
        steps = view.cpass.step_cosines
        with np.errstate(invalid="ignore"):
            windows = np.nanmean(steps, axis=1) if steps.shape[1] else np.full(view.n, np.nan)
        rows = np.arange(view.n) if drop is None else np.flatnonzero(~drop)
        return PairSeries(windows[rows], rows)


def current_series(view: RowView, drop: np.ndarray | None = None) -> Clustered:
    """S of the data as stored, optionally with rows dropped (their neighbours re-paired)."""
    return SeriesMaker(view).make(False, drop).clustered(view, None)


def sorted_series(view: RowView, drop: np.ndarray | None = None) -> Clustered | None:
    """S after rebuilding in (article, chunk) order; None without complete article ids."""
    maker = SeriesMaker(view)
    if not maker.can_sort:
        return None
    return maker.make(True, drop).clustered(view, None)


# ----------------------------------------------------------------------- remedies
def duplicated_rows(ctx: CheckContext) -> np.ndarray:
    """Every row whose target vector is bit-identical to another row's (all copies)."""
    from lvmqa.retrieval import exact_duplicate_groups

    def compute() -> np.ndarray:
        first = ctx.cached(
            "exact_duplicate_groups",
            lambda: exact_duplicate_groups(
                ctx.cached("targets_matrix", ctx.dataset.targets_matrix)
            ),
        )
        n = first.size
        redundant = first != np.arange(n)
        out = redundant.copy()
        out[first[redundant]] = True
        return out

    return ctx.cached("attribution_duplicated_rows", compute)


FlagFunction = Callable[[int | None], np.ndarray | None]


def dilution_flags(ctx: CheckContext) -> FlagFunction:
    """``flags(half)``: rows of the blocklisted and low-quality pages, the low-quality
    ones chosen from half ``half`` of each article's adjacent pairs (None: all pairs)."""
    from lvmqa.lowquality import flagged_row_mask

    def flags(half: int | None) -> np.ndarray | None:
        try:
            mask = flagged_row_mask(ctx, pair_half=half)
        except (CheckSkipped, LvmqaError):
            return None
        return np.asarray(mask, dtype=bool)

    return flags


def pair_half(view: RowView) -> np.ndarray:
    """Half (0/1) of each row's pair with its predecessor in article order: the pairs of
    one article alternate between the halves, so each half sees every article."""
    ids = view.ids
    half = np.zeros(view.n, dtype=np.int8)
    if ids is None or not ids.complete:
        half[1::2] = 1
        return half
    from lvmqa.coherence import article_order_rows

    order = article_order_rows(ids)
    art = ids.article[order]
    start = np.r_[0, np.flatnonzero(art[1:] != art[:-1]) + 1]
    position = np.arange(order.size) - np.repeat(start, np.diff(np.r_[start, order.size]))
    half[order] = (position % 2).astype(np.int8)
    return half


# -------------------------------------------------------------------- the analysis
# Which failed check makes each remedy's cause a candidate.
CANDIDATE_CHECKS = {
    "ordering_or_boundary": "sequence_integrity",
    "duplicates": "duplicates",
    "low_coherence_dilution": "text_quality",
}


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _stats(series: Clustered, weights: np.ndarray) -> np.ndarray:
    """[point mean, bootstrap means...]: one vector per value, so every combination of
    values below is computed for the point and each replicate alike."""
    return np.r_[series.mean, series.resampled(weights)]


def shapley(codes: list[str], value: Callable[[frozenset[str]], np.ndarray]) -> dict[str, Any]:
    """Exact Shapley values: each remedy's gain averaged over every order of applying
    the others first, so interacting remedies split what they recover together and
    the values add up to the gain of all of them."""
    n = len(codes)
    values: dict[frozenset[str], np.ndarray] = {}

    def v(subset: frozenset[str]) -> np.ndarray:
        if subset not in values:
            values[subset] = value(subset)
        return values[subset]

    out: dict[str, Any] = {}
    for code in codes:
        others = [c for c in codes if c != code]
        total = np.zeros_like(v(frozenset()))
        for size in range(len(others) + 1):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for subset in itertools.combinations(others, size):
                base = frozenset(subset)
                total = total + weight * (v(base | {code}) - v(base))
        out[code] = total
    return out


def coherence_attribution(
    ctx: CheckContext, results: Mapping[str, CheckResult]
) -> dict[str, Any] | None:
    """The coherence gap and the share each remedy recovers; None when not measurable."""
    from lvmqa.coherence import seeded_rng

    try:
        view = row_view(ctx)
    except (CheckSkipped, LvmqaError):
        return None
    if view.n < 3:
        return None
    maker = SeriesMaker(view)
    weights = poisson_weights(view.n_clusters, BOOTSTRAP_REPS, seeded_rng(ctx, "attribution"))
    current = _stats(maker.make(False, None).clustered(view, None), weights)

    drops: dict[str, np.ndarray] = {}
    dups = duplicated_rows(ctx)
    if dups.any():
        drops["duplicates"] = dups
    flags = dilution_flags(ctx)
    flagged_all = flags(None)
    if flagged_all is not None and flagged_all.any():
        drops["low_coherence_dilution"] = flagged_all
    available = (["ordering_or_boundary"] if maker.can_sort else []) + list(drops)

    def series(subset: frozenset[str], fold_drops: Mapping[str, np.ndarray]) -> PairSeries:
        drop = None
        for code in subset - {"ordering_or_boundary"}:
            drop = fold_drops[code] if drop is None else drop | fold_drops[code]
        return maker.make("ordering_or_boundary" in subset, drop)

    base_ctx = ctx.baseline()
    if base_ctx is not None:
        try:
            base_view = row_view(base_ctx)
        except (CheckSkipped, LvmqaError):
            return None
        # The same statistic on both sides: the current data's, on the baseline's rows.
        same = RowView(
            base_view.n,
            base_view.cpass,
            base_view.ids,
            base_view.cluster,
            base_view.n_clusters,
            view.sliding,
            base_view.read_rows,
        )
        base_weights = poisson_weights(
            base_view.n_clusters, BOOTSTRAP_REPS, seeded_rng(ctx, "attribution:baseline")
        )
        reference = _stats(SeriesMaker(same).make(False, None).clustered(same, None), base_weights)
        reference_kind = "baseline"
    elif available:
        reference = _stats(series(frozenset(available), drops).clustered(view, None), weights)
        reference_kind = "all remedies"
    else:
        return None

    gap = reference - current
    gap_ci = _interval(gap[1:])
    out: dict[str, Any] = {
        "statistic": "file_order" if view.sliding else "within_window",
        "reference": reference_kind,
        "reference_mean": _finite(reference[0]),
        "current_mean": _finite(current[0]),
        "gap": _finite(gap[0]),
        "gap_ci": [_finite(gap_ci[0]), _finite(gap_ci[1])],
        "gap_significant": bool(math.isfinite(gap_ci[0]) and gap_ci[0] > 0),
        "clusters": "articles" if maker.can_sort else f"blocks of {NO_ID_BLOCK_ROWS} rows",
        "bootstrap_reps": BOOTSTRAP_REPS,
        "share_method": "shapley over the candidate remedies",
        "remedies": [],
        "not_measured": {},
    }
    if not maker.can_sort:
        out["not_measured"]["ordering_or_boundary"] = (
            "needs article and chunk ids for every row (map them with [datasets.X.keys])"
        )
    if "duplicates" not in drops:
        out["not_measured"]["duplicates"] = "no duplicated target vector"
    if "low_coherence_dilution" not in drops:
        out["not_measured"]["low_coherence_dilution"] = "no page flagged as low quality"
    if not out["gap_significant"]:
        return out

    failed = {cid for cid, r in results.items() if r.status == "failed"}
    candidates = [c for c in available if not results or CANDIDATE_CHECKS[c] in failed]
    folds = _folds(view, flags, "low_coherence_dilution" in available, drops)
    if folds is None:
        out["not_measured"]["low_coherence_dilution"] = (
            "flagged pages could not be chosen on half the pairs"
        )
        available = [c for c in available if c != "low_coherence_dilution"]
        candidates = [c for c in candidates if c != "low_coherence_dilution"]
        folds = [(None, drops)]

    def fold_value(measure: np.ndarray | None, fold_drops: Mapping[str, np.ndarray]) -> Any:
        empty = _stats(series(frozenset(), fold_drops).clustered(view, measure), weights)
        return lambda subset: (
            _stats(series(subset, fold_drops).clustered(view, measure), weights) - empty
        )

    # Shares among the candidates (Shapley), and each remedy alone (for what it rules out).
    shares: dict[str, list[np.ndarray]] = {c: [] for c in available}
    alone: dict[str, list[np.ndarray]] = {c: [] for c in available}
    for measure, fold_drops in folds:
        value = fold_value(measure, fold_drops)
        if candidates:
            for code, gain in shapley(candidates, value).items():
                shares[code].append(gain)
        for code in available:
            alone[code].append(value(frozenset({code})))
    held = len(folds) > 1
    remedies: list[dict[str, Any]] = []
    for code in available:
        gain_alone = np.mean(alone[code], axis=0)
        gain = np.mean(shares[code], axis=0) if shares[code] else gain_alone
        with np.errstate(invalid="ignore", divide="ignore"):
            share, share_alone = gain / gap, gain_alone / gap
        lo, hi = _interval(share[1:])
        remedies.append(
            {
                "code": code,
                "remedy": REMEDY_WORDS[code],
                "candidate": code in candidates,
                "rows_dropped": int(drops[code].sum()) if code in drops else 0,
                "remedied_mean": _finite(current[0] + gain_alone[0]),
                "recovered_share": _finite(share[0]),
                "recovered_share_ci": [_finite(lo), _finite(hi)],
                "recovered_share_alone": _finite(share_alone[0]),
                "held_out": held,
                "estimate": None,
                "explains_nothing": bool(math.isfinite(hi) and hi < EXPLAINS_NOTHING),
            }
        )
    if not maker.can_sort and view.sliding:
        remedies.append(_estimated_reorder(view, current, gap, weights))
    remedies.sort(key=lambda r: -(r["recovered_share"] or 0.0))
    out["remedies"] = remedies
    return out


Fold = tuple[np.ndarray | None, Mapping[str, np.ndarray]]


def _folds(
    view: RowView, flags: FlagFunction, dilution: bool, drops: Mapping[str, np.ndarray]
) -> list[Fold] | None:
    """Where pages are flagged from their coherence, two folds: pages chosen on one half
    of the pairs, every value measured on the other half. Otherwise one fold, all pairs."""
    if not dilution:
        return [(None, drops)]
    half = pair_half(view)
    folds: list[Fold] = []
    for chosen_on in (0, 1):
        mask = flags(chosen_on)
        if mask is None:
            return None
        folds.append((half != chosen_on, {**drops, "low_coherence_dilution": mask}))
    return folds


def _estimated_reorder(
    view: RowView, current: np.ndarray, gap: np.ndarray, weights: np.ndarray
) -> dict[str, Any]:
    """Without ids, sorting cannot be applied; its effect is estimated from the lag
    profile instead. When bursts of articles are interleaved, a row's own next chunk
    sits k rows further, so cos(row i, row i+k) peaks at k > 1; putting each row next to
    it would raise S to that peak. On ordered data the peak is at k = 1: share 0.
    Chunks further apart than the pass's lags are not seen, so this is a lower bound."""
    cpass = view.cpass
    per_lag = np.stack(
        [
            _stats(clustered(cpass.lag(k), view.cluster[k:], view.n_clusters), weights)
            for k in range(1, cpass.max_lag + 1)
        ]
    )
    best = int(np.nanargmax(per_lag[:, 0]))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = (np.nanmax(per_lag, axis=0) - current) / gap
    share[0] = (per_lag[best, 0] - current[0]) / gap[0]
    lo, hi = _interval(share[1:])
    return {
        "code": "ordering_or_boundary",
        "remedy": REMEDY_WORDS["ordering_or_boundary"],
        "candidate": True,
        "rows_dropped": 0,
        "remedied_mean": _finite(per_lag[best, 0]),
        "recovered_share": _finite(share[0]),
        "recovered_share_ci": [_finite(lo), _finite(hi)],
        "recovered_share_alone": _finite(share[0]),
        "held_out": False,
        "estimate": f"a lower bound estimated without ids from the lag profile "
        f"(peak at {best + 1} rows)",
        "explains_nothing": bool(math.isfinite(hi) and hi < EXPLAINS_NOTHING),
    }


def attribute(ctx: CheckContext, results: Mapping[str, CheckResult]) -> dict[str, Any]:
    """The attribution section of one dataset's results (JSON-ready)."""
    out: dict[str, Any] = {}
    try:
        coherence = coherence_attribution(ctx, results)
    except (CheckSkipped, LvmqaError) as exc:
        out["coherence_note"] = str(exc)
        coherence = None
    if coherence is not None:
        out["coherence"] = coherence
    return out
