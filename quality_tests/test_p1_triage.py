"""P1 — data triage: coherence and its drift, sequence integrity, split leakage, text quality."""

from collections.abc import Callable

import pytest

from lvmqa.plugin import failed_gates
from lvmqa.results import CheckResult

CheckFixture = Callable[[str], CheckResult]

pytestmark = pytest.mark.p1


def test_coherence(lvmqa_check: CheckFixture) -> None:
    """Adjacent chunks are semantically related (file order, within windows, article order)."""
    failed, table = failed_gates(lvmqa_check("coherence"))
    assert failed == 0, table


def test_coherence_drift(lvmqa_check: CheckFixture) -> None:
    """Coherence has not drifted from the baseline dataset beyond statistical noise."""
    failed, table = failed_gates(lvmqa_check("coherence_drift"))
    assert failed == 0, table


def test_sequence_integrity(lvmqa_check: CheckFixture) -> None:
    """Windows stay inside one article, in chunk order, without gaps."""
    failed, table = failed_gates(lvmqa_check("sequence_integrity"))
    assert failed == 0, table


def test_split_leakage(lvmqa_check: CheckFixture) -> None:
    """No article or target vector is shared with the val or OOD splits."""
    failed, table = failed_gates(lvmqa_check("split_leakage"))
    assert failed == 0, table


def test_text_quality(lvmqa_check: CheckFixture) -> None:
    """Few list/disambiguation pages, empty, too short or too long texts; unique keys."""
    failed, table = failed_gates(lvmqa_check("text_quality"))
    assert failed == 0, table
