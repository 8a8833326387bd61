"""The ``text_quality`` check: what the stored texts say about the pages a dataset was cut from.

Vectors cannot tell a list page from prose, but the texts (and titles) can. The check
counts rows from blocklisted PAGES (a title starting ``List of``, a ``Category:`` page, a
``(disambiguation)`` title, or a chunk whose text is such a heading or a "X may refer
to:" lead), empty, too-short and too-long texts, duplicate (article, chunk) keys and
texts repeated inside one article. These counts are encoder-independent, so their gates
are plain absolute thresholds (``registry`` when the dataset's entry overrides them).

Pages nobody listed (changelog bullets, indexes, glossaries) are found from the data by
:mod:`lvmqa.lowquality`, relative to the baseline's articles; its gate is statistical.

Texts arrive as numpy object arrays and may hold ``None``, ``bytes`` or numbers; they
are normalised first, counted as non-string, and never crash the check.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lvmqa.errors import CheckSkipped, LvmqaError
from lvmqa.patterns import SafePattern, compile_pattern
from lvmqa.results import CheckResult, Gate, GateKind, from_gates

if TYPE_CHECKING:
    import pandas as pd

    from lvmqa.checks import CheckContext
    from lvmqa.io import Dataset

CHECK_ID = "text_quality"
# The blocklist names PAGES. It is matched at the START of a title (``re.match``, case
# insensitive), or of a chunk text that is itself a heading; a registry pattern is used
# the same way (write ``.*word`` to match a word anywhere in a title). Substrings of
# prose never count: "returns a list of strings" is not a list page. The one spelling of
# the default; filtering and diagnosis import it.
DEFAULT_BLOCKLIST = r"Lists? of\b|Category:|Disambiguation\b|.*\(disambiguation\)\s*$"
# "Mercury may refer to:" -- how disambiguation pages open, in any namespace.
DISAMBIGUATION_LEAD = re.compile(
    r"[^\n.!?]{1,120}?\b(?:may|might|can|could)\s+(?:also\s+)?refer\s+to\s*:", re.IGNORECASE
)
_HEADING_MAX_CHARS = 120
_HEADING_MAX_WORDS = 12
_SENTENCE_END = ".!?;,"
DEFAULT_MIN_TEXT_CHARS = 8
DEFAULT_MAX_TEXT_CHARS = 500
# An article whose typical chunk is shorter than a short sentence reads like a list,
# a table or a navigation page rather than prose.
SHORT_ARTICLE_MEDIAN_CHARS = 40
_DISAMBIGUATION_TITLE_SUFFIX = "(disambiguation)"
_PREVIEW_CHARS = 160
_MAX_EXAMPLES = 10
_MAX_LISTED_ARTICLES = 50

# (metric, op, default); the registry threshold key equals the metric name.
_GATES: tuple[tuple[str, str, float | int], ...] = (
    ("blocklist_share", "<=", 0.01),
    ("empty_share", "<=", 0.0),
    ("too_short_share", "<=", 0.01),
    ("too_long_share", "<=", 0.01),
    ("duplicate_key_count", "<=", 0),
)


@dataclass(frozen=True)
class NormalisedTexts:
    """Texts as ``str`` ("" for a missing value) plus what had to be done to get there."""

    texts: list[str]
    non_string: np.ndarray  # bool (n,): the stored value was not a str
    missing: np.ndarray  # bool (n,): None / NaN / NA


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    # pandas.NA and numpy.datetime64('NaT') compare unequal to themselves or raise
    try:
        return bool(value != value)
    except (TypeError, ValueError):
        return True


def normalise_texts(values: Iterable[object]) -> NormalisedTexts:
    """Turn stored text values into ``str``: bytes are decoded, numbers printed, gaps emptied."""
    texts: list[str] = []
    non_string: list[bool] = []
    missing: list[bool] = []
    for value in values:
        if isinstance(value, str):
            texts.append(str(value))
            non_string.append(False)
            missing.append(False)
        elif isinstance(value, (bytes, bytearray)):
            texts.append(bytes(value).decode("utf-8", errors="replace"))
            non_string.append(True)
            missing.append(False)
        elif isinstance(value, np.ndarray) or _is_missing(value):
            # an array in a text slot is as unusable as a gap
            texts.append("")
            non_string.append(True)
            missing.append(not isinstance(value, np.ndarray))
        else:
            texts.append(str(value))
            non_string.append(True)
            missing.append(False)
    return NormalisedTexts(texts, np.array(non_string, dtype=bool), np.array(missing, dtype=bool))


def compile_blocklist(pattern: str | SafePattern | None) -> SafePattern | None:
    """A case-insensitive RE2 pattern (linear time, from lvmqa.patterns), or None to
    disable the blocklist."""
    if pattern is None or isinstance(pattern, SafePattern):
        return pattern
    if not pattern:
        return None
    return compile_pattern(pattern, where="blocklist")


def looks_like_heading(text: str) -> bool:
    """One short line that does not end a sentence: a page title or section heading."""
    stripped = text.strip()
    if not stripped or "\n" in stripped or len(stripped) > _HEADING_MAX_CHARS:
        return False
    if len(stripped.split()) > _HEADING_MAX_WORDS:
        return False
    return stripped[-1] not in _SENTENCE_END


def is_disambiguation_lead(text: str) -> bool:
    """``X may refer to:`` opening a chunk: the lead of a disambiguation page."""
    return DISAMBIGUATION_LEAD.match(text.strip()) is not None


def text_blocklist_mask(texts: Sequence[str], pattern: SafePattern | None) -> np.ndarray:
    """Rows whose text IS a blocklisted page heading or a disambiguation lead.

    The pattern is matched at the start of a heading-like text only (one short line,
    no sentence end), never inside prose: "returns a list of strings" is documentation,
    not a list page.
    """
    if pattern is None:
        return np.zeros(len(texts), dtype=bool)
    return np.fromiter(
        (
            is_disambiguation_lead(t) or (looks_like_heading(t) and _matches(pattern, t))
            for t in texts
        ),
        dtype=bool,
        count=len(texts),
    )


def _matches(pattern: SafePattern, name: str) -> bool:
    return pattern.match(name.strip()) is not None


def title_blocklist_mask(titles: Sequence[str | None], pattern: SafePattern | None) -> np.ndarray:
    """Rows whose article title starts with the pattern or is a ``… (disambiguation)`` page."""
    out = np.zeros(len(titles), dtype=bool)
    if pattern is None:
        return out
    for i, title in enumerate(titles):
        if title is None:
            continue
        disambiguation = title.rstrip().lower().endswith(_DISAMBIGUATION_TITLE_SUFFIX)
        out[i] = disambiguation or _matches(pattern, title)
    return out


def blocklist_row_mask(
    texts: Sequence[str] | None,
    titles: Sequence[str | None] | None,
    pattern: str | SafePattern | None = DEFAULT_BLOCKLIST,
    *,
    n: int | None = None,
) -> np.ndarray:
    """Rows of blocklisted pages, by title or by a text that is the page's heading/lead."""
    compiled = compile_blocklist(pattern)
    size = n if n is not None else len(texts if texts is not None else titles or [])
    mask = np.zeros(size, dtype=bool)
    if compiled is None:
        return mask
    if texts is not None:
        mask |= text_blocklist_mask(texts, compiled)
    if titles is not None:
        mask |= title_blocklist_mask(titles, compiled)
    return mask


