"""Low-quality pages found from the data itself: per-article statistics against a reference.

A blocklist only finds pages someone thought to name. Changelog bullets, tables of
contents, API listings and glossaries carry no telltale title, yet they read and embed
differently from prose. Each article (rows grouped by article id, in chunk order) gets:

* ``coherence`` -- mean cosine of consecutive targets (lag 1); low is bad;
* ``lag_decay`` -- lag-1 minus lag-2/3 mean cosine; prose drifts, so neighbours are closer
  than chunks further apart, while the items of a list are exchangeable; low is bad;
* ``log_median_chars`` -- log(1 + median text length); low is bad;
* ``fragment_share`` -- chunks that are not sentences (under 5 words or no closing
  punctuation); ``bullet_share`` -- chunks opening with a list marker; and
  ``repeated_prefix_share`` -- chunks whose first two words recur in the article; high
  is bad.

**The rule.** Every statistic is compared with the REFERENCE distribution of articles:
the baseline dataset's when one is configured (and has article ids), else the
dataset's own. With ``mu`` the reference median, ``tau`` the reference's between-article
spread (robust: MAD, or the 5-95 % trimmed variance for zero-inflated shares, less the
typical sampling variance) and ``v_a`` the sampling variance of the statistic for an
article of this size (pooled within-article variance / count, binomial for shares):

    z_a = direction * (x_a - mu) / sqrt(tau^2 + v_a)

so a short article needs a larger deviation than a long one. An article's score is
``S_a = sqrt(sum of max(z, 0)^2)``. The flag threshold spends a false-alarm budget of
``FALSE_ALARM_BUDGET`` articles over the N tested articles: the reference's upper score
tail is modelled as exponential (scale from its median-to-upper-quartile gap), and with a
baseline the threshold is also at least the baseline's own empirical ``1 - budget/N``
score quantile (extrapolated past its maximum), so a clean corpus of any size flags
about nothing, whatever the shape of its tail. Without article ids there are no
articles to compare: the analysis says so and flags nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lvmqa.errors import LvmqaError
from lvmqa.texts import (
    blocklist_row_mask,
    configured_blocklist,
    context_meta,
    normalise_texts,
    optional_strings,
)

if TYPE_CHECKING:
    from lvmqa.checks import CheckContext
    from lvmqa.io import Dataset

# Expected number of clean articles flagged per tested dataset, whatever its size.
FALSE_ALARM_BUDGET = 0.1
# The gate fails only on more flagged articles than a clean dataset shows by chance:
# under the budget the count is Poisson(FALSE_ALARM_BUDGET); counts this rare or rarer
# (p < GATE_COUNT_P) are evidence, and then their rows must also be material.
GATE_COUNT_P = 0.01
# Never flag an article closer to the reference than this many noise units.
MIN_SCORE = 3.0
FRAGMENT_MIN_WORDS = 5
_SENTENCE_CLOSERS = tuple(".!?:;\"')]»”’")
_BULLET = re.compile(r"\s*(?:[-*•+–·▪‣>]|\d{1,3}[.)]|[A-Za-z][.)]|\[[ xX]\])\s+")
_WORD = re.compile(r"\w+")
_LAGS = (1, 2, 3)
_BLOCK_ROWS = 65536
_MAX_LISTED = 50
_EXAMPLES_PER_ARTICLE = 3
_PREVIEW_CHARS = 160

# statistic -> direction in which it is bad (+1 high, -1 low)
STATISTICS: dict[str, int] = {
    "coherence": -1,
    "lag_decay": -1,
    "log_median_chars": -1,
    "fragment_share": 1,
    "bullet_share": 1,
    "repeated_prefix_share": 1,
}
_SHARES = ("fragment_share", "bullet_share", "repeated_prefix_share")


# --- per-row text shape ------------------------------------------------------------------------


def is_fragment(text: str) -> bool:
    """Not a sentence: fewer than five words, or no closing punctuation."""
    stripped = text.strip()
    if len(stripped.split()) < FRAGMENT_MIN_WORDS:
        return True
    return not stripped.endswith(_SENTENCE_CLOSERS)


def is_bullet(text: str) -> bool:
    """Opens with a list marker: ``-``, ``*``, ``•``, ``1.``, ``a)``, ``[ ]`` …"""
    return _BULLET.match(text) is not None


def prefix_key(text: str) -> str:
    """The first two words, lower-cased ("" for a text with fewer than two)."""
    words = _WORD.findall(text[:200].lower())
    return " ".join(words[:2]) if len(words) >= 2 else ""


# --- per-article statistics --------------------------------------------------------------------


@dataclass(frozen=True)
class RowOrder:
    """Rows with a known article, in (article, chunk, file position) order, one per key."""

    rows: np.ndarray  # dataset rows
    articles: np.ndarray  # int64, article of each of those rows


def article_order(meta: pd.DataFrame) -> RowOrder | None:
    """Sorted unique (article, chunk) rows; None when no row's article is known."""
    if "article" not in meta.columns or not bool(meta["article"].notna().any()):
        return None
    known = meta["article"].notna().to_numpy()
    rows = np.flatnonzero(known)
    articles = meta["article"].to_numpy(dtype=float, na_value=np.nan)[rows].astype(np.int64)
    chunks = (
        meta["chunk"].to_numpy(dtype=float, na_value=np.nan)[rows]
        if "chunk" in meta.columns
        else np.full(len(rows), np.nan)
    )
    # without a chunk index the file order stands in for it
    chunks = np.where(np.isnan(chunks), rows.astype(float), chunks)
    order = np.lexsort((rows, chunks, articles))
    rows, articles, chunks = rows[order], articles[order], chunks[order]
    repeat = np.zeros(len(rows), dtype=bool)
    repeat[1:] = (articles[1:] == articles[:-1]) & (chunks[1:] == chunks[:-1])
    return RowOrder(rows[~repeat], articles[~repeat])


