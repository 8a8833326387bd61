"""Peak memory and time of the norms pass as N grows: memory must stay flat.

Writes origin-format, uncompressed sequences files (``context_sequences`` (N, 5, 768)
and ``target_vectors`` (N, 768) float32, streamed with ``NpzWriter.write_rows``), then
runs ``norm_statistics(open_dataset(path))`` in a fresh child process per run and reads
that child's peak RSS from ``os.wait4`` (the per-child form of ``getrusage``'s
``ru_maxrss``). A plain sequential read of the same file, also in a child, gives the
I/O floor; the ratio says how much the norms arithmetic costs on top of reading.

Two layouts:

* ``vectors`` - only the vector members: the streaming claim (RSS independent of N).
* ``origin``  - plus what the origin's per-sequence files carry: ``target_texts``,
  ``context_texts`` (N, 5), per-sequence ``metadata`` dicts and scalar keys. These are
  pickles: lvmqa reads them whole, so they add memory in proportion to N.

Vectors are tiles of a pool of random unit vectors: the bytes read and the arithmetic
are those of real data, and writing 4 GB stays fast. Files go to ``--workdir`` (its free
space is checked first) and are deleted afterwards unless ``--keep``.

Run: ``python bench/bench_norms_memory.py`` (defaults: 50k and 200k sequences, both
layouts, median of 3 runs).
"""

from __future__ import annotations

import argparse
import json
import os
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

C, D = 5, 768
POOL = 8192
READ_BLOCK = 64 * 1024 * 1024


