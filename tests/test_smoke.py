"""Known answers for the smoke model, its split, the trivial predictors and the fault guard.

Everything runs the real torch model on small synthetic data (D=32): articles that drift by
one shared rotation per chunk, so the next vector is predictable on articles never seen.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn import functional as F  # noqa: N812

from lvmqa import smoke
from lvmqa.checks import RunOptions, Session, run_check
from lvmqa.errors import CheckSkipped, LvmqaError
from lvmqa.io import open_dataset
from lvmqa.registry import load_registry

D = 32


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    # Tiny models run faster on one thread, and 2 shared cores oversubscribe easily.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def walk_windows(
    n_articles: int = 60, chunks: int = 20, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vectors, articles, _ = smoke.random_walk_articles(n_articles, chunks, D, seed=seed)
    return smoke.article_windows(vectors, articles, 5)


def write_bank(path: Path, vectors: np.ndarray, articles: np.ndarray, chunks: np.ndarray) -> Path:
    np.savez(
        path,
        vectors=vectors.astype(np.float32),
        article_indices=articles.astype(np.int32),
        chunk_indices=chunks.astype(np.int32),
    )
    return path


def session(tmp_path: Path, toml: str, **options: Any) -> Session:
    (tmp_path / "lvmqa.toml").write_text(toml, encoding="utf-8")
    defaults: dict[str, Any] = {"smoke_epochs": 5, "smoke_device": "cpu"}
    return Session(load_registry(tmp_path / "lvmqa.toml"), RunOptions(**{**defaults, **options}))


@pytest.fixture
def walk_files(tmp_path: Path) -> Path:
    """train.npz: 80 articles; ood.npz: 20 other articles under the same rotation."""
    vectors, articles, chunks = smoke.random_walk_articles(100, 25, D, seed=3)
    train = articles < 80
    write_bank(tmp_path / "train.npz", vectors[train], articles[train], chunks[train])
    write_bank(tmp_path / "ood.npz", vectors[~train], articles[~train], chunks[~train])
    return tmp_path


TRAIN_AND_OOD = (
    '[datasets.train]\npath = "train.npz"\nood = "ood"\n[datasets.ood]\npath = "ood.npz"\n'
)


class NegatedAMN(smoke.amn_class()):  # type: ignore[misc]
    """A deliberately broken forward pass with the AMN's exact layer names."""

    def forward(self, contexts: torch.Tensor) -> torch.Tensor:
        return -super().forward(contexts)


class RandomOutputAMN(smoke.amn_class()):  # type: ignore[misc]
    def forward(self, contexts: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        noise = torch.randn(contexts.shape[0], contexts.shape[2], generator=generator)
        return F.normalize(noise, dim=-1)


def broken_copy(model: torch.nn.Module, cls: type[torch.nn.Module]) -> torch.nn.Module:
    """The same weights inside another class: what the origin's evaluation script did."""
    cfg = smoke.model_config(model)
    broken = cls(cfg.dim, cfg.context_length, cfg.attention_dim, cfg.hidden_dims)
    broken.load_state_dict(model.state_dict())
    return broken.eval()


@pytest.fixture(scope="module")
def trained() -> tuple[smoke.TrainOutcome, np.ndarray, np.ndarray, smoke.SplitPlan]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        contexts, targets, articles = walk_windows()
        plan = smoke.plan_split(len(targets), articles=articles, seed=0)
        outcome = smoke.train_amn(
            contexts,
            targets,
            plan.train_rows,
            plan.val_rows,
            smoke.TrainConfig(epochs=5, batch_size=64),
        )
    finally:
        torch.set_num_threads(threads)
    return outcome, contexts, targets, plan


# ------------------------------------------------------------------------------- the model
def test_parameter_count_at_768_is_the_origins() -> None:
    model = smoke.build_amn(smoke.AmnConfig(dim=768))
    assert smoke.count_parameters(model) == 1_510_912


@pytest.mark.parametrize("dim", [32, 384])
def test_parameter_count_follows_the_layer_list_at_any_dim(dim: int) -> None:
    linear = [(dim, 256), (dim, 256), (2 * dim, 512), (512, 256), (256, dim)]
    expected = sum(i * o + o for i, o in linear) + 2 * 512 + 2 * 256  # + LayerNorm affine
    assert smoke.count_parameters(smoke.build_amn(smoke.AmnConfig(dim=dim))) == expected


def test_untrained_model_is_exactly_the_mean_of_context_predictor() -> None:
    contexts = torch.randn(7, 5, D)
    out = smoke.build_amn(smoke.AmnConfig(dim=D))(contexts)
    torch.testing.assert_close(out, F.normalize(contexts.mean(dim=1), dim=-1))


def test_prediction_is_a_unit_vector_and_ignores_context_order() -> None:
    torch.manual_seed(1)
    model = smoke.build_amn(smoke.AmnConfig(dim=D))
    last = list(model.modules())[-1]
    assert isinstance(last, torch.nn.Linear)
    torch.nn.init.normal_(last.weight, std=0.5)  # a non-trivial residual
    contexts = torch.randn(9, 5, D)
    out = model(contexts)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(9))
    torch.testing.assert_close(model(contexts[:, [3, 0, 4, 2, 1]]), out)
    assert not torch.allclose(out, F.normalize(contexts.mean(dim=1), dim=-1), atol=1e-3)


