"""Diagnosis rules on hand-built check results: each code, its ranking, no false alarms."""

from __future__ import annotations

from typing import Any

import pytest

from lvmqa.diagnosis import ROOT_CAUSE_CODES, Facts, diagnose
from lvmqa.results import CheckResult, Gate


def result(check: str, status: str = "passed", gates: list[Gate] | None = None,
           **metrics: Any) -> CheckResult:
    return CheckResult(check, status, metrics, f"{check} {status}", gates or [])


def failing(check: str, metric: str, value: float, threshold: float, **metrics: Any
            ) -> CheckResult:
    op = ">=" if metric in ("cosine_p5", "dup_aware_recall_at_5") else "<="
    gate = Gate(metric, metric, value, op, threshold)
    assert not gate.passed
    return result(check, "failed", [gate], **{metric: value}, **metrics)


CLEAN = {
    "fingerprint": result("fingerprint", dim=384, dataset_dim=384, fingerprint_matches=1),
    "norms": result("norms", target_norm_mean=1.0, target_norm_std=1e-5),
    "alignment": result("alignment", diagnosis="aligned", cosine_p5=0.9999),
    "oracle_recall": result("oracle_recall", recall_at_5=1.0, recall_at_1000=1.0),
    "duplicates": result("duplicates", exact_duplicate_share=0.001, near_duplicate_share=0.0),
    "coherence": result("coherence", file_order_mean=0.42),
    "coherence_drift": result("coherence_drift", drift_verdict="none",
                              file_order_drift_verdict="none",
                              article_order_drift_verdict="none"),
    "sequence_integrity": result("sequence_integrity", crossing_share=0.0, windows_checked=4000),
    "split_leakage": result("split_leakage"),
    "text_quality": result("text_quality", blocklist_share=0.003),
    "smoke_train": result("smoke_train"),
    "ood_eval": result("ood_eval"),
}


def with_(**replacements: CheckResult) -> dict[str, CheckResult]:
    return {**CLEAN, **replacements}


CASES: dict[str, dict[str, CheckResult]] = {
    "normalization": with_(norms=failing("norms", "target_norm_std", 0.06, 0.01,
                                         target_norm_mean=1.02, target_nan_count=0)),
    "encoder_mismatch": with_(alignment=failing("alignment", "cosine_p5", 0.05, 0.98,
                                                diagnosis="wrong_encoder", cosine_mean=0.08)),
    "text_vector_misalignment": with_(alignment=failing(
        "alignment", "cosine_p5", 0.3, 0.98, diagnosis="shift", best_shift=1,
        shift_explained_share=0.97)),
    "duplicates": with_(duplicates=failing("duplicates", "exact_duplicate_share", 0.054, 0.01,
                                           near_duplicate_share=0.054),
                        oracle_recall=result("oracle_recall", recall_at_1=0.946,
                                             dup_aware_recall_at_1=1.0)),
    "index_recall": with_(oracle_recall=failing(
        "oracle_recall", "dup_aware_recall_at_5", 0.74, 0.97, recall_at_5=0.74,
        exact_recall_at_5=1.0, exact_recall_at_1000=1.0, index_error_at_5=0.26,
        index_factory="IVF64,PQ4")),
    "ordering_or_boundary": with_(
        sequence_integrity=failing("sequence_integrity", "crossing_share", 0.82, 0.0,
                                   crossing_count=6411, windows_checked=7783,
                                   ids_source="source bank", article_order_gain=0.11,
                                   article_order_mean=0.43),
        coherence_drift=result("coherence_drift", "failed", drift_verdict="significant",
                               file_order_drift_verdict="significant",
                               file_order_mean_drift_pct=-24.7,
                               article_order_drift_verdict="none",
                               article_order_mean_drift_pct=1.8)),
    "low_coherence_dilution": with_(text_quality=failing(
        "text_quality", "blocklist_share", 0.06, 0.01, blocklist_articles=16,
        blocklist_title_count=451, blocklist_text_count=22)),
    "split_leakage": with_(split_leakage=failing("split_leakage", "ood_article_overlap_count",
                                                 4, 0)),
    "evaluation_fault": with_(ood_eval=result("ood_eval", "error", evaluation_fault=True,
                                              ood_cosine=0.0211)),
}


def test_every_root_cause_code_has_a_case() -> None:
    assert set(CASES) | {"healthy"} == set(ROOT_CAUSE_CODES)


@pytest.mark.parametrize("code", sorted(CASES))
def test_each_defect_is_ranked_first(code: str) -> None:
    diagnosis = diagnose("x", CASES[code], Facts("x", source_path="bank.npz", baseline="base"))
    assert diagnosis["root_causes"][0]["code"] == code
    assert diagnosis["verdict"] == "failed"
    assert diagnosis["root_causes"][0]["evidence"]
    assert all(0 < c["confidence"] < 1 for c in diagnosis["root_causes"])
    assert diagnosis["actions"]


def test_a_clean_dataset_is_healthy_and_rules_things_out() -> None:
    diagnosis = diagnose("clean", CLEAN)
    assert diagnosis["verdict"] == "healthy"
    assert [c["code"] for c in diagnosis["root_causes"]] == ["healthy"]
    assert len(diagnosis["rules_out"]) >= 8
    assert diagnosis["actions"] == []


def test_ordering_with_dilution_ranks_both_and_rebuilds_windows_inside_articles() -> None:
    both = {**CASES["ordering_or_boundary"], "text_quality": CASES["low_coherence_dilution"][
        "text_quality"]}
    diagnosis = diagnose("790k", both, Facts("790k", source_path="bank.npz", baseline="584k"))
    codes = [c["code"] for c in diagnosis["root_causes"]]
    assert codes[:2] == ["ordering_or_boundary", "low_coherence_dilution"]
    first = diagnosis["actions"][0]["command"]
    assert first.startswith("lvmqa windows bank.npz --context 5 --blocklist")
    assert "--baseline=584k" in first


def test_an_evaluation_fault_is_not_blamed_on_the_data() -> None:
    diagnosis = diagnose("x", CASES["evaluation_fault"])
    codes = [c["code"] for c in diagnosis["root_causes"]]
    assert codes == ["evaluation_fault"]


def test_errored_checks_make_the_verdict_incomplete_not_healthy() -> None:
    diagnosis = diagnose("x", with_(coherence=result("coherence", "error")))
    assert diagnosis["verdict"] == "incomplete"
