"""Benchmark: the coherence + sequence-integrity pass vs a plain sequential read.

Generates an origin-format sequences file (``context_sequences`` (N, 5, 768) and
``target_vectors`` (N, 768) float32, uncompressed npz, written with a streaming npz
writer), then times in separate child processes, each after evicting the file from the
page cache (so both read from disk):

(a) a plain sequential read of the whole file in 64 MB blocks;
(b) ``coherence`` + ``coherence_drift`` + ``sequence_integrity`` through the Dataset /
    CheckContext API; the drift check compares with a second, smaller clean sample
    (``<file>-baseline.npz``, 50,000 rows, written beside it), whose pass is timed too.

It reports wall time, peak RSS of each child (``ru_maxrss``) and the ratio (b)/(a).
The goals: peak RSS < 2 GB and (b) < 2x (a) at N = 726,014 (the 790k file, 13.4 GB).

With ``--warm`` the file is not evicted: after a first (warming) round, ``--repeat R``
more rounds are timed with the file in the page cache and the medians are reported
(the goal applies to both cold and cached files). ``--path FILE`` reuses a file
written earlier with ``--keep`` (it is then kept).

``--shuffled`` writes the same windows in random order: no window slides over the rows,
so the pass computes every context cosine from the vectors (its slow path).

Run: ``python bench/bench_coherence.py [--n 726014] [--dir /tmp] [--keep] [--warm]
[--repeat 3] [--path FILE] [--shuffled]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

FULL_N = 726_014
CONTEXT = 5
DIM = 768
ARTICLE_CHUNKS = 30  # rows per synthetic article
BLOCK_BYTES = 64 * 1024 * 1024
BASELINE_N = 50_000  # rows of the baseline file the drift check compares against


def file_bytes(n: int) -> int:
    return n * (CONTEXT + 1) * DIM * 4


def make_bank(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Articles as random walks on the sphere (cumulated noise, normalised), in order."""
    rng = np.random.default_rng(seed)
    articles = -(-rows // ARTICLE_CHUNKS)
    bank = np.empty((articles * ARTICLE_CHUNKS, DIM), dtype=np.float32)
    step = np.float32(0.7 / np.sqrt(DIM))
    per_block = 2048  # articles generated at a time
    for first in range(0, articles, per_block):
        count = min(per_block, articles - first)
        walk = rng.standard_normal((count, ARTICLE_CHUNKS, DIM), dtype=np.float32) * step
        walk[:, 0] = rng.standard_normal((count, DIM), dtype=np.float32)
        walk[:, 0] /= np.linalg.norm(walk[:, 0], axis=1, keepdims=True)
        np.cumsum(walk, axis=1, out=walk)
        walk /= np.linalg.norm(walk, axis=2, keepdims=True)
        bank[first * ARTICLE_CHUNKS : (first + count) * ARTICLE_CHUNKS] = walk.reshape(-1, DIM)
    article = np.repeat(np.arange(articles, dtype=np.int32), ARTICLE_CHUNKS)
    return bank[:rows], article[:rows]


def baseline_path(path: Path) -> Path:
    """The baseline file of a benchmark file: a second, smaller clean sample."""
    return path.with_name(f"{path.stem}-baseline.npz")


def baseline_rows(n: int) -> int:
    return min(n, BASELINE_N)


def write_sequences(path: Path, n: int, *, shuffled: bool = False, seed: int = 0) -> None:
    """File-order windows over the bank (the origin's builder), streamed member by member.

    ``shuffled`` writes the same windows in a random order (a shuffled training file):
    no window then slides over the rows, so every context cosine is computed from the
    context vectors (the pass's slow path).
    """
    from lvmqa.npzfile import NpzWriter

    bank, article = make_bank(n + CONTEXT, seed)
    rows = max(1, BLOCK_BYTES // ((CONTEXT + 1) * DIM * 4))
    order = np.random.default_rng(1).permutation(n) if shuffled else np.arange(n)
    offsets = np.arange(CONTEXT)

    def contexts() -> Iterator[np.ndarray]:
        for s in range(0, n, rows):
            first = order[s : s + rows]
            yield bank[first[:, None] + offsets[None, :]]

    def targets() -> Iterator[np.ndarray]:
        for s in range(0, n, rows):
            yield bank[CONTEXT + order[s : s + rows]]

    with open(path, "wb") as handle, NpzWriter(handle) as npz:
        npz.write_rows("context_sequences", (n, CONTEXT, DIM), np.dtype(np.float32), contexts())
        npz.write_rows("target_vectors", (n, DIM), np.dtype(np.float32), targets())
        npz.write_array("article_ids", article[CONTEXT + order])
        npz.write_array(
            "metadata", np.array({"context_length": CONTEXT, "num_sequences": n}, dtype=object)
        )


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache so the next read comes from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ child processes
def child_read(path: Path) -> dict[str, float]:
    buffer = bytearray(BLOCK_BYTES)
    view = memoryview(buffer)
    started = time.perf_counter()
    total = 0
    with open(path, "rb", buffering=0) as handle:
        while got := handle.readinto(view):
            total += got
    return {"wall_s": time.perf_counter() - started, "bytes": total}


def child_checks(path: Path) -> dict[str, object]:
    from lvmqa.checks import RunOptions, Session, run_check
    from lvmqa.coherence import coherence_pass
    from lvmqa.registry import DatasetEntry, Registry

    started = time.perf_counter()
    entries = {
        "bench": DatasetEntry("bench", path, baseline="baseline"),
        "baseline": DatasetEntry("baseline", baseline_path(path)),
    }
    session = Session(Registry(None, {}, entries), RunOptions(debug=True))
    ctx = session.context("bench")
    ds = ctx.dataset
    opened = time.perf_counter()
    sliding_share = coherence_pass(ctx).sliding_window_share
    passed = time.perf_counter()
    coherence_pass(ctx.baseline())  # the drift check needs the baseline's pass too
    baseline_passed = time.perf_counter()
    coherence = run_check(ctx, "coherence")
    drift = run_check(ctx, "coherence_drift")
    integrity = run_check(ctx, "sequence_integrity")
    done = time.perf_counter()
    return {
        "wall_s": done - started,
        "open_s": opened - started,
        "pass_s": passed - opened,
        "baseline_pass_s": baseline_passed - passed,
        "statistics_s": done - baseline_passed,
        "n": ds.n,
        "baseline_n": ctx.baseline().dataset.n,
        "sliding_window_share": sliding_share,
        "coherence": coherence.status,
        "integrity": integrity.status,
        "drift": drift.status,
        "file_order_drift_verdict": drift.metrics.get("file_order_drift_verdict"),
        "file_order_mean": coherence.metrics["file_order_mean"],
        "article_order_mean": coherence.metrics["article_order_mean"],
        "crossing_share": integrity.metrics["crossing_share"],
        "ordering_verdict": integrity.metrics["ordering_verdict"],
    }


def run_child(kind: str, path: Path, n: int = 0, *, shuffled: bool = False) -> dict[str, Any]:
    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": root,
        "LVMQA_BENCH_N": str(n),
        "LVMQA_BENCH_SHUFFLED": "1" if shuffled else "0",
    }
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(path)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def peak_rss_mb() -> float:
    """This process image's peak RSS (VmHWM; ru_maxrss where /proc is missing).

    ru_maxrss survives exec, so a child would inherit its parent's peak; VmHWM does not.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_main(kind: str, path: Path) -> None:
    if kind == "write":
        shuffled = os.environ.get("LVMQA_BENCH_SHUFFLED") == "1"
        n = int(os.environ["LVMQA_BENCH_N"])
        if n:
            write_sequences(path, n, shuffled=shuffled)
        # The baseline: a second clean sample of the same source (another seed), in the
        # same layout, which the drift check must not flag.
        write_sequences(baseline_path(path), baseline_rows(n or FULL_N), shuffled=shuffled, seed=1)
        print(json.dumps({"written": str(path)}))
        return
    result = child_read(path) if kind == "read" else child_checks(path)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


# ------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=FULL_N, help="number of sequences")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the file")
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    parser.add_argument("--warm", action="store_true", help="do not evict the page cache")
    parser.add_argument("--repeat", type=int, default=1, help="timed rounds (median reported)")
    parser.add_argument("--path", type=Path, default=None, help="reuse this file (kept)")
    parser.add_argument(
        "--shuffled", action="store_true", help="windows in random order (no sliding windows)"
    )
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child[0], Path(args.child[1]))
        return

    if args.path is not None:
        path, keep = args.path, True
        if not path.exists():
            raise SystemExit(f"{path}: no such file")
    else:
        folder = args.dir or Path(tempfile.gettempdir())
        need = file_bytes(args.n)
        free = shutil.disk_usage(folder).free
        if need * 1.1 > free:
            raise SystemExit(
                f"{folder}: {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free; "
                "use --n to choose a smaller size or --dir for another disk"
            )
        name = f"lvmqa-bench-{args.n}{'-shuffled' if args.shuffled else ''}.npz"
        path, keep = folder / name, args.keep
    try:
        if args.path is None:
            started = time.perf_counter()
            run_child("write", path, args.n, shuffled=args.shuffled)  # the parent stays small
            print(
                f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
        elif not baseline_path(path).exists():
            run_child("write", path, 0, shuffled=args.shuffled)  # the baseline only
        if args.warm:  # one untimed round brings the file into the page cache
            for kind in ("read", "checks"):
                run_child(kind, path)
        rounds: dict[str, list[dict[str, Any]]] = {"read": [], "checks": []}
        for _ in range(max(1, args.repeat)):
            for kind in ("read", "checks"):
                if not args.warm:
                    evict(path)
                    evict(baseline_path(path))
                rounds[kind].append(run_child(kind, path))
                print(kind, json.dumps(rounds[kind][-1]), flush=True)

        def median(kind: str, field: str) -> float:
            return float(statistics.median(float(r[field]) for r in rounds[kind]))

        checks = rounds["checks"][-1]
        summary = {
            "n": checks["n"],
            "sliding_window_share": checks["sliding_window_share"],
            "file_gb": path.stat().st_size / 1e9,
            "cache": "warm (cached)" if args.warm else "cold (evicted before each run)",
            "rounds": len(rounds["read"]),
            "read_s": median("read", "wall_s"),
            "checks_s": median("checks", "wall_s"),
            "checks_open_s": median("checks", "open_s"),
            "checks_pass_s": median("checks", "pass_s"),
            "checks_baseline_pass_s": median("checks", "baseline_pass_s"),
            "baseline_n": checks["baseline_n"],
            "file_order_drift_verdict": checks["file_order_drift_verdict"],
            "checks_statistics_s": median("checks", "statistics_s"),
            "ratio": statistics.median(
                float(c["wall_s"]) / float(r["wall_s"])
                for r, c in zip(rounds["read"], rounds["checks"], strict=True)
            ),
            "read_peak_rss_mb": max(float(r["peak_rss_mb"]) for r in rounds["read"]),
            "checks_peak_rss_mb": max(float(r["peak_rss_mb"]) for r in rounds["checks"]),
            "goal": "ratio < 2 and checks_peak_rss_mb < 2048",
        }
        print(json.dumps(summary, indent=2))
    finally:
        if not keep:
            path.unlink(missing_ok=True)
            baseline_path(path).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
