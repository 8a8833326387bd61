"""Build training sequences (context windows + targets) from a vector bank.

``article`` windows are the remedy for ordering/boundary defects: rows are sorted
by (article, chunk) and every window lies inside one article, in chunk order, with
no gap. ``file_order`` reproduces the origin's bug on purpose (windows slide over
the rows as stored, across article boundaries); lvmqa uses it only to build the
``wiki-790k`` demo so the suite has a real defect to find.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lvmqa.atomic import atomic_write
from lvmqa.errors import DatasetFormatError, LvmqaError
from lvmqa.io import Dataset
from lvmqa.npzfile import NpzWriter, file_sha256
from lvmqa.patterns import compile_pattern
from lvmqa.registry import BuildRecipe

RECIPE_VERSION = 1
LAYOUTS = ("per-sequence", "origin-790k")


@dataclass(frozen=True)
class WindowPlan:
    target_rows: np.ndarray  # (n,) bank row of each target
    context_rows: np.ndarray  # (n, C) bank rows of each context


def plan_windows(
    bank: Dataset, *, context: int = 5, windows: str = "article", keep: np.ndarray | None = None
) -> WindowPlan:
    """Choose bank rows for each window. ``keep`` drops bank rows (a chunk-level filter).

    Inside articles, a dropped row or a chunk missing from the bank breaks the run, so
    no window bridges a gap.
    """
    table = bank.bank_table()
    rows = len(table)
    keep = np.ones(rows, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    if windows == "file_order":
        kept = np.flatnonzero(keep)
        if len(kept) <= context:  # not one full window
            return WindowPlan(np.empty(0, np.int64), np.empty((0, context), np.int64))
        targets = kept[context:]
        ctx = np.stack([kept[j : len(kept) - context + j] for j in range(context)], axis=1)
        return WindowPlan(targets, ctx)
    if windows != "article":
        raise LvmqaError(f"unknown windows recipe '{windows}'", expected="article or file_order")
    if not bank.has_bank_ids():
        raise DatasetFormatError(
            "article windows need article and chunk ids",
            path=bank.path,
            key="article_indices",
            expected="article_indices and chunk_indices",
            found="missing",
        )
    article = table["article"].to_numpy(np.int64)
    chunk = table["chunk"].to_numpy(np.int64)
    order = np.lexsort((chunk, article))
    # A run ends where the article changes, a chunk is missing from the bank, or a row
    # was dropped: every window is C + 1 consecutive chunks of one article.
    sorted_article, sorted_chunk = article[order], chunk[order]
    breaks = np.ones(rows, dtype=bool)
    breaks[1:] = (sorted_article[1:] != sorted_article[:-1]) | (
        sorted_chunk[1:] != sorted_chunk[:-1] + 1
    )
    dropped_before = np.cumsum(~keep[order])
    segment = np.cumsum(breaks) * (rows + 1) + dropped_before
    kept_sorted = order[keep[order]]
    seg = segment[keep[order]]
    position = np.arange(len(kept_sorted)) - np.searchsorted(seg, seg, side="left")
    window_pos = np.flatnonzero(position >= context)
    targets = kept_sorted[window_pos]
    ctx = kept_sorted[window_pos[:, None] + np.arange(-context, 0)[None, :]]
    return WindowPlan(targets, ctx)


def text_filter(bank: Dataset, *, blocklist: str | None = None, min_chars: int = 0) -> np.ndarray:
    """Keep-mask over bank rows: drop the blocklisted PAGES (every row of an article whose
    title matches ``blocklist`` at its start, or whose text is such a heading or a
    disambiguation lead, as text_quality defines them) and texts under ``min_chars``.

    Never a substring of prose: "returns a list of strings" stays."""
    from lvmqa.texts import compile_blocklist, text_blocklist_mask, title_blocklist_mask

    table = bank.bank_table()
    keep = np.ones(len(table), dtype=bool)
    texts = getattr(bank, "_bank_texts", None)
    if blocklist:
        pattern = compile_blocklist(blocklist)
        titles = [t if isinstance(t, str) else None for t in table["title"].tolist()]
        blocked = title_blocklist_mask(titles, pattern)
        if texts is not None:
            strings = [t if isinstance(t, str) else "" for t in texts]
            blocked |= text_blocklist_mask(strings, pattern)
        articles = table["article"]
        if blocked.any() and bool(articles.notna().all()):
            blocked |= articles.isin(articles[blocked].unique()).to_numpy(dtype=bool)
        keep &= ~blocked
    if min_chars and texts is not None:
        keep &= np.array([isinstance(t, str) and len(t.strip()) >= min_chars for t in texts])
    return keep


def write_windows(
    bank: Dataset,
    out: Path,
    plan: WindowPlan,
    *,
    layout: str = "per-sequence",
    force: bool = False,
    chunk_rows: int = 4096,
) -> Path:
    """Write the planned windows as an origin-layout sequences npz (streamed, atomic)."""
    if layout not in LAYOUTS:
        raise LvmqaError(f"unknown layout '{layout}'", expected=" or ".join(LAYOUTS))
    n, c = plan.context_rows.shape
    if n == 0:
        raise LvmqaError(
            "no windows to write: every article is shorter than the context "
            "length + 1 after filtering",
            path=bank.path,
        )
    dim = bank.dim
    vectors = bank._vectors  # the bank's own rows, not its derived windows
    assert vectors is not None
    table = bank.bank_table()
    texts = getattr(bank, "_bank_texts", None)
    article = table["article"].to_numpy(dtype="float64", na_value=np.nan)
    chunk = table["chunk"].to_numpy(dtype="float64", na_value=np.nan)
    ids = table["target_id"].to_numpy(dtype=object, na_value=None)
    titles = table["title"].to_numpy(dtype=object, na_value=None)

    def rows_of(idx: np.ndarray) -> np.ndarray:
        order = np.argsort(idx, kind="stable")
        out_rows = np.empty((len(idx), dim), dtype=np.float32)
        out_rows[order] = vectors.mmap()[idx[order]]
        return out_rows

    def context_chunks() -> Iterator[np.ndarray]:
        for start in range(0, n, chunk_rows):
            block = plan.context_rows[start : start + chunk_rows]
            yield rows_of(block.reshape(-1)).reshape(len(block), c, dim)

    def target_chunks() -> Iterator[np.ndarray]:
        for start in range(0, n, chunk_rows):
            yield rows_of(plan.target_rows[start : start + chunk_rows])

    with atomic_write(out, force=force) as handle, NpzWriter(handle) as npz:
        npz.write_rows("context_sequences", (n, c, dim), np.dtype(np.float32), context_chunks())
        npz.write_rows("target_vectors", (n, dim), np.dtype(np.float32), target_chunks())
        if texts is not None:
            npz.write_array("target_texts", texts[plan.target_rows].astype(object))
        npz.write_array("target_ids", ids[plan.target_rows].astype(object))
        if layout == "per-sequence":
            if texts is not None:
                npz.write_array("context_texts", texts[plan.context_rows].astype(object))
            meta = np.empty(n, dtype=object)
            tgt_art = article[plan.target_rows]
            last_art = article[plan.context_rows[:, -1]]
            ctx_art = article[plan.context_rows]
            for i in range(n):
                meta[i] = {
                    "article_index": _int_or_none(tgt_art[i]),
                    "last_context_article": _int_or_none(last_art[i]),
                    "target_chunk_index": _int_or_none(chunk[plan.target_rows[i]]),
                    "target_cpe_id": ids[plan.target_rows[i]],
                    "article_title": titles[plan.target_rows[i]],
                    "crosses_article": bool((ctx_art[i] != tgt_art[i]).any()),
                }
            npz.write_array("metadata", meta)
            npz.write_array("context_length", np.array(c))
            npz.write_array("num_sequences", np.array(n))
            npz.write_array("vector_dim", np.array(dim))
            npz.write_array("source_dataset", np.array(bank.path.name))
        else:  # the origin 790k layout: positions, tmds, ONE metadata dict
            npz.write_array("sequence_positions", plan.target_rows.astype(np.int32))
            npz.write_array("target_tmds", np.zeros(n, dtype=np.int32))
            npz.write_array(
                "metadata",
                np.array(
                    {
                        "context_length": c,
                        "num_sequences": n,
                        "vector_dim": dim,
                        "source": bank.path.name,
                    },
                    dtype=object,
                ),
            )
    return out


def _int_or_none(value: float) -> int | None:
    return None if np.isnan(value) else int(value)


def build_sequences(
    bank_path: Path,
    out: Path,
    *,
    context: int = 5,
    windows: str = "article",
    layout: str = "per-sequence",
    blocklist: str | None = None,
    min_chars: int = 0,
    force: bool = False,
) -> Path:
    from lvmqa.outputs import refuse_overwrite_of_inputs

    refuse_overwrite_of_inputs([out], [bank_path], option="--out")  # even with --force
    if blocklist:
        compile_pattern(blocklist, where="--blocklist")  # a bad pattern fails before the read
    bank = Dataset(bank_path, context_length=context)
    if bank.kind != "bank":
        raise DatasetFormatError(
            "not a vector bank",
            path=bank_path,
            expected="a bank with 'vectors' and article/chunk ids",
            found=f"a {bank.kind} file",
        )
    keep = (
        text_filter(bank, blocklist=blocklist, min_chars=min_chars)
        if blocklist or min_chars
        else None
    )
    plan = plan_windows(bank, context=context, windows=windows, keep=keep)
    return write_windows(bank, out, plan, layout=layout, force=force)


def cache_dir() -> Path:
    env = os.environ.get("LVMQA_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lvmqa"


def materialize(name: str, recipe: BuildRecipe) -> Path:
    """The cached sequences file for a registry ``build`` recipe, built once."""
    if not recipe.source.exists():
        raise LvmqaError(
            "build source not found",
            path=recipe.source,
            expected="a bank file (run fixtures/build_wiki.py to rebuild the demo)",
        )
    digest = hashlib.sha256(file_sha256(recipe.source).encode())
    digest.update(
        json.dumps([RECIPE_VERSION, recipe.windows, recipe.context, recipe.layout]).encode()
    )
    out = cache_dir() / f"{name}-{digest.hexdigest()[:16]}.npz"
    if not out.exists():
        build_sequences(
            recipe.source,
            out,
            context=recipe.context,
            windows=recipe.windows,
            layout=recipe.layout,
            force=True,
        )
    return out
