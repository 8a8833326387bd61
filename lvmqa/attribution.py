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
  the statistic); drop the flagged low-quality pages — dilution; drop the articles
  shared with val/OOD — leakage.
* Rows chosen from the statistic itself would make the number circular (the seed's
  "coherence recovered to 0.4250"). Pages flagged from their coherence are therefore
  chosen on one half of each article's adjacent pairs and measured on the other half
  (both ways, averaged); the other remedies choose rows without looking at cosines.
* The CI is a Poisson cluster bootstrap over articles (blocks of rows without ids):
  the same weights for the current and the remedied series, independent weights for
  the baseline.

Gaps outside coherence have remedies with their own statistic (re-normalising for
norms, re-aligning texts by the best offset, dropping leaked articles); those
shares are computed from the checks' metrics in :mod:`lvmqa.diagnosis`.
See docs/diagnosis.md.
"""

from __future__ import annotations

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
REMEDIES = ("ordering_or_boundary", "duplicates", "low_coherence_dilution", "split_leakage")
REMEDY_WORDS = {
    "ordering_or_boundary": "sorting by (article, chunk)",
    "duplicates": "removing duplicated targets",
    "low_coherence_dilution": "removing the flagged low-quality pages",
    "split_leakage": "removing the articles shared with val/OOD",
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


def row_view(ctx: CheckContext) -> RowView:
    from lvmqa.coherence import coherence_pass, resolve_row_ids

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
        )

    return ctx.cached("attribution_row_view", compute)


def _pairs_cosines(view: RowView, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    from lvmqa.coherence import pair_cosines

    if first.size == 0:
        return np.empty(0, dtype=np.float32)
    return pair_cosines(first, second, view.cpass, view.read_rows)


def _consecutive(view: RowView, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosines and clusters of consecutive rows of ``rows`` (an order of kept rows)."""
    first, second = rows[:-1], rows[1:]
    return _pairs_cosines(view, first, second), view.cluster[second]


# ------------------------------------------------------------------------ series
def current_series(view: RowView, drop: np.ndarray | None = None) -> Clustered:
    """S of the data as stored, optionally with rows dropped (their neighbours re-paired)."""
    if view.sliding:
        if drop is None:
            values = view.cpass.file_order
            return clustered(values, view.cluster[1:], view.n_clusters)
        kept = np.flatnonzero(~drop)
        values, clusters = _consecutive(view, kept)
        return clustered(values, clusters, view.n_clusters)
    steps = view.cpass.step_cosines
    windows = np.nanmean(steps, axis=1) if steps.shape[1] else np.full(view.n, np.nan)
    keep = np.ones(view.n, bool) if drop is None else ~drop
    return clustered(windows[keep], view.cluster[keep], view.n_clusters)


def sorted_series(view: RowView, drop: np.ndarray | None = None) -> Clustered | None:
    """S after rebuilding in (article, chunk) order: consecutive distinct chunk keys.

    A repeated (article, chunk) key is not an adjacency (it is a duplicate); article
    boundaries stay, as in a correctly built file whose windows slide inside each
    article. None without complete article ids.
    """
    from lvmqa.coherence import article_order_rows

    ids = view.ids
    if ids is None or not ids.complete:
        return None
    order = article_order_rows(ids)
    if drop is not None:
        order = order[~drop[order]]
    if order.size < 2:
        return None
    art, chunk = ids.article[order], ids.chunk[order]
    distinct = (art[1:] != art[:-1]) | (chunk[1:] != chunk[:-1]) | ~ids.chunk_known[order][1:]
    first, second = order[:-1][distinct], order[1:][distinct]
    values = _pairs_cosines(view, first, second)
    return clustered(values, view.cluster[second], view.n_clusters)


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


def leaked_rows(ctx: CheckContext, results: Mapping[str, CheckResult]) -> np.ndarray | None:
    """Rows of articles that split_leakage confirmed as shared with val/OOD."""
    result = results.get("split_leakage")
    if result is None:
        return None
    shared = result.details.get("shared_article_ids") or result.metrics.get("shared_article_ids")
    view = row_view(ctx)
    if not shared or view.ids is None:
        return None
    return np.isin(view.ids.article, np.asarray(list(shared), dtype=np.int64))


FlagFunction = Callable[[int | None], np.ndarray | None]


