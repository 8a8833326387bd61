"""P1 — data triage: coherence and its drift, sequence integrity, split leakage, text quality."""

import pytest

pytestmark = pytest.mark.p1


def test_coherence(lvmqa_check):
    """Adjacent chunks are semantically related (file order, within windows, article order)."""
    result = lvmqa_check("coherence")
    assert result.failed_gates == [], result.message


def test_coherence_drift(lvmqa_check):
    """Coherence has not drifted from the baseline dataset beyond statistical noise."""
    result = lvmqa_check("coherence_drift")
    assert result.failed_gates == [], result.message


def test_sequence_integrity(lvmqa_check):
    """Windows stay inside one article, in chunk order, without gaps."""
    result = lvmqa_check("sequence_integrity")
    assert result.failed_gates == [], result.message


def test_split_leakage(lvmqa_check):
    """No article or target vector is shared with the val or OOD splits."""
    result = lvmqa_check("split_leakage")
    assert result.failed_gates == [], result.message


def test_text_quality(lvmqa_check):
    """Few list/disambiguation pages, empty, too short or too long texts; unique keys."""
    result = lvmqa_check("text_quality")
    assert result.failed_gates == [], result.message
