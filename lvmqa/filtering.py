"""Quality score, drop mask and ``filter_dataset``: repair a sequences file, honestly.

**The score.** The origin scored each row by the *geometric* mean of its cosines to the
previous and next row: one negative cosine made it NaN (and the row silently vanished),
two negatives made it positive. lvmqa uses the arithmetic mean instead:

    score(r) = mean(cos(t_prev, t_r), cos(t_r, t_next))

where prev/next are r's neighbours in *article order* when every row's article is known
(sorted by article, then target chunk index, then file position) and in file order
otherwise. A row at an article's edge uses its one neighbour. A row with no usable
neighbour (alone in its article, or next to non-finite rows) falls back to its
within-window coherence: the mean cosine of its consecutive context positions and of
the last context to the target. Zero vectors have cosine 0 with everything. The score
is finite for every row whose vectors are finite; a row with any non-finite value gets
NaN and the reason ``non_finite``.

**Not idempotent in coherence, by nature.** Dropping a row changes its neighbours'
neighbours, so re-scoring a filtered file can drop more rows. The reasons that depend
only on the row itself (``blocklist``, ``non_finite``) and ``duplicate`` (no duplicate
survives its own removal) are idempotent; the tests pin exactly that.

**Honest numbers.** The kept rows' mean score is at least ``min_coherence`` by
construction, so the manifest reports it as *selected* and puts next to it the
within-window context coherence (cosines between consecutive context positions, which
the filter never scores directly) for input and output.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lvmqa.atomic import atomic_write, write_text_atomic
from lvmqa.errors import LvmqaError
from lvmqa.leakage import row_digests
from lvmqa.npzfile import file_sha256
from lvmqa.texts import (
    DEFAULT_BLOCKLIST,
    blocklist_row_mask,
    compile_blocklist,
    join_source_meta,
    normalise_texts,
    optional_strings,
)

if TYPE_CHECKING:
    import pandas as pd

    from lvmqa.io import Dataset
    from lvmqa.npzfile import DataFile, Member

DEFAULT_MIN_COHERENCE = 0.35
# Precedence for the "primary" reason of a row dropped for several: the most basic
# defect first, so the per-primary counts add up to the dropped total.
REASONS = ("non_finite", "blocklist", "duplicate", "low_coherence")
# Rows of pages lvmqa.lowquality flagged from the data; a reason only when asked for
# (``drop_rows``), after the row-level reasons.
PAGE_REASON = "low_quality_page"
SCORE_DEFINITION = (
    "mean of the cosines to the previous and next row (article order when article ids are "
    "known, else file order); one neighbour at an article edge; rows with no usable "
    "neighbour use their within-window coherence"
)
_EPS = 1e-300  # below this a norm is treated as zero: the row has cosine 0
_BLOCK_ROWS = 8192
_EXAMPLES_PER_REASON = 5


# --- cosines ---------------------------------------------------------------------------------


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length along the last axis, in float64; zero rows stay zero.

    float64 keeps huge float32 values (|x| > 1e19) from overflowing the squared norm.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):  # non-finite rows become NaN, by design
        return vectors / np.maximum(norms, _EPS)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``a`` with the same row of ``b`` (float64, clipped to [-1, 1]).

    Zero rows give 0; rows holding NaN or Inf give NaN.
    """
    cos = np.einsum("...d,...d->...", _unit(a), _unit(b), dtype=np.float64)
    return np.clip(cos, -1.0, 1.0)


@dataclass(frozen=True)
class WindowStats:
    """Per-row measures that need the contexts (one streamed pass)."""

    finite: np.ndarray  # bool: every context and target value is finite
    window_coherence: np.ndarray  # mean cos of consecutive positions c0..c_{C-1}, t
    context_coherence: np.ndarray  # mean cos of consecutive context positions only


def window_stats(contexts: np.ndarray, targets: np.ndarray) -> WindowStats:
    """Within-window measures for a block of rows: contexts (k, C, D), targets (k, D)."""
    contexts = np.asarray(contexts, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.float32)
    finite = np.isfinite(contexts).all(axis=(1, 2)) & np.isfinite(targets).all(axis=1)
    inner = row_cosines(contexts[:, :-1], contexts[:, 1:])  # (k, C-1)
    last = row_cosines(contexts[:, -1], targets)  # (k,)
    window = (inner.sum(axis=1) + last) / contexts.shape[1]
    if inner.shape[1]:
        context = inner.mean(axis=1)
    else:  # a context of one vector has no consecutive pair
        context = np.full(len(targets), np.nan)
    return WindowStats(finite, window, context)


