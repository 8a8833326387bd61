"""P2 smoke training: the AMN, the trivial predictors, and the `smoke_train`/`ood_eval` checks.

A few epochs of the origin's "attention mixture network" (AMN) on an article-disjoint split
answer one question: does this data teach a small model anything beyond the trivial
predictors? The trivial predictors (copy the last context, mean of the contexts, mean of the
training targets, random) are scored on the same rows, so every number has a yardstick that
holds for any encoder, whatever its cosine scale.

Two origin mistakes shape this module:

* its OOD score of 0.02 came from loading weights into a *different* model class with the
  same layer names. Checkpoints here record the class and its configuration, loading refuses
  a mismatch, and a score far below every informed trivial predictor is reported as an
  evaluation fault, not as bad data;
* its first split was an unseeded random split of windows, so one article sat in both train
  and val. Here train and val never share an article (or, without article ids, a contiguous
  block, with the rows next to the val block purged).

torch is imported inside functions so `import lvmqa` stays fast; the model class is built on
first use by :func:`amn_class`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lvmqa.errors import CheckSkipped, LvmqaError
from lvmqa.results import CheckResult, Gate, GateKind, from_gates

if TYPE_CHECKING:
    import torch

    from lvmqa.checks import CheckContext
    from lvmqa.io import Dataset

# A CPU run on ~10k sequences of 384-D finishes in well under a minute with these; on a
# GPU raise `smoke_max_sequences` to train on the whole (filtered) set.
DEFAULT_MAX_SEQUENCES = 20_000
DEFAULT_EPOCHS = 5
DEFAULT_BATCH_SIZE = 512
VAL_FRACTION = 0.1
MIN_SEQUENCES = 50  # below this a val split of whole articles is meaningless
LOAD_CHUNK_ROWS = 4096
EVAL_BATCH_ROWS = 4096
CHECKPOINT_FORMAT = "lvmqa-amn-checkpoint"
CHECKPOINT_VERSION = 1
# An evaluation fault is declared when the model loses more than this share of the gap
# between chance (random) and the weakest informed trivial predictor: the smoke model
# starts out *equal* to the mean-of-context predictor, so landing that far below every
# trivial predictor means the evaluation, not the data, is broken.
DEFAULT_FAULT_FRACTION = 0.5
# The guard is only meaningful when the trivial predictors themselves clearly beat chance.
MIN_INFORMED_GAP = 0.05
# OOD may not lose significantly more against mean-of-context than val does: |z| of 3 is a
# one-sided p of 0.0013, so noise across the usual dozen checks is not flagged.
DEFAULT_SHIFT_Z = 3.0
# The smoke model may not train significantly (z = 3) worse than on the baseline dataset by
# more than the design's drift convention (-5 %, as for coherence drift).
DEFAULT_BASELINE_DRIFT_PCT = -5.0
# The reloaded checkpoint must reproduce the best epoch's val score (same rows, same device).
ROUNDTRIP_TOLERANCE = 1e-4

TRIVIAL_PREDICTORS = ("copy_last", "mean_context", "global_mean", "random")
SplitKind = Literal["article", "contiguous_blocks"]


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class AmnConfig:
    """Everything that fixes the AMN's parameter shapes (stored in every checkpoint)."""

    dim: int
    context_length: int = 5
    attention_dim: int = 256
    hidden_dims: tuple[int, int] = (512, 256)

    def to_json(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "context_length": self.context_length,
            "attention_dim": self.attention_dim,
            "hidden_dims": list(self.hidden_dims),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AmnConfig:
        hidden = tuple(int(h) for h in data["hidden_dims"])
        if len(hidden) != 2:
            raise LvmqaError(
                "AMN config needs two hidden sizes", key="hidden_dims", found=str(hidden)
            )
        return cls(
            dim=int(data["dim"]),
            context_length=int(data["context_length"]),
            attention_dim=int(data["attention_dim"]),
            hidden_dims=(hidden[0], hidden[1]),
        )


@dataclass(frozen=True)
class TrainConfig:
    """The origin's smoke recipe (AdamW 5e-4, wd 0.01, batch 512, plateau ×0.5 after 3)."""

    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = 5e-4
    weight_decay: float = 0.01
    lambda_mse: float = 1.0
    lambda_info: float = 0.0
    tau: float = 0.07
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    seed: int = 0
    device: str = "auto"


# ------------------------------------------------------------------------------- the model
@functools.cache
def amn_class() -> type[torch.nn.Module]:
    """The AMN module class (built once, on first use, so torch loads lazily)."""
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812 - torch's own convention

    class AttentionMixtureNetwork(nn.Module):
        """Mean of the contexts plus a learned residual from one attention step.

        With all biases these layers hold exactly 1,510,912 parameters at D=768, the
        origin's count. Attention has no positional input, so the model is invariant to
        the order of the context vectors, as the origin's was.
        """

        def __init__(
            self,
            dim: int,
            context_length: int = 5,
            attention_dim: int = 256,
            hidden_dims: Sequence[int] = (512, 256),
        ) -> None:
            super().__init__()
            first, second = (int(h) for h in hidden_dims)
            self.amn_config = AmnConfig(dim, context_length, attention_dim, (first, second))
            self.query = nn.Linear(dim, attention_dim)
            self.key = nn.Linear(dim, attention_dim)
            self.residual_mlp = nn.Sequential(
                nn.Linear(2 * dim, first),
                nn.GELU(),
                nn.LayerNorm(first),
                nn.Linear(first, second),
                nn.GELU(),
                nn.LayerNorm(second),
                nn.Linear(second, dim),
            )
            # Why zero: the untrained model then *is* the mean-of-context predictor, so a
            # few epochs on a capped sample cannot fall below it through init noise, and
            # "beats the mean of the contexts" measures what the data taught.
            last = self.residual_mlp[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

        def forward(self, contexts: torch.Tensor) -> torch.Tensor:
            baseline = contexts.mean(dim=1)
            query = self.query(baseline)  # (B, A)
            keys = self.key(contexts)  # (B, C, A)
            scores = torch.einsum("ba,bca->bc", query, keys) / math.sqrt(query.shape[-1])
            weights = torch.softmax(scores, dim=1)
            weighted = torch.einsum("bc,bcd->bd", weights, contexts)
            residual = self.residual_mlp(torch.cat([baseline, weighted], dim=-1))
            return F.normalize(baseline + residual, dim=-1)

    # A stable, importable name: it is what checkpoints record and compare.
    AttentionMixtureNetwork.__qualname__ = "AttentionMixtureNetwork"
    AttentionMixtureNetwork.__module__ = __name__
    return AttentionMixtureNetwork


def __getattr__(name: str) -> Any:
    # `from lvmqa.smoke import AttentionMixtureNetwork` works without importing torch early.
    if name == "AttentionMixtureNetwork":
        return amn_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_amn(config: AmnConfig) -> torch.nn.Module:
    return amn_class()(config.dim, config.context_length, config.attention_dim, config.hidden_dims)


def model_config(model: torch.nn.Module) -> AmnConfig:
    config = getattr(model, "amn_config", None)
    if not isinstance(config, AmnConfig):
        raise LvmqaError(
            "model carries no AMN configuration",
            expected="an AMN built by lvmqa.smoke",
            found=type(model).__name__,
        )
    return config


def count_parameters(model: torch.nn.Module) -> int:
    return sum(int(p.numel()) for p in model.parameters())


def class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# ------------------------------------------------------------------------------- devices
def resolve_device(requested: str | None = "auto") -> str:
    """`auto` picks cuda > mps > cpu; a forced device must exist."""
    import torch

    name = (requested or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    base = name.split(":", 1)[0]
    if base not in available:
        raise LvmqaError(
            "unknown smoke device",
            key="smoke_device",
            expected="auto, cpu, cuda, mps",
            found=repr(requested),
        )
    if not available[base]:
        raise LvmqaError(
            "requested smoke device is not available",
            key="smoke_device",
            expected="auto or an available device",
            found=repr(requested),
        )
    return name


# -------------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class SplitPlan:
    """Dataset row indices (sorted) for training and validation, and how they were chosen."""

    train_rows: np.ndarray
    val_rows: np.ndarray
    kind: SplitKind
    warning: str | None = None
    n_groups_train: int = 0
    n_groups_val: int = 0
    purged_rows: int = 0  # train rows dropped because their windows overlap the val block


def plan_split(
    n: int,
    *,
    articles: np.ndarray | None = None,
    max_sequences: int = DEFAULT_MAX_SEQUENCES,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    context_length: int = 5,
) -> SplitPlan:
    """Sample at most ~`max_sequences` rows in whole groups, then split train/val by group.

    Groups are the target's article when `articles` is given, else contiguous blocks.
    Sampling whole groups at random (seeded) keeps the sample representative of the file,
    unlike its first rows, and keeps every article on one side of the split.
    """
    if n < 2:
        raise ValueError(f"need at least 2 rows to split, got {n}")
    if articles is not None:
        articles = np.asarray(articles)
        if articles.shape != (n,):
            raise ValueError(f"articles must have shape ({n},), got {articles.shape}")
        if np.unique(articles).size >= 2:
            return _article_split(articles, max_sequences, val_fraction, seed)
    plan = _block_split(n, max_sequences, val_fraction, seed, context_length)
    if articles is not None:
        warning = "only one article: split into contiguous blocks; val shares the article"
        return dataclasses.replace(plan, warning=warning)
    return plan


def _article_split(
    articles: np.ndarray, max_sequences: int, val_fraction: float, seed: int
) -> SplitPlan:
    rng = np.random.default_rng(seed)
    uniques, inverse, counts = np.unique(articles, return_inverse=True, return_counts=True)
    order = rng.permutation(uniques.size)
    chosen: list[int] = []
    total = 0
    for group in order:  # whole articles until the cap; skip the ones that would overflow
        size = int(counts[group])
        if total + size <= max_sequences or len(chosen) < 2:  # a split needs two articles
            chosen.append(int(group))
            total += size
        if total >= max_sequences:
            break
    val_target = val_fraction * total
    val_groups: list[int] = []
    val_total = 0
    for group in chosen[:-1]:  # the last chosen article always stays in train
        if val_total >= val_target:
            break
        val_groups.append(group)
        val_total += int(counts[group])
    train_groups = [g for g in chosen if g not in set(val_groups)]
    in_val = np.isin(inverse, val_groups)
    in_train = np.isin(inverse, train_groups)
    return SplitPlan(
        train_rows=np.flatnonzero(in_train),
        val_rows=np.flatnonzero(in_val),
        kind="article",
        n_groups_train=len(train_groups),
        n_groups_val=len(val_groups),
    )


def _block_split(
    n: int, max_sequences: int, val_fraction: float, seed: int, context_length: int
) -> SplitPlan:
    rng = np.random.default_rng(seed)
    n_chosen = max(2, round(1.0 / val_fraction))
    sample = min(n, max_sequences)
    block_size = max(1, math.ceil(sample / n_chosen))
    starts = np.arange(0, n, block_size)
    picked = rng.permutation(starts.size)[:n_chosen]
    val_block = int(picked[0])
    val_start = int(starts[val_block])
    val_stop = min(val_start + block_size, n)
    train_parts = [
        np.arange(int(starts[b]), min(int(starts[b]) + block_size, n)) for b in picked[1:]
    ]
    train = np.sort(np.concatenate(train_parts)) if train_parts else np.empty(0, np.int64)
    # Sliding windows that are at most C rows apart share vectors; drop those train rows.
    near_val = (train >= val_start - context_length) & (train < val_stop + context_length)
    warning = (
        "no article ids: split into contiguous blocks of rows, purging train rows within "
        f"{context_length} rows of the val block; articles may still straddle the split, "
        "so val scores may be optimistic"
    )
    return SplitPlan(
        train_rows=train[~near_val],
        val_rows=np.arange(val_start, val_stop),
        kind="contiguous_blocks",
        warning=warning,
        n_groups_train=len(train_parts),
        n_groups_val=1,
        purged_rows=int(near_val.sum()),
    )


# ----------------------------------------------------------------------- scoring helpers
def _cosine_rows(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from torch.nn import functional as F  # noqa: N812

    return (F.normalize(predictions.float(), dim=-1) * F.normalize(targets.float(), dim=-1)).sum(-1)


def mean_cosine(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean cosine of the normalised predictions vs the normalised targets."""
    cos = _cosine_rows(predictions, targets)
    return float(cos.double().mean().item()) if cos.numel() else float("nan")


def _cosine_sum(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    return float(_cosine_rows(predictions, targets).double().sum().item())


def normalized_mean(targets: torch.Tensor) -> torch.Tensor:
    """The global-mean predictor: the L2-normalised mean of the (training) targets."""
    from torch.nn import functional as F  # noqa: N812

    return F.normalize(targets.double().mean(dim=0), dim=0).float()


def _normalized_mean_of_rows(targets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    import torch
    from torch.nn import functional as F  # noqa: N812

    total = torch.zeros(targets.shape[1], dtype=torch.float64, device=targets.device)
    for start in range(0, int(rows.numel()), EVAL_BATCH_ROWS):  # no full float64 copy
        total += targets[rows[start : start + EVAL_BATCH_ROWS]].double().sum(dim=0)
    return F.normalize(total, dim=0).float()


def random_unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def trivial_predictor_scores(
    contexts: torch.Tensor,
    targets: torch.Tensor,
    *,
    global_mean: torch.Tensor,
    seed: int = 0,
    batch_rows: int = EVAL_BATCH_ROWS,
) -> dict[str, float]:
    """Mean cosine of each trivial predictor on these rows (any device)."""
    import torch

    n = int(targets.shape[0])
    if n == 0:
        return {name: float("nan") for name in TRIVIAL_PREDICTORS}
    noise = torch.from_numpy(random_unit_vectors(n, int(targets.shape[1]), seed))
    sums = dict.fromkeys(TRIVIAL_PREDICTORS, 0.0)
    mean_vec = global_mean.to(targets.device)
    for start in range(0, n, batch_rows):
        ctx = contexts[start : start + batch_rows]
        tgt = targets[start : start + batch_rows]
        sums["copy_last"] += _cosine_sum(ctx[:, -1], tgt)
        sums["mean_context"] += _cosine_sum(ctx.mean(dim=1), tgt)
        sums["global_mean"] += _cosine_sum(mean_vec.expand_as(tgt), tgt)
        rand = noise[start : start + batch_rows].to(tgt.device)
        sums["random"] += _cosine_sum(rand, tgt)
    return {name: total / n for name, total in sums.items()}


def model_row_scores(
    model: torch.nn.Module,
    contexts: torch.Tensor,
    targets: torch.Tensor,
    *,
    batch_rows: int = EVAL_BATCH_ROWS,
) -> tuple[np.ndarray, float]:
    """Per-row cosine of the model's predictions (float64, host) and their overall MSE."""
    import torch

    n = int(targets.shape[0])
    cosines = np.empty(n, dtype=np.float64)
    se_total = 0.0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, n, batch_rows):
            tgt = targets[start : start + batch_rows]
            pred = model(contexts[start : start + batch_rows])
            cosines[start : start + len(tgt)] = _cosine_rows(pred, tgt).double().cpu().numpy()
            se_total += float((pred.float() - tgt.float()).pow(2).double().sum().item())
    model.train(was_training)
    mse = se_total / (n * int(targets.shape[1])) if n else float("nan")
    return cosines, mse


def evaluate_model(
    model: torch.nn.Module,
    contexts: torch.Tensor,
    targets: torch.Tensor,
    *,
    batch_rows: int = EVAL_BATCH_ROWS,
) -> tuple[float, float]:
    """(mean cosine, MSE) of the model's predictions on these rows."""
    cosines, mse = model_row_scores(model, contexts, targets, batch_rows=batch_rows)
    return (float(cosines.mean()) if cosines.size else float("nan")), mse


def mean_context_row_cosines(
    contexts: torch.Tensor, targets: torch.Tensor, *, batch_rows: int = EVAL_BATCH_ROWS
) -> np.ndarray:
    parts = [
        _cosine_rows(contexts[s : s + batch_rows].mean(dim=1), targets[s : s + batch_rows])
        .double()
        .cpu()
        .numpy()
        for s in range(0, int(targets.shape[0]), batch_rows)
    ]
    return np.concatenate(parts) if parts else np.empty(0)


def clustered_mean_se(values: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """Mean of `values` and its standard error, treating each group as one sample.

    Windows of one article are strongly correlated, so the article (or block), not the
    row, is the independent unit; rows-as-samples would make every small shift look real.
    """
    values = np.asarray(values, dtype=np.float64)
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    n, k = values.size, counts.size
    mean = float(values.mean()) if n else float("nan")
    if k < 2:
        return mean, float("nan")
    group_sums = np.bincount(inverse, weights=values - mean)
    variance = k / (k - 1) * float(np.sum(group_sums**2)) / n**2
    return mean, math.sqrt(variance)


def shift_z(
    reference: np.ndarray,
    reference_groups: np.ndarray,
    other: np.ndarray,
    other_groups: np.ndarray,
) -> tuple[float, float]:
    """(mean(other) − mean(reference), z) with group-clustered standard errors."""
    ref_mean, ref_se = clustered_mean_se(reference, reference_groups)
    oth_mean, oth_se = clustered_mean_se(other, other_groups)
    diff = oth_mean - ref_mean
    se = math.sqrt(ref_se**2 + oth_se**2)
    if not math.isfinite(se) or se == 0.0:
        return diff, float("nan")
    return diff, diff / se


@dataclass(frozen=True)
class FaultVerdict:
    fault: bool
    threshold: float | None  # the score below which the evaluation is declared broken
    weakest_informed: float


def detect_evaluation_fault(
    model_score: float,
    trivial: dict[str, float],
    *,
    fraction: float = DEFAULT_FAULT_FRACTION,
) -> FaultVerdict:
    """Is `model_score` far below every informed trivial predictor (all but random)?

    "Informed" means clearly above chance here: a predictor at chance level (e.g. the
    global mean on a corpus without a common direction) is no yardstick. No trained
    model falls more than halfway from the weakest informed predictor to chance; the
    origin's 0.02 OOD against trivial scores of 0.42-0.55 came from loading weights into
    the wrong class.
    """
    chance = trivial.get("random", 0.0)
    chance = chance if math.isfinite(chance) else 0.0
    informed = [trivial[k] for k in ("copy_last", "mean_context", "global_mean") if k in trivial]
    informed = [v for v in informed if math.isfinite(v) and v - chance >= MIN_INFORMED_GAP]
    if not informed:
        return FaultVerdict(False, None, float("nan"))  # no yardstick: all trivial ≈ chance
    weakest = min(informed)
    threshold = weakest - fraction * (weakest - chance)
    fault = not math.isfinite(model_score) or model_score < threshold
    return FaultVerdict(fault, threshold, weakest)


# ------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    val_mse: float
    val_cosine: float
    lr: float


@dataclass
class TrainOutcome:
    model: torch.nn.Module  # holds the best epoch's weights (by val MSE)
    history: list[EpochStats]
    best_epoch: int
    train_seconds: float
    sequences_per_second: float
    device: str
    global_mean: torch.Tensor = field(repr=False)  # normalised mean of the TRAIN targets


def info_nce_loss(predictions: torch.Tensor, targets: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE with in-batch negatives: each prediction must pick its own target."""
    import torch
    from torch.nn import functional as F  # noqa: N812

    logits = F.normalize(predictions, dim=-1) @ F.normalize(targets, dim=-1).T / tau
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels)


class _DeterministicTorch:
    """Seed torch and switch on deterministic kernels, restoring the caller's state after."""

    def __init__(self, seed: int, device: str) -> None:
        self.seed = seed
        self.device = device

    def __enter__(self) -> None:
        import torch

        self._was_on = torch.are_deterministic_algorithms_enabled()
        self._was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()
        torch.manual_seed(self.seed)
        # CUDA needs CUBLAS_WORKSPACE_CONFIG for strict mode; there only warn. CPU is exact.
        torch.use_deterministic_algorithms(True, warn_only=not self.device.startswith("cpu"))

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.use_deterministic_algorithms(self._was_on, warn_only=self._was_warn_only)
        self._fork.__exit__(None, None, None)


def _as_device_tensor(array: np.ndarray | torch.Tensor, device: str) -> torch.Tensor:
    import torch

    if isinstance(array, torch.Tensor):
        return array.to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32, device=device)


def train_amn(
    contexts: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    config: TrainConfig | None = None,
    *,
    amn: AmnConfig | None = None,
) -> TrainOutcome:
    """Train the AMN on `train_rows`, validate on `val_rows` (row indices into the arrays).

    The arrays live in ONE tensor on the device for the whole run; batches are gathered
    there by index, so no batch crosses from host to device.
    """
    import torch
    from torch.nn import functional as F  # noqa: N812

    config = config or TrainConfig()
    device = resolve_device(config.device)
    ctx_all = _as_device_tensor(contexts, device)
    tgt_all = _as_device_tensor(targets, device)
    amn = amn or AmnConfig(dim=int(tgt_all.shape[1]), context_length=int(ctx_all.shape[1]))
    train_idx = torch.as_tensor(np.asarray(train_rows, dtype=np.int64), device=device)
    val_idx = torch.as_tensor(np.asarray(val_rows, dtype=np.int64), device=device)
    if train_idx.numel() == 0 or val_idx.numel() == 0:
        raise ValueError("train and val rows must both be non-empty")
    val_ctx, val_tgt = ctx_all[val_idx], tgt_all[val_idx]

    with _DeterministicTorch(config.seed, device):
        model = build_amn(amn).to(device)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience
        )
        shuffler = torch.Generator().manual_seed(config.seed)
        history: list[EpochStats] = []
        best_mse, best_epoch, best_state = math.inf, 0, None
        n_train = int(train_idx.numel())
        started = time.perf_counter()
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = train_idx[torch.randperm(n_train, generator=shuffler).to(device)]
            loss_total = torch.zeros((), dtype=torch.float64, device=device)
            for start in range(0, n_train, config.batch_size):
                batch = order[start : start + config.batch_size]
                pred = model(ctx_all[batch])
                tgt = tgt_all[batch]
                loss = config.lambda_mse * F.mse_loss(pred, tgt)
                if config.lambda_info > 0 and batch.numel() > 1:
                    loss = loss + config.lambda_info * info_nce_loss(pred, tgt, config.tau)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                # Accumulate on the device: an .item() per batch would sync the GPU each step.
                loss_total += loss.detach().double() * batch.numel()
            val_cos, val_mse = evaluate_model(model, val_ctx, val_tgt)
            lr = float(optimizer.param_groups[0]["lr"])
            train_loss = float(loss_total.item()) / n_train
            history.append(EpochStats(epoch, train_loss, val_mse, val_cos, lr))
            scheduler.step(val_mse)
            if val_mse < best_mse:
                best_mse, best_epoch = val_mse, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainOutcome(
        model=model,
        history=history,
        best_epoch=best_epoch,
        train_seconds=seconds,
        sequences_per_second=n_train * config.epochs / max(seconds, 1e-9),
        device=device,
        global_mean=_normalized_mean_of_rows(tgt_all, train_idx),
    )


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(model: torch.nn.Module, path: str | Path, *, dataset_sha256: str) -> Path:
    """Write weights plus the class name, configuration and training-data hash."""
    import torch

    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_class": class_name(type(model)),
        "config": model_config(model).to_json(),
        "dataset_sha256": dataset_sha256,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    torch.save(payload, path)
    return path


def load_checkpoint(
    path: str | Path,
    model_class: type[torch.nn.Module],
    *,
    config: AmnConfig | None = None,
    dataset_sha256: str | None = None,
    device: str = "cpu",
) -> torch.nn.Module:
    """Rebuild the model, refusing a different class, configuration or training-data hash.

    Matching layer names are not enough: the origin loaded AMN weights into another class
    and got an OOD cosine of 0.02. Only the recorded class, under its recorded config, loads.
    """
    import torch

    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise LvmqaError(
            "not a readable checkpoint",
            path=path,
            expected="a file from save_checkpoint",
            found=type(exc).__name__,
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise LvmqaError(
            "not an lvmqa AMN checkpoint",
            path=path,
            key="format",
            expected=repr(CHECKPOINT_FORMAT),
            found=repr(_get(payload, "format")),
        )
    wanted = class_name(model_class)
    if payload.get("model_class") != wanted:
        raise LvmqaError(
            "checkpoint was saved from a different model class",
            path=path,
            key="model_class",
            expected=repr(wanted),
            found=repr(payload.get("model_class")),
        )
    try:
        stored = AmnConfig.from_json(payload["config"])
    except (KeyError, TypeError, ValueError):
        raise LvmqaError(
            "checkpoint configuration is unreadable",
            path=path,
            key="config",
            expected="dim, context_length, attention_dim, hidden_dims",
            found=repr(payload.get("config")),
        ) from None
    if config is not None and stored != config:
        raise LvmqaError(
            "checkpoint configuration differs",
            path=path,
            key="config",
            expected=str(config.to_json()),
            found=str(stored.to_json()),
        )
    if dataset_sha256 is not None and payload.get("dataset_sha256") != dataset_sha256:
        raise LvmqaError(
            "checkpoint was trained on other data",
            path=path,
            key="dataset_sha256",
            expected=dataset_sha256,
            found=str(payload.get("dataset_sha256")),
        )
    model = model_class(stored.dim, stored.context_length, stored.attention_dim, stored.hidden_dims)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise LvmqaError(
            "checkpoint weights do not fit the model",
            path=path,
            key="state_dict",
            expected=f"the parameters of {wanted}",
            found=str(exc).splitlines()[0],
        ) from None
    return model.to(device).eval()


def _get(payload: object, key: str) -> object:
    return payload.get(key) if isinstance(payload, dict) else type(payload).__name__


# ----------------------------------------------------------------------- dataset loading
def load_rows(
    dataset: Dataset, rows: np.ndarray, device: str, *, chunk_rows: int = LOAD_CHUNK_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read `rows` (sorted) into one contexts and one targets tensor on `device`.

    Reads in chunks so host memory stays bounded; targets are L2-normalised because the
    model's output is a unit vector (norm defects are the `norms` check's business).
    """
    import torch
    from torch.nn import functional as F  # noqa: N812

    rows = np.asarray(rows, dtype=np.int64)
    c, d = dataset.context_length, dataset.dim
    contexts = torch.empty((rows.size, c, d), dtype=torch.float32, device=device)
    targets = torch.empty((rows.size, d), dtype=torch.float32, device=device)
    for start in range(0, rows.size, chunk_rows):
        part = rows[start : start + chunk_rows]
        stop = start + part.size
        contexts[start:stop] = torch.from_numpy(dataset.contexts_at(part)).to(device)
        targets[start:stop] = torch.from_numpy(dataset.targets_at(part)).to(device)
    return contexts, F.normalize(targets, dim=-1)


def _finite_rows(contexts: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    import torch

    ok = torch.isfinite(contexts).flatten(1).all(1) & torch.isfinite(targets).all(1)
    return np.asarray(ok.cpu().numpy(), dtype=bool)


def _article_ids(dataset: Dataset) -> np.ndarray | None:
    if not getattr(dataset, "has_article_ids", False):
        return None
    return np.asarray(dataset.meta["article"].to_numpy(dtype=np.int64))


def _groups(dataset: Dataset, rows: np.ndarray, kind: str, blocks: int = 10) -> np.ndarray:
    """Article of each row, or (without ids) one of `blocks` contiguous runs of the rows."""
    articles = _article_ids(dataset)
    if kind == "article" and articles is not None:
        return articles[rows]
    return np.arange(rows.size) * blocks // max(rows.size, 1)


def _crossing_val_windows(dataset: Dataset, val_rows: np.ndarray) -> int | None:
    """Val windows whose contexts hold another article's rows (None when unknown)."""
    column = dataset.meta.get("context_articles_differ")
    if column is None:
        return None
    values = column.iloc[val_rows]
    if values.isna().any():
        return None
    return int(values.astype(bool).sum())


# -------------------------------------------------------------------- the checks' engine
@dataclass
class SmokeRun:
    """What `smoke_train` learned; cached per dataset and reused by `ood_eval`."""

    model: torch.nn.Module  # reloaded from the saved checkpoint
    metrics: dict[str, Any]
    details: dict[str, Any]
    global_mean: torch.Tensor
    device: str
    seed: int
    fault: FaultVerdict
    roundtrip_ok: bool
    val_cosine_rows: np.ndarray  # per val row: the reloaded model's cosine
    val_gain_rows: np.ndarray  # per val row: model cosine − mean-of-context cosine
    val_groups: np.ndarray  # the independent unit of each val row (article or block)


def run_smoke(
    dataset: Dataset,
    config: TrainConfig,
    *,
    max_sequences: int = DEFAULT_MAX_SEQUENCES,
    fault_fraction: float = DEFAULT_FAULT_FRACTION,
    model_class: type[torch.nn.Module] | None = None,
) -> SmokeRun:
    """Split, load, train, checkpoint, reload, and score against the trivial predictors."""
    if dataset.n < MIN_SEQUENCES:
        raise CheckSkipped(
            f"only {dataset.n} sequences; the smoke model needs at least {MIN_SEQUENCES}"
        )
    device = resolve_device(config.device)
    plan = plan_split(
        dataset.n,
        articles=_article_ids(dataset),
        max_sequences=max_sequences,
        seed=config.seed,
        context_length=dataset.context_length,
    )
    rows = np.union1d(plan.train_rows, plan.val_rows)  # sorted: sequential reads
    load_started = time.perf_counter()
    contexts, targets = load_rows(dataset, rows, device)
    load_seconds = time.perf_counter() - load_started
    # Rows with NaN/Inf would turn every loss into NaN; the `norms` check reports them.
    finite = _finite_rows(contexts, targets)
    train_keep = finite[np.searchsorted(rows, plan.train_rows)]
    val_keep = finite[np.searchsorted(rows, plan.val_rows)]
    val_rows = plan.val_rows[val_keep]
    train_pos = np.searchsorted(rows, plan.train_rows[train_keep])
    val_pos = np.searchsorted(rows, val_rows)
    if train_pos.size < 2 or val_pos.size < 1:
        raise CheckSkipped(
            f"split left {train_pos.size} train and {val_pos.size} val sequences; too few to train"
        )
    outcome = train_amn(contexts, targets, train_pos, val_pos, config)
    val_ctx, val_tgt = contexts[val_pos], targets[val_pos]
    trivial = trivial_predictor_scores(
        val_ctx, val_tgt, global_mean=outcome.global_mean, seed=config.seed
    )
    reloaded = _checkpoint_roundtrip(
        outcome.model, dataset.sha256(), model_class or amn_class(), device
    )
    val_model_rows, _ = model_row_scores(reloaded, val_ctx, val_tgt)
    reloaded_cosine = float(val_model_rows.mean())
    val_gain_rows = val_model_rows - mean_context_row_cosines(val_ctx, val_tgt)
    # Train vs val gain over the mean of the contexts separates "learned nothing" from
    # "learned the training articles only" (a small corpus overfits within an epoch).
    train_cosine, train_mean_context = _train_scores(reloaded, contexts, targets, train_pos)
    del contexts, targets, val_ctx, val_tgt  # free the device copy; only the model is kept

    history = outcome.history
    best = history[outcome.best_epoch - 1]
    roundtrip_ok = abs(reloaded_cosine - best.val_cosine) <= ROUNDTRIP_TOLERANCE
    fault = detect_evaluation_fault(history[-1].val_cosine, trivial, fraction=fault_fraction)
    metrics: dict[str, Any] = {
        "val_cosine_per_epoch": [h.val_cosine for h in history],
        "train_loss_per_epoch": [h.train_loss for h in history],
        "val_mse_per_epoch": [h.val_mse for h in history],
        "lr_per_epoch": [h.lr for h in history],
        "val_cosine_epoch_1": history[0].val_cosine,
        "val_cosine_final": history[-1].val_cosine,
        "val_cosine_best": best.val_cosine,
        "val_cosine_reloaded": reloaded_cosine,
        "best_epoch": outcome.best_epoch,
        "epochs": len(history),
        **{f"baseline_{name}_cosine": trivial[name] for name in TRIVIAL_PREDICTORS},
        "val_cosine_gain_over_mean_context": history[-1].val_cosine - trivial["mean_context"],
        "train_cosine_best": train_cosine,
        "train_baseline_mean_context_cosine": train_mean_context,
        "train_cosine_gain_over_mean_context": train_cosine - train_mean_context,
        "n_train": int(train_pos.size),
        "n_val": int(val_pos.size),
        "n_train_groups": plan.n_groups_train,
        "n_val_groups": plan.n_groups_val,
        "n_nonfinite_rows_dropped": int((~finite).sum()),
        "split_purged_rows": plan.purged_rows,
        "split_kind": plan.kind,
        "split_warning": plan.warning,
        "val_windows_crossing_articles": _crossing_val_windows(dataset, val_rows),
        "device": outcome.device,
        "sequences_per_second": outcome.sequences_per_second,
        "train_seconds": outcome.train_seconds,
        "load_seconds": load_seconds,
        "max_sequences": max_sequences,
        "seed": config.seed,
        "lambda_info": config.lambda_info,
        "n_parameters": count_parameters(outcome.model),
        "checkpoint_roundtrip_ok": roundtrip_ok,
        "evaluation_fault": fault.fault or not roundtrip_ok,
        "evaluation_fault_threshold": fault.threshold,
    }
    details = {
        "training_curves": {
            "epoch": [h.epoch for h in history],
            "train_loss": [h.train_loss for h in history],
            "val_mse": [h.val_mse for h in history],
            "val_cosine": [h.val_cosine for h in history],
            "lr": [h.lr for h in history],
            "baselines": {name: trivial[name] for name in TRIVIAL_PREDICTORS},
        },
        "model": {
            "class": class_name(type(reloaded)),
            "config": model_config(reloaded).to_json(),
        },
    }
    return SmokeRun(
        model=reloaded,
        metrics=metrics,
        details=details,
        global_mean=outcome.global_mean,
        device=device,
        seed=config.seed,
        fault=fault,
        roundtrip_ok=roundtrip_ok,
        val_cosine_rows=val_model_rows,
        val_gain_rows=val_gain_rows,
        val_groups=_groups(dataset, val_rows, plan.kind),
    )


def _train_scores(
    model: torch.nn.Module, contexts: torch.Tensor, targets: torch.Tensor, rows: np.ndarray
) -> tuple[float, float]:
    """Mean cosine of the model and of mean-of-context on the train rows, batch by batch
    (gathering all train rows at once would double the device memory)."""
    model_sum = mean_sum = 0.0
    for start in range(0, rows.size, EVAL_BATCH_ROWS):
        idx = rows[start : start + EVAL_BATCH_ROWS]
        ctx, tgt = contexts[idx], targets[idx]
        cosines, _ = model_row_scores(model, ctx, tgt)
        model_sum += float(cosines.sum())
        mean_sum += float(mean_context_row_cosines(ctx, tgt).sum())
    return model_sum / rows.size, mean_sum / rows.size


def _checkpoint_roundtrip(
    model: torch.nn.Module, dataset_sha256: str, model_class: type[torch.nn.Module], device: str
) -> torch.nn.Module:
    # The evaluation path is the real one: weights go through a file and come back through
    # load_checkpoint, exactly as a separate evaluation script would load them.
    with tempfile.TemporaryDirectory(prefix="lvmqa-smoke-") as folder:
        path = save_checkpoint(model, Path(folder) / "amn.pt", dataset_sha256=dataset_sha256)
        return load_checkpoint(
            path,
            model_class,
            config=model_config(model),
            dataset_sha256=dataset_sha256,
            device=device,
        )


# ------------------------------------------------------------------------- synthetic data
def random_walk_articles(
    n_articles: int,
    chunks_per_article: int,
    dim: int,
    *,
    step_angle: float = 0.4,
    noise: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors of articles that drift by one shared rotation per chunk, plus noise.

    Returns (vectors (N, D) float32, article ids, chunk ids), sorted by article then chunk.
    The next chunk is predictable from the context and the rule is the same in every
    article, so a model must beat the mean of the contexts on articles it never saw,
    while each article starts at a random point (no global mean to exploit).
    """
    rng = np.random.default_rng(seed)
    rotation = _small_rotation(dim, step_angle, rng)
    current = _unit(rng.standard_normal((n_articles, dim)))
    steps = [current]
    for _ in range(chunks_per_article - 1):
        jitter = noise * rng.standard_normal((n_articles, dim)) / math.sqrt(dim)
        current = _unit(current @ rotation.T + jitter)
        steps.append(current)
    vectors = np.stack(steps, axis=1).reshape(-1, dim).astype(np.float32)
    articles = np.repeat(np.arange(n_articles), chunks_per_article)
    chunks = np.tile(np.arange(chunks_per_article), n_articles)
    return vectors, articles, chunks


def article_windows(
    vectors: np.ndarray, articles: np.ndarray, context_length: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(contexts, targets, target articles) of every window inside one article, in row order."""
    starts = np.arange(vectors.shape[0] - context_length)
    span = starts[:, None] + np.arange(context_length + 1)[None, :]
    inside = (articles[span] == articles[span[:, :1]]).all(axis=1)
    span = span[inside]
    return vectors[span[:, :-1]], vectors[span[:, -1]], articles[span[:, -1]]


def _small_rotation(dim: int, angle: float, rng: np.random.Generator) -> np.ndarray:
    # Cayley transform of a skew matrix: orthogonal, turning no plane by more than `angle`.
    skew = rng.standard_normal((dim, dim))
    skew = skew - skew.T
    skew *= math.tan(angle / 2) / np.abs(np.linalg.eigvals(skew)).max()
    identity = np.eye(dim)
    return np.linalg.solve(identity - skew, identity + skew)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------- OOD scoring
@dataclass(frozen=True)
class OodScores:
    cosine: float
    mse: float
    trivial: dict[str, float]
    n: int
    n_nonfinite_rows_dropped: int
    fault: FaultVerdict
    gain_rows: np.ndarray  # per OOD row: model cosine − mean-of-context cosine
    groups: np.ndarray


def evaluate_ood(
    run: SmokeRun,
    dataset: Dataset,
    *,
    max_sequences: int = DEFAULT_MAX_SEQUENCES,
    fault_fraction: float = DEFAULT_FAULT_FRACTION,
) -> OodScores:
    """Score the smoke model and the trivial predictors on a seeded row sample of `dataset`.

    The global-mean predictor is the TRAIN targets' mean: it is what a model could know.
    """
    config = model_config(run.model)
    if (dataset.dim, dataset.context_length) != (config.dim, config.context_length):
        raise LvmqaError(
            "OOD split does not fit the smoke model",
            path=dataset.path,
            key="ood",
            expected=f"D={config.dim}, context length {config.context_length}",
            found=f"D={dataset.dim}, context length {dataset.context_length}",
        )
    rng = np.random.default_rng(run.seed)
    if dataset.n <= max_sequences:
        rows = np.arange(dataset.n)
    else:  # uniform rows: an unbiased estimate of the whole split's mean cosine
        rows = np.sort(rng.choice(dataset.n, size=max_sequences, replace=False))
    contexts, targets = load_rows(dataset, rows, run.device)
    finite = _finite_rows(contexts, targets)
    keep = np.flatnonzero(finite)
    if keep.size < finite.size:
        contexts, targets = contexts[keep], targets[keep]
    model_rows, mse = model_row_scores(run.model, contexts, targets)
    cosine = float(model_rows.mean()) if model_rows.size else float("nan")
    trivial = trivial_predictor_scores(
        contexts, targets, global_mean=run.global_mean, seed=run.seed
    )
    gain_rows = model_rows - mean_context_row_cosines(contexts, targets)
    kind = "article" if getattr(dataset, "has_article_ids", False) else "contiguous_blocks"
    fault = detect_evaluation_fault(cosine, trivial, fraction=fault_fraction)
    return OodScores(
        cosine,
        mse,
        trivial,
        int(keep.size),
        int((~finite).sum()),
        fault,
        gain_rows=gain_rows,
        groups=_groups(dataset, rows[keep], kind),
    )


# ------------------------------------------------------------------------------- checks
def _option(ctx: CheckContext, name: str, default: Any) -> Any:
    value = getattr(ctx.options, name, None)
    if value is None:
        value = (getattr(ctx.options, "extra", None) or {}).get(name)
    return default if value is None else value


def train_config_from(ctx: CheckContext) -> TrainConfig:
    return TrainConfig(
        epochs=int(_option(ctx, "smoke_epochs", DEFAULT_EPOCHS)),
        batch_size=int(_option(ctx, "smoke_batch_size", DEFAULT_BATCH_SIZE)),
        lambda_info=float(_option(ctx, "smoke_lambda_info", 0.0)),
        seed=int(_option(ctx, "seed", 0)),
        device=str(_option(ctx, "smoke_device", "auto")),
    )


def _max_sequences(ctx: CheckContext) -> int:
    value = int(_option(ctx, "smoke_max_sequences", DEFAULT_MAX_SEQUENCES))
    if value < MIN_SEQUENCES:
        raise LvmqaError(
            "smoke sample too small",
            key="smoke_max_sequences",
            expected=f">= {MIN_SEQUENCES}",
            found=str(value),
        )
    return value


def smoke_run(ctx: CheckContext) -> SmokeRun:
    """The trained (and reloaded) smoke model of this dataset, computed once per session."""
    fraction = float(ctx.threshold("evaluation_fault_fraction", DEFAULT_FAULT_FRACTION))
    return ctx.cached(
        "smoke_model",
        lambda: run_smoke(
            ctx.dataset,
            train_config_from(ctx),
            max_sequences=_max_sequences(ctx),
            fault_fraction=fraction,
        ),
    )


def _threshold_gate(
    ctx: CheckContext, key: str, name: str, metric: str, value: float
) -> list[Gate]:
    """An absolute cosine gate, only where calibrated for the encoder or set in the registry."""
    if not ctx.has_threshold(key):
        return []
    gate_kind: GateKind = "calibrated" if ctx.threshold_kind(key) == "calibrated" else "registry"
    return [Gate(name, metric, value, ">=", float(ctx.threshold(key, 0.0)), gate_kind)]


def _fault_message(where: str, score: float, verdict: FaultVerdict, extra: str = "") -> str:
    limit = "n/a" if verdict.threshold is None else f"{verdict.threshold:.3f}"
    return (
        f"evaluation fault: the smoke model scores {score:.3f} on {where}, far below every "
        f"trivial predictor (weakest {verdict.weakest_informed:.3f}, fault below {limit}){extra}."
        " This is not a data problem: check which model class loaded the weights and the "
        "forward pass."
    )


def check_smoke_train(ctx: CheckContext) -> CheckResult:
    """Train the AMN a few epochs on an article-disjoint split; gate it against yardsticks.

    Gates: the seed's absolute levels only where calibrated or set in the registry; beating
    the mean-of-context predictor (relative); and, with a baseline dataset, not training
    significantly worse than on it (statistical). An evaluation fault is status "error".
    """
    run = smoke_run(ctx)
    m = dict(run.metrics)
    final = float(m["val_cosine_final"])
    gates = [
        *_threshold_gate(
            ctx,
            "smoke_epoch1_min",
            "epoch1_val_cosine",
            "val_cosine_epoch_1",
            float(m["val_cosine_epoch_1"]),
        ),
        *_threshold_gate(ctx, "smoke_final_min", "final_val_cosine", "val_cosine_final", final),
        Gate(
            "beats_mean_of_context",
            "val_cosine_final",
            final,
            ">",
            float(m["baseline_mean_context_cosine"]),
            "relative",
        ),
    ]
    comparison = _baseline_comparison(ctx, run)
    m.update(comparison)
    upper = comparison.get("val_cosine_drift_pct_upper_vs_baseline")
    if upper is not None:
        limit = float(ctx.threshold("smoke_baseline_drift_pct_min", DEFAULT_BASELINE_DRIFT_PCT))
        gates.append(
            Gate(
                "not_below_baseline_dataset",
                "val_cosine_drift_pct_upper_vs_baseline",
                upper,
                ">=",
                limit,
                "statistical",
            )
        )
    if m["evaluation_fault"]:
        extra = (
            ""
            if run.roundtrip_ok
            else (
                f"; the reloaded checkpoint scores {m['val_cosine_reloaded']:.4f} instead of "
                f"{m['val_cosine_best']:.4f}"
            )
        )
        message = _fault_message("val", final, run.fault, extra)
        return CheckResult("smoke_train", "error", m, message, gates, run.details)
    gain = float(m["val_cosine_gain_over_mean_context"])
    message = (
        f"after {m['epochs']} epochs on {m['n_train']} sequences ({m['split_kind']} split) "
        f"val cosine {final:.3f} vs mean-of-context {m['baseline_mean_context_cosine']:.3f} "
        f"({gain:+.3f}), copy-last {m['baseline_copy_last_cosine']:.3f}, "
        f"global mean {m['baseline_global_mean_cosine']:.3f}"
    )
    if comparison.get("baseline_dataset_val_cosine_best") is not None:
        message += (
            f"; best val {m['val_cosine_best']:.3f} vs "
            f"{comparison['baseline_dataset_val_cosine_best']:.3f}"
            f" on baseline '{comparison['baseline_dataset']}'"
            f" ({comparison['val_cosine_drift_pct_vs_baseline']:+.1f} %)"
        )
    if m["split_warning"]:
        message += f"; warning: {m['split_warning']}"
    return from_gates("smoke_train", m, gates, message, run.details)


def _baseline_comparison(ctx: CheckContext, run: SmokeRun) -> dict[str, Any]:
    """The same smoke recipe on the baseline dataset: the encoder-independent yardstick.

    Both models are scored on their own article-disjoint val rows; the standard error
    treats each val article (or block) as one sample.
    """
    base_ctx = ctx.baseline()
    if base_ctx is None:
        return {}
    base = smoke_run(base_ctx)
    if model_config(base.model) != model_config(run.model):
        return {"baseline_dataset": base_ctx.name, "baseline_dataset_comparable": False}
    base_mean = float(base.val_cosine_rows.mean())
    diff, z = shift_z(base.val_cosine_rows, base.val_groups, run.val_cosine_rows, run.val_groups)
    out: dict[str, Any] = {
        "baseline_dataset": base_ctx.name,
        "baseline_dataset_comparable": True,
        "baseline_dataset_val_cosine_best": base_mean,
        "val_cosine_drift_vs_baseline": diff,
        "val_cosine_drift_z_vs_baseline": z,
    }
    if base_mean <= MIN_INFORMED_GAP:  # a percentage of ~0 means nothing
        return out
    se = abs(diff / z) if math.isfinite(z) and z != 0.0 else 0.0
    out["val_cosine_drift_pct_vs_baseline"] = 100.0 * diff / base_mean
    out["val_cosine_drift_pct_upper_vs_baseline"] = (
        100.0 * (diff + DEFAULT_SHIFT_Z * se) / base_mean
    )
    return out


def check_ood_eval(ctx: CheckContext) -> CheckResult:
    """Score the (reloaded) smoke model and the trivial predictors on the `ood` split."""
    ood_ctx = ctx.split("ood")
    if ood_ctx is None:
        raise CheckSkipped(
            f"no 'ood' split configured for dataset '{ctx.name}' (set `ood = NAME` in lvmqa.toml)"
        )
    run = smoke_run(ctx)
    scores = evaluate_ood(
        run,
        ood_ctx.dataset,
        max_sequences=_max_sequences(ctx),
        fault_fraction=float(ctx.threshold("evaluation_fault_fraction", DEFAULT_FAULT_FRACTION)),
    )
    # Difficulty differs between val and OOD, so compare what the model adds over the
    # mean of the contexts on each, with article-clustered errors (a statistical gate).
    shift, shift_zscore = shift_z(
        run.val_gain_rows, run.val_groups, scores.gain_rows, scores.groups
    )
    metrics: dict[str, Any] = {
        "ood_cosine": scores.cosine,
        "ood_mse": scores.mse,
        **{f"ood_baseline_{k}_cosine": scores.trivial[k] for k in TRIVIAL_PREDICTORS},
        "ood_cosine_gain_over_mean_context": scores.cosine - scores.trivial["mean_context"],
        "val_cosine_best": run.metrics["val_cosine_best"],
        "val_cosine_best_gain_over_mean_context": float(run.val_gain_rows.mean()),
        "ood_gain_shift_vs_val": shift,
        "ood_gain_shift_z": shift_zscore,
        "n_ood": scores.n,
        "ood_dataset": ood_ctx.name,
        "n_nonfinite_rows_dropped": scores.n_nonfinite_rows_dropped,
        "ood_articles_in_train": _shared_articles(ctx.dataset, ood_ctx.dataset),
        "device": run.device,
        "evaluation_fault": scores.fault.fault,
        "evaluation_fault_threshold": scores.fault.threshold,
    }
    gates = [
        *_threshold_gate(ctx, "ood_min", "ood_cosine_min", "ood_cosine", scores.cosine),
    ]
    if math.isfinite(shift_zscore):
        gates.append(
            Gate(
                "ood_gain_not_below_val_gain",
                "ood_gain_shift_z",
                shift_zscore,
                ">=",
                -float(ctx.threshold("ood_gain_shift_z_min", DEFAULT_SHIFT_Z)),
                "statistical",
            )
        )
    if scores.fault.fault:
        message = _fault_message(f"OOD split '{ood_ctx.name}'", scores.cosine, scores.fault)
        return CheckResult("ood_eval", "error", metrics, message, gates)
    message = (
        f"OOD '{ood_ctx.name}' ({scores.n} sequences): cosine {scores.cosine:.3f} vs "
        f"mean-of-context {scores.trivial['mean_context']:.3f}, copy-last "
        f"{scores.trivial['copy_last']:.3f}; val (best epoch) {run.metrics['val_cosine_best']:.3f}"
    )
    return from_gates("ood_eval", metrics, gates, message)


def _shared_articles(train: Dataset, ood: Dataset) -> int | None:
    """Articles present in both files (None without ids); `split_leakage` judges it."""
    a, b = _article_ids(train), _article_ids(ood)
    if a is None or b is None:
        return None
    return int(np.intersect1d(a, b).size)