def test_model_class_has_a_stable_importable_name() -> None:
    assert smoke.class_name(smoke.amn_class()) == "lvmqa.smoke.AttentionMixtureNetwork"
    assert smoke.AttentionMixtureNetwork is smoke.amn_class()
    assert smoke.class_name(NegatedAMN) != smoke.class_name(smoke.amn_class())


# -------------------------------------------------------------------------------- splits
@given(
    sizes=st.lists(st.integers(1, 40), min_size=2, max_size=60),
    seed=st.integers(0, 2**31 - 1),
    cap=st.integers(60, 3000),
)
def test_article_split_never_shares_an_article(sizes: list[int], seed: int, cap: int) -> None:
    articles = np.repeat(np.random.default_rng(seed).permutation(len(sizes)) * 7, sizes)
    plan = smoke.plan_split(articles.size, articles=articles, max_sequences=cap, seed=seed)
    assert plan.kind == "article"
    assert plan.warning is None
    assert plan.train_rows.size > 0
    assert plan.val_rows.size > 0
    assert not set(articles[plan.train_rows]) & set(articles[plan.val_rows])
    chosen = np.union1d(plan.train_rows, plan.val_rows)
    for article in np.unique(articles[chosen]):  # whole articles or nothing
        assert set(np.flatnonzero(articles == article)) <= set(chosen)
    assert chosen.size <= cap or np.unique(articles[chosen]).size == 2
    # val stops at the first article that reaches 10 % of the sample
    assert articles[plan.val_rows].size < 0.1 * chosen.size + max(sizes)


def test_capped_sample_is_drawn_from_the_whole_file_not_its_head() -> None:
    articles = np.repeat(np.arange(100), 10)
    plan = smoke.plan_split(1000, articles=articles, max_sequences=200, seed=0)
    picked = np.unique(articles[np.union1d(plan.train_rows, plan.val_rows)])
    assert picked.size == 20
    assert picked.max() >= 50  # the first 200 rows would be articles 0-19


def test_split_is_seeded() -> None:
    articles = np.repeat(np.arange(50), 8)
    first = smoke.plan_split(400, articles=articles, seed=4)
    again = smoke.plan_split(400, articles=articles, seed=4)
    other = smoke.plan_split(400, articles=articles, seed=5)
    np.testing.assert_array_equal(first.val_rows, again.val_rows)
    assert not np.array_equal(first.val_rows, other.val_rows)


def test_without_article_ids_blocks_are_split_and_the_edges_purged() -> None:
    plan = smoke.plan_split(1000, max_sequences=1000, seed=2, context_length=5)
    assert plan.kind == "contiguous_blocks"
    assert "no article ids" in (plan.warning or "")
    val = plan.val_rows
    assert val.size == 100
    assert np.all(np.diff(val) == 1)
    gap = np.minimum(np.abs(plan.train_rows - val[0]), np.abs(plan.train_rows - val[-1]))
    inside = (plan.train_rows >= val[0]) & (plan.train_rows <= val[-1])
    assert not inside.any()
    assert gap.min() > 5
    assert plan.purged_rows == 10 - 5 * (val[0] == 0) - 5 * (val[-1] == 999)
    assert plan.train_rows.size + plan.purged_rows == 900