def _preview(text: str) -> str:
    if len(text) <= _PREVIEW_CHARS:
        return text
    return text[:_PREVIEW_CHARS] + f"… [{len(text)} chars]"


def _examples(rows: np.ndarray, texts: Sequence[str]) -> list[dict[str, Any]]:
    return [{"row": int(r), "text": _preview(texts[r])} for r in rows[:_MAX_EXAMPLES]]


def _share(count: int, total: int) -> float:
    return count / total if total else 0.0


def duplicate_key_count(articles: np.ndarray, chunks: np.ndarray) -> int | None:
    """Rows whose known (article, chunk) key already occurred; None when no key is known.

    ``articles``/``chunks`` are float arrays with NaN for unknown values.
    """
    known = ~(np.isnan(articles) | np.isnan(chunks))
    if not known.any():
        return None
    keys = np.stack([articles[known], chunks[known]], axis=1)
    return int(known.sum() - len(np.unique(keys, axis=0)))


def duplicate_texts_in_articles(
    texts: Sequence[str], groups: Sequence[object | None]
) -> tuple[int, list[dict[str, Any]]]:
    """Rows whose non-empty text already occurred earlier in the same article."""
    seen: dict[tuple[object, str], int] = {}
    count = 0
    examples: list[dict[str, Any]] = []
    for row, (group, text) in enumerate(zip(groups, texts, strict=True)):
        if group is None or not text.strip():
            continue
        first = seen.setdefault((group, text), row)
        if first != row:
            count += 1
            if len(examples) < _MAX_EXAMPLES:
                examples.append(
                    {"row": row, "first_row": first, "article": group, "text": _preview(text)}
                )
    return count, examples


