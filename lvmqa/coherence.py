"""Adjacency coherence of LVM training data, and its drift against a baseline dataset.

Three definitions of "adjacent", because they answer different questions:

* **file order** — cosine of consecutive target rows as stored, ignoring article
  boundaries. This is the origin's definition; it is kept so numbers stay comparable
  with the seed diagnosis, but it mixes content quality with ordering defects, and it
  describes the windows only when they slide over the rows (not for shuffled files).
* **within window** — cosine of consecutive context positions (j, j+1); reported with
  the last context -> target cosine and the whole context-position profile: what the
  model actually sees.
* **article order** — cosine of targets of consecutive chunks of the same article after
  sorting by (article, chunk): content coherence with ordering defects removed. Needs
  article ids (from the file, its metadata, or a join of target ids to the source bank).

Everything per row is computed in ONE streaming pass over ``Dataset.iter_chunks`` and
kept as small float32 arrays (a few values per row); the (N, C, D) data is never held.
The pass is shared with ``lvmqa.integrity`` through ``ctx.cached("coherence_pass")``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from threadpoolctl import threadpool_limits

from lvmqa import gates as gate_table
from lvmqa.errors import CheckSkipped, LvmqaError
from lvmqa.io import prefetched
from lvmqa.metrics import NormAccumulator, norm_summary
from lvmqa.progress import Task
from lvmqa.results import CheckResult, Gate, GateKind, from_gates
from lvmqa.spill import consecutive_cosines, spill_fits

if TYPE_CHECKING:
    import pandas as pd

    from lvmqa.checks import CheckContext
    from lvmqa.io import Chunk, Dataset


# Histogram of the seed: bins of 0.1 from -0.2 to 1.0; values outside go to the end bins.
HIST_EDGES: np.ndarray = np.round(np.linspace(-0.2, 1.0, 13), 10)
PERCENTILES = (10, 25, 50, 75, 90)
CACHE_ROWS = 256  # rows per sub-block: (C+1) x 768 x 4 B x 256 = 4.7 MB, cache-sized
PREFETCH = 2  # blocks read ahead of the computation (a thread)
MAX_LAG = 8  # lags of the file-order decay profile (k = 1..8)
DEFAULT_LOW_COHERENCE = 0.30
DEFAULT_DRIFT_MEAN_PCT = -5.0
DEFAULT_DRIFT_LOW_SHARE_PP = 5.0
BOOTSTRAP_REPS = 1000
# Block lengths of longer series come from evenly spaced stretches; see block_length.
ACF_FULL_MAX = 1 << 19
ACF_SEGMENT = 1 << 15
ACF_SEGMENTS = 16
MAX_BLOCKS = 4096  # blocks per bootstrap resample, at most (see block_length)
BOOTSTRAP_GRID_MIN = 1 << 19  # longer series draw block starts on a grid
CI_LEVEL = 0.95
# Contexts are matched to earlier target rows through projections of three short
# segments of each vector; see CoherenceAccumulator._identify_contexts.
IDENTITY_SEGMENT = 16
IDENTITY_RTOL = 1e-5
IDENTITY_SEED = 20251030
# File order is the window order when most windows slide over the rows.
SLIDING_MAJORITY = 0.5
LOWEST_ARTICLES = 10
MIN_PAIRS_PER_ARTICLE = 3
EXAMPLE_CHARS = 200
GATHER_PAIRS = 8192  # pairs per gather block: at most 2 x 8192 rows in memory
GATHER_MAX_GAP = 32
GATHER_SPAN_ROWS = 4096
SPILL_MIN_PAIRS = 50_000  # far article-order pairs from which the targets are sorted

DriftVerdict = Literal["none", "moderate", "significant"]
VERDICT_LEVEL: dict[str, int] = {"none": 0, "moderate": 1, "significant": 2}


# --------------------------------------------------------------------------- the pass
@dataclass
class CoherencePass:
    """Per-row cosines from one streaming pass (all float32, NaN where undefined).

    ``lag_cosines[g, k-1]`` = cos(target[g-k], target[g]) for k = 1..K (NaN for g < k).
    ``position_cosines[g, j]`` = cos(context j, target) of window g.
    ``step_cosines[g, j]`` = cos(context j, context j+1) of window g.
    ``context_is_previous_target[g, j]`` is True when context j of window g holds the
    same vector as the target of row g - C + j, i.e. the window was built by sliding over
    the rows in file order. It lets ids known per row be used for whole windows.
    """

    n: int
    context_length: int
    lag_cosines: np.ndarray
    position_cosines: np.ndarray
    step_cosines: np.ndarray
    context_is_previous_target: np.ndarray
    invalid_targets: int
    invalid_context_vectors: int
    normalised_target_sum: np.ndarray
    valid_targets: int
    target_norms: np.ndarray  # float32, NaN for zero / non-finite targets
    # The norms check's statistics (lvmqa.metrics.norm_summary), when the pass streamed
    # the file: the one read of every vector serves both.
    norm_statistics: dict[str, Any] = field(default_factory=dict)

    @property
    def max_lag(self) -> int:
        return int(self.lag_cosines.shape[1])

    @property
    def file_order(self) -> np.ndarray:
        """cos(target[i], target[i+1]) for i = 0..N-2: the origin's adjacency."""
        return self.lag_cosines[1:, 0]

    def lag(self, k: int) -> np.ndarray:
        """cos(target[i], target[i+k]) for i = 0..N-k-1."""
        return self.lag_cosines[k:, k - 1]

    @property
    def within_window(self) -> np.ndarray:
        """Consecutive context positions, all windows, row-major (window by window)."""
        return self.step_cosines.reshape(-1)

    @property
    def last_context_to_target(self) -> np.ndarray:
        return self.position_cosines[:, -1]

    @cached_property
    def sliding_window_share(self) -> float:
        """Share of windows (from row C on) whose contexts are exactly the C previous
        targets: the windows were built by sliding over the rows in file order."""
        later = self.context_is_previous_target[self.context_length :]
        return float(later.all(axis=1).mean()) if len(later) else float("nan")

    @property
    def file_order_is_window_order(self) -> bool:
        """True when most windows slide over the file, so the file order is what the
        model reads; False for shuffled or independently built windows, whose file
        order says nothing about the windows (a random split, a shuffled training file)."""
        return bool(self.sliding_window_share >= SLIDING_MAJORITY)

    @property
    def random_pair_mean(self) -> float:
        """Mean cosine over ALL pairs of distinct valid targets (exact, from the sum).

        sum_{i != j} t_i . t_j = |sum t|^2 - sum |t_i|^2, with |t_i| = 1 after normalising.
        It is the level adjacency falls to when order carries no information.
        """
        v = self.valid_targets
        if v < 2:
            return float("nan")
        total = float(np.dot(self.normalised_target_sum, self.normalised_target_sum))
        return (total - v) / (v * (v - 1))


