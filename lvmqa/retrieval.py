"""FAISS retrieval: oracle recall with duplicates separated from index error, and duplicates.

On self-queries an exact search misses its own row only through ties, so the origin's
"recall@1 = 0.946" measured duplicate vectors, not quantisation. Here the two are
separated: duplicate-aware recall counts any row with an identical vector as a hit, and
an approximate index is compared with exact ground truth computed apart from it
(``exact_recall_at_k - recall_at_k`` is the index's own error).

Memory: the targets are read in blocks and searched where they lie (a float32 memmap is
used as is); only an approximate index holds its own copy of the codes.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lvmqa.errors import CheckSkipped, LvmqaError
from lvmqa.gates import make as make_gate
from lvmqa.results import CheckResult, from_gates

if TYPE_CHECKING:
    import faiss

    from lvmqa.checks import CheckContext

BLOCK_BYTES = 64 * 1024 * 1024  # database rows per search/hash block: bounded memory
QUERY_BATCH = 1024
RESULT_BYTES = 256 * 1024 * 1024  # (queries, k) ids and scores held at once
SCORE_BYTES = 128 * 1024 * 1024  # (queries, block) scores of one exact-search step
GPU_MIN_ROWS = 100_000  # below this, copying to the GPU costs more than it saves
MIN_POINTS_PER_CENTROID = 39  # FAISS warns below this; k-means is unreliable
TRAIN_ROWS = 100_000

RECALL_AT_5 = 0.97
RECALL_AT_1000 = 0.97
DUPLICATE_SHARE = 0.01
NEAR_DUPLICATE_COSINE = 0.995
NEAR_SAMPLE = 2000
NEAR_PAIRS_SHOWN = 10
RECALL_KS = (1, 5, 1000)
# The neighbour pass: queries per pass over the targets, bytes of one (queries, block)
# score tile (a few MB: it is compared once after the product, while still in cache),
# the band around a query's own score resolved exactly, and its size per query.
PASS_QUERIES = 4096
PASS_SCORE_BYTES = 32 * 1024 * 1024
TIE_BAND_RTOL = 1e-4
TIE_BAND_CAP = 4096
NEAR_SLACK = 1e-3  # float32 prefilter below the near threshold; exact cosines decide
# All rows are queried for near-duplicates while rows**2 * dim stays below this many
# multiply-adds (a few seconds on 2 cores); beyond it, a seeded sample of rows is.
EXHAUSTIVE_WORK = 2e11


# ------------------------------------------------------------------------ helpers


def _block_rows(dim: int) -> int:
    return max(1024, BLOCK_BYTES // (4 * max(dim, 1)))


def _as_f32(block: np.ndarray) -> np.ndarray:
    """Contiguous float32 without a copy when the block already is (e.g. a memmap slice)."""
    return np.ascontiguousarray(block, dtype=np.float32)


def iter_blocks(xb: np.ndarray, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(start, float32 block) over the rows of an array or memmap."""
    step = rows or _block_rows(xb.shape[1])
    for start in range(0, xb.shape[0], step):
        yield start, _as_f32(xb[start : start + step])


def _take(xb: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows in any order, read in sorted order (sequential on disk)."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), xb.shape[1]), dtype=np.float32)
    out[order] = xb[rows[order]]
    return out


def _seeded_rows(n: int, sample_size: int | None, seed: int) -> np.ndarray:
    if not sample_size or sample_size >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=sample_size, replace=False)).astype(np.int64)


def _use_gpu(n: int) -> bool:
    import faiss

    return bool(faiss.get_num_gpus() > 0 and n >= GPU_MIN_ROWS)


# --------------------------------------------------------------------- exact search


