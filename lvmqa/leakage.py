"""The ``split_leakage`` check: does the validation or OOD split share articles or targets
with this (training) dataset?

Three independent lines of evidence, so a namespace mismatch in one cannot hide a leak:

* **article overlap** — by article id when both files know every row's article, else by
  title; the share of the split's articles that also occur here;
* **exact duplicate targets** — split rows whose target vector, cast to float32, has the
  same bytes as some row here (a streamed 128-bit hash per row, so memory stays small);
* **near-duplicate targets** — a seeded sample of split targets searched (FAISS, exact
  inner product on normalised copies, k=1) against this dataset's targets; cosine at or
  above ``near_threshold`` counts. Exact duplicates count here too.

A shared title or id is NOT a shared article by itself: two documents may both be
called "Introduction", and two files may number their articles from 0. A shared key
fails only where content confirms it: an exact or near-duplicate target, or an identical
text of at least ``MIN_CONFIRMING_WORDS`` words, between a split row and a training row
that agree on that title or id. Keys shared without such content are counted
(``<role>_article_overlap_unconfirmed_count``, ``<role>_title_collisions_unconfirmed``,
``<role>_article_id_collisions_unconfirmed``) as warnings, never as a failure.

Zero is the only defensible value for confirmed leaks, so those gates are structural.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lvmqa.errors import CheckSkipped
from lvmqa.results import CheckResult, Gate, from_gates
from lvmqa.texts import context_meta, gate_kind

if TYPE_CHECKING:
    from lvmqa.checks import CheckContext
    from lvmqa.io import Dataset

CHECK_ID = "split_leakage"
SPLIT_ROLES = ("val", "ood")
DEFAULT_NEAR_THRESHOLD = 0.995
# Exact search of a query against N rows costs N*D flops; 5,000 queries against 726k
# 768-D rows is ~3e12 flops (about a minute on 2 cores), and any leak that matters
# shows up in a sample of that size.
DEFAULT_NEAR_SAMPLE = 5000
_HASH_BYTES = 16
# An identical text confirms a shared article only when it is long enough not to be
# boilerplate ("See also", "Introduction", a licence line is shorter or repeats anyway).
MIN_CONFIRMING_WORDS = 6
_MAX_EXAMPLES = 10
_SEARCH_BLOCK = 1024

# (metric suffix, threshold key, default)
# Leakage proper is the same article (or the same chunk) on both sides: gated at zero.
# Identical sentences in *different* articles (quotations, boilerplate such as "X may
# refer to:") are real Wikipedia content; they are reported and only gated by share,
# so a handful of quoted sentences does not fail a clean split.
_GATES: tuple[tuple[str, str, float], ...] = (
    ("article_overlap_confirmed_count", "max_article_overlap", 0),
    ("shared_exact_duplicate_same_article_count", "max_shared_duplicates", 0),
    ("shared_near_duplicate_same_article_count", "max_shared_near_duplicates", 0),
    ("shared_exact_duplicate_share", "max_shared_duplicate_share", 0.005),
    ("shared_near_duplicate_share", "max_shared_near_duplicate_share", 0.005),
)


# --- pure functions --------------------------------------------------------------------------


def row_digests(rows: np.ndarray) -> list[bytes]:
    """A 128-bit digest of each row's float32 bytes.

    Adding 0.0 turns -0.0 into +0.0, so rows that compare equal hash equal.
    """
    as32 = np.ascontiguousarray(np.asarray(rows, dtype=np.float32) + np.float32(0.0))
    flat = as32.reshape(len(as32), -1)
    return [hashlib.blake2b(row.tobytes(), digest_size=_HASH_BYTES).digest() for row in flat]


def iter_digests(chunks: Iterable[np.ndarray]) -> Iterator[bytes]:
    for block in chunks:
        yield from row_digests(block)


def shared_duplicate_rows(
    train_index: Mapping[bytes, int], split_digests: Iterable[bytes]
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows whose digest occurs in training, and the first training row with it."""
    pairs = [(i, train_index[d]) for i, d in enumerate(split_digests) if d in train_index]
    split_rows = np.array([i for i, _ in pairs], dtype=np.int64)
    train_rows = np.array([j for _, j in pairs], dtype=np.int64)
    return split_rows, train_rows


