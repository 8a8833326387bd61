"""Benchmark: the suite against the speed of the hardware, goals 1-4 of issue 14 side by side.

Writes its own origin-format sequences file (``--n`` rows of (5 + 1) x 768 float32, the
generator of ``bench_coherence.py``), warms the page cache, then times in fresh child
processes, whole process each (interpreter start and imports included), ``--repeats``
rounds alternating each measurement with its reference, and prints medians and ratios:

1. per-row checks: ``pytest quality_tests -m "not smoke" -k "not oracle_recall and not
   duplicates"`` vs ``cat FILE > /dev/null``;
2. the neighbour work (``oracle_recall`` + ``duplicates`` through the check API: targets,
   exact-duplicate groups, the one neighbour pass) vs bare FAISS ``IndexFlatIP`` add +
   search k=1000 on the same 1,000 queries, loading the targets included;
3. the whole fast suite (``-m "not smoke"``) vs that bare FAISS search;
4. smoke training through ``run_smoke`` (split, load, validation checks, back-off,
   checkpoint round trip, trivial predictors) vs a bare PyTorch AdamW loop over the same
   number of train sequences x epochs at batch 512, same model, data in memory; the
   ratio is per sequence-epoch.

Peak RSS (``ru_maxrss`` from ``wait4``) of every child is printed too. Load from other
processes skews both sides of a ratio alike only when they alternate, as here; absolute
seconds do not.

    python bench/bench_suite.py                   # --n 50000, 3 repeats
    python bench/bench_suite.py --n 726014 --dir /big/disk --keep
    python bench/bench_suite.py --path FILE --skip-smoke
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

DEFAULT_N = 50_000
RECALL_QUERIES = 1000
RECALL_K = 1000
SMOKE_EPOCHS = 3
BATCH = 512

PER_ROW_TESTS = ["-m", "not smoke", "-k", "not oracle_recall and not duplicates"]
FAST_SUITE = ["-m", "not smoke"]


# ------------------------------------------------------------------ child processes
def child_neighbours(path: Path) -> dict[str, Any]:
    from lvmqa.checks import RunOptions, Session, run_check
    from lvmqa.registry import DatasetEntry, Registry

    session = Session(Registry(None, {}, {"b": DatasetEntry("b", path)}), RunOptions(debug=True))
    ctx = session.context("b")
    recall = run_check(ctx, "oracle_recall")
    dups = run_check(ctx, "duplicates")
    return {
        "recall_at_1": recall.metrics.get("recall_at_1"),
        "near_duplicate_share": dups.metrics.get("near_duplicate_share"),
    }


def child_faiss(path: Path) -> dict[str, Any]:
    import faiss

    from lvmqa.io import open_dataset
    from lvmqa.retrieval import _seeded_rows

    targets = open_dataset(path).targets_matrix()
    index = faiss.IndexFlatIP(targets.shape[1])
    index.add(targets)
    rows = _seeded_rows(len(targets), RECALL_QUERIES, 0)
    _, ids = index.search(targets[rows], min(RECALL_K, len(targets)))
    return {"recall_at_1000": float((ids == rows[:, None]).any(axis=1).mean())}


def child_smoke(path: Path) -> dict[str, Any]:
    from lvmqa import smoke
    from lvmqa.io import open_dataset

    config = smoke.TrainConfig(epochs=SMOKE_EPOCHS, batch_size=BATCH, device="cpu")
    run = smoke.run_smoke(open_dataset(path), config)
    # The bare loop trains every fold's sequences: one fold on a file above the sample cap.
    n_train = int(run.metrics["n_train"]) * len(run.models)
    return {"n_train": n_train, "epochs": SMOKE_EPOCHS, "folds": len(run.models)}


def child_bare_loop(n_train: int) -> dict[str, Any]:
    """The reference: the same model and optimiser over in-memory data, nothing else."""
    import torch
    from torch.nn import functional as F  # noqa: N812

    from lvmqa import smoke

    torch.set_num_threads(smoke.SMOKE_CPU_THREADS)
    torch.manual_seed(0)
    contexts = F.normalize(torch.randn(n_train, 5, 768), dim=-1)
    targets = F.normalize(torch.randn(n_train, 768), dim=-1)
    model = smoke.build_amn(smoke.AmnConfig(768))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    for _ in range(SMOKE_EPOCHS):
        order = torch.randperm(n_train)
        for start in range(0, n_train, BATCH):
            batch = order[start : start + BATCH]
            loss = F.mse_loss(model(contexts[batch]), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return {"n_train": n_train}


CHILDREN: dict[str, Callable[[str], dict[str, Any]]] = {
    "neighbours": lambda arg: child_neighbours(Path(arg)),
    "faiss": lambda arg: child_faiss(Path(arg)),
    "smoke": lambda arg: child_smoke(Path(arg)),
    "bare_loop": lambda arg: child_bare_loop(int(arg)),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_main(kind: str, arg: str) -> None:
    result = CHILDREN[kind](arg)
    result["rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


# ---------------------------------------------------------------------- the parent
def timed(argv: list[str]) -> dict[str, Any]:
    """Wall time of a whole child process, its peak RSS and its last JSON line (if any)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak RSS
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode not in (0, 1):  # 1: some quality gate failed, a valid run
        raise SystemExit(f"{argv[:4]} failed ({proc.returncode}):\n{stdout}\n{stderr}")
    result: dict[str, Any] = {"wall_s": wall, "rss_mb": usage.ru_maxrss / 1024}
    lines = [line for line in stdout.strip().splitlines() if line.startswith("{")]
    if lines:
        result.update(json.loads(lines[-1]))
    return result