class CoherenceAccumulator:
    """Builds a :class:`CoherencePass` from consecutive row blocks of any size.

    Per block, the work is arranged so that the (N, C, D) data is touched as little as
    possible, because on a cached file the pass is bound by memory traffic, not flops:

    * targets are processed in sub-blocks of CACHE_ROWS rows that stay in the CPU cache
      while one batched matrix product gives every row's dot products with itself and
      its K predecessors (norms and all lags at once);
    * contexts are only *identified* (projections of three 64-byte segments per vector
      compared with those of the earlier targets); their cosines are derived from the lags
      when a window slides over the rows, and computed from the vectors otherwise.
    """

    def __init__(self, n: int, context_length: int, dim: int, *, max_lag: int = MAX_LAG) -> None:
        if n < 0 or context_length < 1 or dim < 1:
            raise ValueError(f"bad shape n={n}, C={context_length}, D={dim}")
        self.n, self.c, self.dim = n, context_length, dim
        # The lag window must also reach back C rows to identify file-order contexts.
        self.k = max(max_lag, context_length)
        self.max_lag = max_lag
        self.lag = np.full((n, self.k), np.nan, dtype=np.float32)
        self.position = np.full((n, context_length), np.nan, dtype=np.float32)
        self.step = np.full((n, context_length - 1), np.nan, dtype=np.float32)
        self.identity = np.zeros((n, context_length), dtype=bool)
        self.rows_seen = 0
        self.invalid_targets = 0
        self.invalid_context_vectors = 0
        self._target_sum = np.zeros(dim, dtype=np.float64)
        self._valid_targets = 0
        self._target_norms = np.full(n, np.nan, dtype=np.float32)
        self._segments = _identity_segments(dim)
        width = sum(seg.stop - seg.start for seg in self._segments)
        self._proj = (
            np.random.default_rng(IDENTITY_SEED).standard_normal((width, 2)).astype(np.float32)
        )
        # The last K targets (raw), their norms and identity projections, carried across
        # blocks; NaN stands for "no row" (before row 0).
        self._prev = np.full((self.k, dim), np.nan, dtype=np.float32)
        self._prev_norm = np.full(self.k, np.nan, dtype=np.float32)
        self._prev_hash = np.full((self.k, 2), np.nan, dtype=np.float32)

    def add(
        self,
        contexts: np.ndarray,
        targets: np.ndarray,
        hashes: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Add the next block of rows; ``hashes`` = :meth:`identity_hashes` of the block,
        when computed beforehand (e.g. in the thread that reads the blocks)."""
        m = len(targets)
        if m == 0:
            return
        s, e = self.rows_seen, self.rows_seen + m
        if e > self.n:
            raise ValueError(f"more rows than announced: {e} > {self.n}")
        if contexts.shape != (m, self.c, self.dim) or targets.shape != (m, self.dim):
            raise ValueError(
                f"block shapes {contexts.shape} / {targets.shape} do not match "
                f"(k, {self.c}, {self.dim}) / (k, {self.dim})"
            )
        t = _aligned(targets)
        # Contexts may stay unaligned (a map at an odd file offset): only the rows
        # computed from their vectors are copied, see _context_cosines.
        x = np.ascontiguousarray(contexts, dtype=np.float32)
        # Index K + g of the ``*_ext`` arrays is target g of this block; the first K
        # entries are the carried-over previous rows.
        norm_ext = np.concatenate([self._prev_norm, np.empty(m, dtype=np.float32)])
        for a in range(0, m, CACHE_ROWS):
            b = min(a + CACHE_ROWS, m)
            self._add_lags(s, a, b, t, norm_ext)
        self._target_norms[s:e] = norm_ext[self.k :]
        self._identify_contexts(s, self.identity_hashes(x, t) if hashes is None else hashes)
        # A window whose contexts are the previous targets (sliding windows) has all its
        # context cosines among the lag cosines already computed; only the others are
        # computed from the context vectors.
        known = self.identity[s:e].all(axis=1)
        self._derive_context_cosines(s + np.flatnonzero(known))
        rest = np.flatnonzero(~known)
        t_norm = norm_ext[self.k :]
        for a in range(0, rest.size, CACHE_ROWS):
            idx = rest[a : a + CACHE_ROWS]
            if idx.size == idx[-1] - idx[0] + 1:  # contiguous: views, no copies
                part = slice(int(idx[0]), int(idx[-1]) + 1)
                self._context_cosines(s + idx, _aligned(x[part]), t[part], t_norm[part])
            else:
                self._context_cosines(s + idx, x[idx], t[idx], t_norm[idx])
        if m >= self.k:
            self._prev = t[-self.k :].copy()
        else:
            self._prev = np.concatenate([self._prev[m:], t])
        self._prev_norm = norm_ext[-self.k :].copy()
        self.rows_seen = e

    def _add_lags(self, s: int, a: int, b: int, t: np.ndarray, norm_ext: np.ndarray) -> None:
        """Norms, lag cosines and the normalised sum of targets ``a:b`` of the block.

        One batched product gives dot(target g - i, target g) for i = K..0 (i = 0: the
        squared norm); ``norm_ext`` receives the norms of rows a:b.
        """
        k = self.k
        # Rows g - K .. g for every g in a:b: a view of the block, except at its start,
        # where the carried rows are prepended (a copy of at most K + CACHE_ROWS rows).
        rows = t[a - k : b] if a >= k else np.concatenate([self._prev[a:], t[:b]])
        windows = sliding_window_view(rows, k + 1, axis=0).transpose(0, 2, 1)
        sub = t[a:b]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            dots = np.matmul(windows, sub[:, :, None])[..., 0]  # (b - a, K + 1)
            norms = _safe_norms(dots[:, k])
            norm_ext[k + a : k + b] = norms
            before_norm = sliding_window_view(norm_ext[a : k + b], k + 1)[:, :k]
            self.lag[s + a : s + b] = (dots[:, :k] / (before_norm * norms[:, None]))[:, ::-1]
            bad = np.isnan(norms)
            weights = np.where(bad, np.float32(0), 1 / np.where(bad, np.float32(1), norms))
            clean = np.where(bad[:, None], np.float32(0), sub) if bad.any() else sub
            self._target_sum += (weights @ clean).astype(np.float64)
        n_bad = int(bad.sum())
        self.invalid_targets += n_bad
        self._valid_targets += len(sub) - n_bad

    def identity_hashes(
        self, contexts: np.ndarray, targets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(m, 2) target and (m, C, 2) context projections that identify vectors.

        Depends on the block alone and changes no state, so it may run in another
        thread while the previous block is being added.
        """
        m = len(targets)
        x = np.ascontiguousarray(contexts, dtype=np.float32).reshape(m * self.c, self.dim)
        ht = self._hash(np.ascontiguousarray(targets, dtype=np.float32))
        return ht, self._hash(x).reshape(m, self.c, 2)

    def _identify_contexts(self, s: int, hashes: tuple[np.ndarray, np.ndarray]) -> None:
        """Mark context j of window g when it is the vector of target g - C + j.

        Vectors are compared through two fixed random projections of three 16-float
        segments (start, middle, end). Equal vectors agree exactly; distinct embeddings,
        or a re-encoded, re-rounded or perturbed copy, disagree by far more than the
        1e-5 relative tolerance (which only absorbs BLAS rounding). Reading three cache
        lines of a context vector instead of all 48 is what keeps the pass near the
        speed of a plain read. Zero and non-finite vectors are never identified.
        """
        ht, hx = hashes
        m = len(ht)
        ext = np.concatenate([self._prev_hash, ht])
        # Window g's earlier rows g - K .. g - 1 are entries g .. g + K - 1 of ``ext``;
        # the last C of them are the candidates for contexts 0 .. C-1.
        earlier = sliding_window_view(ext, self.k, axis=0)[:m].transpose(0, 2, 1)
        earlier = earlier[:, self.k - self.c :, :]
        with np.errstate(invalid="ignore"):
            scale = np.maximum(np.abs(earlier[..., 0]), np.abs(earlier[..., 1]))
            tolerance = IDENTITY_RTOL * scale
            same = (np.abs(hx[..., 0] - earlier[..., 0]) <= tolerance) & (
                np.abs(hx[..., 1] - earlier[..., 1]) <= tolerance
            )
        self.identity[s : s + m] = same & (scale > 0)
        self._prev_hash = ext[-self.k :].copy()

    def _hash(self, rows: np.ndarray) -> np.ndarray:
        """(M, 2) projections of the identity segments of (M, D) float32 rows."""
        with np.errstate(invalid="ignore", over="ignore"):
            return _segment_values(rows, self._segments) @ self._proj

    def _derive_context_cosines(self, rows: np.ndarray) -> None:
        """Context cosines of sliding windows: context j of window g is target g - C + j."""
        if rows.size == 0:
            return
        c = self.c
        self.position[rows] = self.lag[rows, :c][:, ::-1]  # lag C - j sits in column C-j-1
        if c > 1:
            self.step[rows] = self.lag[rows[:, None] - c + 1 + np.arange(c - 1), 0]
        earlier = rows[:, None] - c + np.arange(c)
        self.invalid_context_vectors += int((np.isnan(self._target_norms[earlier])).sum())

    def _context_cosines(
        self, rows: np.ndarray, x: np.ndarray, t: np.ndarray, t_norm: np.ndarray
    ) -> None:
        x_norm = _safe_norms(np.einsum("ncd,ncd->nc", x, x))
        self.invalid_context_vectors += int(np.isnan(x_norm).sum())
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            pos = np.matmul(x, t[:, :, None])[..., 0]
            self.position[rows] = pos / (x_norm * t_norm[:, None])
            if self.c > 1:
                step = np.einsum("ncd,ncd->nc", x[:, :-1], x[:, 1:])
                self.step[rows] = step / (x_norm[:, :-1] * x_norm[:, 1:])

    def finish(self, norm_statistics: dict[str, Any] | None = None) -> CoherencePass:
        if self.rows_seen != self.n:
            raise ValueError(f"pass ended after {self.rows_seen} of {self.n} rows")
        return CoherencePass(
            n=self.n,
            context_length=self.c,
            lag_cosines=self.lag[:, : self.max_lag] if self.k > self.max_lag else self.lag,
            position_cosines=self.position,
            step_cosines=self.step,
            context_is_previous_target=self.identity,
            invalid_targets=self.invalid_targets,
            invalid_context_vectors=self.invalid_context_vectors,
            normalised_target_sum=self._target_sum,
            target_norms=self._target_norms,
            valid_targets=self._valid_targets,
            norm_statistics=norm_statistics or {},
        )


def _aligned(rows: np.ndarray) -> np.ndarray:
    """``rows`` as a C-contiguous, aligned float32 array (a copy only where needed).

    BLAS refuses unaligned data, and numpy's fallback loops are several times slower.
    """
    out = np.ascontiguousarray(rows, dtype=np.float32)
    return out if out.flags.aligned else out.copy()


def _identity_segments(dim: int) -> list[slice]:
    """Start, middle and end segments of a vector (the whole of a short one).

    Starts are multiples of the segment width where the dimension allows it, so that
    each segment of a float32 row is one aligned 64-byte cache line.
    """
    w = IDENTITY_SEGMENT
    if dim < 3 * w:
        return [slice(0, dim)]
    mid = (dim // 2) // w * w
    return [slice(0, w), slice(mid, mid + w), slice(dim - w, dim)]


def _segment_values(rows: np.ndarray, segments: list[slice]) -> np.ndarray:
    """The ``segments`` of each row of a C-contiguous float32 (M, D) array, side by side.

    When every segment is 16 floats at a multiple of 16, each is copied as one 64-byte
    item per row: one strided copy, not a loop of 16-float copies over the rows.
    """
    line = IDENTITY_SEGMENT
    aligned = rows.shape[1] % line == 0 and all(
        seg.start % line == 0 and seg.stop - seg.start == line for seg in segments
    )
    if aligned and rows.flags.c_contiguous and rows.dtype == np.float32:
        lines = rows.view(np.dtype(f"V{4 * line}"))  # (M, D / 16): an item per segment slot
        out = np.empty((len(rows), len(segments)), dtype=lines.dtype)
        for i, seg in enumerate(segments):
            out[:, i] = lines[:, seg.start // line]
        return out.view(np.float32)
    width = sum(seg.stop - seg.start for seg in segments)
    floats = np.empty((len(rows), width), dtype=np.float32)
    at = 0
    for seg in segments:
        floats[:, at : at + seg.stop - seg.start] = rows[:, seg]
        at += seg.stop - seg.start
    return floats


def _safe_norms(squared: np.ndarray) -> np.ndarray:
    """sqrt of squared norms; zero, NaN and Inf norms become NaN (excluded everywhere)."""
    with np.errstate(invalid="ignore"):
        norms = np.sqrt(squared).astype(np.float32, copy=False)
    norms[~np.isfinite(norms) | (norms <= 0)] = np.nan
    return norms


def coherence_pass_of_arrays(
    contexts: np.ndarray, targets: np.ndarray, *, block_rows: int | None = None
) -> CoherencePass:
    """The pass over in-memory arrays (tests, small data), optionally block by block."""
    n, c, d = contexts.shape
    acc = CoherenceAccumulator(n, c, d)
    step = block_rows or max(n, 1)
    for start in range(0, n, step):
        acc.add(contexts[start : start + step], targets[start : start + step])
    return acc.finish()


def stream_coherence_pass(
    dataset: Dataset,
    *,
    rows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CoherencePass:
    """One sequential pass over the dataset; reading overlaps computing (a prefetch thread).

    The pass also gathers the norms check's statistics (``norm_statistics``): the same
    accumulators, fed the same chunks in the same order as ``metrics.norm_statistics``,
    so the numbers are identical and the file is read once for both.
    ``progress(rows_done, rows_total)`` is called after each block (for a progress bar).
    """
    acc = CoherenceAccumulator(dataset.n, dataset.context_length, dataset.dim)
    target_norms, context_norms = NormAccumulator(), NormAccumulator()
    # Chunks are read into a ring of reused buffers: the one being computed, PREFETCH
    # waiting in the queue and the one being read, so the ring needs PREFETCH + 2 slots.
    # acc.add keeps no reference to a block's arrays after it returns.
    chunks = dataset.iter_chunks(rows, reuse=PREFETCH + 2)

    def hashed() -> Iterator[tuple[Chunk, tuple[np.ndarray, np.ndarray]]]:
        # The reading thread also hashes each block for the identification of contexts:
        # it is the only part of the work that reads the contexts, and it balances the
        # two cores (mapping + hashing there, lags and statistics here).
        for chunk in chunks:
            # The norms are the only part that reads every context value; done here
            # too, they balance the lags and statistics of the main thread.
            context_norms.add(chunk.contexts, chunk.start)
            yield chunk, acc.identity_hashes(chunk.contexts, chunk.targets)

    # The pass already keeps both cores busy; a multi-threaded BLAS would add threads
    # that spin between the many small products and take the cores from the others
    # (measured: the pass 1.4x slower with OpenBLAS at 2 threads on 2 cores).
    with threadpool_limits(limits=1, user_api="blas"):
        for chunk, hashes in prefetched(hashed(), depth=PREFETCH):
            if chunk.start != acc.rows_seen:
                raise LvmqaError(
                    "chunks arrived out of order",
                    path=dataset.path,
                    expected=f"row {acc.rows_seen}",
                    found=f"row {chunk.start}",
                )
            acc.add(chunk.contexts, chunk.targets, hashes)
            target_norms.add(chunk.targets, chunk.start)
            if progress is not None:
                progress(acc.rows_seen, dataset.n)
    return acc.finish(norm_summary(target_norms, context_norms))


def coherence_pass(ctx: CheckContext) -> CoherencePass:
    """The dataset's pass, computed once and shared by coherence, drift and integrity."""

    def compute() -> CoherencePass:
        task = Task(f"{ctx.name}: coherence pass", ctx.dataset.n)
        result = stream_coherence_pass(ctx.dataset, progress=lambda done, _: task.update(done))
        task.close()
        return result

    return ctx.cached("coherence_pass", compute)


# ---------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class CosineSummary:
    n: int  # values used (finite)
    n_excluded: int  # NaN values (zero / non-finite vectors), excluded and counted
    mean: float
    std: float
    percentiles: dict[int, float]
    low_share: float
    low_threshold: float
    histogram: np.ndarray  # counts per HIST_EDGES bin, sums to n

    def metrics(self, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            f"{prefix}_mean": self.mean,
            f"{prefix}_std": self.std,
            **{f"{prefix}_p{q}": v for q, v in self.percentiles.items()},
            f"{prefix}_low_share": self.low_share,
            f"{prefix}_n": self.n,
            f"{prefix}_excluded": self.n_excluded,
            f"{prefix}_histogram": [int(c) for c in self.histogram],
        }
        return out

    def shares_pct(self) -> np.ndarray:
        return 100.0 * self.histogram / max(self.n, 1)


def cosine_histogram(values: np.ndarray) -> np.ndarray:
    """Counts in the seed's bins; below -0.2 go to the first bin, >= 1.0 to the last."""
    finite = np.asarray(values).reshape(-1)
    finite = finite[np.isfinite(finite)]
    # The bin of v is the number of inner edges <= v; counting v >= edge for each edge
    # needs no index array. Comparing float32 values with the float32 ceilings of the
    # edges is exact and needs no float64 copy of the data.
    inner = HIST_EDGES[1:-1]
    edges = inner if finite.dtype != np.float32 else _float32_ceilings(inner)
    at_least = [finite.size, *(np.count_nonzero(finite >= edge) for edge in edges), 0]
    return -np.diff(np.asarray(at_least, dtype=np.int64))


def _float32_ceilings(edges: np.ndarray) -> np.ndarray:
    """The smallest float32 >= each edge: for float32 v, v >= edge <=> v >= ceiling."""
    rounded = edges.astype(np.float32)
    low = rounded.astype(np.float64) < edges
    rounded[low] = np.nextafter(rounded[low], np.float32(np.inf))
    return rounded


def histogram_labels() -> list[str]:
    """Bin labels; the end bins are labelled by what they hold (cosines lie in [-1, 1])."""
    labels = []
    last = len(HIST_EDGES) - 2
    for i in range(last + 1):
        lo = -1.0 if i == 0 else float(HIST_EDGES[i])
        hi = float(HIST_EDGES[i + 1])
        close = "]" if i == last else ")"
        labels.append(f"[{lo:.1f}, {hi:.1f}{close}")
    return labels


def summarize_cosines(values: np.ndarray, low_threshold: float) -> CosineSummary:
    """Mean, std, percentiles, low share and histogram of the finite values.

    Float32 input is summarised without float64 copies (sums accumulate in float64,
    comparisons use exact float32 ceilings, percentiles interpolate order statistics
    in float64), because on millions of values fresh memory costs more than the math.
    """
    values = np.asarray(values).reshape(-1)
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    excluded = int(values.size - finite.size)
    if finite.size == 0:
        nan = float("nan")
        return CosineSummary(
            0,
            excluded,
            nan,
            nan,
            {q: nan for q in PERCENTILES},
            nan,
            low_threshold,
            np.zeros(len(HIST_EDGES) - 1, dtype=np.int64),
        )
    n = finite.size
    mean = float(np.sum(finite, dtype=np.float64)) / n
    mean_square = float(np.einsum("i,i->", finite, finite, dtype=np.float64)) / n
    std = math.sqrt(max(mean_square - mean * mean, 0.0))
    low_share = np.count_nonzero(_below(finite, low_threshold)) / n
    histogram = cosine_histogram(finite)
    return CosineSummary(
        n=n,
        n_excluded=excluded,
        mean=mean,
        std=std,
        percentiles=dict(zip(PERCENTILES, _percentiles(finite, PERCENTILES), strict=True)),
        low_share=float(low_share),
        low_threshold=low_threshold,
        histogram=histogram,
    )


def _percentiles(scratch: np.ndarray, qs: tuple[int, ...]) -> list[float]:
    """numpy's default (linear) percentiles of a 1-D array, which is reordered in place."""
    n = scratch.size
    position = np.asarray(qs, dtype=np.float64) / 100.0 * (n - 1)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, n - 1)
    scratch.partition(np.unique(np.concatenate([below, above])))
    lo = scratch[below].astype(np.float64)
    hi = scratch[above].astype(np.float64)
    return [float(v) for v in lo + (hi - lo) * (position - below)]


def column_means(values: np.ndarray) -> np.ndarray:
    """NaN-excluding mean of each column (NaN for an all-NaN column), without warnings."""
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] <= 64 and values.shape[0] > 4 * values.shape[1]:
        # A few long columns: one masked reduction each, no copy of the table.
        sums = np.empty(values.shape[1])
        counts = np.empty(values.shape[1])
        for j in range(values.shape[1]):
            valid = np.isfinite(values[:, j])
            sums[j] = np.sum(values[:, j], where=valid, dtype=np.float64)
            counts[j] = np.count_nonzero(valid)
    else:
        valid = np.isfinite(values)
        sums = np.where(valid, values, 0.0).sum(axis=0, dtype=np.float64)
        counts = valid.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


# ------------------------------------------------------------------ block bootstrap
def block_length(values: np.ndarray, *, max_lag: int = 5000) -> int:
    """Block length for a moving-block bootstrap of an autocorrelated series.

    Adjacency cosines are autocorrelated: consecutive pairs share a vector and whole
    articles are more or less coherent. Blocks must be longer than that memory, so the
    length is twice the first lag at which the sample autocorrelation is no longer
    significant (|acf| < 2/sqrt(m), m the values it is estimated from), and at least
    n^(1/3) (the usual rate) and n / MAX_BLOCKS, at most n/10 (keep >= 10 blocks).

    The n / MAX_BLOCKS floor bounds the bootstrap's cost on millions of values (its
    work is reps x blocks). Blocks longer than the series' memory keep the bootstrap
    valid; with thousands of blocks its standard error is still estimated to a few %.

    Series longer than ACF_FULL_MAX are estimated from ACF_SEGMENTS evenly spaced
    stretches of ACF_SEGMENT values (their autocovariances summed): the same lags, a
    fraction of the FFT work on millions of values, and stretches from the whole file.
    """
    flat = np.asarray(values).reshape(-1)
    finite = flat[np.isfinite(flat)]
    n = finite.size
    if n < 20:
        return 1
    base = max(math.ceil(n ** (1.0 / 3.0)), math.ceil(n / MAX_BLOCKS))
    mean = float(np.sum(finite, dtype=np.float64)) / n
    if n > ACF_FULL_MAX:
        starts = np.linspace(0, n - ACF_SEGMENT, ACF_SEGMENTS).astype(np.int64)
        stretches = [finite[a : a + ACF_SEGMENT] for a in starts]
    else:
        stretches = [finite]
    used = sum(part.size for part in stretches)
    lags = min(max_lag, min(part.size for part in stretches) // 2)
    # Zero padding to len + lags keeps the circular correlation exact up to ``lags``
    # (padding to twice the length, enough for all lags, doubles the FFTs for nothing).
    size = 1 << math.ceil(math.log2(max(part.size for part in stretches) + lags + 1))
    cov = np.zeros(lags + 1)
    for part in stretches:
        centred = part.astype(np.float64) - mean
        spectrum = np.fft.rfft(centred, size)
        cov += np.fft.irfft(spectrum * np.conj(spectrum), size)[: lags + 1]
    if cov[0] <= 0:
        return min(base, max(1, n // 10))
    acf = cov / cov[0]
    below = np.flatnonzero(np.abs(acf[1:]) < 2.0 / math.sqrt(used))
    memory = int(below[0]) + 1 if below.size else lags
    return int(min(max(base, 2 * memory), max(1, n // 10)))


def block_bootstrap_means(
    series: np.ndarray,
    block: int,
    reps: int,
    rng: np.random.Generator,
    *,
    start_step: int | None = None,
) -> np.ndarray:
    """(reps, s) bootstrap means of the columns of ``series`` (n, s) or (n,), NaNs excluded.

    Moving-block bootstrap: ceil(n / block) blocks of consecutive rows, starts drawn
    uniformly; rows are resampled together, so the columns keep their dependence.

    Series longer than BOOTSTRAP_GRID_MIN draw their starts on a grid of ``start_step``
    (default: block / 8) rows, with the block rounded up to a multiple of it: between
    the moving-block (step 1) and the non-overlapping block bootstrap (step = block),
    both valid, and its tables are 1/step the size (fresh memory is what costs here).
    """
    x = np.asarray(series)
    x = x.reshape(len(x), -1)
    n, s = x.shape
    if n == 0:
        return np.full((reps, s), np.nan)
    length = int(min(max(block, 1), n))
    if start_step is None:
        start_step = max(1, length // 8) if n > BOOTSTRAP_GRID_MIN else 1
    step = int(min(max(start_step, 1), length))
    length = min(-(-length // step) * step, n - n % step if n >= step else n)
    n_blocks = math.ceil(n / length)
    sums, counts = _window_sums(x, length, step)
    # The gather is taken a few reps at a time (~2 MB, in cache), column by column from
    # the (s, windows) tables: np.take on a 1-D column, then a sum along the contiguous
    # axis, is 2-2.5x faster than gathering (reps, blocks, s) rows and summing axis 1.
    batch = max(1, min(reps, (2 << 20) // (8 * s * n_blocks)))
    out = np.empty((reps, s))
    for first in range(0, reps, batch):
        k = min(batch, reps - first)
        starts = rng.integers(0, sums.shape[1], size=(k, n_blocks))
        total = np.stack([np.take(column, starts).sum(axis=1) for column in sums], axis=1)
        if counts is None:
            count = np.full((k, s), float(n_blocks * length))
        else:
            count = np.stack(
                [np.take(column, starts).sum(axis=1, dtype=np.float64) for column in counts],
                axis=1,
            )
        with np.errstate(invalid="ignore", divide="ignore"):
            out[first : first + k] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


def _window_sums(x: np.ndarray, length: int, step: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """Sum and count of the finite values of each column over the ``length``-row windows
    starting at rows 0, step, 2 step, ... (``length`` a multiple of ``step``).

    Returns (s, windows) float64 sums and int32 counts (None when every value is
    finite), built column by column from float64 prefix sums over ``step``-row cells.
    """
    n, s = x.shape
    windows = (n - length) // step + 1
    cells = length // step  # cells per window
    sums = np.empty((s, windows))
    counts: np.ndarray | None = None
    cell_starts = np.arange(0, windows * step + length - step, step)
    prefix = np.zeros(len(cell_starts) + 1)
    for j in range(s):
        column = x[:, j]
        valid = np.isfinite(column)
        all_valid = bool(valid.all())
        filled = column if all_valid else np.where(valid, column, 0)
        if step == 1:
            np.cumsum(filled[: len(cell_starts)], dtype=np.float64, out=prefix[1:])
        else:
            cell = np.add.reduceat(filled[: cell_starts[-1] + step], cell_starts, dtype=np.float64)
            np.cumsum(cell, out=prefix[1:])
        np.subtract(prefix[cells::][:windows], prefix[:windows], out=sums[j])
        if not all_valid:
            if counts is None:
                counts = np.full((s, windows), length, dtype=np.int32)
            valid_prefix = np.zeros(len(cell_starts) + 1, dtype=np.int32)
            used = valid[: cell_starts[-1] + step]
            per_cell = used if step == 1 else np.add.reduceat(used, cell_starts, dtype=np.int32)
            np.cumsum(per_cell, dtype=np.int32, out=valid_prefix[1:])
            np.subtract(valid_prefix[cells::][:windows], valid_prefix[:windows], out=counts[j])
    return sums, counts


def percentile_ci(samples: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return (float("nan"), float("nan"))
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(finite, [tail, 100.0 - tail])
    return (float(lo), float(hi))


def seeded_rng(ctx: CheckContext | None, salt: str) -> np.random.Generator:
    """A generator from the run's seed and a fixed per-use salt (stable across runs)."""
    seed = int(getattr(getattr(ctx, "options", None), "seed", 0) or 0) if ctx else 0
    return np.random.default_rng([seed, *salt.encode()])


# ---------------------------------------------------------------------------- drift
@dataclass(frozen=True)
class DriftComparison:
    """One definition of adjacency compared between a baseline and the current data."""

    definition: str
    baseline: CosineSummary
    current: CosineSummary
    mean_drift: float  # current - baseline
    mean_drift_pct: float
    mean_drift_ci: tuple[float, float]
    low_share_change_pp: float
    low_share_change_ci_pp: tuple[float, float]
    block_rows: tuple[int, int]  # bootstrap block length: baseline, current
    verdict: DriftVerdict
    reasons: tuple[str, ...]

    @property
    def mean_drift_pct_ci(self) -> tuple[float, float]:
        base = abs(self.baseline.mean)
        if not base:
            return (float("nan"), float("nan"))
        return (100 * self.mean_drift_ci[0] / base, 100 * self.mean_drift_ci[1] / base)

    def bin_table(self) -> list[dict[str, Any]]:
        """The seed's distribution table: range, baseline %, current %, change in pp."""
        base, cur = self.baseline.shares_pct(), self.current.shares_pct()
        return [
            {
                "range": label,
                "baseline_pct": float(b),
                "current_pct": float(c),
                "change_pp": float(c - b),
            }
            for label, b, c in zip(histogram_labels(), base, cur, strict=True)
        ]

    def metrics(self) -> dict[str, Any]:
        p = self.definition
        return {
            f"{p}_baseline_mean": self.baseline.mean,
            f"{p}_current_mean": self.current.mean,
            f"{p}_mean_drift": self.mean_drift,
            f"{p}_mean_drift_pct": self.mean_drift_pct,
            f"{p}_mean_drift_ci": list(self.mean_drift_ci),
            f"{p}_mean_drift_pct_ci": list(self.mean_drift_pct_ci),
            f"{p}_baseline_low_share": self.baseline.low_share,
            f"{p}_current_low_share": self.current.low_share,
            f"{p}_low_share_change_pp": self.low_share_change_pp,
            f"{p}_low_share_change_ci_pp": list(self.low_share_change_ci_pp),
            f"{p}_baseline_p50": self.baseline.percentiles[50],
            f"{p}_current_p50": self.current.percentiles[50],
            f"{p}_baseline_p90": self.baseline.percentiles[90],
            f"{p}_current_p90": self.current.percentiles[90],
            f"{p}_drift_verdict": self.verdict,
            f"{p}_drift_level": VERDICT_LEVEL[self.verdict],
        }

    def describe(self) -> str:
        lo, hi = self.mean_drift_pct_ci
        plo, phi = self.low_share_change_ci_pp
        return (
            f"{self.definition.replace('_', ' ')}: mean {self.baseline.mean:.4f} -> "
            f"{self.current.mean:.4f} ({self.mean_drift_pct:+.1f} %, 95 % CI {lo:+.1f}..{hi:+.1f}),"
            f" low share {100 * self.baseline.low_share:.1f} % -> "
            f"{100 * self.current.low_share:.1f} % ({self.low_share_change_pp:+.1f} pp, CI "
            f"{plo:+.1f}..{phi:+.1f}): {self.verdict}"
        )


def compare_cosines(
    definition: str,
    baseline: np.ndarray,
    current: np.ndarray,
    *,
    low_threshold: float = DEFAULT_LOW_COHERENCE,
    drift_mean_pct: float = DEFAULT_DRIFT_MEAN_PCT,
    drift_low_share_pp: float = DEFAULT_DRIFT_LOW_SHARE_PP,
    reps: int = BOOTSTRAP_REPS,
    rng: np.random.Generator | None = None,
    summaries: tuple[CosineSummary, CosineSummary] | None = None,
) -> DriftComparison:
    """Drift of one adjacency definition, with block-bootstrap CIs and a verdict.

    A drift is *significant* when, for the mean or for the low share, it is beyond the
    threshold in the worse direction AND its 95 % CI excludes zero; *moderate* when only
    one of the two holds for some measure; *none* otherwise. Both series are resampled in
    blocks (each with its own block length) because neighbouring cosines are dependent.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    if summaries is None:
        summaries = (
            summarize_cosines(baseline, low_threshold),
            summarize_cosines(current, low_threshold),
        )
    base_sum, cur_sum = summaries
    base_block, cur_block = block_length(baseline), block_length(current)
    base_boot = block_bootstrap_means(_with_low(baseline, low_threshold), base_block, reps, rng)
    cur_boot = block_bootstrap_means(_with_low(current, low_threshold), cur_block, reps, rng)
    diff = cur_boot - base_boot
    mean_drift = cur_sum.mean - base_sum.mean
    mean_pct = 100.0 * mean_drift / abs(base_sum.mean) if base_sum.mean else float("nan")
    low_pp = 100.0 * (cur_sum.low_share - base_sum.low_share)
    mean_ci = percentile_ci(diff[:, 0])
    low_ci = percentile_ci(100.0 * diff[:, 1])

    mean_beyond = mean_pct < drift_mean_pct
    mean_sure = mean_ci[1] < 0
    low_beyond = low_pp > drift_low_share_pp
    low_sure = low_ci[0] > 0
    reasons = []
    if mean_beyond:
        reasons.append(f"mean drift {mean_pct:+.1f} % is beyond {drift_mean_pct:+.1f} %")
    if mean_sure:
        reasons.append("the mean is lower beyond sampling noise (CI < 0)")
    if low_beyond:
        reasons.append(f"low share up {low_pp:+.1f} pp, beyond {drift_low_share_pp:+.1f} pp")
    if low_sure:
        reasons.append("the low share is higher beyond sampling noise (CI > 0)")
    verdict: DriftVerdict
    if (mean_beyond and mean_sure) or (low_beyond and low_sure):
        verdict = "significant"
    elif reasons:
        verdict = "moderate"
    else:
        verdict = "none"
    return DriftComparison(
        definition,
        base_sum,
        cur_sum,
        mean_drift,
        mean_pct,
        mean_ci,
        low_pp,
        low_ci,
        (base_block, cur_block),
        verdict,
        tuple(reasons),
    )


def _with_low(values: np.ndarray, low_threshold: float) -> np.ndarray:
    """Columns [cosine, is_low] with NaN kept in both, for a joint bootstrap.

    float32 cosines give a float32 table (the bootstrap sums in float64): half the
    fresh memory of a float64 one on millions of values.
    """
    v = np.asarray(values).reshape(-1)
    if v.dtype != np.float32:
        v = v.astype(np.float64)
    table = np.empty((v.size, 2), dtype=v.dtype)
    table[:, 0] = v
    table[:, 1] = _below(v, low_threshold)
    table[np.isnan(v), 1] = np.nan
    return table


def _below(values: np.ndarray, threshold: float) -> np.ndarray:
    """values < threshold, exactly, without a float64 copy of float32 values."""
    if values.dtype == np.float32:
        return values < _float32_ceilings(np.array([threshold]))[0]
    return values < threshold


# --------------------------------------------------------------------- row ids
@dataclass(frozen=True)
class RowIds:
    """Article and chunk of each row's target, where known, and where they came from."""

    article: np.ndarray  # int64 (value meaningless where not known)
    article_known: np.ndarray  # bool
    chunk: np.ndarray  # int64
    chunk_known: np.ndarray  # bool
    title: np.ndarray | None  # object array of str / None
    source: str  # "file", "source bank", or "file + source bank"
    notes: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return bool(self.article_known.all())

    def title_of(self, row: int) -> str | None:
        if self.title is None:
            return None
        value = self.title[row]
        return value if isinstance(value, str) else None


def _int_column(meta: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    n = len(meta)
    if column not in meta.columns:
        return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    series = meta[column]
    known = series.notna().to_numpy(dtype=bool, copy=True)
    values = series.to_numpy(dtype="float64", na_value=np.nan)
    return np.where(known, values, 0).astype(np.int64), known


def _text_column(meta: pd.DataFrame, column: str) -> np.ndarray | None:
    if column not in meta.columns or not meta[column].notna().any():
        return None
    return np.asarray(meta[column].astype(object).where(meta[column].notna(), None))


def row_ids_from_tables(meta: pd.DataFrame, bank: pd.DataFrame | None) -> RowIds | None:
    """Per-row ids from the dataset's metadata, filled by a join of ``target_id`` to a bank
    table (columns target_id, article, chunk, title) for rows the file leaves unknown."""
    article, a_known = _int_column(meta, "article")
    chunk, c_known = _int_column(meta, "chunk")
    title = _text_column(meta, "title")
    sources = ["file"] if a_known.any() else []
    notes: list[str] = []
    need = ~a_known
    if bank is not None and need.any() and "target_id" in meta.columns:
        import pandas as pd

        table = bank.dropna(subset=["target_id"])
        dup = table["target_id"].duplicated()
        if dup.any():
            notes.append(f"{int(dup.sum())} duplicate target ids in the bank (first kept)")
            table = table[~dup]
        lookup = pd.Index(table["target_id"].astype(object))
        ids = meta["target_id"].astype(object).where(meta["target_id"].notna(), None)
        pos = lookup.get_indexer(ids.to_numpy())
        pos[ids.isna().to_numpy()] = -1
        hit = need & (pos >= 0)
        if hit.any():
            b_art, b_ak = _int_column(table.reset_index(drop=True), "article")
            b_chk, b_ck = _int_column(table.reset_index(drop=True), "chunk")
            rows = pos[hit]
            article[hit], a_known[hit] = b_art[rows], b_ak[rows]
            fill_chunk = hit & ~c_known
            chunk[fill_chunk] = b_chk[pos[fill_chunk]]
            c_known[fill_chunk] = b_ck[pos[fill_chunk]]
            b_title = _text_column(table.reset_index(drop=True), "title")
            if b_title is not None:
                title = title if title is not None else np.full(len(meta), None, dtype=object)
                fill_title = hit & np.array([t is None for t in title])
                title[fill_title] = b_title[pos[fill_title]]
            sources.append("source bank")
        missed = int((need & (pos < 0) & ids.notna().to_numpy()).sum())
        if missed:
            notes.append(f"{missed} target ids not found in the source bank")
    if not a_known.any():
        return None
    return RowIds(article, a_known, chunk, c_known, title, " + ".join(sources), tuple(notes))


def resolve_row_ids(ctx: CheckContext) -> RowIds | None:
    """Ids per row: the file/metadata first, then ``target_id`` joined to the source bank."""

    def compute() -> RowIds | None:
        ds = ctx.dataset
        meta = ds.meta
        bank_table = None
        notes: list[str] = []
        needs_join = (not meta["article"].notna().all()) and meta["target_id"].notna().any()
        if needs_join:
            try:
                bank = ctx.source_bank()
                bank_table = bank.bank_table() if bank is not None else None
            except LvmqaError as exc:
                notes.append(f"source bank unusable: {exc}")
        ids = row_ids_from_tables(meta, bank_table)
        if ids is not None and notes:
            ids = RowIds(
                ids.article,
                ids.article_known,
                ids.chunk,
                ids.chunk_known,
                ids.title,
                ids.source,
                ids.notes + tuple(notes),
            )
        return ids

    return ctx.cached("row_ids", compute)


# ------------------------------------------------------------------- article order
@dataclass(frozen=True)
class ArticleOrder:
    """Targets of consecutive chunks of one article, in (article, chunk) order."""

    first: np.ndarray  # row of the earlier chunk
    second: np.ndarray  # row of the next chunk
    article: np.ndarray  # article of each pair
    cosines: np.ndarray  # float32
    by_chunk: bool  # False: chunk unknown, so file order inside each article


def article_order_pairs(ids: RowIds) -> tuple[np.ndarray, np.ndarray, bool]:
    """Row pairs (a, b) of consecutive chunks of the same article; duplicate
    (article, chunk) keys pair with nothing (a duplicate is not an adjacency).

    Each pair is consecutive in :func:`article_order_rows`' order."""
    rows, art, chunk, by_chunk = _article_sorted(ids)
    same_article = art[1:] == art[:-1]
    new_chunk = chunk[1:] != chunk[:-1] if by_chunk else np.ones(max(rows.size - 1, 0), bool)
    keep = same_article & new_chunk
    return rows[:-1][keep], rows[1:][keep], by_chunk


def article_order_rows(ids: RowIds) -> np.ndarray:
    """The rows with a known article, sorted by (article, chunk, row)."""
    return _article_sorted(ids)[0]


def _article_sorted(ids: RowIds) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    rows = np.flatnonzero(ids.article_known)
    art = ids.article[rows]
    by_chunk = bool(ids.chunk_known[rows].all()) and rows.size > 0
    chunk = ids.chunk[rows] if by_chunk else np.zeros(rows.size, dtype=np.int64)
    order = np.lexsort((rows, chunk, art))
    return rows[order], art[order], chunk[order], by_chunk


def far_pairs(first: np.ndarray, second: np.ndarray, cpass: CoherencePass) -> np.ndarray:
    """Indexes of the pairs more than K rows apart (not among the pass's lag cosines)."""
    gap = np.abs(np.asarray(second, dtype=np.int64) - np.asarray(first, dtype=np.int64))
    return np.flatnonzero(gap > cpass.max_lag)


def pair_cosines(
    first: np.ndarray,
    second: np.ndarray,
    cpass: CoherencePass,
    read_rows: Callable[[int, int], np.ndarray],
    *,
    read_far: bool = True,
) -> np.ndarray:
    """cos(target[first], target[second]) per pair.

    Pairs at most K rows apart come from the pass for free; the rest are read in blocks
    of pairs sorted by their first row, each block's rows as few contiguous ranges
    (bounded memory, sequential on disk, no lasting memory map). ``read_far=False``
    leaves those NaN (for a caller that computes them another way).
    """
    first = np.asarray(first, dtype=np.int64)
    second = np.asarray(second, dtype=np.int64)
    lo, hi = np.minimum(first, second), np.maximum(first, second)
    gap = hi - lo
    out = np.full(first.size, np.nan, dtype=np.float32)
    near = (gap >= 1) & (gap <= cpass.max_lag)
    out[near] = cpass.lag_cosines[hi[near], gap[near] - 1]
    far = far_pairs(first, second, cpass) if read_far else np.empty(0, dtype=np.int64)
    far = far[np.argsort(lo[far], kind="stable")]
    for start in range(0, far.size, GATHER_PAIRS):
        chosen = far[start : start + GATHER_PAIRS]
        rows = np.unique(np.concatenate([lo[chosen], hi[chosen]]))
        vectors = _read_ranges(rows, read_rows)
        a = vectors[np.searchsorted(rows, lo[chosen])]
        b = vectors[np.searchsorted(rows, hi[chosen])]
        # The pass knows every target's norm: no normalised copy of the rows.
        norms = cpass.target_norms[lo[chosen]] * cpass.target_norms[hi[chosen]]
        with np.errstate(invalid="ignore", over="ignore"):
            out[chosen] = np.einsum("nd,nd->n", a, b) / norms
    return out


def _read_ranges(rows: np.ndarray, read_rows: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """Rows (sorted, unique) read as few contiguous ranges: rows closer than
    GATHER_MAX_GAP share a read, and no read spans more than GATHER_SPAN_ROWS."""
    parts = []
    for run in np.split(rows, np.flatnonzero(np.diff(rows) > GATHER_MAX_GAP) + 1):
        pieces = (run - run[0]) // GATHER_SPAN_ROWS
        for piece in np.split(run, np.flatnonzero(np.diff(pieces)) + 1):
            block = read_rows(int(piece[0]), int(piece[-1]) + 1)
            parts.append(block[piece - piece[0]])
    return np.concatenate(parts).astype(np.float32, copy=False)


def article_order(ctx: CheckContext) -> ArticleOrder | None:
    """Article-order cosines (cached); None when no row has a known article."""

    def compute() -> ArticleOrder | None:
        ids = resolve_row_ids(ctx)
        if ids is None:
            return None
        a, b, by_chunk = article_order_pairs(ids)
        cpass = coherence_pass(ctx)
        far = far_pairs(a, b, cpass)
        # Many far pairs (a shuffled file): one external sort of the targets by article
        # order beats gathering them, which reads most targets again per block of pairs.
        known = int(ids.article_known.sum())
        sort = far.size >= SPILL_MIN_PAIRS and spill_fits(ctx.dataset, known)
        cos = pair_cosines(a, b, cpass, ctx.dataset.target_rows, read_far=not sort)
        if sort:
            order = article_order_rows(ids)
            rank = np.full(ctx.dataset.n, -1, dtype=np.int64)
            rank[order] = np.arange(order.size)
            task = Task(f"{ctx.name}: targets in article order", ctx.dataset.n)
            consecutive = consecutive_cosines(ctx.dataset, rank, cpass.target_norms)
            task.close()
            cos[far] = consecutive[rank[a[far]]]
        return ArticleOrder(a, b, ids.article[a], cos, by_chunk)

    return ctx.cached("article_order", compute)


# -------------------------------------------------------------- series and tables
def coherence_summaries(ctx: CheckContext, low_threshold: float) -> dict[str, CosineSummary]:
    """:func:`summarize_cosines` of every series (cached: coherence and drift share it)."""

    def compute() -> dict[str, CosineSummary]:
        series = coherence_series(ctx)
        return {name: summarize_cosines(values, low_threshold) for name, values in series.items()}

    return ctx.cached(f"coherence_summaries:{low_threshold!r}", compute)


def coherence_series(ctx: CheckContext) -> dict[str, np.ndarray]:
    """Every adjacency definition available for this dataset, as cosine series."""

    def compute() -> dict[str, np.ndarray]:
        cpass = coherence_pass(ctx)
        series = {"file_order": cpass.file_order}
        if cpass.context_length > 1:
            series["within_window"] = cpass.within_window
        series["last_context_to_target"] = cpass.last_context_to_target
        order = article_order(ctx)
        if order is not None and order.cosines.size:
            series["article_order"] = order.cosines
        return series

    return ctx.cached("coherence_series", compute)


def _clip_text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = " ".join(value.split())
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


@dataclass
class GroupRow:
    article: int
    title: str | None
    n: int
    mean: float
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "article": self.article,
            "title": self.title,
            "n": self.n,
            "mean": self.mean,
            "examples": self.examples,
        }


def lowest_groups(
    labels: np.ndarray,
    values: np.ndarray,
    *,
    k: int = LOWEST_ARTICLES,
    min_n: int = MIN_PAIRS_PER_ARTICLE,
) -> list[tuple[int, int, float, np.ndarray]]:
    """The k groups with the lowest mean value: (label, n, mean, positions of its values).

    Groups with fewer than ``min_n`` finite values are ranked only if no group has enough
    (one unlucky pair is not evidence about an article).
    """
    finite = np.isfinite(values)
    if not finite.any():
        return []
    uniq, inv = np.unique(labels[finite], return_inverse=True)
    counts = np.bincount(inv)
    means = np.bincount(inv, weights=values[finite].astype(np.float64)) / counts
    eligible = np.flatnonzero(counts >= min_n)
    if eligible.size == 0:
        eligible = np.arange(uniq.size)
    chosen = eligible[np.argsort(means[eligible], kind="stable")[:k]]
    positions = np.flatnonzero(finite)
    return [(int(uniq[g]), int(counts[g]), float(means[g]), positions[inv == g]) for g in chosen]


def lowest_articles_table(ctx: CheckContext, low_threshold: float) -> dict[str, Any]:
    """Lowest-coherence articles with two example adjacent text pairs each."""
    ds = ctx.dataset
    ids = resolve_row_ids(ctx)
    order = article_order(ctx)
    targets = ds.target_texts
    rows: list[GroupRow] = []
    if order is not None and order.cosines.size:
        basis = "article order (consecutive chunks of each article)"
        for art, n, mean, pos in lowest_groups(order.article, order.cosines):
            worst = pos[np.argsort(order.cosines[pos], kind="stable")[:2]]
            row = GroupRow(art, ids.title_of(int(order.first[worst[0]])) if ids else None, n, mean)
            for p in worst:
                a, b = int(order.first[p]), int(order.second[p])
                row.examples.append(
                    {
                        "rows": [a, b],
                        "cosine": float(order.cosines[p]),
                        "first": _clip_text(targets[a]) if targets is not None else None,
                        "second": _clip_text(targets[b]) if targets is not None else None,
                    }
                )
            rows.append(row)
    elif ids is not None and coherence_pass(ctx).context_length > 1:
        basis = "within-window coherence, grouped by the target's article"
        cpass = coherence_pass(ctx)
        per_row = column_means(cpass.step_cosines.T)  # mean step of each window
        known = np.flatnonzero(ids.article_known)
        contexts = ds.context_texts
        for art, n, mean, pos in lowest_groups(ids.article[known], per_row[known]):
            windows = known[pos]
            worst = windows[np.argsort(per_row[windows], kind="stable")[:2]]
            row = GroupRow(art, ids.title_of(int(worst[0])), n, mean)
            for g in worst:
                j = int(
                    np.nanargmin(
                        np.where(np.isnan(cpass.step_cosines[g]), np.inf, cpass.step_cosines[g])
                    )
                )
                row.examples.append(
                    {
                        "rows": [int(g)],
                        "positions": [j, j + 1],
                        "cosine": float(cpass.step_cosines[g, j]),
                        "first": _clip_text(contexts[g, j]) if contexts is not None else None,
                        "second": _clip_text(contexts[g, j + 1]) if contexts is not None else None,
                    }
                )
            rows.append(row)
    else:
        return {
            "basis": None,
            "rows": [],
            "note": "no article ids in the file, its metadata or a source bank",
        }
    return {"basis": basis, "low_threshold": low_threshold, "rows": [r.to_json() for r in rows]}


# --------------------------------------------------------------------------- checks
DEFINITION_TITLES = {
    "file_order": "file order (origin's definition)",
    "within_window": "within window (context j -> j+1)",
    "last_context_to_target": "last context -> target",
    "article_order": "article order",
}


def check_coherence(ctx: CheckContext) -> CheckResult:
    """Adjacency cosine three ways, with the seed's statistics and histogram."""
    low = float(ctx.threshold("low_coherence", DEFAULT_LOW_COHERENCE))
    cpass = coherence_pass(ctx)
    series = coherence_series(ctx)
    summaries = coherence_summaries(ctx, low)
    metrics: dict[str, Any] = {}
    for name, summary in summaries.items():
        metrics.update(summary.metrics(name))
    metrics["article_order_mean"] = metrics.get("article_order_mean")
    metrics["position_profile"] = [float(v) for v in column_means(cpass.position_cosines)]
    metrics["within_window_step_means"] = [float(v) for v in column_means(cpass.step_cosines)]
    metrics["low_threshold"] = low
    metrics["invalid_targets"] = cpass.invalid_targets
    metrics["invalid_context_vectors"] = cpass.invalid_context_vectors
    metrics["random_pair_mean"] = cpass.random_pair_mean
    metrics["sliding_window_share"] = cpass.sliding_window_share

    excess, excess_ci, read_as = _excess_over_random(ctx, series, cpass)
    metrics["adjacent_excess_over_random"] = excess
    metrics["adjacent_excess_over_random_ci"] = list(excess_ci)
    metrics["adjacent_excess_over_random_ci_low"] = excess_ci[0]
    metrics["adjacent_excess_definition"] = read_as
    gates = _absolute_coherence_gates(ctx, summaries["file_order"])
    gates.append(
        gate_table.make(
            ctx, "coherence", "adjacent_excess_over_random_ci_low", excess_ci[0], ci=excess_ci
        )
    )
    order = article_order(ctx)
    details: dict[str, Any] = {
        "histogram_edges": [float(e) for e in HIST_EDGES],
        "histogram_labels": histogram_labels(),
        "definitions": {n: DEFINITION_TITLES[n] for n in series},
        "lowest_articles": lowest_articles_table(ctx, low),
        "article_order_by_chunk": None if order is None else order.by_chunk,
    }
    if "article_order" not in series:
        details["article_order_note"] = "article order: NA (no article ids known for the rows)"
    return from_gates(
        "coherence", metrics, gates, _coherence_message(summaries, cpass, gates), details
    )


def _excess_over_random(
    ctx: CheckContext, series: dict[str, np.ndarray], cpass: CoherencePass
) -> tuple[float, tuple[float, float], str]:
    """How much more alike the vectors the model reads side by side are than random
    pairs of the same data, with a block-bootstrap CI.

    This is the gate that needs no calibration: for any encoder and corpus, adjacent
    chunks of real text are more alike than random pairs, so a CI that reaches zero
    means the sequences carry no order signal (shuffled rows, wrong vectors, noise).
    """
    name = "within_window" if "within_window" in series else "last_context_to_target"
    values = series[name]
    level = cpass.random_pair_mean
    if not np.isfinite(values).any() or not math.isfinite(level):
        return float("nan"), (float("nan"), float("nan")), name
    rng = seeded_rng(ctx, "coherence:excess")
    boot = block_bootstrap_means(values, block_length(values), BOOTSTRAP_REPS, rng)[:, 0]
    mean = float(np.nanmean(values))
    low, high = percentile_ci(boot)
    return mean - level, (low - level, high - level), name


def _absolute_coherence_gates(ctx: CheckContext, file_order: CosineSummary) -> list[Gate]:
    """Absolute gates only where calibrated for the encoder or set in the registry; the
    relative judgement lives in coherence_drift."""
    gates = []
    if ctx.has_threshold("min_coherence_mean"):
        gates.append(
            Gate(
                "file-order coherence mean",
                "file_order_mean",
                file_order.mean,
                ">=",
                float(ctx.threshold("min_coherence_mean", 0.0)),
                _kind(ctx, "min_coherence_mean"),
            )
        )
    if ctx.has_threshold("max_low_coherence_share"):
        gates.append(
            Gate(
                "file-order low-coherence share",
                "file_order_low_share",
                file_order.low_share,
                "<=",
                float(ctx.threshold("max_low_coherence_share", 1.0)),
                _kind(ctx, "max_low_coherence_share"),
            )
        )
    return gates


def _kind(ctx: CheckContext, key: str) -> GateKind:
    kind = ctx.threshold_kind(key)
    return "calibrated" if kind == "calibrated" else "registry"


def _coherence_message(
    summaries: dict[str, CosineSummary], cpass: CoherencePass, gates: list[Gate]
) -> str:
    fo = summaries["file_order"]
    parts = [
        f"file-order adjacency mean {fo.mean:.4f} (std {fo.std:.4f}, p50 "
        f"{fo.percentiles[50]:.4f}), {100 * fo.low_share:.1f} % below {fo.low_threshold:g}"
    ]
    if "within_window" in summaries:
        parts.append(f"within window {summaries['within_window'].mean:.4f}")
    parts.append(f"last context -> target {summaries['last_context_to_target'].mean:.4f}")
    if "article_order" in summaries:
        ao = summaries["article_order"]
        parts.append(f"article order {ao.mean:.4f} ({100 * ao.low_share:.1f} % low)")
    else:
        parts.append("article order NA (no ids)")
    excluded = cpass.invalid_targets + cpass.invalid_context_vectors
    if excluded:
        parts.append(f"{excluded} zero/NaN vectors excluded")
    if len(gates) == 1:
        parts.append(
            "no absolute level calibrated for this encoder: gated on adjacency above random "
            "pairs, and relative to the baseline in coherence_drift"
        )
    return "; ".join(parts)


def check_coherence_drift(ctx: CheckContext) -> CheckResult:
    """The coherence distributions against the baseline, with a block-bootstrap test."""
    base_ctx = ctx.baseline()
    if base_ctx is None:
        raise CheckSkipped(
            f"no baseline configured for dataset '{ctx.name}' (set `baseline` "
            "in lvmqa.toml or pass --baseline)"
        )
    low = float(ctx.threshold("low_coherence", DEFAULT_LOW_COHERENCE))
    mean_pct = float(ctx.threshold("drift_mean_pct", DEFAULT_DRIFT_MEAN_PCT))
    low_pp = float(ctx.threshold("drift_low_share_pp", DEFAULT_DRIFT_LOW_SHARE_PP))
    current, baseline = coherence_series(ctx), coherence_series(base_ctx)
    compared = [name for name in DEFINITION_TITLES if name in current and name in baseline]
    comparisons = {
        name: compare_cosines(
            name,
            baseline[name],
            current[name],
            low_threshold=low,
            drift_mean_pct=mean_pct,
            drift_low_share_pp=low_pp,
            rng=seeded_rng(ctx, f"drift:{name}"),
            summaries=(
                coherence_summaries(base_ctx, low)[name],
                coherence_summaries(ctx, low)[name],
            ),
        )
        for name in compared
    }
    metrics: dict[str, Any] = {"baseline": base_ctx.name, "compared": compared}
    details: dict[str, Any] = {
        "histogram_labels": histogram_labels(),
        "tables": {},
        "reasons": {},
        "block_rows": {},
    }
    for name, comp in comparisons.items():
        metrics.update(comp.metrics())
        details["tables"][name] = comp.bin_table()
        details["reasons"][name] = list(comp.reasons)
        details["block_rows"][name] = list(comp.block_rows)
    # File order describes what the model reads only when windows slide over the rows,
    # in both datasets; for shuffled or independently built windows it is reported only.
    sliding = (
        coherence_pass(ctx).file_order_is_window_order,
        coherence_pass(base_ctx).file_order_is_window_order,
    )
    gated = [n for n in comparisons if n != "file_order" or all(sliding)]
    if "file_order" in comparisons and not all(sliding):
        which = " and ".join(
            side for side, ok in zip(("current", "baseline"), sliding, strict=True) if not ok
        )
        details["not_gated"] = {
            "file_order": (
                f"the {which} rows are not sliding windows (shuffled or independently built), "
                "so their file order is not what the model reads"
            )
        }
    worst = max((comparisons[n] for n in gated), key=lambda c: VERDICT_LEVEL[c.verdict])
    metrics["drift_verdict"] = worst.verdict
    metrics["drift_level"] = VERDICT_LEVEL[worst.verdict]
    metrics["gated"] = gated
    skipped_defs = [n for n in DEFINITION_TITLES if n not in compared]
    if skipped_defs:
        details["not_compared"] = {
            n: _why_not_compared(n, n in current, n in baseline) for n in skipped_defs
        }
    encoders = (ctx.encoder_name(), base_ctx.encoder_name())
    if all(encoders) and encoders[0] != encoders[1]:
        details["warning"] = (
            f"encoders differ ({encoders[0]} vs {encoders[1]}): cosine scales are not comparable"
        )
    # The rule behind the verdict, on the real numbers: a drift fails when it is beyond
    # its threshold AND its CI excludes no change (the table's null).
    gates = [
        gate_table.make(ctx, "coherence_drift", f"{name}_{metric}", value, ci=ci)
        for name, comp in comparisons.items()
        if name in gated
        for metric, value, ci in (
            ("mean_drift_pct", comp.mean_drift_pct, comp.mean_drift_pct_ci),
            ("low_share_change_pp", comp.low_share_change_pp, comp.low_share_change_ci_pp),
        )
    ]
    message = f"vs baseline '{base_ctx.name}': " + "; ".join(
        comp.describe() for comp in comparisons.values()
    )
    return from_gates("coherence_drift", metrics, gates, message, details)


def _why_not_compared(name: str, in_current: bool, in_baseline: bool) -> str:
    missing = [side for side, ok in (("current", in_current), ("baseline", in_baseline)) if not ok]
    return f"{DEFINITION_TITLES[name]} not available for the {' and '.join(missing)} data"
