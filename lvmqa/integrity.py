"""Sequence integrity: do windows stay inside one article, in chunk order?

Two kinds of evidence, reported side by side:

* **ids** — article and chunk of each row, from the file, its per-sequence metadata or
  a join of ``target_id`` to the source bank. When only the target's ids are known per
  row, a window's contexts are identified as earlier rows by vector identity (a window
  built by sliding over the file has context j == target of row g - C + j), so the
  ids of those rows apply; windows whose contexts cannot be identified stay unchecked.
* **statistics** (always, and the only evidence without ids) — in a well-ordered file
  the cosine of rows k apart decays with k (a random walk inside each article); with
  broken order it is flat, or rises when articles are interleaved. A runs test on the
  low-coherence pairs tells whole stretches of bad content (clustered: dilution) from
  isolated breaks (scattered: ordering).

The context-position profile cos(context j, target), j = 0..C-1, should rise toward the
target; it is flat when windows mix articles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lvmqa.coherence import (
    BOOTSTRAP_REPS,
    CI_LEVEL,
    DEFAULT_DRIFT_LOW_SHARE_PP,
    DEFAULT_LOW_COHERENCE,
    CoherencePass,
    RowIds,
    article_order,
    block_bootstrap_means,
    block_length,
    coherence_pass,
    column_means,
    percentile_ci,
    resolve_row_ids,
    seeded_rng,
)
from lvmqa.errors import LvmqaError
from lvmqa.gates import applies
from lvmqa.gates import make as make_gate
from lvmqa.results import CheckResult, Gate, from_gates

if TYPE_CHECKING:
    from lvmqa.checks import CheckContext

OrderingVerdict = Literal["ordered", "broken", "inconclusive"]
MIN_ORDERING_PAIRS = 100
# "No decay" means: the decay's upper confidence bound is below a quarter of the spread
# of adjacency cosines (Cohen's convention puts "small" effects at 0.2 standard deviations).
NO_DECAY_EFFECT = 0.25
RUNS_Z = 3.0
# A single misplaced row makes two consecutive low pairs (its pairs with both
# neighbours), so runs up to ~2x the independent expectation are explained by isolated
# breaks; longer runs are stretches of low coherence (whole incoherent articles).
CLUSTER_RUN_RATIO = 3.0
EXAMPLE_ROWS = 10
WINDOW_BLOCK = 65_536  # windows per block of window_integrity


# ------------------------------------------------------------------ ordering test
@dataclass(frozen=True)
class OrderingTest:
    profile: list[float]  # mean cos(row i, row i+k), k = 1..K
    random_pair_mean: float
    decay: float  # profile[0] - profile[-1]
    decay_ci: tuple[float, float]
    decay_ratio: float  # decay / |profile[0]|
    rising_lags: list[int]  # lags k >= 2 significantly MORE alike than neighbours
    block_rows: int
    n_pairs: int
    verdict: OrderingVerdict
    reason: str


def ordering_test(
    lag_cosines: np.ndarray,
    *,
    reps: int = BOOTSTRAP_REPS,
    rng: np.random.Generator | None = None,
    random_pair_mean: float = float("nan"),
    min_pairs: int = MIN_ORDERING_PAIRS,
) -> OrderingTest:
    """Decay of file-order similarity with distance, with a block-bootstrap CI.

    ``lag_cosines[g, k-1]`` = cos(row g-k, row g). Rows are resampled in blocks, so all
    lags of a row move together and the CI of m1 - mK is a paired one.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    k = lag_cosines.shape[1]
    profile = column_means(lag_cosines)
    n_pairs = int(np.isfinite(lag_cosines[:, -1]).sum()) if k else 0
    decay = float(profile[0] - profile[-1]) if k else float("nan")
    ratio = decay / abs(profile[0]) if k and profile[0] else float("nan")
    first = lag_cosines[:, 0] if k else np.empty(0)
    block = block_length(first)
    base = OrderingTest(
        [float(v) for v in profile],
        random_pair_mean,
        decay,
        (float("nan"), float("nan")),
        ratio,
        [],
        block,
        n_pairs,
        "inconclusive",
        "",
    )
    if k < 2 or n_pairs < min_pairs:
        return replace(
            base,
            reason=f"too few rows for an ordering test ({n_pairs} pairs at "
            f"lag {k}, need {min_pairs})",
        )
    # Rows from K on have every lag defined: without the leading NaNs the bootstrap
    # needs no per-block counts (twice as fast on millions of rows).
    boot = block_bootstrap_means(lag_cosines[k:], block, reps, rng)
    decay_ci = percentile_ci(boot[:, 0] - boot[:, -1])
    # K - 1 lags are tested for a rise: Bonferroni keeps the family-wise error at 5 %.
    level = 1.0 - (1.0 - CI_LEVEL) / (k - 1)
    rising = [
        lag + 1 for lag in range(1, k) if percentile_ci(boot[:, lag] - boot[:, 0], level)[0] > 0
    ]
    spread = float(np.nanstd(first))
    result = replace(base, decay_ci=decay_ci, rising_lags=rising)
    if rising:
        peak = max(rising, key=lambda lag: profile[lag - 1])
        return replace(
            result,
            verdict="broken",
            reason=(
                f"rows {peak} apart are more alike than neighbouring rows "
                f"({profile[peak - 1]:.3f} vs {profile[0]:.3f}): articles are interleaved"
            ),
        )
    if decay_ci[0] > 0:
        return replace(
            result,
            verdict="ordered",
            reason=(
                f"similarity decays with distance ({profile[0]:.3f} at 1 row, {profile[-1]:.3f} "
                f"at {k} rows; 95 % CI of the decay {decay_ci[0]:+.3f}..{decay_ci[1]:+.3f})"
            ),
        )
    if decay_ci[1] < NO_DECAY_EFFECT * spread:
        return replace(
            result,
            verdict="broken",
            reason=(
                f"neighbouring rows are no more alike than rows {k} apart ({profile[0]:.3f} vs "
                f"{profile[-1]:.3f}; random pairs {random_pair_mean:.3f}): the file order carries "
                "no article structure"
            ),
        )
    return replace(
        result,
        reason=(
            f"decay {decay:+.3f} not distinguishable from 0 or from a real decay "
            f"(CI {decay_ci[0]:+.3f}..{decay_ci[1]:+.3f}); more rows needed"
        ),
    )


