"""Benchmark for a CUDA device (issue 14, goal 5): smoke training and the neighbour pass.

1. Smoke training on CUDA: ``train_amn`` (validation checks and checkpoint selection
   included) for ``--epochs`` x ``--sequences`` at batch 512, next to a bare AdamW loop
   over the same tensors. Target: 5 x 277,078 in <= 10 s (bare: 9.15 s on an H100).
2. The neighbour pass over ``--rows`` targets (726,014: the 790k file): the queries x
   targets product in float32 on the device (torch matmul), blocked over targets, with
   each query's rank counted as in ``lvmqa.retrieval.neighbour_pass``; and FAISS
   ``IndexFlatIP`` on the GPU (k=1000) when this FAISS build sees a GPU.

Without CUDA it prints why and exits 0, so CI on CPU machines can call it.

    python bench/bench_gpu.py [--sequences 277078] [--epochs 5] [--rows 726014]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BATCH = 512
QUERIES = 2000  # the near-duplicate sample, which contains the 1,000 recall queries
K = 1000
BLOCK = 65536


def synchronize() -> None:
    import torch

    torch.cuda.synchronize()


def smoke_on_cuda(sequences: int, epochs: int, repeats: int) -> None:
    import torch
    from torch.nn import functional as F  # noqa: N812

    from lvmqa import smoke

    rng = np.random.default_rng(0)
    n = sequences + sequences // 9  # a 10 % validation split on top
    contexts = F.normalize(torch.from_numpy(rng.standard_normal((n, 5, 768), np.float32)), dim=-1)
    targets = F.normalize(contexts.mean(dim=1) + 0.1 * torch.randn(n, 768), dim=-1)
    contexts, targets = contexts.cuda(), targets.cuda()
    train, val = np.arange(sequences), np.arange(sequences, n)
    config = smoke.TrainConfig(epochs=epochs, device="cuda")

    def lvmqa_run() -> float:
        outcome = smoke.train_amn(contexts, targets, train, val, config)
        return outcome.train_seconds

    def bare_run() -> float:
        torch.manual_seed(0)
        model = smoke.build_amn(smoke.AmnConfig(768)).cuda()
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
        rows = torch.as_tensor(train, device="cuda")
        synchronize()
        started = time.perf_counter()
        for _ in range(epochs):
            order = rows[torch.randperm(len(rows), device="cuda")]
            for start in range(0, len(rows), BATCH):
                batch = order[start : start + BATCH]
                loss = F.mse_loss(model(contexts[batch]), targets[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        synchronize()
        return time.perf_counter() - started

    ours = [lvmqa_run() for _ in range(repeats)]
    bare = [bare_run() for _ in range(repeats)]
    a, b = statistics.median(ours), statistics.median(bare)
    print(f"smoke on CUDA, {epochs} x {sequences:,} sequences at batch {BATCH}: "
          f"train_amn {a:.2f} s, bare AdamW loop {b:.2f} s, ratio {a / b:.2f}x "
          f"(target <= 10 s)")  # fmt: skip


def neighbours_on_cuda(rows: int, repeats: int) -> None:
    import torch

    rng = np.random.default_rng(1)
    targets = torch.from_numpy(rng.standard_normal((rows, 768), np.float32)).cuda()
    targets /= targets.norm(dim=1, keepdim=True)
    query_rows = torch.as_tensor(np.sort(rng.choice(rows, QUERIES, replace=False)), device="cuda")
    queries = targets[query_rows]

    def torch_pass() -> float:
        synchronize()
        started = time.perf_counter()
        own = (queries * queries).sum(dim=1)
        above = torch.zeros(QUERIES, dtype=torch.int64, device="cuda")
        for start in range(0, rows, BLOCK):
            scores = queries @ targets[start : start + BLOCK].T
            above += (scores > own[:, None]).sum(dim=1)
        synchronize()
        return time.perf_counter() - started

    times = [torch_pass() for _ in range(repeats)]
    print(f"neighbour pass on CUDA (torch matmul), {QUERIES:,} queries x {rows:,} targets: "
          f"{statistics.median(times):.3f} s")  # fmt: skip
    try:
        import faiss
    except ImportError:
        print("FAISS GPU: faiss is not installed")
        return
    if faiss.get_num_gpus() == 0:
        print("FAISS GPU: this FAISS build sees no GPU (faiss-cpu); skipped")
        return
    host = targets.cpu().numpy()
    started = time.perf_counter()
    index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(768))
    index.add(host)
    index.search(host[query_rows.cpu().numpy()[:1000]], K)
    print(f"FAISS GPU IndexFlatIP add + search k={K}, 1,000 queries: "
          f"{time.perf_counter() - started:.3f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=277_078)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=726_014)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("bench_gpu: torch is not installed; skipped")
        return
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device visible to torch; nothing measured (skipped)")
        return
    print(f"device: {torch.cuda.get_device_name(0)}")
    smoke_on_cuda(args.sequences, args.epochs, args.repeats)
    neighbours_on_cuda(args.rows, args.repeats)


if __name__ == "__main__":
    main()