@dataclass(frozen=True)
class Overlap:
    key: str | None  # "article", "title", or None when the split's articles are unknown
    split_articles: int
    shared_articles: int
    split_rows_in_shared: int
    split_rows: int
    examples: list[Any] = field(default_factory=list)
    keys: frozenset[Any] = frozenset()  # every shared key

    @property
    def article_share(self) -> float | None:
        return self.shared_articles / self.split_articles if self.split_articles else None

    @property
    def row_share(self) -> float | None:
        return self.split_rows_in_shared / self.split_rows if self.split_rows else None


def article_overlap(train_keys: Iterable[Any], split_keys: Iterable[Any], key: str) -> Overlap:
    """Distinct split articles also present in train (missing values ignored)."""
    train = {k for k in train_keys if k is not None}
    split_list = list(split_keys)
    split = {k for k in split_list if k is not None}
    shared = split & train
    rows_in_shared = sum(1 for k in split_list if k is not None and k in shared)
    examples = sorted(shared, key=str)[:_MAX_EXAMPLES]
    return Overlap(
        key, len(split), len(shared), rows_in_shared, len(split_list), examples, frozenset(shared)
    )


def _known(meta: pd.DataFrame, column: str) -> list[Any] | None:
    """Column values with None for missing, or None when the column is entirely unknown."""
    if column not in meta.columns or not bool(meta[column].notna().any()):
        return None
    values = meta[column].astype(object).where(meta[column].notna(), None).tolist()
    if column == "article":
        return [None if v is None else int(v) for v in values]
    return [None if v is None else str(v) for v in values]


def overlaps(train_meta: pd.DataFrame, split_meta: pd.DataFrame) -> dict[str, Overlap]:
    """Article overlap by every identity both sides know: "title" and/or "article" id."""
    found: dict[str, Overlap] = {}
    for column in ("title", "article"):
        train_keys, split_keys = _known(train_meta, column), _known(split_meta, column)
        if train_keys is not None and split_keys is not None:
            found[column] = article_overlap(train_keys, split_keys, column)
    return found


def _coverage(meta: pd.DataFrame, column: str) -> float:
    return float(meta[column].notna().mean()) if column in meta.columns and len(meta) else 0.0


def choose_overlap(train_meta: pd.DataFrame, split_meta: pd.DataFrame) -> Overlap | None:
    """The overlap to gate on: the identity known for the most rows of both files.

    Ids win ties (a title may name different documents). Which key is chosen matters
    less than it did: a shared key fails only where content confirms it (see
    :func:`confirmed_keys`), and a content match confirms under either identity.
    """
    found = overlaps(train_meta, split_meta)
    if not found:
        return None
    best = max(
        found,
        key=lambda c: (min(_coverage(train_meta, c), _coverage(split_meta, c)), c == "article"),
    )
    return found[best]


def _text_key(text: object) -> str | None:
    if not isinstance(text, str):
        return None
    words = text.split()
    return " ".join(words) if len(words) >= MIN_CONFIRMING_WORDS else None