def unit_pool(seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((POOL, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def context_blocks(pool: np.ndarray, n: int, rows: int = 4096) -> Iterator[np.ndarray]:
    for start in range(0, n, rows):
        k = min(rows, n - start)
        idx = (np.arange(start, start + k)[:, None] + np.arange(C)[None, :]) % POOL
        yield pool[idx]


def target_blocks(pool: np.ndarray, n: int, rows: int = 4096) -> Iterator[np.ndarray]:
    for start in range(0, n, rows):
        yield pool[(np.arange(start, min(start + rows, n)) + C) % POOL]


def chunk_text(i: int) -> str:
    # about 300 characters, the size of a Wikipedia chunk
    return f"Chunk {i}: " + "lorem ipsum dolor sit amet consectetur " * 7


def write_sequences(path: Path, n: int, layout: str) -> None:
    from lvmqa.atomic import atomic_write
    from lvmqa.npzfile import NpzWriter

    pool = unit_pool()
    with atomic_write(path) as handle, NpzWriter(handle) as npz:
        npz.write_rows(
            "context_sequences", (n, C, D), np.dtype(np.float32), context_blocks(pool, n)
        )
        npz.write_rows("target_vectors", (n, D), np.dtype(np.float32), target_blocks(pool, n))
        if layout == "origin":
            texts = [chunk_text(i) for i in range(n + C)]  # shared, like the bank's texts
            target_texts = np.empty(n, dtype=object)
            target_texts[:] = texts[C:]
            context_texts = np.empty((n, C), dtype=object)
            for j in range(C):
                context_texts[:, j] = texts[j : n + j]
            metadata = np.empty(n, dtype=object)
            metadata[:] = [
                {
                    "article_index": i // 40,
                    "last_context_article": i // 40,
                    "target_chunk_index": i % 40 + C,
                    "target_cpe_id": f"cpe-{i}",
                    "crosses_article": False,
                }
                for i in range(n)
            ]
            npz.write_array("target_texts", target_texts)
            npz.write_array("context_texts", context_texts)
            npz.write_array("metadata", metadata)
            for key, value in (
                ("context_length", C),
                ("num_sequences", n),
                ("vector_dim", D),
                ("source_dataset", "synthetic_bank.npz"),
            ):
                npz.write_array(key, np.array(value))


# ------------------------------------------------------------------------ children
CHILD_NORMS = """
import json, sys, time
t0 = time.perf_counter()
from lvmqa.io import open_dataset
from lvmqa.metrics import norm_statistics
t1 = time.perf_counter()
ds = open_dataset(sys.argv[1])
t2 = time.perf_counter()
stats = norm_statistics(ds)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "pass_s": t3 - t2,
                  "n": ds.n, "target_norm_mean": stats["target_norm_mean"]}))
"""

CHILD_IMPORT_ONLY = """
import json
from lvmqa.io import open_dataset
from lvmqa.metrics import norm_statistics
print(json.dumps({}))
"""

CHILD_READ = """
import json, sys, time
block = bytearray(int(sys.argv[2]))
t0 = time.perf_counter()
total = 0
with open(sys.argv[1], "rb", buffering=0) as handle:
    while got := handle.readinto(block):
        total += got
print(json.dumps({"read_s": time.perf_counter() - t0, "bytes": total}))
"""


def run_child(code: str, *args: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; its JSON output plus its own peak RSS and time."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert proc.stdout is not None
        out = proc.stdout.read()
        # wait4, not wait: it returns this child's own rusage (peak RSS of this run only)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"child failed ({proc.returncode}): {errors.read()[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports kilobytes
    return result


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def measure(path: Path, runs: int) -> dict[str, Any]:
    # One plain read first, so both measurements start from a warm page cache; then
    # norms and reads alternate, so a noisy neighbour slows both alike.
    run_child(CHILD_READ, str(path), str(READ_BLOCK))
    norms: list[dict[str, Any]] = []
    reads: list[dict[str, Any]] = []
    for _ in range(runs):
        norms.append(run_child(CHILD_NORMS, str(path)))
        reads.append(run_child(CHILD_READ, str(path), str(READ_BLOCK)))
    pass_s, read_s = median_of(norms, "pass_s"), median_of(reads, "read_s")
    return {
        "file_gb": path.stat().st_size / 1e9,
        "n": norms[0]["n"],
        "norms_peak_rss_mb": median_of(norms, "peak_rss_mb"),
        "norms_peak_rss_mb_max": max(r["peak_rss_mb"] for r in norms),
        "open_s": median_of(norms, "open_s"),
        "norms_pass_s": pass_s,
        "sequential_read_s": read_s,
        "read_gb_per_s": path.stat().st_size / 1e9 / read_s,
        "pass_over_read": pass_s / read_s,
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument(
        "--layouts", nargs="+", default=["vectors", "origin"], choices=["vectors", "origin"]
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()

    need = max(args.sizes) * (C + 1) * D * 4 * 1.1 + 2e9
    free = shutil.disk_usage(args.workdir).free
    if free < need:
        sys.exit(f"{args.workdir}: {free / 1e9:.1f} GB free, need {need / 1e9:.1f} GB")
    baseline = run_child(CHILD_IMPORT_ONLY)
    print(f"interpreter + lvmqa imports alone: peak RSS {baseline['peak_rss_mb']:.0f} MB")
    results: list[dict[str, Any]] = []
    header = (
        f"{'layout':8} {'N':>8} {'file GB':>8} {'peak RSS MB':>12} {'open s':>7} "
        f"{'norms s':>8} {'read s':>7} {'GB/s':>6} {'norms/read':>10}"
    )
    print(header)
    for layout in args.layouts:
        for n in args.sizes:
            path = args.workdir / f"lvmqa-bench-{layout}-{n}.npz"
            written = time.perf_counter()
            write_sequences(path, n, layout)
            write_s = time.perf_counter() - written
            try:
                row = {"layout": layout, "write_s": write_s, **measure(path, args.runs)}
            finally:
                if not args.keep:
                    path.unlink(missing_ok=True)
            results.append(row)
            print(
                f"{layout:8} {n:>8} {row['file_gb']:>8.2f} {row['norms_peak_rss_mb']:>12.0f} "
                f"{row['open_s']:>7.2f} {row['norms_pass_s']:>8.2f} "
                f"{row['sequential_read_s']:>7.2f} {row['read_gb_per_s']:>6.2f} "
                f"{row['pass_over_read']:>10.2f}",
                flush=True,
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"import_only_peak_rss_mb": baseline["peak_rss_mb"], "results": results}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
