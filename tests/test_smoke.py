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
    # A budget of 2,000 sequences over the 1,600 of `walk_files` leaves room for one fold.
    defaults: dict[str, Any] = {
        "smoke_epochs": 5,
        "smoke_device": "cpu",
        "smoke_max_sequences": 2000,
    }
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


def test_folds_hold_out_disjoint_articles_and_fold_0_is_plan_split() -> None:
    articles = np.repeat(np.arange(48), 90)
    plans = smoke.plan_folds(articles.size, articles=articles, max_sequences=20_000, seed=3)
    assert len(plans) == smoke.auto_folds(articles.size, 20_000) == 4
    single = smoke.plan_split(articles.size, articles=articles, max_sequences=20_000, seed=3)
    np.testing.assert_array_equal(plans[0].val_rows, single.val_rows)
    np.testing.assert_array_equal(plans[0].train_rows, single.train_rows)
    seen: set[int] = set()
    for plan in plans:
        val, train = set(articles[plan.val_rows]), set(articles[plan.train_rows])
        assert not val & train
        assert val | train == set(range(48))  # every fold trains on all the rest
        assert not val & seen  # no article is held out twice
        seen |= val
        assert 0.1 * articles.size <= plan.val_rows.size < 0.1 * articles.size + 90


@pytest.mark.parametrize(
    ("n", "budget", "expected"),
    [
        (4225, 20_000, 4),
        (7788, 20_000, 2),
        (20_000, 20_000, 1),
        (10**6, 20_000, 1),
        (500, 20_000, 10),
    ],
)
def test_auto_folds_spend_the_unused_budget(n: int, budget: int, expected: int) -> None:
    assert smoke.auto_folds(n, budget) == expected


def test_block_folds_without_ids_are_disjoint_blocks() -> None:
    plans = smoke.plan_folds(1000, max_sequences=1000, seed=2, folds=3)
    assert [p.kind for p in plans] == ["contiguous_blocks"] * 3
    vals = [set(p.val_rows) for p in plans]
    assert all(len(v) == 100 for v in vals)
    assert not (vals[0] & vals[1]) and not (vals[1] & vals[2]) and not (vals[0] & vals[2])
    for plan in plans:
        assert not set(plan.train_rows) & set(plan.val_rows)


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
    # checks within epochs: 5 epochs of ceil(n/64) steps, 8 checks per epoch, plus step 0
    assert outcome.checks[0].step == 0
    assert outcome.checks[0].val_cosine == pytest.approx(trivial["mean_context"], abs=1e-6)
    assert outcome.steps_per_epoch > 8
    assert len(outcome.checks) == 1 + 5 * 8  # the last check of each epoch is its end
    assert [c.step for c in outcome.checks[8::8]] == [
        e * outcome.steps_per_epoch for e in range(1, 6)
    ]
    best = min(outcome.checks[1:], key=lambda c: c.val_mse)  # the untrained model is no candidate
    assert best.step == outcome.best_step
    assert outcome.best_epoch == math.ceil(best.step / outcome.steps_per_epoch)
    cos, _ = smoke.evaluate_model(
        outcome.model, torch.from_numpy(contexts[val]), torch.from_numpy(targets[val])
    )
    assert cos == pytest.approx(best.val_cosine, abs=1e-6)  # the best weights were kept
    assert outcome.crossfit_cosine_rows is None  # no halves were given


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


# ---------------------------------------------------------- the gate on the gain over mean
def _groups_of(gains_per_group: list[float], rows_per_group: int = 10) -> tuple[np.ndarray, ...]:
    gains = np.repeat(np.asarray(gains_per_group, dtype=np.float64), rows_per_group)
    return gains, np.repeat(np.arange(len(gains_per_group)), rows_per_group)


def test_t_critical_matches_the_normal_level_and_widens_with_few_groups() -> None:
    assert smoke.t_critical(3.0, 10**6) == pytest.approx(3.0, abs=1e-3)
    assert smoke.t_critical(3.0, 5) == pytest.approx(6.62, abs=0.01)  # t(4), p = 0.00135
    assert smoke.t_critical(3.0, 5, power=0.8) == pytest.approx(0.941, abs=0.001)
    assert smoke.t_critical(3.0, 1) == math.inf