def short_text_article_share(
    lengths: np.ndarray,
    groups: Sequence[object | None],
    median_below: int = SHORT_ARTICLE_MEDIAN_CHARS,
) -> float | None:
    """Share of rows (with a known article) from articles whose median text is short."""
    import pandas as pd

    frame = pd.DataFrame({"group": list(groups), "length": lengths})
    frame = frame[frame["group"].notna()]
    if frame.empty:
        return None
    medians = frame.groupby("group", sort=False)["length"].transform("median")
    return float((medians < median_below).mean())


def _column(meta: pd.DataFrame | None, name: str) -> pd.Series | None:
    if meta is None or name not in meta.columns:
        return None
    column = meta[name]
    return column if bool(column.notna().any()) else None


def _numeric(column: pd.Series | None, n: int) -> np.ndarray:
    if column is None:
        return np.full(n, np.nan)
    return column.astype("Float64").to_numpy(dtype=float, na_value=np.nan)


def optional_strings(column: pd.Series | None) -> list[str | None] | None:
    """A column as str values with None for missing; None when there is no column."""
    if column is None:
        return None
    return [None if _is_missing(v) else str(v) for v in column.tolist()]


def article_groups(meta: pd.DataFrame | None, n: int) -> list[object | None] | None:
    """Per-row article identity: the article id when known, else the title, else None."""
    articles = _column(meta, "article")
    titles = _column(meta, "title")
    if articles is None and titles is None:
        return None
    groups: list[object | None] = []
    ids = articles.tolist() if articles is not None else [None] * n
    names = titles.tolist() if titles is not None else [None] * n
    for article, title in zip(ids, names, strict=True):
        if not _is_missing(article):
            groups.append(int(article))
        elif not _is_missing(title):
            groups.append(str(title))
        else:
            groups.append(None)
    return groups


JOINED_COLUMNS = ("article", "chunk", "title")


def join_source_meta(meta: pd.DataFrame, bank: Dataset | None) -> pd.DataFrame:
    """Fill unknown article/chunk/title values from the source bank, joined on target_id.

    Sequences files often carry only the target's chunk id; the bank it was cut from
    knows that chunk's article, position and title.
    """
    bank_table = getattr(bank, "bank_table", None)
    if bank_table is None or "target_id" not in meta.columns:
        return meta
    if not bool(meta["target_id"].notna().any()):
        return meta
    table = bank_table().dropna(subset=["target_id"]).drop_duplicates("target_id")
    joined = meta[["target_id"]].merge(
        table[["target_id", *JOINED_COLUMNS]], on="target_id", how="left", sort=False
    )
    joined.index = meta.index  # a left merge keeps the left rows in order
    out = meta.copy()
    for column in JOINED_COLUMNS:
        if column in out.columns:
            out[column] = out[column].fillna(joined[column].astype(out[column].dtype))
        else:
            out[column] = joined[column]
    return out


def context_meta(ctx: CheckContext) -> tuple[pd.DataFrame, str | None]:
    """The dataset's per-row metadata, completed from its source bank when one is set.

    Returns the frame and a note saying what was joined or why nothing was.
    """
    ds = ctx.dataset
    try:
        bank = ctx.source_bank()
    except LvmqaError as exc:
        return ds.meta, f"source bank not joined: {exc}"
    if bank is None:
        return ds.meta, None
    meta = ctx.cached("texts.meta_with_source", lambda: join_source_meta(ds.meta, bank))
    gained = {
        c: int(meta[c].notna().sum() - ds.meta[c].notna().sum())
        for c in JOINED_COLUMNS
        if c in ds.meta.columns
    }
    return meta, f"joined from source bank {bank.path.name} on target_id: {gained}"


@dataclass(frozen=True)
class TextQualityReport:
    metrics: dict[str, Any]
    details: dict[str, Any]