def shared_text_rows(
    train_texts: Iterable[object] | None, split_texts: Iterable[object] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows whose text (whitespace-normalised, >= MIN_CONFIRMING_WORDS words) occurs
    identically in training, and the first training row with it."""
    if train_texts is None or split_texts is None:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    first: dict[str, int] = {}
    for row, text in enumerate(train_texts):
        key = _text_key(text)
        if key is not None:
            first.setdefault(key, row)
    pairs = [
        (s, first[key])
        for s, text in enumerate(split_texts)
        if (key := _text_key(text)) is not None and key in first
    ]
    return (
        np.array([s for s, _ in pairs], dtype=np.int64),
        np.array([t for _, t in pairs], dtype=np.int64),
    )


def confirmed_keys(
    train_meta: pd.DataFrame,
    split_meta: pd.DataFrame,
    key: str,
    train_rows: np.ndarray,
    split_rows: np.ndarray,
) -> set[Any]:
    """Split articles (under ``key``) that a content pair confirms as shared with training.

    A pair (split row, training row) of matching content confirms the split row's
    article when the two rows agree on the article id or on the title.
    """
    split_keys = _known(split_meta, key)
    inside = same_article(train_meta, split_meta, key, train_rows, split_rows)
    if split_keys is None or inside is None:
        return set()
    return {split_keys[int(s)] for s in split_rows[inside] if split_keys[int(s)] is not None}


def _normalised(block: np.ndarray) -> np.ndarray:
    block = np.nan_to_num(np.asarray(block, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    norms = np.linalg.norm(block, axis=1, keepdims=True)  # float64: no overflow
    return (block / np.maximum(norms, 1e-300)).astype(np.float32)


def nearest_cosines(
    index_chunks: Iterable[np.ndarray], queries: np.ndarray, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of each query's nearest indexed row and that row's index (FAISS, exact, k=1)."""
    import faiss

    index = faiss.IndexFlatIP(dim)
    for block in index_chunks:
        index.add(_normalised(block))
    if index.ntotal == 0 or len(queries) == 0:
        return np.full(len(queries), np.nan), np.full(len(queries), -1, dtype=np.int64)
    sims = np.empty(len(queries), dtype=np.float64)
    ids = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), _SEARCH_BLOCK):
        block = _normalised(queries[start : start + _SEARCH_BLOCK])
        distances, labels = index.search(block, 1)
        sims[start : start + len(block)] = distances[:, 0]
        ids[start : start + len(block)] = labels[:, 0]
    return sims, ids


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted seeded sample of row indices (all rows when n <= size)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


# --- dataset-level evidence ------------------------------------------------------------------


_BLOCK_BYTES = 64 * 1024 * 1024