def test_a_single_article_falls_back_to_blocks_with_a_warning() -> None:
    plan = smoke.plan_split(300, articles=np.zeros(300, dtype=int), seed=0)
    assert plan.kind == "contiguous_blocks"
    assert "one article" in (plan.warning or "")


# -------------------------------------------------------------------- trivial predictors
def test_trivial_predictors_score_hand_built_vectors_exactly() -> None:
    e = torch.eye(D)
    contexts = torch.stack([e[0], e[0], e[0], e[0], e[1]])[None].repeat(4, 1, 1)
    targets = e[0].repeat(4, 1) * 3.0  # scale must not matter
    scores = smoke.trivial_predictor_scores(contexts, targets, global_mean=e[0], seed=0)
    assert scores["copy_last"] == pytest.approx(0.0, abs=1e-7)
    assert scores["mean_context"] == pytest.approx(4 / math.sqrt(17), abs=1e-6)
    assert scores["global_mean"] == pytest.approx(1.0, abs=1e-6)
    assert abs(scores["random"]) < 0.5
    again = smoke.trivial_predictor_scores(contexts, targets, global_mean=e[0], seed=0)
    assert again["random"] == scores["random"]


def test_random_predictor_is_near_zero_in_high_dimension() -> None:
    targets = torch.from_numpy(smoke.random_unit_vectors(2000, 256, seed=9))
    contexts = targets[:, None].repeat(1, 5, 1)
    scores = smoke.trivial_predictor_scores(contexts, targets, global_mean=targets[0], seed=1)
    assert abs(scores["random"]) < 4 / math.sqrt(256 * 2000) * 10
    assert scores["copy_last"] == pytest.approx(1.0)
    assert scores["mean_context"] == pytest.approx(1.0)


def test_global_mean_is_the_normalised_mean_of_the_targets() -> None:
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    expected = torch.tensor([2.0, 1.0]) / math.sqrt(5)
    torch.testing.assert_close(smoke.normalized_mean(targets), expected)


def test_mean_cosine_is_scale_invariant() -> None:
    a, b = torch.randn(50, D), torch.randn(50, D)
    assert smoke.mean_cosine(2 * a, 0.1 * b) == pytest.approx(smoke.mean_cosine(a, b), abs=1e-6)
    assert smoke.mean_cosine(a, a) == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------------ training
def test_amn_beats_the_mean_of_context_on_predictable_articles(trained: Any) -> None:
    outcome, contexts, targets, plan = trained
    val = plan.val_rows
    trivial = smoke.trivial_predictor_scores(
        torch.from_numpy(contexts[val]),
        torch.from_numpy(targets[val]),
        global_mean=outcome.global_mean,
    )
    final = outcome.history[-1].val_cosine
    assert final > trivial["mean_context"] + 0.1
    assert len(outcome.history) == 5
    assert 1 <= outcome.best_epoch <= 5
    best = min(outcome.history, key=lambda h: h.val_mse)
    assert best.epoch == outcome.best_epoch
    cos, _ = smoke.evaluate_model(
        outcome.model, torch.from_numpy(contexts[val]), torch.from_numpy(targets[val])
    )
    assert cos == pytest.approx(best.val_cosine, abs=1e-6)  # the best weights were kept


def test_same_seed_gives_identical_numbers_and_restores_torch_state() -> None:
    contexts, targets, articles = walk_windows(30, 15)
    plan = smoke.plan_split(len(targets), articles=articles, seed=0)
    torch.manual_seed(123)
    caller_state = torch.random.get_rng_state()

    def run(seed: int) -> list[float]:
        config = smoke.TrainConfig(epochs=3, batch_size=32, seed=seed, device="cpu")
        outcome = smoke.train_amn(contexts, targets, plan.train_rows, plan.val_rows, config)
        return [h.val_cosine for h in outcome.history] + [h.train_loss for h in outcome.history]

    first, second, other = run(0), run(0), run(1)
    assert first == second
    assert first != other
    assert torch.equal(torch.random.get_rng_state(), caller_state)
    assert not torch.are_deterministic_algorithms_enabled()