def test_a_clear_gain_on_a_powered_split_beats_mean_of_context() -> None:
    gains, groups = _groups_of([0.010 + 0.001 * (-1) ** i for i in range(40)])
    test = smoke.mean_context_gain_test(gains, groups, 0.5)
    assert test.gain == pytest.approx(0.010)
    assert test.expected_gain == pytest.approx(0.0025)  # 0.5 % of 0.5
    assert test.powered
    assert test.gate.name == "beats_mean_of_context"
    assert test.gate.passed


def test_a_tie_with_mean_of_context_fails_beats_when_the_split_is_powered() -> None:
    gains, groups = _groups_of([0.001 * (-1) ** i for i in range(40)])  # mean exactly 0
    test = smoke.mean_context_gain_test(gains, groups, 0.5)
    assert test.gain == pytest.approx(0.0, abs=1e-12)
    # se = 0.001·sqrt(40/39)/sqrt(40); detectable = (t + t_0.8)·se must be below 0.0025
    assert test.se == pytest.approx(0.001 * math.sqrt(40 / 39) / math.sqrt(40))
    assert test.powered
    assert test.gate.name == "beats_mean_of_context"
    assert not test.gate.passed


def test_an_underpowered_split_only_asks_for_not_worse() -> None:
    tie, tie_groups = _groups_of([0.01 * (-1) ** i for i in range(40)])
    test = smoke.mean_context_gain_test(tie, tie_groups, 0.5)
    assert not test.powered
    assert test.min_detectable_gain > test.expected_gain
    assert test.gate.name == "not_worse_than_mean_of_context"
    assert test.gate.passed  # no evidence either way: a tie is not a failure
    worse, groups = _groups_of([-0.03, -0.035, -0.025, -0.03, -0.032])  # overfitted: worse
    test = smoke.mean_context_gain_test(worse, groups, 0.5)
    assert not test.powered  # 5 groups: t(4) = 6.6
    assert test.gate.name == "not_worse_than_mean_of_context"
    assert test.gate.value == pytest.approx(test.gain + smoke.t_critical(3.0, 5) * test.se)
    assert not test.gate.passed


def test_gain_test_settings_are_respected() -> None:
    gains, groups = _groups_of([0.004 + 0.001 * (-1) ** i for i in range(40)])
    assert smoke.mean_context_gain_test(gains, groups, 0.5).gate.name == "beats_mean_of_context"
    never = smoke.mean_context_gain_test(gains, groups, 0.5, expected_gain_pct=0.0)
    assert never.gate.name == "not_worse_than_mean_of_context"
    strict = smoke.mean_context_gain_test(gains, groups, 0.5, z=30.0)  # t ≈ 30: no power
    assert strict.gate.name == "not_worse_than_mean_of_context"
    one_group = smoke.mean_context_gain_test(np.full(9, -0.01), np.zeros(9), 0.5)
    assert not one_group.powered
    assert one_group.gate.value == pytest.approx(-0.01)  # no error estimate: only the sign
    assert not one_group.gate.passed


def test_crossfit_scores_each_half_with_the_check_chosen_on_the_other() -> None:
    model = smoke.build_amn(smoke.AmnConfig(dim=4))
    tracker = smoke._CheckTracker(np.array([True, True, False, False]), 4)
    cos = np.array
    tracker.record(0, cos([0.0, 0.0, 0.0, 0.0]), cos([4.0, 4.0, 4.0, 4.0]), model)
    tracker.record(1, cos([0.1, 0.1, 0.2, 0.2]), cos([1.0, 1.0, 5.0, 5.0]), model)
    tracker.record(2, cos([0.3, 0.3, 0.4, 0.4]), cos([3.0, 3.0, 2.0, 2.0]), model)
    assert tracker.best_step == 2  # all rows: mean MSE 2.5 < 3.0
    assert tracker.half_steps == [1, 2]  # half A prefers step 1, half B step 2
    assert tracker.crossfit is not None
    np.testing.assert_allclose(tracker.crossfit, [0.3, 0.3, 0.2, 0.2])
    assert tracker.beat_untrained()


