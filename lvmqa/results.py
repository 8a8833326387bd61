"""Check results and gates: the data that flows from checks to tests, JSON and report.

A check computes metrics and evaluates named gates. A gate is one comparison of a
metric with a threshold; the quality test asserts that no gate failed, so pytest's
output names the gate, the value and the threshold.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["passed", "failed", "skipped", "error"]
GateKind = Literal["absolute", "calibrated", "registry", "relative", "statistical", "structural"]

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}


@dataclass(frozen=True)
class Gate:
    """One pass/fail comparison: ``metric op threshold``.

    ``kind`` says where the threshold comes from, so the report can be honest:
    a design default, a value calibrated for this encoder, a registry override,
    a comparison with the baseline dataset or the trivial predictors, a statistical
    test, or a structural invariant (e.g. zero boundary crossings).

    Gates built from the declared table (:mod:`lvmqa.gates`) also carry their table
    id, the threshold key, a sentence saying where the threshold came from, and the
    confidence interval of the value where the check has one. A gate with ``null`` set
    is a significance test: it fails only when the value is beyond the threshold AND
    its CI lies entirely on the worse side of ``null`` (no change), so sampling noise
    alone cannot fail it.
    """

    name: str
    metric: str
    value: float | int | None
    op: str
    threshold: float | int
    kind: GateKind = "absolute"
    gate_id: str = ""
    key: str | None = None
    source: str = ""
    ci: tuple[float, float] | None = None
    null: float | None = None

    @property
    def id(self) -> str:
        """The gate's id in the declared table (its metric for gates built by hand)."""
        return self.gate_id or self.metric

    @property
    def beyond_threshold(self) -> bool:
        """The value alone fails the comparison (missing and NaN values fail)."""
        if self.value is None:
            return True
        if isinstance(self.value, float) and math.isnan(self.value):
            return True
        return not bool(_OPS[self.op](self.value, self.threshold))

    @property
    def ci_bound(self) -> float | None:
        """The CI bound on the worse side: the upper one when higher is better."""
        if self.ci is None:
            return None
        return self.ci[1] if self.op in (">=", ">") else self.ci[0]

    @property
    def significant(self) -> bool:
        """For a significance gate: the CI excludes ``null`` on the worse side."""
        bound = self.ci_bound
        if self.null is None or bound is None or math.isnan(bound):
            return False
        return bound < self.null if self.op in (">=", ">") else bound > self.null

    @property
    def measured(self) -> bool:
        return self.value is not None and not (
            isinstance(self.value, float) and math.isnan(self.value)
        )

    @property
    def passed(self) -> bool:
        # A value that was not measured never passes, significance gate or not.
        if self.null is not None and self.measured:
            return not (self.beyond_threshold and self.significant)
        return not self.beyond_threshold

    def describe(self) -> str:
        value = _fmt(self.value)
        verdict = "ok" if self.passed else "FAILED"
        threshold = _fmt(self.threshold)
        ci = ""
        if self.ci is not None:
            ci = f", CI {_fmt(self.ci[0])}..{_fmt(self.ci[1])}"
        return (
            f"{self.name}: {self.metric}={value} {self.op} {threshold}{ci} ({self.kind}) {verdict}"
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "metric": self.metric,
            "value": to_jsonable(self.value),
            "op": self.op,
            "threshold": to_jsonable(self.threshold),
            "kind": self.kind,
            "passed": self.passed,
        }
        if self.gate_id:
            out["id"] = self.gate_id
        if self.key is not None:
            out["key"] = self.key
        if self.source:
            out["source"] = self.source
        if self.ci is not None:
            out["ci"] = to_jsonable(list(self.ci))
        if self.null is not None:
            out["null"] = self.null
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Gate:
        ci = data.get("ci")
        return cls(
            name=data["name"],
            metric=data["metric"],
            value=data["value"],
            op=data["op"],
            threshold=data["threshold"],
            kind=data.get("kind", "absolute"),
            gate_id=data.get("id", ""),
            key=data.get("key"),
            source=data.get("source", ""),
            ci=None if ci is None else (_float(ci[0]), _float(ci[1])),
            null=data.get("null"),
        )


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclass
class CheckResult:
    """The outcome of one check on one dataset.

    ``metrics`` holds stable snake_case names with JSON values (numbers, strings,
    small lists and tables). ``details`` holds report-only material (example texts,
    plot data) and is written to JSON too, under ``details``.
    """

    check_id: str
    status: Status
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    gates: list[Gate] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def failed_gates(self) -> list[str]:
        return [gate.describe() for gate in self.gates if not gate.passed]

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "metrics": to_jsonable(self.metrics),
            "message": self.message,
            "gates": [gate.to_json() for gate in self.gates],
            "details": to_jsonable(self.details),
        }

    @classmethod
    def from_json(cls, check_id: str, data: Mapping[str, Any]) -> CheckResult:
        gates = [Gate.from_json(g) for g in data.get("gates", [])]
        return cls(
            check_id=check_id,
            status=data["status"],
            metrics=dict(data.get("metrics", {})),
            message=data.get("message", ""),
            gates=gates,
            details=dict(data.get("details", {})),
        )


def from_gates(
    check_id: str,
    metrics: dict[str, Any],
    gates: list[Gate],
    message: str,
    details: dict[str, Any] | None = None,
) -> CheckResult:
    """Build a result whose status is decided by its gates alone."""
    status: Status = "passed" if all(g.passed for g in gates) else "failed"
    return CheckResult(check_id, status, metrics, message, gates, details or {})


def skipped(check_id: str, reason: str) -> CheckResult:
    return CheckResult(check_id, "skipped", {}, reason)


# JSON floats carry 6 significant digits: more than any gate needs, and few enough that
# the last-bit noise of BLAS reductions (which differ with the thread count) does not
# make two runs of the same seed disagree.
JSON_SIGNIFICANT_DIGITS = 6


def to_jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and NaN to plain JSON values (NaN -> None).

    Floats are rounded to ``JSON_SIGNIFICANT_DIGITS`` significant digits.
    """
    import numpy as np

    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.{JSON_SIGNIFICANT_DIGITS}g}")
    return value