# --------------------------------------------------- breaks: random-like adjacency
@dataclass(frozen=True)
class BreakTest:
    """Share of adjacent pairs as unrelated as random pairs, vs the baseline's."""

    share: float
    baseline_share: float | None
    excess_pp: float | None
    excess_ci_pp: tuple[float, float] | None
    significant: bool


def random_like_series(file_order: np.ndarray, random_pair_mean: float) -> np.ndarray:
    """2 x [cos < mean cosine of random pairs], NaN kept: its mean estimates the share of
    adjacent pairs that behave like pairs of unrelated rows.

    Pairs of unrelated rows fall below their own mean about half the time (the
    distribution of random-pair cosines is near-symmetric), related neighbours almost
    never do; doubling the share below that level estimates the unrelated fraction
    (the same idea as Storey's pi0 estimate for p-values).
    """
    v = np.asarray(file_order, dtype=np.float64)
    return np.where(np.isfinite(v), 2.0 * (v < random_pair_mean), np.nan)


def break_test(
    current: CoherencePass,
    baseline: CoherencePass | None,
    *,
    min_excess_pp: float,
    reps: int = BOOTSTRAP_REPS,
    rng: np.random.Generator | None = None,
) -> BreakTest:
    """More random-like adjacencies than the baseline, beyond noise and ``min_excess_pp``?"""
    rng = rng if rng is not None else np.random.default_rng(0)
    cur = random_like_series(current.file_order, current.random_pair_mean)
    share = float(min(1.0, np.nanmean(cur))) if np.isfinite(cur).any() else float("nan")
    if baseline is None:
        return BreakTest(share, None, None, None, False)
    base = random_like_series(baseline.file_order, baseline.random_pair_mean)
    return _compared_shares(cur, base, min_excess_pp, reps, rng, share=share)


