"""Throughput of the smoke training (AMN) on 768-D data, data loading included.

Writes a synthetic random-walk bank (articles drifting by one shared rotation, see
`lvmqa.smoke.random_walk_articles`) to a temporary file, then times the whole smoke
pipeline on it (open, split, load into one device tensor, train, checkpoint round trip)
and reports the median of `--repeats` runs. Validation is checked `--checks-per-epoch` times per
epoch, as in the smoke check; with `--n` at or above the file's size there is one fold.

    python bench/bench_smoke.py                        # CPU: 50k sequences, 5 epochs
    python bench/bench_smoke.py --n 277078 --device cuda
      # GPU target: 5 epochs over 277,078 sequences (the origin's filtered set) in < 60 s.
      # Needs ~5.1 GB of GPU memory for the one data tensor (277k x 6 x 768 float32).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lvmqa import smoke  # noqa: E402 - after the path tweak, so the checkout is benchmarked
from lvmqa.io import open_dataset  # noqa: E402

GPU_TARGET_SEQUENCES = 277_078
GPU_TARGET_SECONDS = 60.0
WINDOWS_PER_ARTICLE = 50


def write_bank(path: Path, n_sequences: int, dim: int, seed: int) -> int:
    """A bank whose article windows number at least `n_sequences`; returns that number."""
    chunks = WINDOWS_PER_ARTICLE + 5
    n_articles = -(-n_sequences // WINDOWS_PER_ARTICLE)
    vectors, articles, chunk_ids = smoke.random_walk_articles(n_articles, chunks, dim, seed=seed)
    np.savez(
        path,
        vectors=vectors,
        article_indices=articles.astype(np.int32),
        chunk_indices=chunk_ids.astype(np.int32),
    )
    return n_articles * WINDOWS_PER_ARTICLE


def one_run(path: Path, args: argparse.Namespace) -> dict[str, float | str | int]:
    config = smoke.TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        checks_per_epoch=args.checks_per_epoch,
    )
    started = time.perf_counter()
    dataset = open_dataset(path)
    run = smoke.run_smoke(dataset, config, max_sequences=args.n, folds=args.folds)
    wall = time.perf_counter() - started
    m = run.metrics
    # every fold trains its own model; a back-off rung that stopped early is not counted
    trained = int(m["n_train"]) * int(m["epochs"]) * int(m["n_folds"])
    return {
        "wall_s": wall,
        "load_s": float(m["load_seconds"]),
        "train_s": float(m["train_seconds"]),
        "end_to_end_seq_per_s": trained / wall,
        "train_only_seq_per_s": float(m["sequences_per_second"]),
        "device": str(m["device"]),
        "n_train": int(m["n_train"]),
        "n_folds": int(m["n_folds"]),
        "lr": float(m["lr_selected"]),
        "val_cosine_best": float(m["val_cosine_best"]),
        "mean_context_cosine": float(m["baseline_mean_context_cosine"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="sequences (default 50,000)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--checks-per-epoch",
        type=int,
        default=smoke.DEFAULT_CHECKS_PER_EPOCH,
        help="validation checks per epoch (each is a forward pass over the val rows)",
    )
    parser.add_argument("--folds", type=int, default=None, help="default: the budget rule")
    args = parser.parse_args(argv)

    import torch

    device = smoke.resolve_device(args.device)
    print(f"device: {device} (torch {torch.__version__}, {torch.get_num_threads()} CPU threads)")
    if device.startswith("cuda"):
        print(f"gpu: {torch.cuda.get_device_name(0)}")
    with tempfile.TemporaryDirectory(prefix="lvmqa-bench-") as folder:
        path = Path(folder) / "walk.bank.npz"
        started = time.perf_counter()
        available = write_bank(path, args.n, args.dim, args.seed)
        print(
            f"data: {available} windows of D={args.dim} written in "
            f"{time.perf_counter() - started:.1f} s; training on up to {args.n}"
        )
        runs = []
        for i in range(args.repeats):
            result = one_run(path, args)
            runs.append(result)
            print(
                f"run {i + 1}: {result['wall_s']:.2f} s wall (load {result['load_s']:.2f} s, "
                f"train {result['train_s']:.2f} s), {result['end_to_end_seq_per_s']:.0f} seq/s "
                f"end to end, {result['train_only_seq_per_s']:.0f} seq/s training; "
                f"{result['n_folds']} fold(s) at lr {result['lr']:.0e}; val cosine "
                f"{result['val_cosine_best']:.3f} vs mean-of-context "
                f"{result['mean_context_cosine']:.3f}"
            )
    wall = statistics.median(float(r["wall_s"]) for r in runs)
    rate = statistics.median(float(r["end_to_end_seq_per_s"]) for r in runs)
    train_rate = statistics.median(float(r["train_only_seq_per_s"]) for r in runs)
    print(
        f"median of {args.repeats}: {wall:.2f} s for {args.epochs} epochs over "
        f"{runs[0]['n_train']} train sequences; {rate:.0f} seq/s end to end, "
        f"{train_rate:.0f} seq/s training only ({device})"
    )
    if device.startswith("cuda"):
        projected = GPU_TARGET_SEQUENCES * 5 / rate
        verdict = "meets" if projected < GPU_TARGET_SECONDS else "MISSES"
        print(
            f"projected 5 epochs over {GPU_TARGET_SEQUENCES:,} sequences: {projected:.1f} s "
            f"({verdict} the < {GPU_TARGET_SECONDS:.0f} s target)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
