"""Rules from check results to ranked root causes, what passing checks rule out, and actions."""

from __future__ import annotations

from typing import Any

from lvmqa.results import CheckResult

ROOT_CAUSE_CODES = (
    "encoder_mismatch", "normalization", "text_vector_misalignment", "duplicates",
    "ordering_or_boundary", "low_coherence_dilution", "split_leakage", "index_recall", "healthy",
)


def diagnose(name: str, results: dict[str, CheckResult]) -> dict[str, Any]:
    causes: list[dict[str, Any]] = []
    if "norms" in results and results["norms"].status == "failed":
        causes.append({"code": "normalization", "confidence": 0.9,
                       "evidence": [results["norms"].message]})
    failed = [cid for cid, r in results.items() if r.status == "failed"]
    if not causes and not failed:
        causes.append({"code": "healthy", "confidence": 0.9,
                       "evidence": [f"{len(results)} checks ran; none failed"]})
    verdict = "healthy" if causes[0]["code"] == "healthy" else "failed"
    return {"verdict": verdict, "root_causes": causes, "rules_out": [], "actions": []}