def _target_blocks(ds: Dataset) -> Iterator[np.ndarray]:
    """This dataset's targets in bounded blocks of rows (float32)."""
    step = max(1, _BLOCK_BYTES // max(ds.dim * 4, 1))
    for start in range(0, ds.n, step):
        yield ds.target_rows(start, min(start + step, ds.n))


@dataclass
class PairEvidence:
    role: str
    metrics: dict[str, Any]
    details: dict[str, Any]


def train_digest_index(train: Dataset) -> dict[bytes, int]:
    """Digest -> first row with that target (about 100 bytes per distinct row)."""
    index: dict[bytes, int] = {}
    for row, digest in enumerate(iter_digests(_target_blocks(train))):
        index.setdefault(digest, row)
    return index


def same_article(
    train_meta: pd.DataFrame,
    split_meta: pd.DataFrame,
    key: str | None,
    train_rows: np.ndarray,
    split_rows: np.ndarray,
) -> np.ndarray | None:
    """Per matched pair: is the training row from the split row's article? None if unknown.

    A duplicate inside a shared article is a split leak; one across different articles
    is content the corpus itself repeats (quotations, boilerplate).
    """
    if key is None:
        return None
    inside: np.ndarray | None = None
    # the chosen identity, then any other both files know: ids or titles may each disagree
    for column in dict.fromkeys((key, "article", "title")):
        train_keys, split_keys = _known(train_meta, column), _known(split_meta, column)
        if train_keys is None or split_keys is None:
            continue
        agree = np.array(
            [
                train_keys[t] is not None and train_keys[t] == split_keys[s]
                for t, s in zip(train_rows.tolist(), split_rows.tolist(), strict=True)
            ],
            dtype=bool,
        )
        inside = agree if inside is None else inside | agree
    return inside


def pair_evidence(
    role: str,
    train: Dataset,
    split: Dataset,
    *,
    train_meta: pd.DataFrame | None = None,
    split_meta: pd.DataFrame | None = None,
    train_digests: Mapping[bytes, int],
    near_threshold: float = DEFAULT_NEAR_THRESHOLD,
    near_sample: int = DEFAULT_NEAR_SAMPLE,
    seed: int = 0,
) -> PairEvidence:
    """All leakage metrics of one split against the training dataset (names prefixed by role).

    ``train_meta``/``split_meta`` replace the files' own metadata (e.g. joined with their
    source banks).
    """
    p = f"{role}_"
    train_meta = train.meta if train_meta is None else train_meta
    split_meta = split.meta if split_meta is None else split_meta
    metrics: dict[str, Any] = {f"{p}n_sequences": split.n}
    details: dict[str, Any] = {f"{p}path": str(split.path)}

    found = overlaps(train_meta, split_meta)
    overlap = choose_overlap(train_meta, split_meta)
    metrics[f"{p}article_key"] = overlap.key if overlap else None
    metrics[f"{p}article_count"] = overlap.split_articles if overlap else None
    metrics[f"{p}article_overlap_count"] = overlap.shared_articles if overlap else None
    metrics[f"{p}article_overlap_share"] = overlap.article_share if overlap else None
    metrics[f"{p}row_overlap_share"] = overlap.row_share if overlap else None
    # both identities, when known, so a disagreement (different id numbering) is visible
    metrics[f"{p}title_overlap_count"] = (
        found["title"].shared_articles if "title" in found else None
    )
    metrics[f"{p}article_id_overlap_count"] = (
        found["article"].shared_articles if "article" in found else None
    )
    if overlap:
        details[f"{p}shared_articles"] = overlap.examples

    if split.dim != train.dim:
        details[f"{p}vector_comparison"] = (
            f"skipped: dimension {split.dim} differs from this dataset's {train.dim}"
        )
        for name in ("exact", "near"):
            for suffix in ("count", "same_article_count", "share"):
                metrics[f"{p}shared_{name}_duplicate_{suffix}"] = None
        _confirm(p, metrics, details, train, split, train_meta, split_meta, found, [])
        return PairEvidence(role, metrics, details)

    key = overlap.key if overlap else None
    shared, shared_train = shared_duplicate_rows(train_digests, iter_digests(_target_blocks(split)))
    metrics[f"{p}shared_exact_duplicate_count"] = len(shared)
    metrics[f"{p}shared_exact_duplicate_share"] = len(shared) / split.n if split.n else 0.0
    inside = same_article(train_meta, split_meta, key, shared_train, shared)
    metrics[f"{p}shared_exact_duplicate_cross_article_count"] = (
        int((~inside).sum()) if inside is not None else None
    )
    metrics[f"{p}shared_exact_duplicate_same_article_count"] = (
        int(inside.sum()) if inside is not None else len(shared)
    )
    details[f"{p}shared_duplicate_examples"] = _pair_examples(
        train, split, train_meta, split_meta, shared_train, shared
    )

    rows = sample_rows(split.n, near_sample, seed)
    sims, ids = nearest_cosines(_target_blocks(train), split.targets_at(rows), train.dim)
    is_near = sims >= near_threshold
    near, near_train = rows[is_near], ids[is_near]
    metrics[f"{p}near_duplicate_sampled_rows"] = len(rows)
    metrics[f"{p}shared_near_duplicate_count"] = len(near)
    metrics[f"{p}shared_near_duplicate_share"] = len(near) / len(rows) if len(rows) else 0.0
    near_inside = same_article(train_meta, split_meta, key, near_train, near)
    metrics[f"{p}shared_near_duplicate_cross_article_count"] = (
        int((~near_inside).sum()) if near_inside is not None else None
    )
    metrics[f"{p}shared_near_duplicate_same_article_count"] = (
        int(near_inside.sum()) if near_inside is not None else len(near)
    )
    finite = sims[np.isfinite(sims)]
    metrics[f"{p}nearest_cosine_p50"] = float(np.median(finite)) if len(finite) else None
    details[f"{p}near_duplicate_examples"] = _pair_examples(
        train, split, train_meta, split_meta, near_train, near
    )
    content = [(shared_train, shared), (near_train, near)]
    _confirm(p, metrics, details, train, split, train_meta, split_meta, found, content)
    return PairEvidence(role, metrics, details)


def _confirm(
    p: str,
    metrics: dict[str, Any],
    details: dict[str, Any],
    train: Dataset,
    split: Dataset,
    train_meta: pd.DataFrame,
    split_meta: pd.DataFrame,
    found: Mapping[str, Overlap],
    content: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    """Shared titles/ids confirmed by content (vectors or identical texts) vs collisions."""
    text_split, text_train = shared_text_rows(train.target_texts, split.target_texts)
    metrics[f"{p}shared_text_count"] = len(text_split)
    pairs = [*content, (text_train, text_split)]
    train_rows = np.concatenate([t for t, _ in pairs]).astype(np.int64)
    split_rows = np.concatenate([s for _, s in pairs]).astype(np.int64)
    overlap = choose_overlap(train_meta, split_meta)
    key = overlap.key if overlap else None
    inside = same_article(train_meta, split_meta, key, text_train, text_split)
    metrics[f"{p}shared_text_same_article_count"] = (
        int(inside.sum()) if inside is not None else None
    )
    confirmed: dict[str, set[Any]] = {
        column: confirmed_keys(train_meta, split_meta, column, train_rows, split_rows)
        for column in found
    }
    for column, name in (("title", "title_collisions"), ("article", "article_id_collisions")):
        shared = found.get(column)
        metrics[f"{p}{name}_unconfirmed"] = (
            len(shared.keys - confirmed[column]) if shared is not None else None
        )
    if overlap is None or key is None:
        metrics[f"{p}article_overlap_confirmed_count"] = None
        metrics[f"{p}article_overlap_unconfirmed_count"] = None
        return
    chosen = confirmed[key]
    metrics[f"{p}article_overlap_confirmed_count"] = len(chosen)
    metrics[f"{p}article_overlap_unconfirmed_count"] = len(overlap.keys - chosen)
    details[f"{p}confirmed_shared_articles"] = sorted(chosen, key=str)[:_MAX_EXAMPLES]
    if len(text_split):
        details[f"{p}shared_text_examples"] = _pair_examples(
            train, split, train_meta, split_meta, text_train, text_split
        )


def _describe_row(ds: Dataset, meta: pd.DataFrame, row: int) -> dict[str, Any]:
    item: dict[str, Any] = {"row": row}
    for column in ("article", "title"):
        if column in meta.columns and bool(pd.notna(meta[column].iloc[row])):
            value = meta[column].iloc[row]
            item[column] = int(value) if column == "article" else str(value)
    if ds.target_texts is not None:
        item["text"] = str(ds.target_texts[row])[:160]
    return item


def _pair_examples(
    train: Dataset,
    split: Dataset,
    train_meta: pd.DataFrame,
    split_meta: pd.DataFrame,
    train_rows: np.ndarray,
    split_rows: np.ndarray,
) -> list[dict[str, Any]]:
    return [
        {
            "split": _describe_row(split, split_meta, int(s)),
            "train": _describe_row(train, train_meta, int(t)),
        }
        for s, t in zip(split_rows[:_MAX_EXAMPLES], train_rows[:_MAX_EXAMPLES], strict=True)
    ]


# --- the check -------------------------------------------------------------------------------


def _option(ctx: CheckContext, name: str, default: int) -> int:
    """A run option by attribute, else from ``options.extra``; non-positive means default."""
    value = getattr(ctx.options, name, None)
    if value is None:
        extra = getattr(ctx.options, "extra", None)
        value = extra.get(name) if isinstance(extra, Mapping) else None
    return int(value) if isinstance(value, (int, np.integer)) and value > 0 else default


def check_split_leakage(ctx: CheckContext) -> CheckResult:
    splits = [(role, split) for role in SPLIT_ROLES if (split := ctx.split(role)) is not None]
    if not splits:
        raise CheckSkipped(
            f"no val/ood splits configured for dataset '{ctx.name}' "
            "(set val = … and ood = … in its registry entry)"
        )
    near_threshold = ctx.threshold("near_threshold", DEFAULT_NEAR_THRESHOLD)
    near_sample = _option(ctx, "leakage_sample", DEFAULT_NEAR_SAMPLE)
    seed = _option(ctx, "seed", 0)
    train = ctx.dataset
    train_meta, join_note = context_meta(ctx)
    digests = ctx.cached("split_leakage.train_digests", lambda: train_digest_index(train))
    metrics: dict[str, Any] = {"near_threshold": near_threshold, "splits": [r for r, _ in splits]}
    details: dict[str, Any] = {}
    gates: list[Gate] = []
    ungated: dict[str, str] = {}
    for role, split_ctx in splits:
        evidence = pair_evidence(
            role,
            train,
            split_ctx.dataset,
            train_meta=train_meta,
            split_meta=context_meta(split_ctx)[0],
            train_digests=digests,
            near_threshold=near_threshold,
            near_sample=near_sample,
            seed=seed,
        )
        metrics.update(evidence.metrics)
        details.update(evidence.details)
        details[f"{role}_name"] = split_ctx.name
        gates.extend(_gates(ctx, role, evidence.metrics, ungated))
    if join_note:
        details["source_join"] = join_note
    if ungated:
        details["ungated_metrics"] = ungated
    return from_gates(CHECK_ID, metrics, gates, _message(metrics, splits, gates), details)


def _gates(
    ctx: CheckContext, role: str, metrics: Mapping[str, Any], ungated: dict[str, str]
) -> list[Gate]:
    gates: list[Gate] = []
    for suffix, key, default in _GATES:
        metric = f"{role}_{suffix}"
        value = metrics.get(metric)
        if value is None:
            ungated[metric] = (
                "no article ids or titles in both files"
                if "article" in suffix
                else "vector dimensions differ"
            )
            continue
        gates.append(
            Gate(
                name=metric,
                metric=metric,
                value=value,
                op="<=",
                threshold=ctx.threshold(key, default),
                kind=gate_kind(ctx, key, "absolute" if suffix.endswith("share") else "structural"),
            )
        )
    return gates


def _message(metrics: Mapping[str, Any], splits: list[tuple[str, Any]], gates: list[Gate]) -> str:
    parts: list[str] = []
    for role, split_ctx in splits:
        shared = metrics.get(f"{role}_article_overlap_count")
        share = metrics.get(f"{role}_article_overlap_share")
        exact = metrics.get(f"{role}_shared_exact_duplicate_count")
        near = metrics.get(f"{role}_shared_near_duplicate_count")
        sampled = metrics.get(f"{role}_near_duplicate_sampled_rows")
        confirmed = metrics.get(f"{role}_article_overlap_confirmed_count")
        articles = (
            f"{shared} shared titles/ids ({share:.1%} of {role}), {confirmed} confirmed by content"
            if shared is not None and share is not None
            else "articles unknown"
        )
        cross = metrics.get(f"{role}_shared_exact_duplicate_cross_article_count")
        where = f" ({cross} between different articles)" if exact and cross is not None else ""
        parts.append(
            f"{role} '{split_ctx.name}': {articles}, {exact} exact duplicate targets{where}, "
            f"{near}/{sampled} sampled near-duplicates"
        )
    failed = [g.name for g in gates if not g.passed]
    verdict = "LEAKAGE " + ", ".join(failed) if failed else "no leakage"
    return f"{verdict}: " + "; ".join(parts)