def _compared_shares(
    cur: np.ndarray,
    base: np.ndarray,
    min_excess_pp: float,
    reps: int,
    rng: np.random.Generator,
    *,
    share: float | None = None,
) -> BreakTest:
    """Share of 1s in ``cur`` vs ``base`` (NaN excluded), with a block-bootstrap CI of the
    excess in pp; significant when the CI is above 0 AND the excess beyond the rule."""
    share = float(np.nanmean(cur)) if share is None else share
    base_share = float(min(1.0, np.nanmean(base))) if np.isfinite(base).any() else float("nan")
    diff = block_bootstrap_means(cur, block_length(cur), reps, rng)[:, 0]
    diff = diff - block_bootstrap_means(base, block_length(base), reps, rng)[:, 0]
    lo, hi = percentile_ci(100.0 * diff)
    excess = 100.0 * (share - base_share)
    return BreakTest(share, base_share, excess, (lo, hi), bool(lo > 0 and excess > min_excess_pp))


# The tail of the baseline's within-window steps that counts as a break.
BREAK_STEP_QUANTILE = 1.0  # percent


def broken_windows(steps: np.ndarray, threshold: float) -> np.ndarray:
    """Per window, 1.0 when one of its steps (context j -> j+1) is below ``threshold``
    (NaN when no step is defined): a window that straddles two articles has one step
    between unrelated chunks."""
    with np.errstate(invalid="ignore"):
        lowest = np.nanmin(np.where(np.isfinite(steps), steps, np.inf), axis=1)
    out = (lowest < threshold).astype(np.float64)
    out[~np.isfinite(lowest)] = np.nan
    return out