def _unit(block: np.ndarray) -> np.ndarray:
    block = np.nan_to_num(np.asarray(block, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return (block / np.maximum(norms, 1e-300)).astype(np.float32)


def lag_cosines(ds: Dataset, order: RowOrder, lags: Sequence[int] = _LAGS) -> dict[int, np.ndarray]:
    """Per sorted row: cosine of its target with the one ``lag`` chunks later in its article.

    NaN where that row is in another article (or past the end). Reads the targets in
    bounded blocks, in sorted order, with ``max(lags)`` rows of overlap.
    """
    n = len(order.rows)
    out = {lag: np.full(n, np.nan, dtype=np.float32) for lag in lags}
    reach = max(lags)
    for start in range(0, n, _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, n)
        end = min(stop + reach, n)
        vectors = _unit(ds.targets_at(order.rows[start:end]))
        arts = order.articles[start:end]
        for lag in lags:
            k = min(stop, end - lag) - start
            if k <= 0:
                continue
            cos = np.einsum("ij,ij->i", vectors[:k], vectors[lag : lag + k])
            same = arts[:k] == arts[lag : lag + k]
            out[lag][start : start + k] = np.where(same, cos, np.nan)
    return out


def article_statistics(
    ds: Dataset,
    meta: pd.DataFrame,
    texts: Sequence[str] | None,
    *,
    pair_half: int | None = None,
) -> pd.DataFrame | None:
    """One row per article: size, title, the ``STATISTICS`` and their sampling variances.

    ``pair_half`` (0 or 1) keeps only the adjacent pairs of that half: the pairs of one
    article alternate between the halves (by the position of the pair's later chunk),
    so pages can be chosen on one half and their effect measured on the other
    (:mod:`lvmqa.attribution`). Text statistics use every row either way.

    Columns ``w_<stat>`` hold the within-article variance terms the reference pools:
    ``w_cos1``/``w_far``/``w_loglen`` are within-article variances with their counts.
    None when no row's article is known.
    """
    order = article_order(meta)
    if order is None:
        return None
    cos = lag_cosines(ds, order)
    if pair_half is not None:
        starts = np.r_[0, np.flatnonzero(order.articles[1:] != order.articles[:-1]) + 1]
        position = np.arange(len(order.rows)) - np.repeat(
            starts, np.diff(np.r_[starts, len(order.rows)])
        )
        other = (position + 1) % 2 != pair_half
        for values in cos.values():
            values[other] = np.nan
    frame = pd.DataFrame({"article": order.articles, "cos1": cos[1]})
    frame["far"] = np.where(np.isnan(cos[2]), cos[3], cos[2])  # lag 2, else lag 3
    # lag 3 pairs count too: a second column so each pair is one observation
    frame["far3"] = np.where(np.isnan(cos[2]), np.nan, cos[3])
    if texts is not None:
        chosen = [texts[int(r)] for r in order.rows]
        lengths = np.fromiter((len(t.strip()) for t in chosen), dtype=float, count=len(chosen))
        frame["loglen"] = np.log1p(lengths)
        frame["fragment"] = [is_fragment(t) for t in chosen]
        frame["bullet"] = [is_bullet(t) for t in chosen]
        prefixes = pd.Series([prefix_key(t) for t in chosen])
        counts = prefixes.groupby([frame["article"], prefixes]).transform("size")
        frame["repeated"] = ((counts >= 2) & (prefixes != "")).to_numpy()
    groups = frame.groupby("article", sort=False)
    stats = pd.DataFrame(index=pd.Index(groups.size().index, name="article"))
    stats["chunks"] = groups.size()
    stats["n_cos1"] = groups["cos1"].count()
    stats["coherence"] = groups["cos1"].mean()
    stats["w_cos1"] = groups["cos1"].var(ddof=1)
    far = pd.concat(
        [frame[["article", "far"]], frame[["article", "far3"]].rename(columns={"far3": "far"})]
    ).groupby("article", sort=False)["far"]
    stats["n_far"] = far.count()
    stats["w_far"] = far.var(ddof=1)
    stats["lag_decay"] = stats["coherence"] - far.mean()
    stats.loc[stats["n_far"] == 0, "lag_decay"] = np.nan
    if texts is not None:
        stats["log_median_chars"] = groups["loglen"].median()
        stats["w_loglen"] = groups["loglen"].var(ddof=1)
        for name, column in (
            ("fragment_share", "fragment"),
            ("bullet_share", "bullet"),
            ("repeated_prefix_share", "repeated"),
        ):
            stats[name] = groups[column].mean()
    return stats


# --- the reference and the scores --------------------------------------------------------------


@dataclass(frozen=True)
class StatReference:
    center: float
    between_var: float  # tau^2
    within_var: float  # pooled per-observation variance (shares: p(1-p))


@dataclass(frozen=True)
class Reference:
    label: str  # "baseline NAME" or "self"
    stats: dict[str, StatReference]
    scores: np.ndarray  # S of every reference article (in-sample)


def _pooled(values: pd.Series, counts: pd.Series) -> float:
    """Within-article variance pooled over articles, weighted by degrees of freedom."""
    dof = (counts - 1).where(values.notna(), 0).clip(lower=0)
    total = float(dof.sum())
    return float((values.fillna(0) * dof).sum() / total) if total > 0 else 0.0


def _sampling_var(stats: pd.DataFrame, name: str, within: float) -> pd.Series:
    """Variance of the article statistic from its own sampling noise alone."""
    if name == "coherence":
        return within / stats["n_cos1"].clip(lower=1)
    if name == "lag_decay":
        cos1 = _pooled(stats["w_cos1"], stats["n_cos1"])
        far = _pooled(stats["w_far"], stats["n_far"])
        return cos1 / stats["n_cos1"].clip(lower=1) + far / stats["n_far"].clip(lower=1)
    if name == "log_median_chars":
        return (math.pi / 2) * within / stats["chunks"].clip(lower=1)  # of a median
    return within / stats["chunks"].clip(lower=1)  # binomial share


def _within(stats: pd.DataFrame, name: str) -> float:
    if name == "coherence":
        return _pooled(stats["w_cos1"], stats["n_cos1"])
    if name == "lag_decay":
        return 0.0  # _sampling_var pools both lags itself
    if name == "log_median_chars":
        return _pooled(stats["w_loglen"], stats["chunks"])
    # a share: p(1 - p) with p the article-level mean, kept off 0 and 1 by half an article
    n = max(int(stats[name].notna().sum()), 1)
    p = float(np.clip(stats[name].mean(), 0.5 / (n + 1), 1 - 0.5 / (n + 1)))
    return p * (1 - p)


def _between(values: pd.Series, sampling: pd.Series) -> float:
    """Between-article variance: robust spread less the typical sampling variance."""
    x = values.dropna().to_numpy(dtype=float)
    if len(x) < 2:
        return 0.0
    mad = 1.4826 * float(np.median(np.abs(x - np.median(x))))
    lo, hi = np.quantile(x, [0.05, 0.95])
    trimmed = x[(x >= lo) & (x <= hi)]
    spread = max(mad**2, float(np.var(trimmed)) if len(trimmed) > 1 else 0.0)
    return max(spread - float(np.median(sampling.dropna())) if len(sampling.dropna()) else 0.0, 0.0)


def fit_reference(stats: pd.DataFrame, label: str) -> Reference:
    """Centre, between-article spread and pooled noise of each statistic over ``stats``."""
    fitted: dict[str, StatReference] = {}
    for name in STATISTICS:
        if name not in stats.columns or not bool(stats[name].notna().any()):
            continue
        within = _within(stats, name)
        sampling = _sampling_var(stats, name, within)[stats[name].notna()]
        fitted[name] = StatReference(
            center=float(stats[name].median()),
            between_var=_between(stats[name], sampling),
            within_var=within,
        )
    provisional = Reference(label, fitted, np.empty(0))
    return Reference(label, fitted, score_articles(stats, provisional)[1])


def score_articles(stats: pd.DataFrame, ref: Reference) -> tuple[pd.DataFrame, np.ndarray]:
    """Directional z of each statistic (NaN where unknown) and each article's score S."""
    z = pd.DataFrame(index=stats.index)
    for name, direction in STATISTICS.items():
        if name not in ref.stats or name not in stats.columns:
            continue
        r = ref.stats[name]
        variance = r.between_var + _sampling_var(stats, name, r.within_var)
        scale = np.sqrt(np.maximum(variance.to_numpy(dtype=float), 1e-12))
        z[name] = direction * (stats[name].to_numpy(dtype=float) - r.center) / scale
    positive = np.clip(np.nan_to_num(z.to_numpy(dtype=float), nan=0.0), 0.0, None)
    return z, np.sqrt((positive**2).sum(axis=1)) if positive.size else np.zeros(len(stats))


def tail_scale(scores: np.ndarray) -> float:
    """Exponential scale of the upper score tail: (upper quartile - median) / ln 2."""
    if len(scores) < 2:
        return 1.0
    median, upper = np.quantile(scores, [0.5, 0.75])
    return max(float(upper - median) / math.log(2), 1e-3)


def flag_threshold(
    ref: Reference, n_tested: int, *, budget: float = FALSE_ALARM_BUDGET, empirical: bool
) -> float:
    """The score above which an article is flagged: ``budget`` false flags over n_tested.

    ``empirical``: the reference is a clean baseline, so its own score quantile also
    bounds the threshold (never for the dataset's own articles: its outliers are the
    very pages being looked for).
    """
    scores = ref.scores
    if len(scores) == 0 or n_tested == 0:
        return math.inf
    p = min(budget / n_tested, 0.5)  # allowed false-flag probability per article
    beta = tail_scale(scores)
    median = float(np.median(scores))
    threshold = median + beta * math.log(max(0.5 / p, 1.0))
    if empirical:
        if p * len(scores) >= 1:
            threshold = max(threshold, float(np.quantile(scores, 1 - p, method="higher")))
        else:
            beyond = beta * math.log(1 / (p * (len(scores) + 1)))
            threshold = max(threshold, float(scores.max()) + beyond)
    return max(threshold, MIN_SCORE)


# --- the analysis of a dataset -----------------------------------------------------------------


@dataclass
class LowQualityAnalysis:
    available: bool
    reason: str  # why not available, or what the reference was
    reference: str | None = None
    ref: Reference | None = None
    threshold: float | None = None
    stats: pd.DataFrame | None = None
    z: pd.DataFrame | None = None
    scores: np.ndarray | None = None
    flagged: list[int] = field(default_factory=list)  # article ids
    n_rows: int = 0
    flagged_rows: int = 0
    baseline_row_share: float | None = None


def _texts(ctx: CheckContext) -> list[str] | None:
    """The dataset's target texts as str (computed once per dataset)."""

    def compute() -> list[str] | None:
        texts = ctx.dataset.target_texts
        return normalise_texts(texts).texts if texts is not None else None

    return ctx.cached("lowquality.texts", compute)


def _dataset_stats(ctx: CheckContext, pair_half: int | None = None) -> pd.DataFrame | None:
    def compute() -> pd.DataFrame | None:
        meta, _ = context_meta(ctx)
        return article_statistics(ctx.dataset, meta, _texts(ctx), pair_half=pair_half)

    key = "lowquality.article_stats" + ("" if pair_half is None else f":half{pair_half}")
    return ctx.cached(key, compute)


def _baseline_stats(ctx: CheckContext) -> tuple[pd.DataFrame | None, str | None, str]:
    """The baseline's article statistics, its name, and a note on why none were used."""
    try:
        base = ctx.baseline()
    except LvmqaError as exc:
        return None, None, f"baseline not usable: {exc}"
    if base is None:
        return None, None, "no baseline configured"
    try:
        if base.dataset.dim != ctx.dataset.dim:
            return None, base.name, f"baseline '{base.name}' has another vector dimension"
        stats = _dataset_stats(base)
    except LvmqaError as exc:
        return None, base.name, f"baseline '{base.name}' not usable: {exc}"
    if stats is None or len(stats) < 2:
        return None, base.name, f"baseline '{base.name}' has no article ids"
    return stats, base.name, f"baseline '{base.name}'"


def analyse(ctx: CheckContext, pair_half: int | None = None) -> LowQualityAnalysis:
    """Per-article statistics, reference, scores and flagged articles (computed once).

    ``pair_half``: the dataset's coherence statistics from that half of the pairs only
    (the reference keeps all of the baseline's pairs)."""
    key = "lowquality.analysis" + ("" if pair_half is None else f":half{pair_half}")
    return ctx.cached(key, lambda: _analyse(ctx, pair_half))


def _analyse(ctx: CheckContext, pair_half: int | None = None) -> LowQualityAnalysis:
    stats = _dataset_stats(ctx, pair_half)
    if stats is None:
        return LowQualityAnalysis(
            False, "no article ids: per-article statistics need to know each row's article"
        )
    meta, _ = context_meta(ctx)
    n_rows = int(meta["article"].notna().sum())
    base_stats, base_name, note = _baseline_stats(ctx)
    if base_stats is not None:
        # the baseline may lack texts: text statistics then have no reference, and are left out
        ref = fit_reference(base_stats, f"baseline {base_name}")
        empirical = True
    else:
        ref = fit_reference(stats, "self")
        empirical = False
    threshold = flag_threshold(ref, len(stats), empirical=empirical)
    z, scores = score_articles(stats, ref)
    flagged = [int(a) for a in stats.index[scores > threshold]]
    rows_per_article = meta["article"].value_counts()
    flagged_rows = int(rows_per_article.reindex(flagged).fillna(0).sum())
    baseline_share = None
    if base_stats is not None:
        base_flagged = base_stats["chunks"][ref.scores > threshold].sum()
        baseline_share = float(base_flagged / max(base_stats["chunks"].sum(), 1))
    reason = note if base_stats is not None else f"own articles ({note})"
    return LowQualityAnalysis(
        True,
        reason,
        ref.label,
        ref,
        threshold,
        stats,
        z,
        scores,
        flagged,
        n_rows,
        flagged_rows,
        baseline_share,
    )


def _preview(text: str) -> str:
    return text if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "…"


def _titles_by_article(meta: pd.DataFrame) -> dict[int, str]:
    if "title" not in meta.columns:
        return {}
    known = meta[meta["article"].notna() & meta["title"].notna()]
    first = known.drop_duplicates("article")
    return {int(a): str(t) for a, t in zip(first["article"], first["title"], strict=True)}


def low_quality_articles(
    ctx: CheckContext, limit: int | None = _MAX_LISTED
) -> list[dict[str, Any]]:
    """Flagged articles, highest score first: title, rows, score, statistics, examples."""
    analysis = analyse(ctx)
    if not analysis.available or not analysis.flagged:
        return []
    assert analysis.stats is not None and analysis.z is not None and analysis.scores is not None
    meta, _ = context_meta(ctx)
    titles = _titles_by_article(meta)
    texts = _texts(ctx)
    position = {int(a): i for i, a in enumerate(analysis.stats.index)}
    ranked = sorted(analysis.flagged, key=lambda a: -analysis.scores[position[a]])  # type: ignore[index]
    counts = meta["article"].value_counts()
    order = article_order(meta)
    assert order is not None
    wanted = set(ranked[:limit])
    first_rows: dict[int, list[int]] = {}
    for row, art in zip(order.rows.tolist(), order.articles.tolist(), strict=True):
        if art in wanted and len(first_rows.setdefault(art, [])) < _EXAMPLES_PER_ARTICLE:
            first_rows[art].append(row)
    out: list[dict[str, Any]] = []
    for article in ranked[:limit]:
        i = position[article]
        row = analysis.stats.iloc[i]
        statistics = {
            name: {
                "value": _round(row[name]),
                "z": _round(analysis.z.iloc[i][name]),
            }
            for name in analysis.z.columns
            if pd.notna(row.get(name))
        }
        item: dict[str, Any] = {
            "article": article,
            "title": titles.get(article),
            "rows": int(counts.get(article, 0)),
            "score": _round(analysis.scores[i]),
            "statistics": statistics,
        }
        if texts is not None:
            item["examples"] = [_preview(texts[r]) for r in first_rows.get(article, [])]
        out.append(item)
    return out


def _round(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else round(number, 4)


def flagged_articles(ctx: CheckContext) -> list[dict[str, Any]]:
    """Every flagged page: blocklisted (``reason`` "blocklist") or low-quality.

    Each item: ``article`` (id or None), ``title``, ``rows``, ``reason``, and for the
    low-quality ones ``score`` and ``statistics``. For the lead's counterfactual
    diagnosis ("drop the flagged articles and measure again").
    """
    found = {
        item["article"]: {**item, "reason": "low_quality"}
        for item in low_quality_articles(ctx, None)
    }
    meta, _ = context_meta(ctx)
    blocked = blocklisted_page_mask(ctx)
    titles = _titles_by_article(meta)
    articles = meta["article"].to_numpy(dtype=float, na_value=np.nan)
    for article in np.unique(articles[blocked & ~np.isnan(articles)]).astype(int).tolist():
        entry = found.get(article)
        if entry is not None:
            entry["reason"] = "blocklist+low_quality"
            continue
        found[article] = {
            "article": article,
            "title": titles.get(article),
            "rows": int((articles == article).sum()),
            "reason": "blocklist",
        }
    unknown = int((blocked & np.isnan(articles)).sum())
    items = list(found.values())
    if unknown:
        items.append({"article": None, "title": None, "rows": unknown, "reason": "blocklist"})
    return items


def blocklisted_page_mask(ctx: CheckContext) -> np.ndarray:
    """Rows of blocklisted pages: by title, or all rows of an article whose FIRST chunk
    is a blocklisted heading / disambiguation lead (a heading further down a page is
    just that row)."""
    ds = ctx.dataset
    meta, _ = context_meta(ctx)
    column = meta["title"] if "title" in meta.columns else None
    titles = optional_strings(column) if column is not None and bool(column.notna().any()) else None
    texts = _texts(ctx)
    if texts is None and titles is None:
        return np.zeros(ds.n, dtype=bool)
    pattern = configured_blocklist(ctx)
    by_title = blocklist_row_mask(None, titles, pattern, n=ds.n)
    by_text = blocklist_row_mask(texts, None, pattern, n=ds.n)
    mask = by_title | by_text
    order = article_order(meta)
    if order is None or not by_text.any():
        return mask
    first_rows = order.rows[np.r_[True, order.articles[1:] != order.articles[:-1]]]
    heading_articles = set(
        meta["article"].to_numpy(dtype=float, na_value=np.nan)[first_rows[by_text[first_rows]]]
    )
    if heading_articles:
        mask |= meta["article"].isin(list(heading_articles)).to_numpy(dtype=bool)
    return mask


def low_quality_row_mask(ctx: CheckContext, pair_half: int | None = None) -> np.ndarray:
    """bool (n,): rows of the articles flagged as low-quality from the data (no blocklist)."""
    analysis = analyse(ctx, pair_half)
    if not analysis.available or not analysis.flagged:
        return np.zeros(ctx.dataset.n, dtype=bool)
    meta, _ = context_meta(ctx)
    return meta["article"].isin(analysis.flagged).to_numpy(dtype=bool)


def flagged_row_mask(ctx: CheckContext, pair_half: int | None = None) -> np.ndarray:
    """bool (n,): rows of blocklisted or low-quality pages (what `lvmqa filter` may drop);
    with ``pair_half``, the low-quality pages are chosen on that half of the pairs."""
    return blocklisted_page_mask(ctx) | low_quality_row_mask(ctx, pair_half)


# --- what text_quality reports -----------------------------------------------------------------

ROW_SHARE_KEY = "max_low_quality_row_share"
DEFAULT_MAX_ROW_SHARE = 0.01
GATED_METRIC = "low_quality_significant_row_share"


def significant_count(budget: float = FALSE_ALARM_BUDGET, p: float = GATE_COUNT_P) -> int:
    """Smallest flagged-article count k with P(Poisson(budget) >= k) < p."""
    k, term, below = 0, math.exp(-budget), 0.0  # below = P(X < k)
    while 1.0 - below >= p:
        below += term
        k += 1
        term *= budget / k
    return k


def low_quality_metrics(ctx: CheckContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics and details for text_quality; metrics are None when there are no ids."""
    analysis = analyse(ctx)
    metrics: dict[str, Any] = {
        "low_quality_available": analysis.available,
        "low_quality_reference": analysis.reference,
        "low_quality_articles_scored": len(analysis.stats) if analysis.stats is not None else None,
        "low_quality_threshold": _round(analysis.threshold) if analysis.threshold else None,
        "low_quality_false_alarm_budget": FALSE_ALARM_BUDGET,
        "low_quality_article_count": len(analysis.flagged) if analysis.available else None,
        "low_quality_row_count": analysis.flagged_rows if analysis.available else None,
        "low_quality_row_share": (
            analysis.flagged_rows / analysis.n_rows
            if analysis.available and analysis.n_rows
            else None
        ),
        "baseline_low_quality_row_share": analysis.baseline_row_share,
        "low_quality_significant_count": significant_count(),
    }
    share = metrics["low_quality_row_share"]
    metrics[GATED_METRIC] = (
        None if share is None else (share if len(analysis.flagged) >= significant_count() else 0.0)
    )
    details: dict[str, Any] = {
        "low_quality_reference_note": analysis.reason,
        "low_quality_articles": low_quality_articles(ctx) if analysis.available else [],
        "low_quality_rule": (
            "robust z of per-article statistics against the reference's articles, "
            "score = sqrt(sum of positive z^2), flagged above a threshold that allows "
            f"{FALSE_ALARM_BUDGET} false articles per dataset; the gated share counts only "
            f"when {significant_count()} or more articles are flagged (p < {GATE_COUNT_P} "
            "for a clean dataset)"
        ),
    }
    if analysis.ref is not None:
        details["low_quality_reference_medians"] = {
            name: _round(r.center) for name, r in analysis.ref.stats.items()
        }
    return metrics, details
