"""Guard tests for the declared gate table, in the style of scikit-learn's test_common.

Every check id must have declared gates, a per-check quality test, a report section
and a title; every gate a check builds must be declared; the checks' module constants
must be the table's defaults; and the metrics that gates, the report and the diagnosis
read must be produced by the checks on real (synthetic) data.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from lvmqa import gates
from lvmqa.checks import CHECKS, RunOptions, Session
from lvmqa.registry import DatasetEntry, EncoderEntry, Registry
from lvmqa.results import Gate
from tests.conftest import QUALITY_TESTS
from tests.synthetic import file_windows, walk_articles

GATE_KINDS = {"absolute", "calibrated", "registry", "relative", "statistical", "structural"}
# Checks whose every gate needs a configured (calibrated or registry) threshold: on an
# uncalibrated encoder they would have no gate (their summary test then skips instead of
# passing). None today: coherence also gates adjacency against random pairs.
CONFIGURED_ONLY: set[str] = set()
# Checks that need an encoder or train a model: left out of the fast data run below.
NOT_IN_FAST_RUN = {"fingerprint", "alignment", "smoke_train", "ood_eval"}


def _quality_test_names() -> set[str]:
    names = set()
    for path in QUALITY_TESTS.glob("test_*.py"):
        tree = ast.parse(path.read_text())
        names |= {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    return names


@pytest.mark.parametrize("check_id", list(CHECKS))
def test_every_check_has_gates_a_quality_test_a_report_section_and_a_title(
    check_id: str,
) -> None:
    from lvmqa.report import SECTION_BUILDERS

    phase, target, title = CHECKS[check_id]
    assert phase in ("P0", "P1", "P2") and title.strip() and ":" in target
    assert gates.for_check(check_id), f"{check_id} declares no gate"
    assert f"test_{check_id}" in _quality_test_names()
    assert check_id in SECTION_BUILDERS


def test_every_declared_gate_belongs_to_a_check() -> None:
    assert {spec.check for spec in gates.GATES.values()} <= set(CHECKS)


@pytest.mark.parametrize("spec", list(gates.GATES.values()), ids=lambda s: s.label)
def test_declared_gate_is_well_formed(spec: gates.GateSpec) -> None:
    assert spec.kind in GATE_KINDS
    assert spec.op in (">=", ">", "<=", "<", "==")
    assert spec.higher_is_better == (None if spec.op == "==" else spec.op in (">=", ">"))
    assert spec.title
    if spec.default is None and spec.threshold_of is None:
        assert spec.key and spec.when, "a configured-only gate must say how to configure it"
    if spec.null is not None:
        assert spec.kind == "statistical" and spec.ci_metric
    assert spec.key is None or spec.key == spec.key.lower()


def test_checks_that_can_pass_with_no_gate_are_named() -> None:
    configured_only = {
        check_id
        for check_id in CHECKS
        if all(s.default is None and s.threshold_of is None for s in gates.for_check(check_id))
    }
    assert configured_only == CONFIGURED_ONLY


def test_module_constants_are_the_table_defaults() -> None:
    from lvmqa import coherence, encoders, leakage, metrics, retrieval, texts

    def default(check: str, gate_id: str) -> Any:
        return gates.default(check, gate_id)

    assert default("norms", "target_norm_mean_error") == metrics.NORM_MEAN_TOLERANCE
    assert default("norms", "context_norm_std") == metrics.NORM_STD_MAX
    assert default("alignment", "cosine_p5") == encoders.ALIGNMENT_P5
    assert default("oracle_recall", "dup_aware_recall_at_5") == retrieval.RECALL_AT_5
    assert default("oracle_recall", "dup_aware_recall_at_1000") == retrieval.RECALL_AT_1000
    assert default("duplicates", "exact_duplicate_share") == retrieval.DUPLICATE_SHARE
    assert coherence.DEFAULT_LOW_COHERENCE == gates.LOW_COHERENCE
    for name in gates.COHERENCE_DEFINITIONS:
        drift = default("coherence_drift", f"{name}_mean_drift_pct")
        assert drift == coherence.DEFAULT_DRIFT_MEAN_PCT
        low = default("coherence_drift", f"{name}_low_share_change_pp")
        assert low == coherence.DEFAULT_DRIFT_LOW_SHARE_PP
    assert set(gates.COHERENCE_DEFINITIONS) == set(coherence.DEFINITION_TITLES)
    for suffix, key, value in leakage._GATES:
        for role in gates.LEAKAGE_ROLES:
            spec = gates.spec("split_leakage", f"{role}_{suffix}")
            assert (spec.key, spec.default) == (key, value)
    for metric, op, value in texts._GATES:
        spec = gates.spec("text_quality", metric)
        assert (spec.op, spec.key, spec.default) == (op, metric, value)


@pytest.mark.slow
def test_smoke_constants_are_the_table_defaults() -> None:
    from lvmqa import smoke  # imports torch

    drift = gates.spec("smoke_train", "val_cosine_drift_pct_upper_vs_baseline")
    assert drift.default == smoke.DEFAULT_BASELINE_DRIFT_PCT
    assert gates.default("ood_eval", "ood_gain_shift_z") == smoke.DEFAULT_SHIFT_Z


# ------------------------------------------------------------------ thresholds
def _session(thresholds: dict[str, Any], encoder: EncoderEntry | None) -> Session:
    entry = DatasetEntry("data", Path("data.npz"), encoder=encoder.name if encoder else None,
                         thresholds=thresholds)
    encoders = {encoder.name: encoder} if encoder else {}
    return Session(Registry(None, encoders, {"data": entry}), RunOptions())


def test_threshold_lookup_order_kind_and_source() -> None:
    from lvmqa.registry import GTR_T5_CALIBRATION

    spec = gates.spec("oracle_recall", "dup_aware_recall_at_5")
    plain = gates.resolve(_session({}, None).context("data"), spec)
    assert isinstance(plain, gates.Threshold)
    assert (plain.value, plain.kind) == (0.97, "absolute")
    assert "default" in plain.source and "recall_at_5" in plain.source

    encoder = EncoderEntry("enc", "some-model", thresholds={"recall_at_5": 0.9})
    from_encoder = gates.resolve(_session({}, encoder).context("data"), spec)
    assert isinstance(from_encoder, gates.Threshold)
    assert (from_encoder.value, from_encoder.kind) == (0.9, "registry")
    assert "[encoders.enc.thresholds]" in from_encoder.source

    dataset_wins = gates.resolve(_session({"recall_at_5": 0.5}, encoder).context("data"), spec)
    assert isinstance(dataset_wins, gates.Threshold)
    assert dataset_wins.value == 0.5 and "[datasets.data.thresholds]" in dataset_wins.source

    key = "smoke_final_min"
    calibrated = gates.spec("smoke_train", "val_cosine_best")
    gtr = EncoderEntry("gtr", "sentence-transformers/gtr-t5-base")
    found = gates.resolve(_session({}, gtr).context("data"), calibrated)
    assert isinstance(found, gates.Threshold)
    assert (found.value, found.kind) == (GTR_T5_CALIBRATION[key], "calibrated")
    assert "calibrated for encoder 'gtr'" in found.source


def test_configured_only_gate_says_how_to_set_it() -> None:
    spec = gates.spec("smoke_train", "val_cosine_best")
    reason = gates.resolve(_session({}, None).context("data"), spec)
    assert isinstance(reason, str)
    assert "smoke_final_min" in reason and "[datasets.data.thresholds]" in reason


def test_negated_limit_is_a_lower_bound() -> None:
    spec = gates.spec("ood_eval", "ood_gain_shift_z")
    found = gates.resolve(_session({"ood_gain_shift_z_min": 2.0}, None).context("data"), spec)
    assert isinstance(found, gates.Threshold) and found.value == -2.0


def test_non_numeric_threshold_is_a_one_line_error() -> None:
    from lvmqa.errors import LvmqaError

    spec = gates.spec("norms", "target_norm_std")
    with pytest.raises(LvmqaError, match="norm_std_max"):
        gates.resolve(_session({"norm_std_max": "small"}, None).context("data"), spec)


# ------------------------------------------------------------ significance gates
@pytest.mark.parametrize(
    ("value", "ci", "passed"),
    [
        (-24.7, (-28.2, -21.3), False),  # beyond -5 % and sure: fails
        (-24.7, (-50.0, 3.0), True),  # beyond -5 % but within noise
        (-2.0, (-3.0, -1.0), True),  # sure, but a small drift
        (float("nan"), (float("nan"), float("nan")), False),
    ],
)
def test_significance_gate_fails_only_when_beyond_and_sure(
    value: float, ci: tuple[float, float], passed: bool
) -> None:
    gate = Gate("drift", "m", value, ">=", -5.0, "statistical", ci=ci, null=0.0)
    assert gate.passed is passed
    assert Gate.from_json(gate.to_json()).passed is passed


def test_make_builds_declared_gates_with_provenance() -> None:
    ctx = _session({"duplicate_share": 0.2}, None).context("data")
    gate = gates.make(ctx, "duplicates", "near_duplicate_share", 0.1, ci=(0.05, 0.15))
    assert (gate.threshold, gate.kind, gate.gate_id, gate.key) == (
        0.2, "registry", "near_duplicate_share", "duplicate_share")
    assert gate.passed and gate.ci == (0.05, 0.15)
    assert "0.05 .. 0.15" in gates.evidence_table(gate)


def test_register_check_rejects_a_check_without_gates() -> None:
    from lvmqa.errors import LvmqaError

    with pytest.raises(LvmqaError, match="declares no gate"):
        gates.register_check("no_gates_here", "tests.test_gate_table:_session", title="x",
                             gates=[])
    assert "no_gates_here" not in CHECKS


# ----------------------------------------------------------- one run on real data
class Recording(dict):  # type: ignore[type-arg]
    """A metrics dict that remembers the keys read from it that it does not hold."""

    missing: ClassVar[set[str]] = set()

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            Recording.missing.add(key)
        return dict.__getitem__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self:
            Recording.missing.add(key)
        return dict.get(self, key, default)


def _articles(rng: np.random.Generator, n: int, offset: int, shuffle: bool) -> dict[str, Any]:
    rows, article, chunk = walk_articles(rng, (rng.poisson(20, n) + 8).tolist(), 32, 0.8)
    order = rng.permutation(len(rows)) if shuffle else np.arange(len(rows))
    rows, article, chunk = rows[order], article[order] + offset, chunk[order]
    contexts, targets = file_windows(rows)
    texts = np.array([f"Article {a} says thing {c}." for a, c in zip(article, chunk,
                                                                       strict=True)],
                     dtype=object)
    return {"context_sequences": contexts, "target_vectors": targets,
            "target_texts": texts[5:], "article_ids": article[5:], "chunk_ids": chunk[5:]}


@pytest.fixture(scope="module")
def data_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Session, dict[str, Any]]:
    """The data checks on a shuffled file with a clean baseline and val/ood splits."""
    folder = tmp_path_factory.mktemp("gate-table")
    rng = np.random.default_rng(3)
    files = {"base": _articles(rng, 40, 0, False), "cur": _articles(rng, 40, 100, True),
             "val": _articles(rng, 10, 1000, False), "ood": _articles(rng, 10, 2000, False)}
    entries = {}
    for name, arrays in files.items():
        np.savez(folder / f"{name}.npz", **arrays)
        extra = {"baseline": "base", "val": "val", "ood": "ood"} if name == "cur" else {}
        entries[name] = DatasetEntry(name, folder / f"{name}.npz", **extra)
    session = Session(Registry(None, {}, entries), RunOptions(debug=True))
    session.add("cur")
    results = {cid: session.run("cur", cid) for cid in CHECKS if cid not in NOT_IN_FAST_RUN}
    return session, results


def test_fast_run_covers_every_data_check(data_run: tuple[Session, dict[str, Any]]) -> None:
    _, results = data_run
    assert {cid: r.status for cid, r in results.items()} == {
        "norms": "passed", "oracle_recall": "passed", "duplicates": "passed",
        # The shuffled file's adjacency is no better than random pairs.
        "coherence": "failed", "coherence_drift": "failed", "sequence_integrity": "failed",
        "split_leakage": "passed", "text_quality": "passed",
    }  # fmt: skip


def test_every_gate_a_check_builds_is_declared(data_run: tuple[Session, dict[str, Any]]) -> None:
    _, results = data_run
    undeclared = [
        f"{cid}: {g.metric} {g.op}"
        for cid, r in results.items()
        for g in r.gates
        if not any(gates.find([g], s) for s in gates.for_check(cid))
        # coherence_drift still gates on verdict levels; its declared gates are derived
        # from the drift metrics (gates.derive) until check_coherence_drift uses make().
        and not (cid == "coherence_drift" and g.metric.endswith("_drift_level"))
    ]
    assert undeclared == []


def test_every_applied_gate_reads_a_produced_metric(
    data_run: tuple[Session, dict[str, Any]],
) -> None:
    session, results = data_run
    ctx = session.context("cur")
    applied = 0
    for cid, result in results.items():
        for spec in gates.for_check(cid):
            gate = gates.find(result.gates, spec)
            if gate is not None:
                applied += 1
                assert spec.metric in result.metrics, spec.label
                assert gate.threshold == gates.resolve(ctx, spec).value  # type: ignore[union-attr]
    assert applied >= 30


def test_drift_gates_agree_with_the_check_verdict(
    data_run: tuple[Session, dict[str, Any]],
) -> None:
    """The drift gates are the rule behind the verdict, on the real numbers."""
    _, results = data_run
    result = results["coherence_drift"]
    for name in result.metrics["gated"]:
        found = [
            gates.find(result.gates, spec)
            for spec in gates.for_check("coherence_drift")
            if spec.metric.startswith(f"{name}_")
        ]
        assert len(found) == 2 and all(g is not None and g.ci is not None for g in found)
        significant = result.metrics[f"{name}_drift_verdict"] == "significant"
        assert any(not g.passed for g in found if g is not None) == significant, name


# The metrics the report may read that a check omits on purpose (documented there).
OPTIONAL_REPORT_READS = {"index_note", "nprobe"}


def test_report_reads_only_produced_metrics(data_run: tuple[Session, dict[str, Any]]) -> None:
    from lvmqa.report import build_results, report_blocks

    session, _ = data_run
    results = build_results(session)
    for check in results["datasets"]["cur"]["checks"].values():
        check["metrics"] = Recording(check["metrics"])
    Recording.missing = set()
    report_blocks(results)
    assert Recording.missing <= OPTIONAL_REPORT_READS


def test_diagnosis_reads_only_produced_metrics(data_run: tuple[Session, dict[str, Any]]) -> None:
    """The lead extends this as the diagnosis grows (smoke and encoder checks: slow run)."""
    from lvmqa.diagnosis import diagnose

    _, results = data_run
    Recording.missing = set()
    recorded = {c: dataclasses.replace(r, metrics=Recording(r.metrics)) for c, r in results.items()}
    diagnose("cur", recorded)
    assert Recording.missing == set()