def text_quality_report(
    values: Iterable[object],
    meta: pd.DataFrame | None = None,
    *,
    blocklist: str | SafePattern | None = DEFAULT_BLOCKLIST,
    min_text_chars: int = DEFAULT_MIN_TEXT_CHARS,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
) -> TextQualityReport:
    """All text_quality metrics for target texts and the per-row metadata (pure)."""
    normalised = normalise_texts(values)
    texts = normalised.texts
    n = len(texts)
    if meta is not None and len(meta) != n:
        raise ValueError(f"meta has {len(meta)} rows for {n} texts")
    pattern = compile_blocklist(blocklist)
    titles = optional_strings(_column(meta, "title"))
    groups = article_groups(meta, n)

    stripped_lengths = np.fromiter((len(t.strip()) for t in texts), dtype=np.int64, count=n)
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=n)
    empty = stripped_lengths == 0
    too_short = ~empty & (stripped_lengths < min_text_chars)
    too_long = lengths > max_text_chars
    by_text = text_blocklist_mask(texts, pattern)
    by_title = (
        title_blocklist_mask(titles, pattern) if titles is not None else np.zeros(n, dtype=bool)
    )
    blocked = by_text | by_title

    dup_keys = duplicate_key_count(
        _numeric(_column(meta, "article"), n), _numeric(_column(meta, "chunk"), n)
    )
    dup_texts: int | None = None
    dup_examples: list[dict[str, Any]] = []
    if groups is not None:
        dup_texts, dup_examples = duplicate_texts_in_articles(texts, groups)
    blocked_articles = _blocked_articles(blocked, by_title, groups, titles)

    metrics: dict[str, Any] = {
        "n_texts": n,
        "non_string_count": int(normalised.non_string.sum()),
        "non_string_share": _share(int(normalised.non_string.sum()), n),
        "missing_text_count": int(normalised.missing.sum()),
        "empty_count": int(empty.sum()),
        "empty_share": _share(int(empty.sum()), n),
        "too_short_count": int(too_short.sum()),
        "too_short_share": _share(int(too_short.sum()), n),
        "too_long_count": int(too_long.sum()),
        "too_long_share": _share(int(too_long.sum()), n),
        "text_chars_median": float(np.median(lengths)) if n else None,
        "text_chars_max": int(lengths.max()) if n else None,
        "blocklist_count": int(blocked.sum()),
        "blocklist_share": _share(int(blocked.sum()), n),
        "blocklist_text_count": int(by_text.sum()),
        "blocklist_title_count": int(by_title.sum()),
        "blocklist_articles": len(blocked_articles),
        "duplicate_key_count": dup_keys,
        "duplicate_text_in_article_count": dup_texts,
        "short_text_article_share": (
            short_text_article_share(lengths, groups) if groups is not None else None
        ),
        "min_text_chars": min_text_chars,
        "max_text_chars": max_text_chars,
        "blocklist_pattern": pattern.pattern if pattern is not None else None,
    }
    details: dict[str, Any] = {
        "blocklist_pattern": pattern.pattern if pattern is not None else None,
        "blocklist_articles": blocked_articles[:_MAX_LISTED_ARTICLES],
        "blocklist_examples": _examples(np.flatnonzero(by_text), texts),
        "empty_examples": [int(r) for r in np.flatnonzero(empty)[:_MAX_EXAMPLES]],
        "too_short_examples": _examples(np.flatnonzero(too_short), texts),
        "too_long_examples": _examples(np.flatnonzero(too_long), texts),
        "non_string_examples": _non_string_examples(values, normalised),
        "duplicate_text_examples": dup_examples,
        "short_article_median_chars": SHORT_ARTICLE_MEDIAN_CHARS,
    }
    return TextQualityReport(metrics, details)


def _non_string_examples(values: Iterable[object], normalised: NormalisedTexts) -> list[str]:
    rows = np.flatnonzero(normalised.non_string)[:_MAX_EXAMPLES]
    if not len(rows):
        return []
    stored = values if isinstance(values, (np.ndarray, list, tuple)) else None
    if stored is None:
        return [f"row {int(r)}" for r in rows]
    return [f"row {int(r)}: {type(stored[int(r)]).__name__}" for r in rows]


def _blocked_articles(
    blocked: np.ndarray,
    by_title: np.ndarray,
    groups: list[object | None] | None,
    titles: list[str | None] | None,
) -> list[dict[str, Any]]:
    """Distinct articles with at least one blocked row, largest first."""
    found: dict[object, dict[str, Any]] = {}
    for row in np.flatnonzero(blocked):
        title = titles[row] if titles is not None else None
        group = groups[row] if groups is not None else None
        ident = group if group is not None else title
        if ident is None:
            continue
        entry = found.setdefault(
            ident,
            {
                "article": group if not isinstance(group, str) else None,
                "title": title,
                "rows": 0,
                "by_title": bool(by_title[row]),
            },
        )
        entry["rows"] += 1
    return sorted(found.values(), key=lambda e: (-e["rows"], str(e["title"])))


# --- the check -------------------------------------------------------------------------------


def _entry_thresholds(ctx: CheckContext) -> Mapping[str, Any]:
    thresholds = getattr(ctx.entry, "thresholds", None)
    return thresholds if isinstance(thresholds, Mapping) else {}


def gate_kind(ctx: CheckContext, key: str, default: GateKind) -> GateKind:
    """Where a gate's threshold came from: the check's default kind unless overridden."""
    if not ctx.has_threshold(key):
        return default
    kind = getattr(ctx, "threshold_kind", lambda _key: "registry")(key)
    return "calibrated" if kind == "calibrated" else "registry"


