"""Cosines of consecutive targets in an arbitrary row order, by an external bucket sort.

Article-order coherence needs cos(target a, target b) for rows a, b that are neighbours in
(article, chunk) order. In a shuffled file those rows lie anywhere, and gathering them
reads most of the targets again for every block of pairs. Here the targets are read ONCE,
in file order; each block's rows are appended to the bucket of their rank (rank // B, a
region of one temporary file); then each bucket is read back, put in rank order in
memory, and its consecutive cosines computed. Memory stays at one block plus one bucket;
the temporary file (the size of the ranked targets) is unlinked from the start.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import TYPE_CHECKING

import numpy as np

from lvmqa.npzfile import pread_full

if TYPE_CHECKING:
    from lvmqa.io import Dataset

BUCKET_BYTES = 32 << 20  # one bucket of targets in memory at a time
READ_BYTES = 32 << 20  # targets read per block of the scan
SPACE_MARGIN = 1.2  # free disk wanted, as a multiple of the temporary file


def spill_fits(ds: Dataset, rows: int, folder: str | None = None) -> bool:
    """True when the temporary file for ``rows`` targets fits on the temp disk."""
    need = rows * ds.dim * 4 * SPACE_MARGIN
    return bool(shutil.disk_usage(folder or tempfile.gettempdir()).free > need)


def consecutive_cosines(
    ds: Dataset,
    rank: np.ndarray,
    norms: np.ndarray,
    *,
    folder: str | None = None,
    bucket_bytes: int = BUCKET_BYTES,
    read_bytes: int = READ_BYTES,
) -> np.ndarray:
    """cos(row of rank i, row of rank i + 1) for i = 0 .. R - 2, as float32.

    ``rank[row]`` is the row's position in the order (0 .. R - 1, each once) or -1 for
    rows outside it; ``norms[row]`` its target's norm (NaN when zero / non-finite, which
    gives NaN cosines).
    """
    rank = np.asarray(rank, dtype=np.int64)
    total = int((rank >= 0).sum())
    if total < 2:
        return np.empty(0, dtype=np.float32)
    dim = ds.dim
    row_bytes = dim * 4
    bucket_rows = max(2, bucket_bytes // row_bytes)
    n_buckets = -(-total // bucket_rows)
    fill = np.zeros(n_buckets, dtype=np.int64)  # rows written to each bucket so far
    arrived = np.empty(total, dtype=np.int64)  # slot -> rank, in arrival order
    step = max(1, read_bytes // row_bytes)
    block = np.empty((step, dim), dtype=np.float32)
    grouped = np.empty_like(block)
    with tempfile.TemporaryFile(dir=folder) as spill:
        fd = spill.fileno()
        for start in range(0, ds.n, step):
            stop = min(start + step, ds.n)
            ranks = rank[start:stop]
            inside = np.flatnonzero(ranks >= 0)
            if inside.size == 0:
                continue
            targets = ds.target_rows_into(start, block[: stop - start])
            bucket = ranks[inside] // bucket_rows
            by_bucket = np.argsort(bucket, kind="stable")
            chosen, bucket = inside[by_bucket], bucket[by_bucket]
            # mode="clip": indexes are valid, and with ``out`` the default mode buffers (3x).
            np.take(targets, chosen, axis=0, out=grouped[: chosen.size], mode="clip")
            edges = np.flatnonzero(np.diff(bucket)) + 1
            for first, last in zip(np.r_[0, edges], np.r_[edges, chosen.size], strict=True):
                b = int(bucket[first])
                slot = b * bucket_rows + int(fill[b])
                arrived[slot : slot + last - first] = ranks[chosen[first:last]]
                _pwrite_all(fd, _bytes(grouped[first:last]), slot * row_bytes)
                fill[b] += last - first
        return _bucket_cosines(fd, arrived, rank, norms, bucket_rows, dim)


def _bucket_cosines(
    fd: int,
    arrived: np.ndarray,
    rank: np.ndarray,
    norms: np.ndarray,
    bucket_rows: int,
    dim: int,
) -> np.ndarray:
    """Read each bucket back, sort it by rank, and take consecutive cosines."""
    total = arrived.size
    out = np.full(total - 1, np.nan, dtype=np.float32)
    norm_by_rank = np.empty(total, dtype=np.float32)
    norm_by_rank[rank[rank >= 0]] = norms[rank >= 0]
    raw = np.empty((bucket_rows, dim), dtype=np.float32)
    ordered = np.empty((bucket_rows + 1, dim), dtype=np.float32)  # + the previous last row
    last: int | None = None  # where the previous bucket's last row sits in ``ordered``
    for first in range(0, total, bucket_rows):
        count = min(bucket_rows, total - first)
        _pread_all(fd, _bytes(raw[:count]), first * dim * 4)
        perm = np.argsort(arrived[first : first + count])
        lead = 0 if last is None else 1
        if last is not None:
            ordered[0] = ordered[last]
        np.take(raw[:count], perm, axis=0, out=ordered[lead : lead + count], mode="clip")
        rows = ordered[: lead + count]
        at = first - lead  # rank of rows[0]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            dots = np.einsum("nd,nd->n", rows[:-1], rows[1:])
            scale = norm_by_rank[at : at + len(dots)] * norm_by_rank[at + 1 : at + 1 + len(dots)]
            out[at : at + len(dots)] = dots / scale
        last = lead + count - 1
    return out


def _bytes(rows: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, for os.pwrite / os.preadv."""
    return rows.reshape(-1).view(np.uint8).data


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


def _pread_all(fd: int, into: memoryview, offset: int) -> None:
    if pread_full(fd, into, offset) < len(into):
        raise OSError(f"temporary spill file is short at offset {offset}")