def dilution_flags(ctx: CheckContext) -> FlagFunction | None:
    """``flags(half)``: rows of the pages flagged as low quality, chosen from half
    ``half`` of each article's adjacent pairs (None: all pairs), or None if unknown."""
    try:
        from lvmqa import texts
    except ImportError:  # pragma: no cover - texts is part of lvmqa
        return None
    finder = getattr(texts, "flagged_row_mask", None)
    if finder is None:
        return None

    def flags(half: int | None) -> np.ndarray | None:
        try:
            try:
                mask = finder(ctx, half=half)
            except TypeError:  # a finder that cannot hold a half out
                mask = finder(ctx) if half is None else None
        except (CheckSkipped, LvmqaError):
            return None
        return None if mask is None else np.asarray(mask, dtype=bool)

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
@dataclass
class Remedy:
    code: str
    rows_dropped: int
    shares: list[float]  # point share, per measurement fold
    samples: np.ndarray  # bootstrap shares (concatenated folds)
    remedied_mean: float
    held_out: bool
    estimate: str | None = None

    def to_json(self, gap: float) -> dict[str, Any]:
        share = float(np.mean(self.shares)) if self.shares else float("nan")
        lo, hi = _interval(self.samples)
        return {
            "code": self.code,
            "remedy": REMEDY_WORDS[self.code],
            "rows_dropped": self.rows_dropped,
            "remedied_mean": _finite(self.remedied_mean),
            "recovered_share": _finite(share),
            "recovered_share_ci": [_finite(lo), _finite(hi)],
            "held_out": self.held_out,
            "estimate": self.estimate,
            "explains_nothing": bool(math.isfinite(hi) and hi < EXPLAINS_NOTHING),
        }


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


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
    rng = seeded_rng(ctx, "attribution")
    weights = poisson_weights(view.n_clusters, BOOTSTRAP_REPS, rng)
    current = current_series(view)
    cur_boot = current.resampled(weights)

    drops: dict[str, np.ndarray] = {}
    dups = duplicated_rows(ctx)
    if dups.any():
        drops["duplicates"] = dups
    leaked = leaked_rows(ctx, results)
    if leaked is not None and leaked.any():
        drops["split_leakage"] = leaked
    flags = dilution_flags(ctx)
    flagged_all = flags(None) if flags else None
    if flagged_all is not None and flagged_all.any():
        drops["low_coherence_dilution"] = flagged_all
    can_sort = view.ids is not None and view.ids.complete

    base_ctx = ctx.baseline()
    reference_kind = "baseline" if base_ctx is not None else "all remedies"
    ref_boot: np.ndarray
    if base_ctx is not None:
        try:
            base_view = row_view(base_ctx)
        except (CheckSkipped, LvmqaError):
            return None
        base = current_series(
            RowView(
                base_view.n,
                base_view.cpass,
                base_view.ids,
                base_view.cluster,
                base_view.n_clusters,
                view.sliding,  # the same statistic on both sides
                base_view.read_rows,
            )
        )
        reference = base.mean
        base_weights = poisson_weights(
            base_view.n_clusters, BOOTSTRAP_REPS, seeded_rng(ctx, "attribution:baseline")
        )
        ref_boot = base.resampled(base_weights)
    else:
        everything = np.zeros(view.n, bool)
        for mask in drops.values():
            everything |= mask
        combined = (
            sorted_series(view, everything if everything.any() else None) if can_sort else None
        )
        if combined is None:
            combined = current_series(view, everything) if everything.any() else None
        if combined is None:
            return None
        reference = combined.mean
        ref_boot = combined.resampled(weights)

    gap_boot = ref_boot - cur_boot
    gap = reference - current.mean
    gap_ci = _interval(gap_boot)
    out: dict[str, Any] = {
        "statistic": "file_order" if view.sliding else "within_window",
        "reference": reference_kind,
        "reference_mean": _finite(reference),
        "current_mean": _finite(current.mean),
        "gap": _finite(gap),
        "gap_ci": [_finite(gap_ci[0]), _finite(gap_ci[1])],
        "gap_significant": bool(math.isfinite(gap_ci[0]) and gap_ci[0] > 0),
        "clusters": "articles" if can_sort else f"blocks of {NO_ID_BLOCK_ROWS} rows",
        "bootstrap_reps": BOOTSTRAP_REPS,
        "remedies": [],
        "not_measured": {},
    }
    if not out["gap_significant"]:
        return out

    def share_of(remedied: Clustered, fold_weights: np.ndarray) -> tuple[float, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            samples = (remedied.resampled(fold_weights) - cur_boot) / gap_boot
        return (remedied.mean - current.mean) / gap, samples

    remedies: list[Remedy] = []
    if can_sort:
        remedied = sorted_series(view)
        if remedied is not None:
            share, samples = share_of(remedied, weights)
            remedies.append(
                Remedy("ordering_or_boundary", 0, [share], samples, remedied.mean, False)
            )
    elif view.sliding:
        remedies.append(_estimated_reorder(view, current, cur_boot, gap, gap_boot, weights))
    else:
        out["not_measured"]["ordering_or_boundary"] = (
            "needs article and chunk ids for every row (map them with [datasets.X.keys])"
        )
    for code, mask in drops.items():
        held_out = code == "low_coherence_dilution"
        if held_out and flags is not None:
            remedy = _held_out_dilution(view, flags, current, cur_boot, gap, gap_boot, weights)
            if remedy is None:
                out["not_measured"][code] = "flagged pages could not be chosen on half the pairs"
                continue
            remedies.append(remedy)
            continue
        remedied = current_series(view, mask)
        share, samples = share_of(remedied, weights)
        remedies.append(Remedy(code, int(mask.sum()), [share], samples, remedied.mean, False))
    if "duplicates" not in drops:
        out["not_measured"]["duplicates"] = "no duplicated target vector"
    if "low_coherence_dilution" not in drops:
        out["not_measured"]["low_coherence_dilution"] = "no page flagged as low quality"
    remedies.sort(key=lambda r: -float(np.mean(r.shares)))
    out["remedies"] = [r.to_json(gap) for r in remedies]
    return out


def _estimated_reorder(
    view: RowView,
    current: Clustered,
    cur_boot: np.ndarray,
    gap: float,
    gap_boot: np.ndarray,
    weights: np.ndarray,
) -> Remedy:
    """Without ids, sorting cannot be applied; its effect is estimated from the lag
    profile instead. When bursts of articles are interleaved, a row's own next chunk
    sits k rows further, so cos(row i, row i+k) peaks at k > 1; putting each row next to
    it would raise S to that peak. On ordered data the peak is at k = 1: share 0.
    Chunks further apart than the pass's lags are not seen, so this is a lower bound."""
    cpass = view.cpass
    per_lag = [
        clustered(cpass.lag(k), view.cluster[k:], view.n_clusters)
        for k in range(1, cpass.max_lag + 1)
    ]
    means = np.array([lag.mean for lag in per_lag])
    best = int(np.nanargmax(means))
    boots = np.stack([lag.resampled(weights) for lag in per_lag])
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = (np.nanmax(boots, axis=0) - cur_boot) / gap_boot
    share = (float(means[best]) - current.mean) / gap
    remedy = Remedy("ordering_or_boundary", 0, [share], samples, float(means[best]), False)
    remedy.estimate = (
        f"a lower bound estimated without ids from the lag profile (peak at {best + 1} rows)"
    )
    return remedy


def _held_out_dilution(
    view: RowView,
    flags: FlagFunction,
    current: Clustered,
    cur_boot: np.ndarray,
    gap: float,
    gap_boot: np.ndarray,
    weights: np.ndarray,
) -> Remedy | None:
    """Pages chosen on one half of the pairs, the recovery measured on the other half.

    The series of one half is the current S restricted to that half's pairs; the
    remedied one drops the pages chosen on the *other* half. Shares of the two folds
    are averaged (their bootstrap samples pooled).
    """
    half = pair_half(view)
    shares: list[float] = []
    samples: list[np.ndarray] = []
    means: list[float] = []
    dropped = 0
    for chosen_on in (0, 1):
        mask = flags(chosen_on)
        if mask is None:
            return None
        measure = half != chosen_on  # rows whose pair (with the predecessor) is held out
        if view.sliding:
            kept = np.flatnonzero(~mask)
            values, clusters = _consecutive(view, kept)
            held = measure[kept[1:]]
            remedied = clustered(values[held], clusters[held], view.n_clusters)
            base_vals = view.cpass.file_order
            base_held = measure[1:]
            cur_half = clustered(base_vals[base_held], view.cluster[1:][base_held], view.n_clusters)
        else:
            steps = view.cpass.step_cosines
            windows = np.nanmean(steps, axis=1) if steps.shape[1] else np.full(view.n, np.nan)
            remedied = clustered(
                windows[measure & ~mask], view.cluster[measure & ~mask], view.n_clusters
            )
            cur_half = clustered(windows[measure], view.cluster[measure], view.n_clusters)
        with np.errstate(invalid="ignore", divide="ignore"):
            fold = (remedied.resampled(weights) - cur_half.resampled(weights)) / gap_boot
        shares.append((remedied.mean - cur_half.mean) / gap)
        samples.append(fold)
        means.append(remedied.mean)
        dropped = max(dropped, int(mask.sum()))
    del current, cur_boot
    pooled = np.mean(np.stack(samples), axis=0)
    return Remedy("low_coherence_dilution", dropped, shares, pooled, float(np.mean(means)), True)


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