def exact_knn(
    xb: np.ndarray, xq: np.ndarray, k: int, *, block_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of ``xq`` over ``xb``, streamed over blocks of ``xb``.

    The ground truth of this module (what ``IndexFlatIP.search`` returns): it never builds
    an index over the whole database, so it is independent of any index under test and
    holds one block at a time. Ties keep the lower row, as FAISS does.

    On a GPU the blocks go through ``faiss.knn_gpu``. On the CPU the scores come from
    numpy's matrix product and the top k from FAISS's ``ResultHeap``: on the 2-core
    reference machine that is ~2x faster than ``faiss.knn``, whose BLAS tiles are small
    (see bench/bench_recall.py).
    """
    import faiss

    n = xb.shape[0]
    k = min(k, n)
    queries = _as_f32(xq)
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    if _use_gpu(n):
        gpu = _gpu_resources()
        for start, block in iter_blocks(xb, block_rows):
            dist, ids = faiss.knn_gpu(
                gpu, queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT
            )
            heap.add_result(dist, ids + start)
    else:
        # Scores are (queries, block rows) float32 plus int64 ids: keep them bounded.
        step = block_rows or max(
            256, min(_block_rows(xb.shape[1]), SCORE_BYTES // (12 * max(len(queries), 1)))
        )
        for start, block in iter_blocks(xb, step):
            scores = queries @ block.T
            ids = np.broadcast_to(np.arange(start, start + len(block)), scores.shape)
            heap.add_result(scores, ids)
    heap.finalize()
    return heap.D, heap.I


def _gpu_resources() -> Any:
    import faiss

    return faiss.StandardGpuResources()


def locate_rows(xb: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each unit query: the row of ``xb`` with the highest cosine, and that cosine.

    Searches by inner product, then rescales by the found row's norm, so it is exact for
    unit-norm rows (the norms check owns the others). Non-finite queries get NaN.
    """
    ok = np.isfinite(queries).all(axis=1)
    cos = np.full(len(queries), np.nan)
    rows = np.full(len(queries), -1, dtype=np.int64)
    if ok.any():
        dist, ids = exact_knn(xb, queries[ok], 1)
        found = ids[:, 0]
        norms = np.linalg.norm(_take(xb, found), axis=1).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos[ok] = dist[:, 0] / norms
        rows[ok] = found
    return cos, rows


# ---------------------------------------------------------------------- FAISS index


def clamp_factory(factory: str, n: int) -> tuple[str, str | None]:
    """Lower an IVF list count that ``n`` rows cannot train; say so in a note."""
    match = re.search(r"IVF(\d+)", factory)
    if not match:
        return factory, None
    nlist = int(match.group(1))
    limit = max(1, n // MIN_POINTS_PER_CENTROID)
    if nlist <= limit:
        return factory, None
    clamped = factory[: match.start(1)] + str(limit) + factory[match.end(1) :]
    note = (
        f"nlist {nlist} needs {nlist * MIN_POINTS_PER_CENTROID:,} training rows; "
        f"only {n:,} exist, so the index is '{clamped}'"
    )
    return clamped, note


def build_index(
    xb: np.ndarray, factory: str = "Flat", *, nprobe: int | None = None, seed: int = 0
) -> faiss.Index:
    """An inner-product FAISS index from a factory string, trained on a seeded sample.

    ``nlist`` is clamped to ``n / 39`` (see ``clamp_factory``). k-means and PQ training
    are seeded; HNSW construction with several threads is not fully deterministic.
    Uses the GPU when FAISS sees one and the data is large.
    """
    import faiss

    n, dim = xb.shape
    factory, _ = clamp_factory(factory, n)
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise LvmqaError(
            f"FAISS cannot build this index: {_faiss_reason(exc)}",
            key="index_factory",
            found=repr(factory),
        ) from None
    _seed_index(index, seed)
    if _use_gpu(n) and "HNSW" not in factory:
        # An index type without a GPU version stays on the CPU.
        with contextlib.suppress(RuntimeError, AttributeError):
            index = faiss.index_cpu_to_all_gpus(index)
    if not index.is_trained:
        train_rows = _seeded_rows(
            n, max(TRAIN_ROWS, _nlist(factory) * MIN_POINTS_PER_CENTROID), seed
        )
        try:
            index.train(_take(xb, train_rows))
        except RuntimeError as exc:
            raise LvmqaError(
                f"FAISS cannot train this index on {len(train_rows):,} rows: {_faiss_reason(exc)}",
                key="index_factory",
                found=repr(factory),
            ) from None
    for _, block in iter_blocks(xb):
        index.add(block)
    if nprobe is not None:
        _set_nprobe(index, nprobe)
    return index


def _nlist(factory: str) -> int:
    match = re.search(r"IVF(\d+)", factory)
    return int(match.group(1)) if match else 0


def _seed_index(index: Any, seed: int) -> None:
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        ivf.cp.seed = seed
    for owner in (ivf, index):
        pq = getattr(owner, "pq", None) if owner is not None else None
        if pq is not None:
            pq.cp.seed = seed


def _set_nprobe(index: Any, nprobe: int) -> None:
    import faiss

    space = faiss.GpuParameterSpace() if hasattr(index, "getDevice") else faiss.ParameterSpace()
    try:
        space.set_index_parameter(index, "nprobe", int(nprobe))
    except RuntimeError as exc:
        raise LvmqaError(
            f"nprobe does not apply to this index: {_faiss_reason(exc)}",
            key="nprobe",
            found=str(nprobe),
        ) from None


def _faiss_reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    match = re.search(r"Error: '([^']+)' failed(?:: (.*))?", text)
    return (match.group(2) or match.group(1)) if match else text[:200]


def _index_nprobe(index: Any) -> int | None:
    import faiss

    try:
        return int(faiss.extract_index_ivf(index).nprobe)
    except RuntimeError:
        return getattr(index, "nprobe", None)


def _search(index: Any, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    dist = np.empty((len(xq), k), dtype=np.float32)
    ids = np.empty((len(xq), k), dtype=np.int64)
    for start in range(0, len(xq), QUERY_BATCH):
        stop = start + QUERY_BATCH
        dist[start:stop], ids[start:stop] = index.search(_as_f32(xq[start:stop]), k)
    return dist, ids


# -------------------------------------------------------------- exact duplicates


def exact_duplicate_groups(targets: np.ndarray, *, block_rows: int | None = None) -> np.ndarray:
    """For each row, the first row whose vector is bit-identical to it (itself if unique).

    One streamed pass: each row is hashed with a random linear hash over its 32-bit
    words (vectorised), equal hashes are grouped by sorting, and every candidate group
    is verified word by word, so hash collisions cannot merge different vectors.
    ``-0.0`` is folded into ``0.0``; NaN payloads compare bitwise.
    """
    n, dim = targets.shape
    rng = np.random.default_rng(0x6C766D7161)  # fixed: the hash is not a sampling choice
    multipliers = rng.integers(1, 2**63, size=dim, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    hashes = np.empty(n, dtype=np.uint64)
    step = block_rows or max(256, _block_rows(dim) // 4)  # uint64 temporaries are 2x wider
    for start, block in iter_blocks(targets, step):
        words = _words(block).astype(np.uint64)
        with np.errstate(over="ignore"):
            mixed = (words * multipliers).sum(axis=1, dtype=np.uint64)
        hashes[start : start + len(block)] = _mix64(mixed)
    order = np.argsort(hashes, kind="stable")  # stable: rows ascend within equal hashes
    return _verified_groups(targets, order, hashes[order])


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the linear hash over all 64 bits."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _words(block: np.ndarray) -> np.ndarray:
    return (block + np.float32(0.0)).view(np.uint32)


def _verified_groups(
    targets: np.ndarray, order: np.ndarray, sorted_hashes: np.ndarray
) -> np.ndarray:
    """Turn runs of equal hashes into groups of bit-identical rows.

    Every row of a run is compared with the run's first row in one vectorised pass; a
    run with a mismatch (a hash collision, practically never) is split exactly.
    """
    n = len(order)
    first = np.arange(n, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_hashes[1:] != sorted_hashes[:-1]])
    run = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    head_pos = starts[run]
    members = np.flatnonzero(head_pos != np.arange(n))
    if len(members) == 0:
        return first
    same = np.empty(len(members), dtype=bool)
    step = max(256, _block_rows(targets.shape[1]) // 2)
    for start in range(0, len(members), step):
        pos = members[start : start + step]
        rows, heads = order[pos], order[head_pos[pos]]
        same[start : start + len(pos)] = (
            _words(_take(targets, rows)) == _words(_take(targets, heads))
        ).all(axis=1)
    first[order[members[same]]] = order[head_pos[members[same]]]
    for bad_run in np.unique(run[members[~same]]):
        _split_run(targets, np.sort(order[run == bad_run]), first)
    return first


def _split_run(targets: np.ndarray, rows: np.ndarray, first: np.ndarray) -> None:
    """Exact grouping of one colliding run (rows ascending)."""
    first[rows] = rows
    remaining = rows
    while len(remaining) > 1:
        words = _words(_take(targets, remaining))
        same = (words == words[0]).all(axis=1)
        first[remaining[same]] = remaining[0]
        remaining = remaining[~same]


def _group_summary(first: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(redundant rows, groups with >1 member, group heads by size, sizes), largest first."""
    n = len(first)
    redundant = int(np.count_nonzero(first != np.arange(n)))
    heads, sizes = np.unique(first[first != np.arange(n)], return_counts=True)
    sizes = sizes + 1  # the head itself
    order = np.argsort(-sizes, kind="stable")
    return redundant, len(heads), heads[order], sizes[order]


# ------------------------------------------------------------------ neighbour pass


@dataclass(frozen=True)
class NeighbourPass:
    """Every neighbour question of the checks, answered by ONE product queries x targets.

    Recall needs only where each query's own row (and its exact-duplicate group) lands in
    the exact top ``k`` list, not the list: ``own_rank`` / ``group_rank`` are those
    0-based positions (``k`` or more when absent). Positions follow the list that
    ``IndexFlatIP.search`` / ``exact_knn`` return: it keeps the ``k`` best rows by
    (score descending, row ascending) and lists rows of equal score by row descending.
    Near-duplicates need, per near query, whether an earlier row of another group lies
    at cosine >= ``near_threshold`` (``near_earlier``) and the best later such pairs.
    """

    k: int
    recall_rows: np.ndarray
    own_rank: np.ndarray
    group_rank: np.ndarray
    near_rows: np.ndarray
    near_threshold: float
    near_earlier: np.ndarray
    near_pairs: list[tuple[float, int, int]]  # (cosine, a, b), a < b, best first
    heap_queries: int  # recall queries whose ties straddled position k: taken by the heap


@dataclass
class _QueryState:
    """Running counts of one batch of queries while the target blocks stream by."""

    rows: np.ndarray
    recall: np.ndarray  # bool: the row is a recall query
    near: np.ndarray  # bool: the row is a near-duplicate query
    low: np.ndarray  # float32 band around the estimated own score
    high: np.ndarray
    near_floor: np.ndarray  # float32 scores below this cannot reach the near threshold
    xq: np.ndarray
    q_norm: np.ndarray
    above: np.ndarray
    own_score: np.ndarray
    band_q: list[np.ndarray] = field(default_factory=list)
    band_id: list[np.ndarray] = field(default_factory=list)
    band_score: list[np.ndarray] = field(default_factory=list)
    band_count: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    earlier: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


def neighbour_pass(
    targets: np.ndarray,
    first: np.ndarray,
    *,
    recall_rows: np.ndarray,
    k: int,
    near_rows: np.ndarray,
    near_threshold: float = NEAR_DUPLICATE_COSINE,
    block_rows: int | None = None,
) -> NeighbourPass:
    """Scores of the recall and near-duplicate queries against all targets, block by block.

    Each step multiplies (queries, D) by (D, block) in float32 BLAS, as ``exact_knn`` does,
    and keeps only counts: how many targets score above each query's own score, and the
    few scores in a narrow band around it (duplicates, exact ties), resolved exactly once
    the own score is met. A query whose ties straddle position ``k`` (a duplicate group
    larger than ``k``, a zero vector) or whose own score is not finite is answered by the
    reference heap instead. Memory: one (queries, block) score tile besides the targets.
    """
    n = targets.shape[0]
    k = min(k, n)
    recall_rows = np.asarray(recall_rows, dtype=np.int64)
    near_rows = np.asarray(near_rows, dtype=np.int64)
    queries = np.union1d(recall_rows, near_rows)
    last_in_group = np.zeros(n, dtype=np.int64)
    np.maximum.at(last_in_group, first, np.arange(n, dtype=np.int64))
    group_size = np.bincount(first, minlength=n)
    own_rank = np.full(len(recall_rows), k, dtype=np.int64)
    group_rank = np.full(len(recall_rows), k, dtype=np.int64)
    near_earlier = np.zeros(len(near_rows), dtype=bool)
    pairs: list[tuple[float, int, int]] = []
    heap_rows: list[int] = []
    for start in range(0, len(queries), PASS_QUERIES):
        batch = queries[start : start + PASS_QUERIES]
        recall, near = np.isin(batch, recall_rows), np.isin(batch, near_rows)
        state = _query_state(targets, batch, recall, near, near_threshold)
        step = block_rows or max(256, PASS_SCORE_BYTES // (4 * len(batch)))
        for b0, block in iter_blocks(targets, step):
            pairs = _score_block(state, b0, block, first, near_threshold, pairs)
        own, group, heap = _resolve_ranks(state, first, last_in_group, group_size, k)
        at = np.searchsorted(recall_rows, state.rows[state.recall])
        own_rank[at], group_rank[at] = own[state.recall], group[state.recall]
        heap_rows.extend(int(r) for r in state.rows[state.recall & heap])
        near_at = np.searchsorted(near_rows, state.rows[state.near])
        near_earlier[near_at] = state.earlier[state.near]
    if heap_rows:
        rows = np.asarray(heap_rows, dtype=np.int64)
        _, ids = exact_knn(targets, _take(targets, rows), k)
        at = np.searchsorted(recall_rows, rows)
        own_rank[at] = _first_position(ids == rows[:, None], k)
        group_rank[at] = _first_position(
            (first[np.maximum(ids, 0)] == first[rows][:, None]) & (ids >= 0), k
        )
    return NeighbourPass(
        k=k,
        recall_rows=recall_rows,
        own_rank=own_rank,
        group_rank=group_rank,
        near_rows=near_rows,
        near_threshold=float(near_threshold),
        near_earlier=near_earlier,
        near_pairs=pairs,
        heap_queries=len(heap_rows),
    )


def _first_position(hit: np.ndarray, k: int) -> np.ndarray:
    return np.where(hit.any(axis=1), hit.argmax(axis=1), k).astype(np.int64)


def _query_state(
    targets: np.ndarray, rows: np.ndarray, recall: np.ndarray, near: np.ndarray, threshold: float
) -> _QueryState:
    xq = _take(targets, rows)
    q_norm = np.linalg.norm(xq, axis=1)  # float32, as the cosines of the old search
    with np.errstate(invalid="ignore", over="ignore"):
        # BLAS rounds the own score a little differently: the band absorbs it.
        estimate = np.einsum("ij,ij->i", xq, xq)
        tolerance = np.float32(TIE_BAND_RTOL) * np.abs(estimate)
        # The band must hold at least the exact own score, even for a zero vector.
        tolerance = np.maximum(tolerance, np.float32(np.finfo(np.float32).tiny))
        # cos >= t needs score >= t * |q| * |x|; the block's smallest norm bounds |x|.
        floor = np.float32(threshold - NEAR_SLACK) * q_norm
        low, high = estimate - tolerance, estimate + tolerance
    state = _QueryState(
        rows=rows,
        recall=recall,
        near=near,
        low=low.astype(np.float32),
        high=high.astype(np.float32),
        near_floor=np.where(near, floor, np.inf).astype(np.float32),
        xq=xq,
        q_norm=q_norm,
        above=np.zeros(len(rows), dtype=np.int64),
        own_score=np.full(len(rows), np.nan, dtype=np.float32),
        band_count=np.zeros(len(rows), dtype=np.int64),
        earlier=np.zeros(len(rows), dtype=bool),
    )
    return state


def _score_block(
    state: _QueryState,
    b0: int,
    block: np.ndarray,
    first: np.ndarray,
    threshold: float,
    pairs: list[tuple[float, int, int]],
) -> list[tuple[float, int, int]]:
    """Fold one target block into the counts; returns the best near pairs so far."""
    b1 = b0 + len(block)
    if not block.flags.aligned:  # BLAS refuses unaligned maps (npz members at odd offsets)
        block = block.copy()
    with np.errstate(invalid="ignore", over="ignore"):
        scores = state.xq @ block.T
        t_norm = np.linalg.norm(block, axis=1)
    inside = np.flatnonzero((state.rows >= b0) & (state.rows < b1))
    state.own_score[inside] = scores[inside, state.rows[inside] - b0]
    positive = t_norm[np.isfinite(t_norm) & (t_norm > 0)]
    t_min = np.float32(positive.min()) if positive.size else np.float32(np.inf)
    if threshold <= NEAR_SLACK:  # a floor from the smallest norm would not bound anything
        floor = np.where(state.near, -np.inf, np.inf).astype(np.float32)
    else:
        floor = state.near_floor * t_min
    # One comparison with each query's lowest interesting score; everything else about
    # the block comes from the few scores that pass it.
    cut = np.minimum(state.low, floor)
    # Most queries have nothing in most blocks: a row maximum (one read of the tile)
    # finds the few rows whose scores need a look.
    with np.errstate(invalid="ignore"):  # fmax: a NaN score (a NaN target) hides nothing
        busy = np.flatnonzero(np.fmax.reduce(scores, axis=1) >= cut)
    sub, col = np.nonzero(scores[busy] >= cut[busy, None])
    qi = busy[sub]
    values = scores[qi, col]
    above_high = values > state.high[qi]
    state.above += np.bincount(qi[above_high], minlength=len(state.rows))
    in_band = ~above_high & (values >= state.low[qi])
    if in_band.any():
        bq = qi[in_band]
        counts = np.bincount(bq, minlength=len(state.rows))
        state.band_count += counts
        keep = state.band_count[bq] <= TIE_BAND_CAP
        state.band_q.append(bq[keep])
        state.band_id.append(b0 + col[in_band][keep])
        state.band_score.append(values[in_band][keep])
    near = state.near[qi]
    if near.any():
        pairs = _near_candidates(
            state,
            qi[near],
            b0 + col[near],
            values[near],
            t_norm[col[near]],
            first,
            threshold,
            pairs,
        )
    return pairs


def _near_candidates(
    state: _QueryState,
    qi: np.ndarray,
    ids: np.ndarray,
    values: np.ndarray,
    t_norm: np.ndarray,
    first: np.ndarray,
    threshold: float,
    pairs: list[tuple[float, int, int]],
) -> list[tuple[float, int, int]]:
    """Exact cosines of the candidates (float64, as the old search's): earlier rows mark
    the query near-redundant, later rows are pairs to show."""
    rows = state.rows[qi]
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = values.astype(np.float64) / (t_norm * state.q_norm[qi])
    near = np.isfinite(cos) & (cos >= threshold) & (first[ids] != first[rows])
    earlier = near & (ids < rows)
    state.earlier[qi[earlier]] = True
    later = np.flatnonzero(near & (ids > rows))
    if later.size:
        # Best first by (cosine, a, b) descending, as the sorted tuples of the report.
        order = np.lexsort((ids[later], rows[later], cos[later]))[::-1][:NEAR_PAIRS_SHOWN]
        best = later[order]
        found = [
            (float(c), int(a), int(b))
            for c, a, b in zip(cos[best], rows[best], ids[best], strict=True)
        ]
        pairs = sorted(pairs + found, reverse=True)[:NEAR_PAIRS_SHOWN]
    return pairs


def _resolve_ranks(
    state: _QueryState,
    first: np.ndarray,
    last_in_group: np.ndarray,
    group_size: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of own row and group in the top-k list; True where the heap must decide.

    With A rows scoring above the own score s and the set T of rows scoring exactly s
    (the row, its bit-identical copies, exact ties): when A + |T| <= k all of T is listed,
    rows descending, so the own row sits at A + #{t in T : t > row} and the group's best
    member (its last row) at A + #{t in T : t > last row of the group}.
    """
    m = len(state.rows)
    if state.band_q:
        bq = np.concatenate(state.band_q)
        bid = np.concatenate(state.band_id)
        bscore = np.concatenate(state.band_score)
    else:
        bq = np.zeros(0, dtype=np.int64)
        bid = np.zeros(0, dtype=np.int64)
        bscore = np.zeros(0, dtype=np.float32)
    own = state.own_score[bq]
    above = state.above + np.bincount(bq[bscore > own], minlength=m)
    tie = bscore == own
    tq, tid = bq[tie], bid[tie]
    rows = state.rows
    ties = np.bincount(tq, minlength=m)
    after_own = np.bincount(tq[tid > rows[tq]], minlength=m)
    after_group = np.bincount(tq[tid > last_in_group[first[rows[tq]]]], minlength=m)
    group_ties = np.bincount(tq[first[tid] == first[rows[tq]]], minlength=m)
    own_score = state.own_score
    band_ok = (own_score >= state.low) & (own_score <= state.high)
    heap = (
        ~np.isfinite(own_score)
        | ~band_ok
        | (state.band_count > TIE_BAND_CAP)
        | (group_ties != group_size[first[rows]])  # BLAS rounded a copy differently
        | ((above < k) & (above + ties > k))
    )
    return above + after_own, above + after_group, heap


# ------------------------------------------------------------------- oracle recall


def oracle_recall(
    targets: np.ndarray,
    *,
    sample_size: int | None = 1000,
    ks: Sequence[int] = RECALL_KS,
    factory: str = "Flat",
    nprobe: int | None = None,
    seed: int = 0,
    duplicate_groups: np.ndarray | None = None,
    neighbours: NeighbourPass | None = None,
) -> dict[str, Any]:
    """Self-query recall@k of an index over ``targets``, duplicate-aware and exact.

    A seeded sample of rows queries the index; ``recall_at_k`` counts the query's own row
    in the top k, ``dup_aware_recall_at_k`` counts any row with an identical vector.
    For an approximate index, ``exact_recall_at_k`` comes from exact search and
    ``index_error_at_k = exact_recall_at_k - recall_at_k``. K is clamped to the row count.
    Exact search reads the answer off a :func:`neighbour_pass` (``neighbours``, when the
    near-duplicate queries share it), positions only, no top-k lists.
    """
    n = targets.shape[0]
    if n == 0:
        raise ValueError("no target vectors")
    rows = _seeded_rows(n, sample_size, seed)
    kmax = min(max(ks), n)
    first = duplicate_groups if duplicate_groups is not None else exact_duplicate_groups(targets)
    effective, note = clamp_factory(factory, n)
    approximate = factory.strip() != "Flat"
    metrics: dict[str, Any] = {
        "n_rows": int(n),
        "n_queries": len(rows),
        "index_factory": effective,
        "index_kind": "approximate" if approximate else "exact",
        "ks_effective": {str(k): int(min(k, n)) for k in ks},
    }
    if note:
        metrics["index_note"] = note
    if not approximate:
        if neighbours is None or not (
            neighbours.k == kmax and np.array_equal(neighbours.recall_rows, rows)
        ):
            neighbours = neighbour_pass(
                targets, first, recall_rows=rows, k=kmax, near_rows=rows[:0]
            )
        for k in ks:
            kk = min(k, n)
            metrics[f"recall_at_{k}"] = np.count_nonzero(neighbours.own_rank < kk) / len(rows)
            metrics[f"dup_aware_recall_at_{k}"] = np.count_nonzero(
                neighbours.group_rank < kk
            ) / len(rows)
        return _ordered({**metrics, **_duplicate_metrics(first, rows)}, ks)
    index = build_index(targets, factory, nprobe=nprobe, seed=seed)
    if index is not None:
        metrics["nprobe"] = _index_nprobe(index)
    counts: dict[str, float] = {}
    # Result tables are (queries, k): bound them, so that even "all rows" stays flat.
    batch = max(1, RESULT_BYTES // (kmax * 12 * 2))
    for start in range(0, len(rows), batch):
        batch_rows = rows[start : start + batch]
        xq = _take(targets, batch_rows)
        _, exact_ids = exact_knn(targets, xq, kmax)
        ids = _search(index, xq, kmax)[1]
        for name, value in _recall_counts(ks, n, batch_rows, first, ids, exact_ids).items():
            counts[name] = counts.get(name, 0.0) + value
    for name, total in counts.items():
        metrics[name] = total / len(rows)
    for k in ks:
        metrics[f"index_error_at_{k}"] = metrics[f"exact_recall_at_{k}"] - metrics[f"recall_at_{k}"]
    return _ordered({**metrics, **_duplicate_metrics(first, rows)}, ks)


def _duplicate_metrics(first: np.ndarray, rows: np.ndarray) -> dict[str, float]:
    n = len(first)
    redundant, _, _, _ = _group_summary(first)
    in_group = np.bincount(first, minlength=n)[first] > 1
    return {
        "exact_duplicate_share": redundant / n,
        "query_in_duplicate_group_share": float(in_group[rows].mean()),
    }


def _recall_counts(
    ks: Sequence[int],
    n: int,
    rows: np.ndarray,
    first: np.ndarray,
    ids: np.ndarray,
    exact_ids: np.ndarray,
) -> dict[str, float]:
    """Hit counts of one query batch of an approximate index (summed over batches, then
    divided by the queries)."""
    counts: dict[str, float] = {}
    for k in ks:
        kk = min(k, n)
        top = ids[:, :kk]
        counts[f"recall_at_{k}"] = _hits(top, rows)
        counts[f"dup_aware_recall_at_{k}"] = _hits(
            first[np.maximum(top, 0)], first[rows], valid=top >= 0
        )
        counts[f"exact_recall_at_{k}"] = _hits(exact_ids[:, :kk], rows)
        counts[f"exact_dup_aware_recall_at_{k}"] = _hits(first[exact_ids[:, :kk]], first[rows])
        # A self-query lands in its own IVF cell, so IVF-Flat never loses its own row;
        # the overlap with the exact top k shows what the index loses for other queries.
        counts[f"neighbour_recall_at_{k}"] = knn_intersection_measure(top, exact_ids[:, :kk]) * len(
            rows
        )
    return counts


def _ordered(metrics: dict[str, Any], ks: Sequence[int]) -> dict[str, Any]:
    """Metrics grouped by k, in a stable order for the report."""
    head = [key for key in metrics if not any(key.endswith(f"_at_{k}") for k in ks)]
    order = [
        "recall",
        "dup_aware_recall",
        "exact_recall",
        "exact_dup_aware_recall",
        "index_error",
        "neighbour_recall",
    ]
    by_k = [f"{name}_at_{k}" for k in ks for name in order if f"{name}_at_{k}" in metrics]
    return {key: metrics[key] for key in [*head, *by_k]}


def knn_intersection_measure(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the exact top k that the index also returns (FAISS contrib's measure)."""
    if found.size == 0:
        return 1.0
    hits = sum(np.intersect1d(a, b).size for a, b in zip(found, truth, strict=True))
    return hits / found.size


def _hits(found: np.ndarray, wanted: np.ndarray, valid: np.ndarray | None = None) -> float:
    hits = found == wanted[:, None]
    if valid is not None:
        hits &= valid
    return float(hits.any(axis=1).sum())


# --------------------------------------------------------------------- duplicates


def find_duplicates(
    targets: np.ndarray,
    texts: Sequence[Any] | np.ndarray | None = None,
    *,
    near_threshold: float = NEAR_DUPLICATE_COSINE,
    seed: int = 0,
    near_sample: int = NEAR_SAMPLE,
    duplicate_groups: np.ndarray | None = None,
    neighbours: NeighbourPass | None = None,
) -> dict[str, Any]:
    """Exact and near-duplicate target vectors, and duplicate texts.

    Shares count *redundant* rows: rows that repeat an earlier row (the first of each
    group is kept). ``near_duplicate_share`` counts rows that are not exact duplicates
    but have an earlier row at cosine >= ``near_threshold``, so the two shares add up.
    Near-duplicates come from exact cosines of every row against all rows when that is
    cheap, otherwise of a seeded sample of rows (with a 95 % Wilson interval), read off
    a :func:`neighbour_pass` (``neighbours``, when the recall queries share it).
    """
    n = targets.shape[0]
    first = duplicate_groups if duplicate_groups is not None else exact_duplicate_groups(targets)
    redundant, group_count, heads, sizes = _group_summary(first)
    metrics: dict[str, Any] = {
        "n_rows": int(n),
        "exact_duplicate_share": redundant / n if n else 0.0,
        "exact_duplicate_rows": redundant,
        "exact_duplicate_groups": group_count,
        "largest_exact_group": int(sizes[0]) if len(sizes) else 1,
    }
    details: dict[str, Any] = {
        "exact_groups": [
            _group_entry(first, int(h), int(s), texts)
            for h, s in zip(heads[:10], sizes[:10], strict=True)
        ],
    }
    if neighbours is None or neighbours.near_threshold != float(near_threshold):
        rows = near_query_rows(n, targets.shape[1], near_sample, seed)
        neighbours = neighbour_pass(
            targets,
            first,
            recall_rows=rows[:0],
            k=1,
            near_rows=rows,
            near_threshold=near_threshold,
        )
    near_metrics, near_details = _near_duplicates(neighbours, first, texts)
    metrics.update(near_metrics)
    details.update(near_details)
    if texts is not None:
        text_metrics, text_details = _duplicate_texts(texts, first)
        metrics.update(text_metrics)
        details.update(text_details)
    metrics["details"] = details
    return metrics


def _group_entry(
    first: np.ndarray, head: int, size: int, texts: Sequence[Any] | np.ndarray | None
) -> dict[str, Any]:
    rows = np.flatnonzero(first == head)[:10]
    entry: dict[str, Any] = {"size": size, "rows": [int(r) for r in rows]}
    if texts is not None:
        entry["texts"] = [_snippet(texts[int(r)]) for r in rows[:3]]
    return entry


def _snippet(text: Any, limit: int = 160) -> str | None:
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return " ".join(str(text).split())[:limit]


def near_query_rows(
    n: int, dim: int, sample: int, seed: int, within: np.ndarray | None = None
) -> np.ndarray:
    """Rows queried for near-duplicates: all of them when ``n * n * dim`` multiply-adds
    are cheap, else a seeded uniform sample of ``sample`` rows.

    A sample contains ``within`` (the recall queries) and is filled up from the other
    rows, so that one pass of the queries over the targets answers both checks.
    """
    if float(n) * n * dim <= EXHAUSTIVE_WORK or sample >= n:
        return np.arange(n, dtype=np.int64)
    if within is None or len(within) == 0:
        return _seeded_rows(n, sample, seed)
    rng = np.random.default_rng([seed, 0x6E656172])  # "near": apart from the recall draw
    if len(within) >= sample:
        return np.sort(rng.choice(within, size=sample, replace=False)).astype(np.int64)
    rest = np.setdiff1d(np.arange(n, dtype=np.int64), within, assume_unique=True)
    extra = rng.choice(rest, size=sample - len(within), replace=False)
    return np.sort(np.concatenate([within, extra])).astype(np.int64)


def _near_duplicates(
    neighbours: NeighbourPass, first: np.ndarray, texts: Sequence[Any] | np.ndarray | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    rows = neighbours.near_rows
    n = len(first)
    near_redundant = neighbours.near_earlier & (first[rows] == rows)  # not an exact copy
    share = float(near_redundant.mean()) if len(rows) else 0.0
    low, high = _wilson(int(near_redundant.sum()), len(rows))
    metrics = {
        "near_duplicate_share": share,
        "near_duplicate_share_ci_low": low,
        "near_duplicate_share_ci_high": high,
        "near_duplicate_threshold": neighbours.near_threshold,
        "near_duplicate_queries": len(rows),
        "near_duplicate_exhaustive": bool(len(rows) == n),
    }
    examples = [
        {
            "rows": [a, b],
            "cosine": c,
            **({"texts": [_snippet(texts[a]), _snippet(texts[b])]} if texts is not None else {}),
        }
        for c, a, b in neighbours.near_pairs[:NEAR_PAIRS_SHOWN]
    ]
    return metrics, {"near_pairs": examples}


def _wilson(hits: int, total: int, z: float = 1.96) -> tuple[float, float]:
    if total == 0:
        return 0.0, 1.0
    p = hits / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _duplicate_texts(
    texts: Sequence[Any] | np.ndarray, first_vector: np.ndarray
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Repeated non-empty texts; and repeated texts whose vectors differ (a pairing smell)."""
    first_seen: dict[str, int] = {}
    counts: dict[int, int] = {}
    redundant = 0
    vector_differs = 0
    n = len(texts)
    for row in range(n):
        text = texts[row]
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        if not isinstance(text, str) or not text.strip():
            continue
        head = first_seen.setdefault(text, row)
        if head != row:
            redundant += 1
            counts[head] = counts.get(head, 1) + 1
            if first_vector[row] != first_vector[head]:
                vector_differs += 1
    largest = sorted(counts.items(), key=lambda item: -item[1])[:10]
    metrics = {
        "duplicate_text_share": redundant / n if n else 0.0,
        "duplicate_text_groups": len(counts),
        "duplicate_text_vector_mismatch_share": vector_differs / n if n else 0.0,
    }
    details = {
        "text_groups": [
            {"size": size, "text": _snippet(texts[head]), "first_row": int(head)}
            for head, size in largest
        ]
    }
    return metrics, details


# ---------------------------------------------------------------------------- checks


def _targets(ctx: CheckContext) -> np.ndarray:
    return ctx.cached("targets_matrix", ctx.dataset.targets_matrix)


def _groups(ctx: CheckContext) -> np.ndarray:
    return ctx.cached("exact_duplicate_groups", lambda: exact_duplicate_groups(_targets(ctx)))


def _neighbours(ctx: CheckContext) -> NeighbourPass:
    """The one neighbour pass of oracle_recall and duplicates (whichever runs first)."""

    def compute() -> NeighbourPass:
        targets = _targets(ctx)
        n, dim = targets.shape
        seed = int(getattr(ctx.options, "seed", 0))
        recall_rows = _seeded_rows(n, getattr(ctx.options, "recall_sample", 1000), seed)
        threshold = float(ctx.threshold("near_duplicate_cosine", NEAR_DUPLICATE_COSINE))
        return neighbour_pass(
            targets,
            _groups(ctx),
            recall_rows=recall_rows,
            k=min(max(RECALL_KS), n),
            near_rows=near_query_rows(n, dim, NEAR_SAMPLE, seed, recall_rows),
            near_threshold=threshold,
        )

    return ctx.cached("neighbour_pass", compute)


def check_oracle_recall(ctx: CheckContext) -> CheckResult:
    options = ctx.options
    targets = _targets(ctx)
    if len(targets) == 0:
        raise CheckSkipped(f"dataset '{ctx.name}' has no target vectors")
    m = oracle_recall(
        targets,
        sample_size=getattr(options, "recall_sample", 1000),
        factory=getattr(options, "index_factory", "Flat") or "Flat",
        nprobe=getattr(options, "nprobe", None),
        seed=int(getattr(options, "seed", 0)),
        duplicate_groups=_groups(ctx),
        neighbours=_neighbours(ctx),
    )
    # Gate on duplicate-aware recall: exact duplicates tie with the query and make strict
    # recall@1/5 depend on tie order, which says nothing about the index or the space.
    # Duplicates are the duplicates check's finding, gated there.
    gates = [
        make_gate(ctx, "oracle_recall", "dup_aware_recall_at_5", m["dup_aware_recall_at_5"]),
        make_gate(ctx, "oracle_recall", "dup_aware_recall_at_1000", m["dup_aware_recall_at_1000"]),
    ]
    return from_gates("oracle_recall", m, gates, recall_message(m))


def recall_message(m: dict[str, Any]) -> str:
    """One line that says what the recall numbers mean."""
    r1, d1 = m["recall_at_1"], m["dup_aware_recall_at_1"]
    share = m["exact_duplicate_share"]
    parts = [f"recall@1 = {r1:.3f}"]
    if d1 - r1 > 1e-9:
        parts.append(
            f"because {share:.1%} of targets are exact duplicates "
            f"(duplicate-aware recall@1 = {d1:.3f})"
        )
    elif share > 0:
        parts.append(f"({share:.1%} of targets are exact duplicates)")
    if m["index_kind"] == "approximate":
        err = m["index_error_at_5"]
        parts.append(
            f"; {m['index_factory']} (nprobe {m.get('nprobe')}) loses {err:.3f} of "
            f"recall@5 against exact search (exact recall@5 = "
            f"{m['exact_recall_at_5']:.3f})"
        )
    else:
        parts.append(
            f"; exact search, recall@5 = {m['recall_at_5']:.3f}, recall@1000 = "
            f"{m['recall_at_1000']:.3f}"
        )
    return " ".join(parts).replace(" ;", ";")


def check_duplicates(ctx: CheckContext) -> CheckResult:
    targets = _targets(ctx)
    if len(targets) == 0:
        raise CheckSkipped(f"dataset '{ctx.name}' has no target vectors")
    m = find_duplicates(
        targets,
        ctx.dataset.target_texts,
        near_threshold=float(ctx.threshold("near_duplicate_cosine", NEAR_DUPLICATE_COSINE)),
        seed=int(getattr(ctx.options, "seed", 0)),
        duplicate_groups=_groups(ctx),
        neighbours=_neighbours(ctx),
    )
    details = m.pop("details")
    near_ci = (
        None
        if m["near_duplicate_exhaustive"]
        else (m["near_duplicate_share_ci_low"], m["near_duplicate_share_ci_high"])
    )
    gates = [
        make_gate(ctx, "duplicates", "exact_duplicate_share", m["exact_duplicate_share"]),
        make_gate(ctx, "duplicates", "near_duplicate_share", m["near_duplicate_share"], ci=near_ci),
    ]
    return from_gates("duplicates", m, gates, duplicates_message(m), details)


def duplicates_message(m: dict[str, Any]) -> str:
    text = (
        f"{m['exact_duplicate_share']:.2%} of targets repeat an earlier vector exactly "
        f"({m['exact_duplicate_groups']} groups, largest {m['largest_exact_group']}); "
        f"{m['near_duplicate_share']:.2%} more are near-duplicates (cosine >= "
        f"{m['near_duplicate_threshold']}"
    )
    text += (
        ")"
        if m["near_duplicate_exhaustive"]
        else (
            f", estimated from {m['near_duplicate_queries']} rows, 95 % CI "
            f"{m['near_duplicate_share_ci_low']:.2%}–{m['near_duplicate_share_ci_high']:.2%})"
        )
    )
    if "duplicate_text_share" in m:
        text += f"; {m['duplicate_text_share']:.2%} of texts repeat an earlier text"
        if m["duplicate_text_vector_mismatch_share"] > 0:
            text += (
                f", {m['duplicate_text_vector_mismatch_share']:.2%} with a different "
                "vector (texts and vectors may be misaligned)"
            )
    return text