def unpredictable_windows(
    n_articles: int = 200, windows: int = 10, noise: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contexts of independent random unit vectors; target = their mean plus isotropic noise.

    The mean of the contexts is then the best possible direction: no model can beat it.
    """
    rng = np.random.default_rng(seed)
    n = n_articles * windows
    contexts = smoke.random_unit_vectors(n * 5, D, seed).reshape(n, 5, D)
    targets = contexts.mean(axis=1) + noise * rng.standard_normal((n, D)) / math.sqrt(D)
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    return contexts, targets.astype(np.float32), np.repeat(np.arange(n_articles), windows)


def _gain_test_of(run: smoke.SmokeRun) -> smoke.GainTest:
    mean_context = float(run.metrics["baseline_mean_context_cosine"])
    return smoke.mean_context_gain_test(run.val_gain_rows, run.val_groups, mean_context)


def test_the_gate_fails_a_model_that_cannot_beat_mean_of_context(tmp_path: Path) -> None:
    contexts, targets, articles = unpredictable_windows()
    np.savez(tmp_path / "u.npz", context_sequences=contexts, target_vectors=targets)
    dataset = open_dataset(tmp_path / "u.npz")
    config = smoke.TrainConfig(epochs=3, device="cpu")
    run = smoke.run_smoke(dataset, config, articles=articles, folds=2)
    test = _gain_test_of(run)
    assert run.metrics["lr_backoffs"] == 2  # no step size ever beat the untrained model
    assert test.gain < test.expected_gain
    # 40 val articles of a consistent (zero) gain: powered, and "beats" fails
    assert test.powered
    assert test.gate.name == "beats_mean_of_context"
    assert not test.gate.passed
    # the origin's recipe without back-off makes it clearly worse, and the gate says so
    crude = smoke.run_smoke(
        dataset, dataclasses.replace(config, lr=5e-3, lr_backoffs=0), articles=articles, folds=2
    )
    crude_test = _gain_test_of(crude)
    assert crude_test.gain < -0.01
    assert crude_test.gate.name == "not_worse_than_mean_of_context"  # noisy: not powered
    assert not crude_test.gate.passed


def test_the_gate_passes_a_model_that_beats_mean_of_context(tmp_path: Path) -> None:
    contexts, targets, articles = walk_windows(200, 15)
    np.savez(tmp_path / "w.npz", context_sequences=contexts, target_vectors=targets)
    config = smoke.TrainConfig(epochs=3, device="cpu")
    run = smoke.run_smoke(open_dataset(tmp_path / "w.npz"), config, articles=articles, folds=2)
    assert run.metrics["n_val_groups"] == np.unique(run.val_groups).size >= 38
    # powered for gains of 5 % (the walk's gain is ~20 %, varying by article), it beats
    mean_context = float(run.metrics["baseline_mean_context_cosine"])
    test = smoke.mean_context_gain_test(
        run.val_gain_rows, run.val_groups, mean_context, expected_gain_pct=5.0
    )
    assert test.gain > 0.1
    assert test.powered
    assert test.gate.name == "beats_mean_of_context"
    assert test.gate.passed


def test_backoff_restarts_with_a_smaller_step_only_when_epoch_1_never_gains() -> None:
    contexts, targets, articles = unpredictable_windows(60, 10)
    plan = smoke.plan_split(len(targets), articles=articles, seed=0)
    config = smoke.TrainConfig(epochs=2, lr=5e-3, batch_size=64)
    outcome, tried = smoke.train_with_backoff(
        contexts, targets, plan.train_rows, plan.val_rows, config
    )
    assert tried == pytest.approx([5e-3, 5e-4, 5e-5])
    assert outcome.lr == pytest.approx(5e-5)
    assert len(outcome.history) == 2  # the last rung always runs to the end
    walk_contexts, walk_targets, walk_articles = walk_windows(30, 15)
    plan = smoke.plan_split(len(walk_targets), articles=walk_articles, seed=0)
    outcome, tried = smoke.train_with_backoff(
        walk_contexts, walk_targets, plan.train_rows, plan.val_rows, smoke.TrainConfig(epochs=2)
    )
    assert tried == [5e-4]
    assert not outcome.overshot


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
    assert m["split_ids_source"] == "file"
    assert m["n_folds"] == 1
    assert m["n_train"] + m["n_val"] == 80 * 20
    assert m["n_val"] >= 160
    assert len(m["val_cosine_per_epoch"]) == len(m["train_loss_per_epoch"]) == 5
    assert m["val_cosine_final"] == m["val_cosine_per_epoch"][-1]
    assert m["val_cosine_final"] > m["baseline_mean_context_cosine"]
    assert m["device"] == "cpu"
    assert m["sequences_per_second"] > 0
    assert m["checkpoint_roundtrip_ok"]
    assert not m["evaluation_fault"]
    assert m["lr_tried"] == [5e-4]  # a predictable corpus needs no smaller step
    # selection flatters: the rows that chose the checkpoint score it at least as well
    assert m["val_cosine_reloaded"] >= m["val_cosine_best"] - 0.01
    assert m["crossfit"]
    assert m["val_windows_crossing_articles"] == 0
    # no calibration for this encoder: only the statistical gate on the gain
    # no calibration for this encoder: only the statistical gate on the gain. The gain varies
    # from article to article too much for 8 val articles to be powered for a 0.5 % gain,
    # so the gate is "not worse", though the gain is significant all the same.
    assert [(g.name, g.kind) for g in result.gates] == [
        ("not_worse_than_mean_of_context", "statistical")
    ]
    assert not m["gain_test_powered"]
    assert m["val_cosine_gain_over_mean_context"] > 0.05
    assert m["val_cosine_gain_lower_bound"] > 0
    assert "significant all the same" in result.message
    run: object = ctx.cached("smoke_model", lambda: pytest.fail("the model must be shared"))
    assert isinstance(run, smoke.SmokeRun)

    ood = run_check(ctx, "ood_eval")
    assert ood.status == "passed", ood.message
    assert ood.metrics["n_ood"] == 20 * 20
    assert ood.metrics["n_ood_groups"] == 20
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
    # one broken model among the folds' is enough to be a fault
    run = smoke.smoke_run(
        session(walk_files, TRAIN_AND_OOD, smoke_epochs=2, smoke_max_sequences=3200).context(
            "train"
        )
    )
    assert len(run.models) == run.metrics["n_folds"] == 2  # auto: budget 3,200 / 1,600 rows
    broken = dataclasses.replace(
        run, models=(run.models[0], broken_copy(run.models[1], NegatedAMN))
    )
    ctx = session(walk_files, TRAIN_AND_OOD).context("train")
    ctx.cached("smoke_model", lambda: broken)  # as if evaluation had loaded the wrong class
    result = run_check(ctx, "ood_eval")
    assert result.status == "error"
    assert result.metrics["evaluation_fault"] is True
    assert "not a data problem" in result.message
    # the diagnosis blames the evaluation, not the data
    from lvmqa.diagnosis import diagnose

    ran = {cid: run_check(ctx, cid) for cid in ("norms", "coherence", "smoke_train")}
    diagnosis = diagnose("train", {**ran, "ood_eval": result})
    assert diagnosis["root_causes"][0]["code"] == "evaluation_fault"


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


def test_smoke_hashes_the_file_only_when_a_report_asked(
    walk_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lvmqa.io

    hashed: list[Path] = []
    real = lvmqa.io.file_sha256
    monkeypatch.setattr(lvmqa.io, "file_sha256", lambda p: hashed.append(p) or real(p))
    dataset = open_dataset(walk_files / "train.npz")
    run = smoke.run_smoke(dataset, smoke.TrainConfig(epochs=1), folds=1)
    assert run.roundtrip_ok and hashed == []  # the round trip still checks the data id
    dataset.hash_in_background()
    smoke.run_smoke(dataset, smoke.TrainConfig(epochs=1), folds=1)
    assert hashed == [walk_files / "train.npz"]