def window_break_test(
    current: CoherencePass,
    baseline: CoherencePass | None,
    *,
    min_excess_pp: float,
    reps: int = BOOTSTRAP_REPS,
    rng: np.random.Generator | None = None,
) -> BreakTest:
    """More windows with a break than the baseline, beyond noise and ``min_excess_pp``?

    A break is a step below the baseline's own 1 % quantile of steps, so the threshold
    follows the encoder's and the corpus's cosine scale. A window has C - 1 steps, so
    the few windows straddling an interleaved boundary stand out more than single
    file-order pairs do (partial interleaving)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    if baseline is None or current.step_cosines.shape[1] == 0:
        return BreakTest(float("nan"), None, None, None, False)
    base_steps = baseline.step_cosines
    if not np.isfinite(base_steps).any():
        return BreakTest(float("nan"), None, None, None, False)
    threshold = float(np.nanpercentile(base_steps, BREAK_STEP_QUANTILE))
    cur = broken_windows(current.step_cosines, threshold)
    base = broken_windows(base_steps, threshold)
    if not (np.isfinite(cur).any() and np.isfinite(base).any()):
        return BreakTest(float("nan"), None, None, None, False)
    return _compared_shares(cur, base, min_excess_pp, reps, rng)


# ----------------------------------------------------------------------- runs test
@dataclass(frozen=True)
class RunsTest:
    n: int
    n_low: int
    runs: int
    expected_runs: float
    z: float
    mean_low_run: float
    expected_low_run: float  # under independence: 1 / (1 - p)
    run_length_ratio: float
    pattern: Literal["clustered", "scattered", "none", "all"]


def runs_test(values: np.ndarray, low_threshold: float) -> RunsTest:
    """Wald–Wolfowitz runs test on the indicator "pair below the low threshold".

    Clustered low pairs (few, long runs; z << 0) mean stretches of incoherent rows, as
    whole low-quality articles produce; scattered ones mean isolated breaks, as rows
    from other articles dropped between neighbours produce.
    """
    v = np.asarray(values, dtype=np.float64)
    low = v[np.isfinite(v)] < low_threshold
    n, n_low = int(low.size), int(low.sum())
    nan = float("nan")
    if n_low == 0 or n_low == n:
        return RunsTest(
            n, n_low, 1 if n else 0, nan, nan, nan, nan, nan, "none" if n_low == 0 else "all"
        )
    n_high = n - n_low
    runs = 1 + int(np.count_nonzero(low[1:] != low[:-1]))
    expected = 2.0 * n_low * n_high / n + 1.0
    variance = (expected - 1.0) * (expected - 2.0) / (n - 1.0)
    z = (runs - expected) / math.sqrt(variance) if variance > 0 else nan
    starts = int(low[0]) + int(np.count_nonzero(low[1:] & ~low[:-1]))
    mean_run = n_low / starts
    expected_run = 1.0 / (1.0 - n_low / n)
    ratio = mean_run / expected_run
    clustered = math.isfinite(z) and z < -RUNS_Z and ratio > CLUSTER_RUN_RATIO
    return RunsTest(
        n,
        n_low,
        runs,
        expected,
        z,
        mean_run,
        expected_run,
        ratio,
        "clustered" if clustered else "scattered",
    )


# -------------------------------------------------------------- position profile
@dataclass(frozen=True)
class ProfileTest:
    profile: list[float]  # mean cos(context j, target), j = 0..C-1
    rise: float  # profile[-1] - profile[0]
    rise_ci: tuple[float, float]
    rises: bool | None  # None when C < 2
    monotonic: bool | None


def position_profile_test(
    position_cosines: np.ndarray,
    *,
    reps: int = BOOTSTRAP_REPS,
    rng: np.random.Generator | None = None,
) -> ProfileTest:
    """Does cos(context j, target) rise toward the target? (CI of last - first > 0)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    profile = column_means(position_cosines)
    c = position_cosines.shape[1]
    if c < 2 or not np.isfinite(profile).all():
        return ProfileTest(
            [float(v) for v in profile], float("nan"), (float("nan"), float("nan")), None, None
        )
    block = block_length(position_cosines[:, -1])
    boot = block_bootstrap_means(position_cosines, block, reps, rng)
    ci = percentile_ci(boot[:, -1] - boot[:, 0])
    return ProfileTest(
        [float(v) for v in profile],
        float(profile[-1] - profile[0]),
        ci,
        bool(ci[0] > 0),
        bool(np.all(np.diff(profile) > 0)),
    )


# ----------------------------------------------------------------- window ids
@dataclass(frozen=True)
class WindowIntegrity:
    """Per-window verdicts as floats: 1 = yes, 0 = no, NaN = cannot tell."""

    crossing: np.ndarray
    non_consecutive: np.ndarray  # inside one article, chunks skip (crossing windows: 0)
    wrong_order: np.ndarray  # inside one article, a chunk goes backwards
    contexts_identified_share: float  # contexts matched to earlier rows by identity
    inferred_windows: int  # windows judged from per-row ids of identified contexts
    metadata_windows: int  # windows judged from the file's own per-window flags
    metadata_disagreements: int  # windows where the two disagree (the vectors win)

    @property
    def checked(self) -> np.ndarray:
        return np.isfinite(self.crossing)

    def share(self, values: np.ndarray) -> float:
        checked = self.checked
        if not checked.any():
            return float("nan")
        return float(np.nan_to_num(values[checked], nan=0.0).mean())


