"""Pure numpy metrics on vectors, and the ``norms`` check.

Everything here works on blocks of rows so a pass over a 13 GB file keeps memory
flat; statistics are accumulated in float64 and merged across blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lvmqa.gates import make as make_gate
from lvmqa.results import CheckResult, Gate, from_gates

if TYPE_CHECKING:
    from lvmqa.checks import CheckContext

NORM_MEAN_TOLERANCE = 0.01
NORM_STD_MAX = 0.01
ZERO_NORM = 1e-12
NORM_SUB_ROWS = 4096  # vectors per einsum: a few MB, so its temporaries stay in cache
NORM_PREFETCH = 2


def row_norms(block: np.ndarray) -> np.ndarray:
    """L2 norm of each vector along the last axis, computed in float64."""
    return np.sqrt(np.einsum("...d,...d->...", block, block, dtype=np.float64))


@dataclass
class NormAccumulator:
    """Streaming norm statistics over any number of blocks.

    Norms come from one float32 dot product per vector (the pass is bound by reading
    the vectors, not by arithmetic). A row whose float32 norm is not finite is looked at
    again exactly: NaN and Inf counted from its values, and a float32 overflow of a
    finite row (values beyond ~1e19) replaced by its float64 norm. Sums are float64.
    """

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    low: float = np.inf
    high: float = -np.inf
    nan_rows: int = 0
    inf_rows: int = 0
    zero_rows: int = 0
    worst_rows: list[int] = field(default_factory=list)

    def add(self, block: np.ndarray, start: int = 0) -> None:
        flat = block.reshape(-1, block.shape[-1])
        rows_per_item = flat.shape[0] // max(block.shape[0], 1) if block.ndim > 1 else 1
        for a in range(0, len(flat), NORM_SUB_ROWS):
            self._add_rows(flat[a : a + NORM_SUB_ROWS], a, start, rows_per_item)

    def _add_rows(self, flat: np.ndarray, first: int, start: int, rows_per_item: int) -> None:
        with np.errstate(over="ignore", invalid="ignore"):
            norms = np.sqrt(np.einsum("ij,ij->i", flat, flat)).astype(np.float64)
        finite = np.isfinite(norms)
        odd = np.flatnonzero(~finite)
        for i in odd:  # rare: NaN / Inf values, or a float32 overflow
            row = flat[i]
            has_nan, has_inf = bool(np.isnan(row).any()), bool(np.isinf(row).any())
            self.nan_rows += has_nan
            self.inf_rows += has_inf
            if not (has_nan or has_inf):
                norms[i] = float(row_norms(row))
                finite[i] = True
        zero = finite & (norms <= ZERO_NORM)
        self.zero_rows += int(zero.sum())
        good = norms[finite]
        if good.size:
            self.count += good.size
            self.total += float(good.sum())
            self.total_sq += float(np.dot(good, good))
            self.low = min(self.low, float(good.min()))
            self.high = max(self.high, float(good.max()))
        if len(self.worst_rows) < 20:
            with np.errstate(invalid="ignore"):
                bad = np.flatnonzero(~finite | zero | (np.abs(norms - 1.0) > 0.05))
            self.worst_rows.extend(
                int(start + (first + i) // max(rows_per_item, 1)) for i in bad[:20]
            )

    def summary(self, prefix: str) -> dict[str, Any]:
        mean = self.total / self.count if self.count else float("nan")
        var = self.total_sq / self.count - mean * mean if self.count else float("nan")
        return {
            f"{prefix}_norm_mean": mean,
            f"{prefix}_norm_std": float(np.sqrt(max(var, 0.0))) if self.count else float("nan"),
            f"{prefix}_norm_min": self.low if self.count else float("nan"),
            f"{prefix}_norm_max": self.high if self.count else float("nan"),
            f"{prefix}_nan_count": self.nan_rows,
            f"{prefix}_inf_count": self.inf_rows,
            f"{prefix}_zero_count": self.zero_rows,
        }


def norm_statistics(dataset: Any, chunk_rows: int | None = None) -> dict[str, Any]:
    """One streaming pass over targets and contexts of a Dataset.

    Chunks are mapped or read into reused buffers by a prefetch thread (as in the
    coherence pass), so reading overlaps the norms and no fresh memory is touched.
    """
    from lvmqa.io import prefetched
    from lvmqa.progress import Task

    targets, contexts = NormAccumulator(), NormAccumulator()
    task = Task(f"{dataset.path.name}: norms pass", dataset.n)
    chunks = dataset.iter_chunks(chunk_rows, reuse=NORM_PREFETCH + 2)
    for chunk in prefetched(chunks, depth=NORM_PREFETCH):
        task.update(chunk.stop)
        targets.add(chunk.targets, chunk.start)
        contexts.add(chunk.contexts, chunk.start)
    task.close()
    return norm_summary(targets, contexts)


def norm_summary(targets: NormAccumulator, contexts: NormAccumulator) -> dict[str, Any]:
    """The norms check's metrics from the accumulators of one pass over a dataset."""
    metrics = {**targets.summary("target"), **contexts.summary("context")}
    metrics["n_vectors"] = targets.count + targets.nan_rows + targets.inf_rows
    metrics["flagged_rows"] = sorted(set(targets.worst_rows + contexts.worst_rows))[:20]
    return metrics


def _shared_norm_statistics(ctx: CheckContext) -> dict[str, Any]:
    """From the coherence pass, which streams every vector anyway (one read, not two)."""
    from lvmqa.coherence import coherence_pass

    shared = coherence_pass(ctx).norm_statistics
    return dict(shared) if shared else norm_statistics(ctx.dataset)


def check_norms(ctx: CheckContext) -> CheckResult:
    m = ctx.cached("norm_statistics", lambda: _shared_norm_statistics(ctx))
    gates: list[Gate] = []
    for part in ("target", "context"):
        mean = m[f"{part}_norm_mean"]
        error = None if np.isnan(mean) else abs(mean - 1.0)
        m[f"{part}_norm_mean_error"] = error  # the gated metric is a metric too
        gates += [
            make_gate(ctx, "norms", f"{part}_norm_mean_error", error),
            make_gate(ctx, "norms", f"{part}_norm_std", m[f"{part}_norm_std"]),
        ]
        for bad in ("nan", "inf", "zero"):
            metric = f"{part}_{bad}_count"
            gates.append(make_gate(ctx, "norms", metric, m[metric]))
    failed = [g for g in gates if not g.passed]
    if not failed:
        message = (
            f"targets L2-normalised: mean norm {m['target_norm_mean']:.6f}, "
            f"std {m['target_norm_std']:.2e}; no NaN/Inf/zero vectors"
        )
    else:
        bad_counts = sum(
            m[f"{p}_{b}_count"] for p in ("target", "context") for b in ("nan", "inf", "zero")
        )
        message = (
            f"vectors are not unit-norm: target mean {m['target_norm_mean']:.4f} "
            f"(std {m['target_norm_std']:.3g}), context mean {m['context_norm_mean']:.4f}"
            f"; {bad_counts} NaN/Inf/zero vectors — cosine metrics and MSE training "
            "assume L2-normalised vectors"
        )
    return from_gates("norms", m, gates, message, details={"flagged_rows": m.pop("flagged_rows")})
