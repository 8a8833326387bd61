"""Every declared gate, one test per dataset × gate: ``metric op threshold`` in plain sight.

The threshold in each test id is the one resolved for that dataset (a registry value,
an encoder calibration or lvmqa's default; see ``lvmqa.gates``). A failing item shows
both sides of the comparison and a small table: value, operator, threshold, where the
threshold came from and the CI where there is one. Select one check with ``-k``, e.g.
``pytest quality_tests --dataset=NAME -k oracle_recall``.
"""

from __future__ import annotations

from lvmqa.gates import is_number
from lvmqa.plugin import GateCase


def check_gate(case: GateCase) -> None:
    """Assert one gate with a plain comparison, so pytest shows the value and threshold."""
    __tracebackhide__ = True
    gate, table = case.gate, case.table()
    value, threshold = case.value, case.threshold
    assert is_number(value), f"{gate.metric} was not measured (missing or NaN)\n{table}"
    if gate.null is not None:
        # A significance gate fails only when the value is beyond the threshold AND the
        # CI bound on the worse side is beyond no-change (`null`).
        ci_bound, null = case.ci_bound, gate.null
        if ci_bound is None:  # no CI: the change cannot be told from noise
            return
        if gate.op in (">=", ">"):
            assert not (value < threshold and ci_bound < null), table
        else:
            assert not (value > threshold and ci_bound > null), table
        return
    if gate.op == ">=":
        assert value >= threshold, table
    elif gate.op == ">":
        assert value > threshold, table
    elif gate.op == "<=":
        assert value <= threshold, table
    elif gate.op == "<":
        assert value < threshold, table
    else:
        assert value == threshold, table


def test_gate(lvmqa_gate: GateCase) -> None:
    """One declared gate of one check on one dataset."""
    check_gate(lvmqa_gate)