def window_integrity(
    ids: RowIds | None,
    identity: np.ndarray,
    meta_differ: np.ndarray | None = None,
    meta_consecutive: np.ndarray | None = None,
) -> WindowIntegrity:
    """Crossing / skipping / backwards windows from ids and identified contexts.

    ``identity[g, j]`` says context j of window g is the target of row g - C + j;
    ``meta_differ`` / ``meta_consecutive`` are the file's per-window flags (NaN unknown).
    """
    n, c = identity.shape
    crossing, non_consecutive, wrong = (np.full(n, np.nan) for _ in range(3))
    inferred = 0
    if ids is not None and n:
        # Blocks of windows keep the (rows, C) temporaries in the CPU cache: on millions
        # of windows, whole-file temporaries cost more in fresh memory than in work.
        for start in range(0, n, WINDOW_BLOCK):
            part = slice(start, min(start + WINDOW_BLOCK, n))
            _window_ids_block(ids, identity, part, crossing, non_consecutive, wrong)
        inferred = int(np.isfinite(crossing).sum())
    disagreements = 0
    from_meta = 0
    if meta_differ is not None:
        both = np.isfinite(crossing) & np.isfinite(meta_differ)
        disagreements = int((crossing[both] != meta_differ[both]).sum())
        fill = ~np.isfinite(crossing) & np.isfinite(meta_differ)
        from_meta = int(fill.sum())
        crossing = np.where(fill, meta_differ, crossing)
        non_consecutive = np.where(fill & (meta_differ == 1), 0.0, non_consecutive)
        wrong = np.where(fill & (meta_differ == 1), 0.0, wrong)
    if meta_consecutive is not None:
        fill = ~np.isfinite(non_consecutive) & np.isfinite(meta_consecutive) & (crossing == 0)
        non_consecutive = np.where(fill, 1.0 - meta_consecutive, non_consecutive)
        # A window whose chunks are consecutive cannot go backwards.
        wrong = np.where(
            ~np.isfinite(wrong) & (meta_consecutive == 1) & (crossing == 0), 0.0, wrong
        )
    valid_rows = (np.arange(n)[:, None] - c + np.arange(c)[None, :]) >= 0
    identified = float(identity[valid_rows].mean()) if valid_rows.any() else 0.0
    return WindowIntegrity(
        crossing, non_consecutive, wrong, identified, inferred, from_meta, disagreements
    )


def _window_ids_block(
    ids: RowIds,
    identity: np.ndarray,
    part: slice,
    crossing: np.ndarray,
    non_consecutive: np.ndarray,
    wrong: np.ndarray,
) -> None:
    """Fill windows ``part`` of the three verdict arrays from per-row ids."""
    c = identity.shape[1]
    target = np.arange(part.start, part.stop)
    rows = target[:, None] - c + np.arange(c)[None, :]  # the row of each context
    safe = np.clip(rows, 0, None)
    known = (
        identity[part] & (rows >= 0) & ids.article_known[safe] & ids.article_known[target][:, None]
    )
    differs = known & (ids.article[safe] != ids.article[target][:, None])
    cross = np.where(differs.any(axis=1), 1.0, np.where(known.all(axis=1), 0.0, np.nan))
    chunks_known = (cross == 0) & ids.chunk_known[safe].all(axis=1) & ids.chunk_known[target]
    chain = np.concatenate([ids.chunk[safe], ids.chunk[target][:, None]], axis=1)
    steps = np.diff(chain, axis=1)
    crossing[part] = cross
    non_consecutive[part] = np.where(
        cross == 1, 0.0, np.where(chunks_known, (steps != 1).any(axis=1), np.nan)
    )
    wrong[part] = np.where(cross == 1, 0.0, np.where(chunks_known, (steps < 0).any(axis=1), np.nan))


def _flag_column(ctx: CheckContext, column: str) -> np.ndarray | None:
    meta = ctx.dataset.meta
    if column not in meta.columns or not meta[column].notna().any():
        return None
    return meta[column].astype("Float64").to_numpy(dtype="float64", na_value=np.nan)


