"""Benchmark: oracle recall at the origin's scale (726,014 x 768 float32 targets).

Generates seeded random unit vectors in chunks into a ``.npy`` memory map under a temp
folder, then, each in a fresh subprocess (so peak RSS is its own):

- ``lvmqa.retrieval.oracle_recall`` (exact index, 1000 queries, recall@1/5/1000, including
  the exact-duplicate pass over all rows), the search part alone (``exact_knn``: numpy
  matrix product + FAISS ``ResultHeap``), and once ``faiss.knn`` (IndexFlatIP's kernel);
- a plain numpy brute force of the same queries (chunked matmul + argpartition).

Both use the same number of threads. Usage::

    python bench/bench_recall.py            # full size (~2.2 GB of targets on disk)
    python bench/bench_recall.py --n 100000 # quick run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ORIGIN_ROWS = 726_014
GENERATE_ROWS = 65_536


def generate(path: Path, n: int, dim: int, seed: int) -> None:
    """Seeded random unit vectors written block by block (memory stays flat)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    rng = np.random.default_rng(seed)
    for start in range(0, n, GENERATE_ROWS):
        block = rng.standard_normal((min(GENERATE_ROWS, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(block)] = block
    out.flush()
    del out


def query_rows(n: int, queries: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=queries, replace=False))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Reads VmHWM, which belongs to the process's own address space; ru_maxrss would also
    count the parent's memory at fork time (Linux keeps it across exec).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def numpy_topk(xb: np.ndarray, xq: np.ndarray, k: int, block: int = 32_768) -> np.ndarray:
    """Brute force: scores per database block, argpartition, merge the running top k."""
    best_scores = np.full((len(xq), 0), -np.inf, dtype=np.float32)
    best_ids = np.empty((len(xq), 0), dtype=np.int64)
    for start in range(0, len(xb), block):
        scores = xq @ np.asarray(xb[start : start + block]).T
        kk = min(k, scores.shape[1])
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        cand_scores = np.concatenate([best_scores, np.take_along_axis(scores, part, 1)], axis=1)
        cand_ids = np.concatenate([best_ids, part + start], axis=1)
        keep = np.argpartition(-cand_scores, min(k, cand_scores.shape[1]) - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(cand_scores, keep, 1)
        best_ids = np.take_along_axis(cand_ids, keep, 1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, 1)


def child(args: argparse.Namespace) -> None:
    """One engine in a fresh process: prints a JSON line with times and peak RSS."""
    import faiss

    from lvmqa.retrieval import exact_knn, oracle_recall

    faiss.omp_set_num_threads(args.threads)
    baseline_mb = peak_rss_mb()  # interpreter and libraries, before any data is touched
    xb = np.load(args.path, mmap_mode="r")
    rows = query_rows(len(xb), args.queries, args.seed)
    xq = np.ascontiguousarray(xb[rows])
    k = min(1000, len(xb))
    result: dict[str, object] = {"engine": args.child}
    if args.oracle:
        started = time.perf_counter()
        metrics = oracle_recall(xb, sample_size=args.queries, seed=args.seed)
        result["oracle_recall_s"] = time.perf_counter() - started
        result["metrics"] = {k: v for k, v in metrics.items() if "recall" in k}

    def search() -> np.ndarray:
        if args.child == "lvmqa":
            return exact_knn(xb, xq, k)[1]
        return numpy_topk(xb, xq, k)

    search_times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        ids = search()
        search_times.append(time.perf_counter() - started)
    if args.child == "lvmqa" and args.faiss_knn:
        # For reference, once: faiss.knn (what IndexFlatIP.search runs) block by block.
        started = time.perf_counter()
        heap = faiss.ResultHeap(len(xq), k, keep_max=True)
        for start in range(0, len(xb), 65_536):
            block = np.ascontiguousarray(xb[start : start + 65_536])
            dist, found = faiss.knn(xq, block, k, metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result(dist, found + start)
        heap.finalize()
        result["faiss_knn_s"] = time.perf_counter() - started
        result["faiss_knn_same_top5"] = bool((heap.I[:, :5] == ids[:, :5]).all())
    result["search_s"] = search_times
    result["top1_is_self"] = float(np.mean(ids[:, 0] == rows))
    result["top5_checksum"] = int(ids[:, :5].sum())
    result["peak_rss_mb"] = peak_rss_mb()
    result["baseline_rss_mb"] = baseline_mb
    print(json.dumps(result))


def run_child(
    engine: str, path: Path, args: argparse.Namespace, *, oracle: bool = False
) -> dict[str, Any]:
    threads = str(args.threads)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }
    command = [
        sys.executable,
        __file__,
        "--child",
        engine,
        "--path",
        str(path),
        "--queries",
        str(args.queries),
        "--threads",
        threads,
        "--repeats",
        "1",
        "--seed",
        str(args.seed),
        *(["--oracle"] + (["--faiss-knn"] if args.faiss_knn else []) if oracle else []),
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if done.returncode != 0:
        raise SystemExit(f"{engine} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rounded(times: object) -> list[float]:
    return [round(float(t), 2) for t in times]  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=ORIGIN_ROWS, help="target rows")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the search part")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="where to put the .npy")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--faiss-knn", action="store_true", help="also time faiss.knn once (IndexFlatIP's kernel)"
    )
    parser.add_argument("--oracle", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=("lvmqa", "numpy"), help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return

    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="lvmqa-bench-") as folder:
        path = Path(folder) / "targets.npy"
        started = time.perf_counter()
        generate(path, args.n, args.dim, args.seed)
        generate_s = time.perf_counter() - started
        target_mb = args.n * args.dim * 4 / 2**20
        # Engines alternate, one search per fresh process, so that load from anything else
        # on the machine falls on both alike; the first lvmqa run also times oracle_recall.
        first = run_child("lvmqa", path, args, oracle=True)
        runs: dict[str, list[dict[str, Any]]] = {"lvmqa": [first], "numpy": []}
        for _ in range(args.repeats):
            runs["numpy"].append(run_child("numpy", path, args))
            if len(runs["lvmqa"]) < args.repeats:
                runs["lvmqa"].append(run_child("lvmqa", path, args))

    times = {engine: [r["search_s"][0] for r in rs] for engine, rs in runs.items()}
    medians = {engine: statistics.median(ts) for engine, ts in times.items()}
    peaks = {engine: max(r["peak_rss_mb"] for r in rs) for engine, rs in runs.items()}
    report = {
        "rows": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "threads": args.threads,
        "target_array_mb": round(target_mb, 1),
        "generate_s": round(generate_s, 1),
        "oracle_recall": first,
        "search_s": times,
        "search_median_s": medians,
        "peak_rss_mb": peaks,
        "numpy_over_lvmqa": medians["numpy"] / medians["lvmqa"],
        "same_top5": len({r["top5_checksum"] for rs in runs.values() for r in rs}) == 1,
        "load_average": os.getloadavg(),
    }
    rss, base = first["peak_rss_mb"], first["baseline_rss_mb"]
    lines = [
        f"targets: {args.n:,} x {args.dim} float32 = {target_mb:,.0f} MB (generated in "
        f"{generate_s:.1f} s); {args.queries} queries, {args.threads} threads",
        f"oracle_recall (exact, incl. the duplicate pass over all rows): "
        f"{first['oracle_recall_s']:.1f} s; peak RSS {rss:,.0f} MB = "
        f"{rss / target_mb:.2f}x the targets ({base:,.0f} MB interpreter and libraries)",
        f"  metrics: {first['metrics']}",
        f"search, median of {args.repeats} alternating runs: lvmqa exact_knn "
        f"{medians['lvmqa']:.2f} s {_rounded(times['lvmqa'])}; numpy matmul+argpartition "
        f"{medians['numpy']:.2f} s {_rounded(times['numpy'])}; numpy/lvmqa = "
        f"{report['numpy_over_lvmqa']:.2f}x",
        f"peak RSS of a search-only process: lvmqa {peaks['lvmqa']:,.0f} MB, "
        f"numpy {peaks['numpy']:,.0f} MB",
        f"same top-5 ids in every run: {report['same_top5']}; load average at the end "
        f"{report['load_average'][0]:.1f} on {os.cpu_count()} CPUs",
    ]
    if "faiss_knn_s" in first:
        lines.append(
            f"faiss.knn (IndexFlatIP's kernel), same search, once: "
            f"{first['faiss_knn_s']:.2f} s (same top-5: {first['faiss_knn_same_top5']})"
        )
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