def test_infonce_path_trains_and_changes_the_loss() -> None:
    contexts, targets, articles = walk_windows(30, 15)
    plan = smoke.plan_split(len(targets), articles=articles, seed=0)

    def run(lambda_info: float) -> smoke.TrainOutcome:
        config = smoke.TrainConfig(epochs=2, batch_size=64, lambda_info=lambda_info)
        return smoke.train_amn(contexts, targets, plan.train_rows, plan.val_rows, config)

    plain, mixed = run(0.0), run(0.5)
    assert all(math.isfinite(h.train_loss) for h in mixed.history)
    assert mixed.history[0].train_loss > plain.history[0].train_loss + 0.1  # CE dominates MSE


def test_infonce_rewards_matching_the_own_target() -> None:
    targets = torch.eye(8)
    matched = smoke.info_nce_loss(targets * 5, targets, tau=0.07)
    swapped = smoke.info_nce_loss(targets.roll(1, dims=0), targets, tau=0.07)
    assert float(matched) < 1e-4 < 10 < float(swapped)


def test_resolve_device() -> None:
    assert smoke.resolve_device("cpu") == "cpu"
    assert smoke.resolve_device(None) in {"cpu", "cuda", "mps"}
    with pytest.raises(LvmqaError, match="unknown smoke device"):
        smoke.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(LvmqaError, match="not available"):
            smoke.resolve_device("cuda")


# ------------------------------------------------------------------ the evaluation guard
def test_fault_verdict_on_the_origins_numbers() -> None:
    trivial = {"copy_last": 0.438, "mean_context": 0.546, "global_mean": 0.422, "random": 0.0}
    assert smoke.detect_evaluation_fault(0.0211, trivial).fault  # the origin's OOD bug
    assert not smoke.detect_evaluation_fault(0.446, trivial).fault  # its poor-but-real val
    assert smoke.detect_evaluation_fault(0.0211, trivial).threshold == pytest.approx(0.211)
    assert smoke.detect_evaluation_fault(float("nan"), trivial).fault
    no_signal = {"copy_last": 0.01, "mean_context": 0.02, "global_mean": 0.0, "random": 0.0}
    assert not smoke.detect_evaluation_fault(-0.2, no_signal).fault  # no yardstick to judge by


@pytest.mark.parametrize("cls", [NegatedAMN, RandomOutputAMN])
def test_guard_fires_when_the_forward_pass_is_broken(trained: Any, cls: type) -> None:
    outcome, contexts, targets, plan = trained
    val_ctx = torch.from_numpy(contexts[plan.val_rows])
    val_tgt = torch.from_numpy(targets[plan.val_rows])
    trivial = smoke.trivial_predictor_scores(val_ctx, val_tgt, global_mean=outcome.global_mean)
    good, _ = smoke.evaluate_model(outcome.model, val_ctx, val_tgt)
    bad, _ = smoke.evaluate_model(broken_copy(outcome.model, cls), val_ctx, val_tgt)
    assert not smoke.detect_evaluation_fault(good, trivial).fault
    assert smoke.detect_evaluation_fault(bad, trivial).fault


# ---------------------------------------------------------------------------- checkpoints
def test_checkpoint_roundtrip_reproduces_predictions(trained: Any, tmp_path: Path) -> None:
    outcome, contexts, _, _ = trained
    path = smoke.save_checkpoint(outcome.model, tmp_path / "amn.pt", dataset_sha256="sha256:ab")
    loaded = smoke.load_checkpoint(
        path,
        smoke.amn_class(),
        config=smoke.model_config(outcome.model),
        dataset_sha256="sha256:ab",
    )
    batch = torch.from_numpy(contexts[:16])
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), outcome.model(batch))


def test_checkpoint_refuses_another_class_config_or_dataset(trained: Any, tmp_path: Path) -> None:
    outcome = trained[0]
    path = smoke.save_checkpoint(outcome.model, tmp_path / "amn.pt", dataset_sha256="sha256:ab")
    with pytest.raises(LvmqaError) as wrong_class:
        smoke.load_checkpoint(path, NegatedAMN)  # same layer names: the origin's bug
    assert wrong_class.value.key == "model_class"
    assert "AttentionMixtureNetwork" in str(wrong_class.value.found)
    with pytest.raises(LvmqaError) as wrong_config:
        smoke.load_checkpoint(path, smoke.amn_class(), config=smoke.AmnConfig(dim=D + 1))
    assert wrong_config.value.key == "config"
    with pytest.raises(LvmqaError) as wrong_data:
        smoke.load_checkpoint(path, smoke.amn_class(), dataset_sha256="sha256:cd")
    assert wrong_data.value.key == "dataset_sha256"
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LvmqaError, match="not a readable checkpoint"):
        smoke.load_checkpoint(tmp_path / "junk.pt", smoke.amn_class())
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(LvmqaError, match="not an lvmqa AMN checkpoint"):
        smoke.load_checkpoint(tmp_path / "other.pt", smoke.amn_class())