def neighbour_order(
    n: int, articles: np.ndarray | None = None, chunks: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rows in neighbour order, and whether each consecutive pair lies in one article.

    ``articles``/``chunks`` are float arrays with NaN for unknown. Article order is used
    only when every row's article is known; chunks order rows inside an article when all
    are known, file position otherwise (and breaks ties). Without articles the whole file
    is one chain in file order.
    """
    position = np.arange(n)
    if articles is None or n == 0 or np.isnan(articles).any():
        return position, np.ones(max(n - 1, 0), dtype=bool)
    if chunks is not None and not np.isnan(chunks).any():
        order = np.lexsort((position, chunks, articles))
    else:
        order = np.lexsort((position, articles))
    return order, articles[order][1:] == articles[order][:-1]


def neighbour_pairs(
    n: int, articles: np.ndarray | None = None, chunks: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (left, right) that are neighbours (see ``neighbour_order``)."""
    order, same = neighbour_order(n, articles, chunks)
    return order[:-1][same], order[1:][same]


def combine_scores(
    n: int,
    left: np.ndarray,
    right: np.ndarray,
    pair_cos: np.ndarray,
    fallback: np.ndarray,
    finite: np.ndarray,
) -> np.ndarray:
    """Mean of each row's usable neighbour cosines; ``fallback`` where it has none."""
    usable = np.isfinite(pair_cos)
    weights = pair_cos[usable]
    total = np.bincount(left[usable], weights, minlength=n) + np.bincount(
        right[usable], weights, minlength=n
    )
    count = np.bincount(left[usable], minlength=n) + np.bincount(right[usable], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(count > 0, total / np.maximum(count, 1), fallback)
    return np.where(finite, score, np.nan)


def quality_scores(
    targets: np.ndarray,
    contexts: np.ndarray,
    *,
    articles: np.ndarray | None = None,
    chunks: np.ndarray | None = None,
) -> np.ndarray:
    """The filter's per-row score for in-memory arrays (see the module docstring)."""
    targets = np.asarray(targets, dtype=np.float32)
    stats = window_stats(contexts, targets)
    left, right = neighbour_pairs(len(targets), _as_float(articles), _as_float(chunks))
    pair_cos = row_cosines(targets[left], targets[right])
    return combine_scores(len(targets), left, right, pair_cos, stats.window_coherence, stats.finite)


def _as_float(values: np.ndarray | None) -> np.ndarray | None:
    return None if values is None else np.asarray(values, dtype=np.float64)


# --- dataset-level scoring -------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetScores:
    score: np.ndarray
    finite: np.ndarray
    window_coherence: np.ndarray
    context_coherence: np.ndarray
    order: np.ndarray  # rows in neighbour order
    same: np.ndarray  # order[k] and order[k + 1] are neighbours
    lone_rows: int  # rows scored by their window (no usable neighbour)
    neighbour_order: str  # "article" or "file"


def _meta_float(meta: pd.DataFrame, column: str) -> np.ndarray | None:
    if column not in meta.columns:
        return None
    values = meta[column].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    return None if np.isnan(values).all() else values


def _targets_for(ds: Dataset, idx: np.ndarray) -> np.ndarray:
    """Target rows ``idx``: one sequential read when they are close together (file order,
    or a file sorted by article), random access otherwise."""
    if not len(idx):
        return ds.targets_at(idx)
    lo, hi = int(idx.min()), int(idx.max()) + 1
    if hi - lo <= 4 * len(idx):
        return ds.target_rows(lo, hi)[idx - lo]
    return ds.targets_at(idx)


def _pair_cosines(ds: Dataset, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    out = np.empty(len(left), dtype=np.float64)
    for start in range(0, len(left), _BLOCK_ROWS):
        stop = start + _BLOCK_ROWS
        out[start:stop] = row_cosines(
            _targets_for(ds, left[start:stop]), _targets_for(ds, right[start:stop])
        )
    return out


def dataset_scores(ds: Dataset, meta: pd.DataFrame | None = None) -> DatasetScores:
    """Score every row of a dataset, streaming the contexts once.

    ``meta`` replaces ``ds.meta`` (e.g. completed from the source bank).
    """
    meta = ds.meta if meta is None else meta
    n = ds.n
    finite = np.empty(n, dtype=bool)
    window = np.empty(n, dtype=np.float64)
    context = np.empty(n, dtype=np.float64)
    for chunk in ds.iter_chunks():
        # float64 temporaries are several times the chunk: work in sub-blocks
        for lo in range(0, chunk.stop - chunk.start, _BLOCK_ROWS):
            hi = min(lo + _BLOCK_ROWS, chunk.stop - chunk.start)
            stats = window_stats(chunk.contexts[lo:hi], chunk.targets[lo:hi])
            rows = slice(chunk.start + lo, chunk.start + hi)
            finite[rows] = stats.finite
            window[rows] = stats.window_coherence
            context[rows] = stats.context_coherence
    articles = _meta_float(meta, "article")
    order, same = neighbour_order(n, articles, _meta_float(meta, "chunk"))
    left, right = order[:-1][same], order[1:][same]
    pair_cos = _pair_cosines(ds, left, right)
    score = combine_scores(n, left, right, pair_cos, window, finite)
    usable = np.isfinite(pair_cos)
    count = np.bincount(left[usable], minlength=n) + np.bincount(right[usable], minlength=n)
    return DatasetScores(
        score,
        finite,
        window,
        context,
        order,
        same,
        int(((count == 0) & finite).sum()),
        "article" if articles is not None and not np.isnan(articles).any() else "file",
    )


def duplicate_target_mask(ds: Dataset) -> np.ndarray:
    """Rows whose float32 target bytes equal an earlier row's (the first occurrence is kept)."""
    seen: set[bytes] = set()
    out = np.zeros(ds.n, dtype=bool)
    step = _BLOCK_ROWS * 4
    for start in range(0, ds.n, step):
        block = ds.target_rows(start, min(start + step, ds.n))
        for offset, digest in enumerate(row_digests(block)):
            if digest in seen:
                out[start + offset] = True
            else:
                seen.add(digest)
    return out


def dataset_blocklist_mask(
    ds: Dataset, blocklist: str | None, meta: pd.DataFrame | None = None
) -> np.ndarray | None:
    """Rows blocked by text or title; None when the dataset has neither to match."""
    meta = ds.meta if meta is None else meta
    column = meta["title"] if "title" in meta.columns else None
    has_titles = column is not None and bool(column.notna().any())
    titles = optional_strings(column) if has_titles else None
    if ds.target_texts is None and titles is None:
        return None
    texts = normalise_texts(ds.target_texts).texts if ds.target_texts is not None else None
    return blocklist_row_mask(texts, titles, blocklist, n=ds.n)


@dataclass(frozen=True)
class MaskResult:
    mask: np.ndarray  # True = keep
    reasons: dict[str, np.ndarray]
    scores: DatasetScores
    applied: dict[str, str]  # reason -> "applied" or why not


def evaluate(
    ds: Dataset,
    *,
    min_coherence: float | None = DEFAULT_MIN_COHERENCE,
    blocklist: str | None = DEFAULT_BLOCKLIST,
    drop_duplicates: bool = False,
    source: str | Path | Dataset | None = None,
    drop_rows: np.ndarray | None = None,
) -> MaskResult:
    """Scores, per-reason drop flags and the keep-mask, with what was and was not applied.

    ``source`` is the bank the sequences were cut from: rows are joined to it on
    target_id, so article order and titles are known even when the file lacks them.
    """
    compile_blocklist(blocklist)  # a bad regex fails before the long pass
    meta = join_source_meta(ds.meta, _open_source(source))
    scores = dataset_scores(ds, meta)
    none = np.zeros(ds.n, dtype=bool)
    reasons = {name: none.copy() for name in REASONS}
    applied: dict[str, str] = {}
    reasons["non_finite"] = ~scores.finite
    applied["non_finite"] = "applied"
    if blocklist:
        blocked = dataset_blocklist_mask(ds, blocklist, meta)
        if blocked is None:
            applied["blocklist"] = "not applied: the dataset has no texts or titles"
        else:
            reasons["blocklist"] = blocked
            applied["blocklist"] = "applied"
    else:
        applied["blocklist"] = "not applied: no blocklist given"
    if drop_duplicates:
        reasons["duplicate"] = duplicate_target_mask(ds)
        applied["duplicate"] = "applied"
    else:
        applied["duplicate"] = "not applied: drop_duplicates is off"
    if min_coherence is not None:
        with np.errstate(invalid="ignore"):
            reasons["low_coherence"] = np.isfinite(scores.score) & (scores.score < min_coherence)
        applied["low_coherence"] = "applied"
    else:
        applied["low_coherence"] = "not applied: no min_coherence given"
    if drop_rows is not None:
        reasons[PAGE_REASON] = np.asarray(drop_rows, dtype=bool)
        applied[PAGE_REASON] = "applied"
    drop = np.zeros(ds.n, dtype=bool)
    for flags in reasons.values():
        drop |= flags
    return MaskResult(~drop, reasons, scores, applied)


def build_mask(
    ds: Dataset,
    *,
    min_coherence: float | None = DEFAULT_MIN_COHERENCE,
    blocklist: str | None = DEFAULT_BLOCKLIST,
    drop_duplicates: bool = False,
    source: str | Path | Dataset | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Keep-mask (True = keep) and per-reason drop flags (a row may have several)."""
    result = evaluate(
        ds,
        min_coherence=min_coherence,
        blocklist=blocklist,
        drop_duplicates=drop_duplicates,
        source=source,
    )
    return result.mask, result.reasons


def primary_reason_counts(reasons: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Dropped rows counted once, under their first reason in ``REASONS`` order."""
    claimed = None
    counts: dict[str, int] = {}
    for name in [*REASONS, *(r for r in reasons if r not in REASONS)]:
        flags = reasons.get(name)
        if flags is None:
            counts[name] = 0
            continue
        if claimed is None:
            claimed = np.zeros(len(flags), dtype=bool)
        fresh = flags & ~claimed
        counts[name] = int(fresh.sum())
        claimed |= flags
    return counts


def windows_stay_contiguous(mask: np.ndarray, order: np.ndarray, same: np.ndarray) -> bool:
    """False when a dropped row sits between kept rows of one chain (article, or file).

    ``order``/``same`` come from ``neighbour_order``. Dropping only at the ends of a
    chain keeps the remaining windows of that chain contiguous.
    """
    n = len(mask)
    if n == 0 or mask.all():
        return True
    chain = np.concatenate([[0], np.cumsum(~same)])  # chain id along ``order``
    kept_at = np.flatnonzero(mask[order])  # positions along ``order`` that are kept
    if not len(kept_at):
        return True
    kept_chain = chain[kept_at]
    chains = int(chain[-1]) + 1
    count = np.bincount(kept_chain, minlength=chains)
    first = np.full(chains, n, dtype=np.int64)
    last = np.full(chains, -1, dtype=np.int64)
    np.minimum.at(first, kept_chain, kept_at)
    np.maximum.at(last, kept_chain, kept_at)
    present = count > 0
    return bool(np.all(last[present] - first[present] + 1 == count[present]))


# --- writing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputPaths:
    dataset: Path
    mask: Path
    manifest: Path


def output_paths(out: str | Path, input_path: Path) -> OutputPaths:
    """``out`` is a prefix: PREFIX.npz (PREFIX/ for a folder input), .mask.npy, .manifest.json."""
    out = Path(out)
    prefix = out.with_suffix("") if out.suffix == ".npz" else out
    stem = prefix.name
    folder_input = input_path.is_dir()
    dataset = prefix if folder_input else prefix.with_name(stem + ".npz")
    return OutputPaths(
        dataset, prefix.with_name(stem + ".mask.npy"), prefix.with_name(stem + ".manifest.json")
    )


def _refuse_existing(
    paths: OutputPaths, input_path: Path, force: bool, others: tuple[Path, ...] = ()
) -> None:
    from lvmqa.outputs import refuse_overwrite_of_inputs

    # Never an input, nor inside a folder input (x.mask.npy would become its member).
    outputs = (paths.dataset, paths.mask, paths.manifest)
    refuse_overwrite_of_inputs(outputs, (input_path, *others), option="--out")
    for path in outputs:
        if path.exists() and not force:
            raise LvmqaError("output exists (pass --force to replace it)", path=path)


def _per_row(name: str, member: Member, ds: Dataset) -> bool:
    """Members with one entry per sequence are filtered; the rest are copied."""
    if not member.shape or member.shape[0] != ds.n:
        return False
    # index-based sequences: the shared vector table is not per-sequence
    return not (ds.keys.get("vectors") == name and ds.keys.get("targets") != name)


def _filtered_blocks(member: Member, keep: np.ndarray | None) -> Iterator[np.ndarray]:
    row_bytes = max(1, int(np.prod(member.shape[1:], dtype=np.int64)) * member.dtype.itemsize)
    step = max(1, (32 * 1024 * 1024) // row_bytes)
    for start in range(0, member.n_rows, step):
        block = member.rows(start, start + step)
        yield block if keep is None else block[keep[start : start + len(block)]]


@dataclass(frozen=True)
class _PlannedMember:
    name: str
    member: Member
    keep: np.ndarray | None  # None: copy whole
    shape: tuple[int, ...]


def _plan_members(ds: Dataset, data: DataFile, mask: np.ndarray) -> list[_PlannedMember]:
    kept = int(mask.sum())
    plan: list[_PlannedMember] = []
    for name, member in data.members.items():
        if _per_row(name, member, ds):
            plan.append(_PlannedMember(name, member, mask, (kept, *member.shape[1:])))
        else:
            plan.append(_PlannedMember(name, member, None, member.shape))
    return plan


def _scalar_update(name: str, member: Member, ds: Dataset, kept: int) -> np.ndarray | None:
    """A scalar that states the sequence count must follow the filter."""
    if member.shape != () or name != "num_sequences" or member.dtype.hasobject:
        return None
    value = member.load()
    if int(np.asarray(value)) != ds.n:
        return None
    return np.array(kept, dtype=member.dtype)


def _write_member(write_array: Any, write_rows: Any, item: _PlannedMember) -> None:
    member = item.member
    # object arrays are pickles and scalars are tiny: whole; numeric arrays stream by rows
    # (``Member.rows`` slices Fortran-order arrays correctly too)
    if member.dtype.hasobject or member.shape == ():
        array = member.load()
        write_array(item.name, array if item.keep is None else array[item.keep])
    else:
        write_rows(item.name, item.shape, member.dtype, _filtered_blocks(member, item.keep))


def _write_npz(
    dest: Path, plan: list[_PlannedMember], data: DataFile, ds: Dataset, kept: int, force: bool
) -> list[str]:
    from lvmqa.npzfile import NpzWriter

    updated: list[str] = []
    with atomic_write(dest, force=force) as handle, NpzWriter(handle) as npz:
        for item in plan:
            replacement = _scalar_update(item.name, item.member, ds, kept)
            if replacement is not None:
                npz.write_array(item.name, replacement)
                updated.append(item.name)
            else:
                _write_member(npz.write_array, npz.write_rows, item)
        for name, raw in data.json_members.items():
            # NpzWriter has no public raw-member API; JSON members are copied byte for byte
            info = zipfile.ZipInfo(f"{name}.json", date_time=(1980, 1, 1, 0, 0, 0))
            npz._zip.writestr(info, raw)
    return updated


def _write_npy_folder(
    dest: Path, plan: list[_PlannedMember], ds: Dataset, kept: int, force: bool
) -> list[str]:
    """A folder input becomes a folder output, swapped into place only when complete."""
    extra = sorted(p.name for p in ds.path.iterdir() if p.suffix != ".npy")
    if extra:
        raise LvmqaError(
            "cannot filter a folder holding files other than .npy arrays",
            path=ds.path,
            found=", ".join(extra[:5]),
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    updated: list[str] = []
    try:

        def write_array(name: str, array: np.ndarray) -> None:
            with atomic_write(staging / f"{name}.npy") as handle:
                np.lib.format.write_array(handle, np.asanyarray(array), allow_pickle=True)

        def write_rows(
            name: str, shape: tuple[int, ...], dtype: np.dtype[Any], chunks: Iterator[np.ndarray]
        ) -> None:
            header = {
                "descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": False,
                "shape": shape,
            }
            with atomic_write(staging / f"{name}.npy") as handle:
                np.lib.format.write_array_header_2_0(handle, header)
                for block in chunks:
                    handle.write(np.ascontiguousarray(block, dtype=dtype).tobytes())

        for item in plan:
            replacement = _scalar_update(item.name, item.member, ds, kept)
            if replacement is not None:
                write_array(item.name, replacement)
                updated.append(item.name)
            else:
                _write_member(write_array, write_rows, item)
        if dest.exists():
            if not force:
                raise LvmqaError("output exists (pass --force to replace it)", path=dest)
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return updated


# --- manifest --------------------------------------------------------------------------------


def _lvmqa_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("lvmqa")
    except metadata.PackageNotFoundError:
        import lvmqa

        return str(getattr(lvmqa, "__version__", "unknown"))


def _stats(values: np.ndarray) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return {"mean": None, "p10": None, "p50": None, "n": 0}
    p10, p50 = np.percentile(finite, [10, 50])
    return {"mean": float(finite.mean()), "p10": float(p10), "p50": float(p50), "n": len(finite)}


def _file_order_adjacency(ds: Dataset, rows: np.ndarray) -> dict[str, Any]:
    """Cosine of consecutive rows of the file made of ``rows`` (what `coherence` will see)."""
    if len(rows) < 2:
        return _stats(np.array([]))
    return _stats(_pair_cosines(ds, rows[:-1], rows[1:]))


def coherence_section(
    ds: Dataset, result: MaskResult, min_coherence: float | None
) -> dict[str, Any]:
    scores = result.scores
    kept_rows = np.flatnonzero(result.mask)
    return {
        "selection_metric": SCORE_DEFINITION,
        "neighbour_order": scores.neighbour_order,
        "rows_scored_by_window": scores.lone_rows,
        "input": {
            "adjacency_score": _stats(scores.score),
            "within_window_context_coherence": _stats(scores.context_coherence),
            "file_order_adjacency": _file_order_adjacency(ds, np.arange(ds.n)),
        },
        "output": {
            "adjacency_score": _stats(scores.score[kept_rows]),
            "within_window_context_coherence": _stats(scores.context_coherence[kept_rows]),
            "file_order_adjacency": _file_order_adjacency(ds, kept_rows),
        },
        "note": (
            "output.adjacency_score is inflated by selection: every kept row scored at least "
            f"{min_coherence} by construction, so its rise is not evidence of better data. "
            "within_window_context_coherence (cosines between consecutive context positions) "
            "is never scored by the filter, but in contiguous windows those vectors are "
            "neighbouring rows' targets, so it is partly inflated too. file_order_adjacency "
            "of the output is what the coherence check will report on the filtered file and "
            "mixes pairs that were never adjacent. The unbiased test is smoke_train on the "
            "output against the input."
        ),
    }


def _examples(ds: Dataset, result: MaskResult, seed: int) -> dict[str, list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict[str, Any]]] = {}
    for name, flags in result.reasons.items():
        rows = np.flatnonzero(flags)
        if len(rows) > _EXAMPLES_PER_REASON:
            rows = np.sort(rng.choice(rows, size=_EXAMPLES_PER_REASON, replace=False))
        items = []
        for row in rows:
            score = result.scores.score[row]
            item: dict[str, Any] = {
                "row": int(row),
                "score": float(score) if np.isfinite(score) else None,
            }
            if ds.target_texts is not None:
                item["text"] = str(ds.target_texts[row])[:160]
            items.append(item)
        out[name] = items
    return out


@dataclass(frozen=True)
class FilterManifest:
    """What ``filter_dataset`` wrote and why; ``data`` is the JSON written to disk."""

    paths: OutputPaths
    n_input: int
    n_kept: int
    reasons: dict[str, int]
    dropped_by_primary_reason: dict[str, int]
    windows_contiguous: bool
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def n_dropped(self) -> int:
        return self.n_input - self.n_kept

    @property
    def counts(self) -> dict[str, int]:
        return {"input": self.n_input, "kept": self.n_kept, "dropped": self.n_dropped}


def _open_source(source: str | Path | Dataset | None) -> Dataset | None:
    if source is None:
        return None
    bank = _open(source)
    if bank.kind != "bank":
        raise LvmqaError(
            "source must be a vector bank",
            path=bank.path,
            expected="a bank with cpe_ids",
            found=f"a {bank.kind} file",
        )
    return bank


def _open(path_or_ds: str | Path | Dataset) -> Dataset:
    from lvmqa.io import Dataset, open_dataset

    if isinstance(path_or_ds, Dataset):
        return path_or_ds
    return open_dataset(Path(path_or_ds))


def filter_dataset(
    path_or_ds: str | Path | Dataset,
    out: str | Path,
    *,
    min_coherence: float | None = DEFAULT_MIN_COHERENCE,
    blocklist: str | None = DEFAULT_BLOCKLIST,
    drop_duplicates: bool = False,
    source: str | Path | Dataset | None = None,
    force: bool = False,
    seed: int = 0,
    drop_rows: np.ndarray | None = None,
) -> FilterManifest:
    """Write PREFIX.mask.npy, the filtered dataset (input format, keys and metadata kept)
    and PREFIX.manifest.json.

    ``source`` is the bank the rows came from (joined on target_id for article order and
    titles); ``seed`` picks the example rows shown in the manifest; ``drop_rows`` (bool,
    n) drops the rows of pages flagged elsewhere (``lowquality.low_quality_row_mask``).
    """
    ds = _open(path_or_ds)
    if ds.kind != "sequences":
        raise LvmqaError(
            "filter works on sequences files; a bank is filtered per chunk while its windows "
            "are rebuilt",
            path=ds.path,
            expected="a sequences file",
            found=f"a {ds.kind}: use `lvmqa windows BANK --out PATH` with its chunk filter",
        )
    paths = output_paths(out, ds.path)
    source_path = source if isinstance(source, (str, Path)) or source is None else source.path
    _refuse_existing(paths, ds.path, force, () if source_path is None else (Path(source_path),))
    with _output_set_lock(paths.manifest.parent):
        return _filter_locked(
            ds, paths, min_coherence, blocklist, drop_duplicates, source, force, seed, drop_rows
        )


@contextlib.contextmanager
def _output_set_lock(folder: Path) -> Iterator[None]:
    """Serialise filter runs writing into one folder (a lock on the folder itself, so
    no lock file is left behind): two concurrent runs cannot interleave their sets."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _filter_locked(
    ds: Dataset,
    paths: OutputPaths,
    min_coherence: float | None,
    blocklist: str | None,
    drop_duplicates: bool,
    source: str | Path | Dataset | None,
    force: bool,
    seed: int,
    drop_rows: np.ndarray | None = None,
) -> FilterManifest:
    """The output set is complete or has no manifest: an old manifest is removed first,
    the dataset and mask written next, and the manifest, naming both files' hashes
    (``verify_output_set`` checks them), last."""
    paths.manifest.unlink(missing_ok=True)
    started = time.time()
    result = evaluate(
        ds,
        min_coherence=min_coherence,
        blocklist=blocklist,
        drop_duplicates=drop_duplicates,
        source=source,
        drop_rows=drop_rows,
    )
    mask = result.mask
    kept = int(mask.sum())
    data = _data_file(ds)
    plan = _plan_members(ds, data, mask)
    if ds.path.is_dir():
        updated = _write_npy_folder(paths.dataset, plan, ds, kept, force)
    else:
        updated = _write_npz(paths.dataset, plan, data, ds, kept, force)
    with atomic_write(paths.mask, force=force) as handle:
        np.lib.format.write_array(handle, mask)

    contiguous = windows_stay_contiguous(mask, result.scores.order, result.scores.same)
    reason_counts = {name: int(flags.sum()) for name, flags in result.reasons.items()}
    primary = primary_reason_counts(result.reasons)
    manifest: dict[str, Any] = {
        "lvmqa_version": _lvmqa_version(),
        "created_unix": round(started),
        "input": {
            "path": str(ds.path),
            "sha256": ds.sha256(),
            "kind": ds.kind,
            "n_sequences": ds.n,
            "dim": ds.dim,
            "keys": dict(ds.keys),
        },
        "output": {
            "dataset": str(paths.dataset),
            "sha256": file_sha256(paths.dataset),
            "mask": str(paths.mask),
            "mask_sha256": file_sha256(paths.mask),
            "format": "folder of .npy" if ds.path.is_dir() else "npz (uncompressed)",
            "filtered_keys": [p.name for p in plan if p.keep is not None],
            "copied_keys": [p.name for p in plan if p.keep is None and p.name not in updated],
            "updated_keys": updated,
        },
        "parameters": {
            "min_coherence": min_coherence,
            "blocklist": blocklist,
            "drop_duplicates": drop_duplicates,
            "source": None if source is None else str(getattr(source, "path", source)),
            "seed": seed,
            "score_definition": SCORE_DEFINITION,
        },
        "counts": {"input": ds.n, "kept": kept, "dropped": ds.n - kept},
        "reasons": reason_counts,
        "reasons_applied": result.applied,
        "reason_precedence": list(primary),
        "dropped_by_primary_reason": primary,
        "windows_contiguous": contiguous,
        "windows_note": (
            "each kept row is still a complete (context, target) window, but rows were "
            "dropped from inside articles, so neighbouring rows of the output are no longer "
            "neighbouring windows; rebuild from the bank with `lvmqa windows BANK --context "
            f"{ds.context_length} --out PATH` for contiguous windows"
            if not contiguous
            else "rows were dropped only at the ends of articles (or not at all)"
        ),
        "coherence": coherence_section(ds, result, min_coherence),
        "examples": _examples(ds, result, seed),
    }
    from lvmqa.results import to_jsonable

    write_text_atomic(
        paths.manifest, json.dumps(to_jsonable(manifest), indent=2) + "\n", force=force
    )
    return FilterManifest(paths, ds.n, kept, reason_counts, primary, contiguous, manifest)


def verify_output_set(manifest_path: str | Path) -> dict[str, Any]:
    """The manifest of a filter output set, after checking that the dataset and mask it
    names are the files beside it (same hashes): a reader's guard against a set that a
    crash or another run left incomplete or mixed."""
    path = Path(manifest_path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        output = manifest["output"]
        # The set's files are the manifest's siblings: names only, so a manifest can
        # point nowhere else (and a set moved as a whole still verifies).
        pairs = (
            (path.parent / Path(str(output["dataset"])).name, output["sha256"]),
            (path.parent / Path(str(output["mask"])).name, output["mask_sha256"]),
        )
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise LvmqaError(
            "not a complete filter manifest", path=path, found=type(exc).__name__
        ) from None
    for file, digest in pairs:
        if not file.is_file() or file_sha256(file) != digest:
            raise LvmqaError(
                "filter output set is incomplete or mixed (a file does not match its manifest)",
                path=path,
                key=file.name,
                expected=str(digest),
            )
    return dict(manifest)


def _data_file(ds: Dataset) -> DataFile:
    from lvmqa.npzfile import DataFile

    data = getattr(ds, "data", None)
    return data if isinstance(data, DataFile) else DataFile(ds.path)


def filter_preview(
    ds: Dataset,
    *,
    min_coherence: float | None = DEFAULT_MIN_COHERENCE,
    blocklist: str | None = DEFAULT_BLOCKLIST,
    source: str | Path | Dataset | None = None,
) -> dict[str, Any]:
    """What ``lvmqa filter`` would keep and drop, without writing anything.

    The report shows it next to the diagnosis (the seed's "Quality Filtering Results"),
    with the same honest coherence section: the kept rows' score is inflated by the
    selection, the within-window coherence is not.
    """
    result = evaluate(ds, min_coherence=min_coherence, blocklist=blocklist, source=source)
    kept = int(result.mask.sum())
    contiguous = windows_stay_contiguous(result.mask, result.scores.order, result.scores.same)
    return {
        "preview": True,
        "parameters": {
            "min_coherence": min_coherence,
            "blocklist": blocklist,
            "drop_duplicates": False,
            "source": None if source is None else str(getattr(source, "path", source)),
            "score_definition": SCORE_DEFINITION,
        },
        "counts": {"input": ds.n, "kept": kept, "dropped": ds.n - kept},
        "reasons": {name: int(flags.sum()) for name, flags in result.reasons.items()},
        "reasons_applied": result.applied,
        "dropped_by_primary_reason": primary_reason_counts(result.reasons),
        "windows_contiguous": contiguous,
        "coherence": coherence_section(ds, result, min_coherence),
    }