def child(kind: str, arg: str | Path) -> list[str]:
    return [sys.executable, __file__, "--child", kind, str(arg)]


def pytest_run(path: Path, selection: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "pytest", "quality_tests", "-q", "--no-header",
        "-p", "no:cacheprovider", f"--dataset={path}", *selection,
    ]  # fmt: skip


def median_of(rounds: list[dict[str, Any]], key: str = "wall_s") -> float:
    values = [r[key] for r in rounds if key in r]
    return statistics.median(values) if values else float("nan")


def compare(
    name: str, subject: list[str], reference: list[str], repeats: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    ours: list[dict[str, Any]] = []
    refs: list[dict[str, Any]] = []
    for _ in range(repeats):  # alternate, so that load from elsewhere hits both alike
        ours.append(timed(subject))
        refs.append(timed(reference))
    print(f"  {name}: {[round(r['wall_s'], 2) for r in ours]} vs "
          f"{[round(r['wall_s'], 2) for r in refs]}", flush=True)  # fmt: skip
    return ours, refs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="sequences in the file")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the file")
    parser.add_argument("--path", type=Path, default=None, help="reuse this file (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per measurement")
    parser.add_argument("--skip-smoke", action="store_true", help="goals 1-3 only")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(*args.child)
        return

    import bench_coherence

    folder = Path(tempfile.mkdtemp(dir=args.dir, prefix="lvmqa-suite-"))
    path = args.path or folder / f"suite-{args.n}.npz"
    if args.path is None:
        print(f"writing {path} ({bench_coherence.file_bytes(args.n) / 1e9:.2f} GB) ...", flush=True)
        bench_coherence.write_sequences(path, args.n)
    try:
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm
        cat = ["sh", "-c", f"cat '{path}' > /dev/null"]
        faiss = child("faiss", path)
        rows: list[tuple[str, list[dict[str, Any]], str, list[dict[str, Any]], str]] = []
        print(f"timing, {args.repeats} rounds each (seconds, whole process):", flush=True)
        ours, refs = compare("1 per-row checks", pytest_run(path, PER_ROW_TESTS), cat, args.repeats)
        rows.append(("1 per-row checks (pytest)", ours, "cat FILE", refs, "<= 1.5"))
        ours, refs = compare("2 neighbour work", child("neighbours", path), faiss, args.repeats)
        rows.append(("2 oracle_recall + duplicates", ours, "FAISS flat k=1000", refs, "<= 0.5"))
        faiss_runs = refs
        ours = [timed(pytest_run(path, FAST_SUITE)) for _ in range(args.repeats)]
        print(f"  3 fast suite: {[round(r['wall_s'], 2) for r in ours]}", flush=True)
        rows.append(
            ("3 fast suite -m 'not smoke'", ours, "FAISS flat k=1000", faiss_runs, "<= 1.0")
        )
        smoke_note = ""
        if not args.skip_smoke:
            first = timed(child("smoke", path))
            n_train = int(first["n_train"])
            ours, refs = compare("4 smoke", child("smoke", path), child("bare_loop", n_train),
                                 max(1, args.repeats - 1))  # fmt: skip
            ours.insert(0, first)
            refs.insert(0, timed(child("bare_loop", n_train)))
            rows.append(("4 smoke training", ours, "bare AdamW loop", refs, "<= 1.2"))
            smoke_note = f" (smoke: {n_train:,} train sequences x {SMOKE_EPOCHS} epochs)"
        print()
        from lvmqa.io import open_dataset

        n = open_dataset(path).n
        print(f"n = {n:,} sequences, {path.stat().st_size / 1e9:.2f} GB{smoke_note}")
        print("| goal | lvmqa s | RSS MB | reference | ref s | RSS MB | ratio | target |")
        print("|---|---:|---:|---|---:|---:|---:|---|")
        for name, ours, ref_name, refs, target in rows:
            a, b = median_of(ours), median_of(refs)
            ra, rb = median_of(ours, "rss_mb"), median_of(refs, "rss_mb")
            print(f"| {name} | {a:.2f} | {ra:.0f} | {ref_name} | {b:.2f} | {rb:.0f} | "
                  f"{a / b:.2f}x | {target} |")  # fmt: skip
    finally:
        if args.path is None and not args.keep:
            path.unlink(missing_ok=True)
            folder.rmdir()


if __name__ == "__main__":
    main()