# ------------------------------------------------------------ file-order pairs
def pair_classes(ids: RowIds, file_order: np.ndarray, low_threshold: float) -> dict[str, Any]:
    """Adjacent file-order pairs split into same-article and article-crossing pairs.

    This separates the two root causes: an ordering defect puts the low pairs at article
    crossings; dilution puts them inside articles.
    """
    known = ids.article_known[:-1] & ids.article_known[1:] & np.isfinite(file_order)
    crossing = ids.article[:-1] != ids.article[1:]
    low = file_order < low_threshold

    def share(mask: np.ndarray, of: np.ndarray) -> float:
        return float(mask[of].mean()) if of.any() else float("nan")

    def mean(of: np.ndarray) -> float:
        return float(file_order[of].mean()) if of.any() else float("nan")

    within, across = known & ~crossing, known & crossing
    return {
        "file_order_pairs_with_ids": int(known.sum()),
        "file_order_crossing_share": share(crossing, known),
        "low_pairs_crossing_share": share(crossing, known & low),
        "within_article_low_share": share(low, within),
        "across_article_low_share": share(low, across),
        "within_article_mean": mean(within),
        "across_article_mean": mean(across),
    }


# -------------------------------------------------------------------------- check
def check_sequence_integrity(ctx: CheckContext) -> CheckResult:
    ds = ctx.dataset
    low = float(ctx.threshold("low_coherence", DEFAULT_LOW_COHERENCE))
    cpass = coherence_pass(ctx)
    ids = resolve_row_ids(ctx)
    ordering = ordering_test(
        cpass.lag_cosines, rng=seeded_rng(ctx, "ordering"), random_pair_mean=cpass.random_pair_mean
    )
    runs = runs_test(cpass.file_order, low)
    breaks, window_breaks, baseline_note = _break_test(ctx, cpass)
    if (
        window_breaks.significant
        and not breaks.significant
        and runs.pattern == "scattered"
        and ordering.verdict != "broken"
    ):
        ordering = replace(
            ordering,
            verdict="broken",
            reason=(
                f"{100 * window_breaks.share:.1f} % of windows hold a step as unrelated as "
                f"the baseline's lowest 1 % vs {100 * (window_breaks.baseline_share or 0):.1f}"
                f" % in the baseline (+{window_breaks.excess_pp:.1f} pp), isolated rather "
                "than in stretches: windows straddle interleaved articles"
            ),
        )
    if breaks.significant and runs.pattern == "scattered" and ordering.verdict != "broken":
        # Partly interleaved rows still decay with distance (most neighbours are related);
        # what gives them away is the isolated, random-like adjacencies.
        ordering = replace(
            ordering,
            verdict="broken",
            reason=(
                f"{100 * breaks.share:.1f} % of adjacent rows are as unrelated as random "
                f"pairs vs {100 * (breaks.baseline_share or 0):.1f} % in the baseline "
                f"(+{breaks.excess_pp:.1f} pp), isolated rather than in stretches: rows of "
                "other articles are interleaved"
            ),
        )
    profile = position_profile_test(cpass.position_cosines, rng=seeded_rng(ctx, "profile"))
    windows = window_integrity(
        ids,
        cpass.context_is_previous_target,
        _flag_column(ctx, "context_articles_differ"),
        _flag_column(ctx, "context_chunks_consecutive"),
    )
    checked = int(windows.checked.sum())

    metrics: dict[str, Any] = {
        "ids_source": ids.source if ids is not None else None,
        "windows_checked": checked,
        "windows_unchecked": int(ds.n - checked),
        "crossing_share": windows.share(windows.crossing),
        "crossing_count": int(np.nansum(windows.crossing)),
        "non_consecutive_share": windows.share(windows.non_consecutive),
        "wrong_order_share": windows.share(windows.wrong_order),
        "contexts_identified_share": windows.contexts_identified_share,
        "sliding_window_share": cpass.sliding_window_share,
        **_ordering_metrics(ordering),
        "random_like_adjacency_share": breaks.share,
        "baseline_random_like_adjacency_share": breaks.baseline_share,
        "random_like_excess_pp": breaks.excess_pp,
        "random_like_excess_ci_pp": list(breaks.excess_ci_pp) if breaks.excess_ci_pp else None,
        "broken_window_share": window_breaks.share,
        "baseline_broken_window_share": window_breaks.baseline_share,
        "broken_window_excess_pp": window_breaks.excess_pp,
        "broken_window_excess_ci_pp": (
            list(window_breaks.excess_ci_pp) if window_breaks.excess_ci_pp else None
        ),
        **_runs_metrics(runs),
        "position_profile": profile.profile,
        "position_profile_rise": profile.rise,
        "position_profile_rise_ci": list(profile.rise_ci),
        "position_profile_rises": profile.rises,
        "position_profile_monotonic": profile.monotonic,
        "low_threshold": low,
    }
    if ids is not None:
        metrics.update(pair_classes(ids, cpass.file_order, low))
    order = article_order(ctx)
    if order is not None and order.cosines.size:
        ao = float(np.nanmean(order.cosines)) if np.isfinite(order.cosines).any() else np.nan
        fo = float(np.nanmean(cpass.file_order)) if cpass.n > 1 else float("nan")
        metrics["article_order_mean"] = ao
        metrics["article_order_gain"] = ao - fo  # what sorting by (article, chunk) recovers

    sliding = cpass.file_order_is_window_order
    gates = _integrity_gates(ctx, metrics, ordering, profile, checked, sliding)
    details = _integrity_details(ds, ids, windows, ordering, runs, checked, sliding)
    if baseline_note:
        details["baseline_note"] = baseline_note
    return from_gates(
        "sequence_integrity",
        metrics,
        gates,
        _integrity_message(metrics, ordering, runs, profile, ids, checked, ds.context_length),
        details,
    )


