"""P0 — is the embedding space right? Encoder, norms, text-vector alignment, recall, duplicates.

Each test asserts the gates of one check; the numbers and their interpretation are in
the report. Run: ``pytest quality_tests --dataset=NAME``.
"""

import pytest

pytestmark = pytest.mark.p0


def test_fingerprint(lvmqa_check):
    """The dataset's encoder produces the pinned vectors for fixed canary texts."""
    result = lvmqa_check("fingerprint")
    assert result.failed_gates == [], result.message


def test_norms(lvmqa_check):
    """Targets and contexts are L2-normalised, with no NaN, Inf or zero vectors."""
    result = lvmqa_check("norms")
    assert result.failed_gates == [], result.message


def test_alignment(lvmqa_check):
    """Re-encoding stored texts gives back their stored vectors (no shift, same encoder)."""
    result = lvmqa_check("alignment")
    assert result.failed_gates == [], result.message


def test_oracle_recall(lvmqa_check):
    """A FAISS index over the targets finds each target from itself."""
    result = lvmqa_check("oracle_recall")
    assert result.failed_gates == [], result.message


def test_duplicates(lvmqa_check):
    """Few exact or near-duplicate target vectors."""
    result = lvmqa_check("duplicates")
    assert result.failed_gates == [], result.message