# ------------------------------------------------------------------- data and the checks
def test_synthetic_windows_stay_inside_articles() -> None:
    vectors, articles, _chunks = smoke.random_walk_articles(4, 9, D, seed=0)
    assert vectors.shape == (36, D)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    contexts, targets, target_articles = smoke.article_windows(vectors, articles, 5)
    assert contexts.shape == (16, 5, D)
    assert targets.shape == (16, D)
    np.testing.assert_array_equal(target_articles, np.repeat(np.arange(4), 4))
    np.testing.assert_array_equal(contexts[0], vectors[0:5])
    np.testing.assert_array_equal(targets[4], vectors[9 + 5])


def test_load_rows_reads_one_tensor_with_unit_targets(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    contexts = rng.normal(size=(40, 5, D)).astype(np.float32)
    targets = rng.normal(size=(40, D)).astype(np.float32) * 3
    np.savez(tmp_path / "s.npz", context_sequences=contexts, target_vectors=targets)
    rows = np.array([1, 5, 6, 39])
    ctx, tgt = smoke.load_rows(open_dataset(tmp_path / "s.npz"), rows, "cpu", chunk_rows=3)
    np.testing.assert_array_equal(ctx.numpy(), contexts[rows])  # contexts stay raw
    expected = targets[rows] / np.linalg.norm(targets[rows], axis=1, keepdims=True)
    np.testing.assert_allclose(tgt.numpy(), expected, rtol=1e-6)


def test_smoke_train_and_ood_eval_through_the_registry(walk_files: Path) -> None:
    ctx = session(walk_files, TRAIN_AND_OOD).context("train")
    result = run_check(ctx, "smoke_train")
    m = result.metrics
    assert result.status == "passed", result.message
    assert m["split_kind"] == "article"
    assert m["split_warning"] is None
    assert m["n_train"] + m["n_val"] == 80 * 20
    assert m["n_val"] >= 160
    assert len(m["val_cosine_per_epoch"]) == len(m["train_loss_per_epoch"]) == 5
    assert m["val_cosine_final"] == m["val_cosine_per_epoch"][-1]
    assert m["val_cosine_final"] > m["baseline_mean_context_cosine"]
    assert m["device"] == "cpu"
    assert m["sequences_per_second"] > 0
    assert m["checkpoint_roundtrip_ok"]
    assert not m["evaluation_fault"]
    assert m["val_cosine_reloaded"] == pytest.approx(m["val_cosine_best"], abs=1e-4)
    assert m["val_windows_crossing_articles"] == 0
    assert [g.kind for g in result.gates] == ["relative"]  # no calibration for this encoder
    run: object = ctx.cached("smoke_model", lambda: pytest.fail("the model must be shared"))
    assert isinstance(run, smoke.SmokeRun)

    ood = run_check(ctx, "ood_eval")
    assert ood.status == "passed", ood.message
    assert ood.metrics["n_ood"] == 20 * 20
    assert ood.metrics["ood_articles_in_train"] == 0
    assert ood.metrics["ood_cosine"] > ood.metrics["ood_baseline_mean_context_cosine"]
    assert {g.kind for g in ood.gates} == {"statistical"}


def test_registry_thresholds_add_absolute_gates(walk_files: Path) -> None:
    toml = TRAIN_AND_OOD.replace(
        'ood = "ood"\n',
        'ood = "ood"\nthresholds = { smoke_epoch1_min = 0.99, smoke_final_min = 0.5, '
        "ood_min = 0.5 }\n",
    )
    ctx = session(walk_files, toml, smoke_epochs=2).context("train")
    result = run_check(ctx, "smoke_train")
    gates = {g.name: g for g in result.gates}
    assert gates["epoch1_val_cosine"].kind == "registry"
    assert not gates["epoch1_val_cosine"].passed
    assert gates["final_val_cosine"].passed
    assert result.status == "failed"
    ood = run_check(ctx, "ood_eval")
    assert {g.name for g in ood.gates} >= {"ood_cosine_min"}


def test_ood_eval_skips_without_an_ood_split(walk_files: Path) -> None:
    ctx = session(walk_files, '[datasets.train]\npath = "train.npz"\n').context("train")
    with pytest.raises(CheckSkipped, match="no 'ood' split"):
        smoke.check_ood_eval(ctx)


def test_broken_forward_on_the_real_ood_path_is_an_evaluation_fault(walk_files: Path) -> None:
    run = smoke.smoke_run(session(walk_files, TRAIN_AND_OOD, smoke_epochs=2).context("train"))
    broken = dataclasses.replace(run, model=broken_copy(run.model, NegatedAMN))
    ctx = session(walk_files, TRAIN_AND_OOD).context("train")
    ctx.cached("smoke_model", lambda: broken)  # as if evaluation had loaded the wrong class
    result = run_check(ctx, "ood_eval")
    assert result.status == "error"
    assert result.metrics["evaluation_fault"] is True
    assert "not a data problem" in result.message


def test_smoke_refuses_to_evaluate_weights_in_another_class(walk_files: Path) -> None:
    dataset = open_dataset(walk_files / "train.npz")
    with pytest.raises(LvmqaError, match="different model class"):
        smoke.run_smoke(dataset, smoke.TrainConfig(epochs=1), model_class=NegatedAMN)


def test_worse_than_the_baseline_dataset_fails_statistically(walk_files: Path) -> None:
    bank = np.load(walk_files / "train.npz")
    noise = smoke.random_unit_vectors(len(bank["vectors"]), D, seed=1)
    vectors = 0.3 * bank["vectors"] + noise  # the signal drowned in noise
    write_bank(walk_files / "noisy.npz", vectors, bank["article_indices"], bank["chunk_indices"])
    toml = TRAIN_AND_OOD + (
        '[datasets.noisy]\npath = "noisy.npz"\nbaseline = "train"\n'
        '[datasets.same]\npath = "train.npz"\nbaseline = "train"\n'
    )
    sess = session(walk_files, toml, smoke_epochs=2)
    noisy = run_check(sess.context("noisy"), "smoke_train")
    gate = {g.name: g for g in noisy.gates}["not_below_baseline_dataset"]
    assert gate.kind == "statistical"
    assert not gate.passed
    assert noisy.metrics["val_cosine_drift_pct_vs_baseline"] < -20
    same = run_check(sess.context("same"), "smoke_train")
    assert same.metrics["val_cosine_drift_vs_baseline"] == pytest.approx(0.0, abs=1e-9)
    assert {g.name: g for g in same.gates}["not_below_baseline_dataset"].passed


def test_without_article_ids_the_split_is_blocks_with_a_warning(tmp_path: Path) -> None:
    contexts, targets, _ = walk_windows(20, 15)
    np.savez(tmp_path / "s.npz", context_sequences=contexts, target_vectors=targets)
    ctx = session(tmp_path, '[datasets.s]\npath = "s.npz"\n', smoke_epochs=1).context("s")
    result = run_check(ctx, "smoke_train")
    assert result.metrics["split_kind"] == "contiguous_blocks"
    assert "no article ids" in result.metrics["split_warning"]
    assert "warning" in result.message


def test_nonfinite_rows_are_dropped_not_trained_on(tmp_path: Path) -> None:
    contexts, targets, _ = walk_windows(20, 15)
    targets[[3, 50]] = np.nan
    contexts[7, 2, 0] = np.inf
    np.savez(tmp_path / "s.npz", context_sequences=contexts, target_vectors=targets)
    run = smoke.run_smoke(
        open_dataset(tmp_path / "s.npz"), smoke.TrainConfig(epochs=1, device="cpu")
    )
    assert run.metrics["n_nonfinite_rows_dropped"] == 3
    assert all(math.isfinite(v) for v in run.metrics["val_cosine_per_epoch"])


def test_too_few_sequences_skip(tmp_path: Path) -> None:
    contexts, targets, _ = walk_windows(2, 10)
    np.savez(tmp_path / "s.npz", context_sequences=contexts, target_vectors=targets)
    with pytest.raises(CheckSkipped, match="at least"):
        smoke.run_smoke(open_dataset(tmp_path / "s.npz"), smoke.TrainConfig(epochs=1))