def _break_test(ctx: CheckContext, cpass: CoherencePass) -> tuple[BreakTest, BreakTest, str | None]:
    """The break test against the baseline's pass when one is configured and readable."""
    pp = float(ctx.threshold("drift_low_share_pp", DEFAULT_DRIFT_LOW_SHARE_PP))
    note = None
    base_pass = None
    try:
        base_ctx = ctx.baseline()
        if base_ctx is not None:
            base_pass = coherence_pass(base_ctx)
    except LvmqaError as exc:
        note = f"baseline unusable for the break test: {exc}"
    if base_pass is None and note is None:
        note = "no baseline: the random-like adjacency share is reported, not judged"
    rng = seeded_rng(ctx, "breaks")
    pairs = break_test(cpass, base_pass, min_excess_pp=pp, rng=rng)
    windows = window_break_test(cpass, base_pass, min_excess_pp=pp, rng=rng)
    return pairs, windows, note


def _ordering_metrics(test: OrderingTest) -> dict[str, Any]:
    return {
        "decay_profile": test.profile,
        "decay": test.decay,
        "decay_ci": list(test.decay_ci),
        "decay_ratio": test.decay_ratio,
        "rising_lags": test.rising_lags,
        "random_pair_mean": test.random_pair_mean,
        "ordering_verdict": test.verdict,
    }


def _runs_metrics(test: RunsTest) -> dict[str, Any]:
    return {
        "runs_z": test.z,
        "low_pairs": test.n_low,
        "low_run_mean_length": test.mean_low_run,
        "low_run_length_ratio": test.run_length_ratio,
        "low_pairs_pattern": test.pattern,
    }


def _integrity_gates(
    ctx: CheckContext,
    metrics: dict[str, Any],
    ordering: OrderingTest,
    profile: ProfileTest,
    checked: int,
    file_order_is_window_order: bool,
) -> list[Gate]:
    gates: list[Gate] = []
    if checked:
        for metric in ("crossing_share", "wrong_order_share"):
            gates.append(make_gate(ctx, "sequence_integrity", metric, metrics[metric]))
        if applies(ctx, "sequence_integrity", "non_consecutive_share"):
            value = metrics["non_consecutive_share"]
            gates.append(make_gate(ctx, "sequence_integrity", "non_consecutive_share", value))
    elif file_order_is_window_order:
        # No ids for any window, and the windows slide over the rows: the file order is
        # the window order, so the statistical ordering test is the evidence.
        broken = int(ordering.verdict == "broken")
        gates.append(make_gate(ctx, "sequence_integrity", "ordering_broken", broken))
    if profile.rises is not None:
        rises = int(profile.rises)
        gates.append(make_gate(ctx, "sequence_integrity", "position_profile_rises", rises))
    return gates