def configured_blocklist(ctx: CheckContext) -> str | None:
    """The blocklist regex for this dataset: entry attribute, then thresholds, then default."""
    value = getattr(ctx.entry, "blocklist", None)
    if value is None:
        value = _entry_thresholds(ctx).get("blocklist")
    if value is None:
        return DEFAULT_BLOCKLIST
    if not isinstance(value, str):
        raise LvmqaError(
            "blocklist must be a regex string",
            key="blocklist",
            expected="a string",
            found=type(value).__name__,
        )
    return value or None  # "" disables the blocklist


def check_text_quality(ctx: CheckContext) -> CheckResult:
    ds = ctx.dataset
    if ds.target_texts is None:
        raise CheckSkipped(
            f"dataset '{ctx.name}' stores no target texts, so text quality cannot be measured"
        )
    min_chars = int(ctx.threshold("min_text_chars", DEFAULT_MIN_TEXT_CHARS))
    max_chars = int(ctx.threshold("max_text_chars", DEFAULT_MAX_TEXT_CHARS))
    meta, join_note = context_meta(ctx)
    report = text_quality_report(
        ds.target_texts,
        meta,
        blocklist=configured_blocklist(ctx),
        min_text_chars=min_chars,
        max_text_chars=max_chars,
    )
    metrics = report.metrics
    gates: list[Gate] = []
    unchecked: list[str] = []
    for metric, op, default in _GATES:
        value = metrics[metric]
        if value is None:
            unchecked.append(metric)
            continue
        gates.append(
            Gate(
                name=metric,
                metric=metric,
                value=value,
                op=op,
                threshold=ctx.threshold(metric, default),
                kind=gate_kind(ctx, metric, "absolute"),
            )
        )
    details = dict(report.details)
    ungated = {m: "needs article and chunk ids" for m in unchecked}
    gates.extend(_low_quality(ctx, metrics, details, ungated))
    if join_note:
        details["source_join"] = join_note
    if ungated:
        details["ungated_metrics"] = ungated
    return from_gates(CHECK_ID, metrics, gates, _message(metrics, gates, unchecked), details)


def _low_quality(
    ctx: CheckContext, metrics: dict[str, Any], details: dict[str, Any], ungated: dict[str, str]
) -> list[Gate]:
    """Pages found from the data (lvmqa.lowquality): metrics, details and the gate."""
    from lvmqa import lowquality

    found, more = lowquality.low_quality_metrics(ctx)
    metrics.update(found)
    details.update(more)
    value = found[lowquality.GATED_METRIC]
    if value is None:
        ungated[lowquality.GATED_METRIC] = details["low_quality_reference_note"]
        return []
    key = lowquality.ROW_SHARE_KEY
    kind: GateKind = "relative" if found["low_quality_reference"] != "self" else "statistical"
    return [
        Gate(
            name=lowquality.GATED_METRIC,
            metric=lowquality.GATED_METRIC,
            value=value,
            op="<=",
            threshold=ctx.threshold(key, lowquality.DEFAULT_MAX_ROW_SHARE),
            kind=gate_kind(ctx, key, kind),
        )
    ]


def _message(metrics: Mapping[str, Any], gates: list[Gate], unchecked: list[str]) -> str:
    failed = [g for g in gates if not g.passed]
    parts: list[str] = []
    if metrics["blocklist_count"]:
        parts.append(
            f"{metrics['blocklist_share']:.1%} of rows from blocklisted pages "
            f"({metrics['blocklist_articles']} articles)"
        )
    if metrics.get("low_quality_article_count"):
        parts.append(
            f"{metrics['low_quality_row_share']:.1%} of rows from "
            f"{metrics['low_quality_article_count']} low-quality pages found from the data "
            f"(vs {metrics['low_quality_reference']})"
        )
    for name in ("empty", "too_short", "too_long", "non_string"):
        if metrics[f"{name}_count"]:
            parts.append(f"{metrics[f'{name}_count']} {name.replace('_', '-')} texts")
    if metrics["duplicate_key_count"]:
        parts.append(f"{metrics['duplicate_key_count']} duplicate (article, chunk) keys")
    summary = "; ".join(parts) if parts else f"{metrics['n_texts']} texts look clean"
    if unchecked:
        summary += " (duplicate keys not checked: no article/chunk ids)"
    if metrics.get("low_quality_available") is False:
        summary += " (low-quality pages not scored: no article ids)"
    verdict = "FAILED " + ", ".join(g.name for g in failed) if failed else "ok"
    return f"{verdict}: {summary}"