def _integrity_details(
    ds: Any,
    ids: RowIds | None,
    windows: WindowIntegrity,
    ordering: OrderingTest,
    runs: RunsTest,
    checked: int,
    sliding: bool,
) -> dict[str, Any]:
    c = ds.context_length
    details: dict[str, Any] = {
        "ordering_reason": ordering.reason,
        "ordering_block_rows": ordering.block_rows,
        "runs": {"n": runs.n, "runs": runs.runs, "expected_runs": runs.expected_runs},
        "windows_from_ids_of_identified_contexts": windows.inferred_windows,
        "windows_from_file_flags": windows.metadata_windows,
        "flag_disagreements": windows.metadata_disagreements,
    }
    if ids is not None:
        details["ids_notes"] = list(ids.notes)
        if windows.inferred_windows:
            details["context_inference"] = (
                f"only the target's article/chunk is known per row; a window's contexts were "
                f"taken to be the {c} previous rows in file order (how file-order windows are "
                f"built) wherever the context vectors are identical to those rows' targets "
                f"({100 * windows.contexts_identified_share:.1f} % of contexts matched)"
            )
        crossing_rows = np.flatnonzero(windows.crossing == 1)[:EXAMPLE_ROWS]
        texts = ds.target_texts
        details["crossing_examples"] = [
            {
                "row": int(g),
                "article": int(ids.article[g]) if ids.article_known[g] else None,
                "title": ids.title_of(int(g)),
                "target": texts[g] if texts is not None else None,
            }
            for g in crossing_rows
        ]
    if not checked:
        details["ids_note"] = (
            "no window could be checked with ids (none in the file or its metadata, and no "
            "source bank join); "
            + (
                "the windows slide over the rows, so the statistical ordering test of the "
                "file order is the evidence"
                if sliding
                else "the rows are not sliding windows (shuffled or independently built), so the "
                "file-order test is reported only and the context-position profile is the "
                "evidence"
            )
        )
    return details


def _integrity_message(
    metrics: dict[str, Any],
    ordering: OrderingTest,
    runs: RunsTest,
    profile: ProfileTest,
    ids: RowIds | None,
    checked: int,
    c: int,
) -> str:
    parts = []
    if checked:
        parts.append(
            f"{100 * metrics['crossing_share']:.2f} % of {checked} windows cross "
            f"article boundaries, {100 * metrics['non_consecutive_share']:.2f} % skip "
            f"chunks, {100 * metrics['wrong_order_share']:.2f} % go backwards "
            f"(ids from {ids.source if ids else 'file flags'})"
        )
    else:
        parts.append("no ids for the windows")
    parts.append(f"ordering test: {ordering.verdict} — {ordering.reason}")
    if runs.pattern in ("clustered", "scattered"):
        parts.append(
            f"low-coherence pairs {runs.pattern} (runs z = {runs.z:.1f}, mean run "
            f"{runs.mean_low_run:.1f} vs {runs.expected_low_run:.1f} if independent)"
        )
    if "low_pairs_crossing_share" in metrics and math.isfinite(metrics["low_pairs_crossing_share"]):
        parts.append(
            f"{100 * metrics['low_pairs_crossing_share']:.1f} % of low pairs are article crossings"
        )
    if profile.rises is False:
        parts.append(
            f"context-position profile does NOT rise toward the target "
            f"({profile.profile[0]:.3f} at position 0 -> {profile.profile[-1]:.3f} at "
            f"position {c - 1})"
        )
    elif profile.rises:
        parts.append(
            f"context-position profile rises {profile.profile[0]:.3f} -> {profile.profile[-1]:.3f}"
        )
    return "; ".join(parts)
