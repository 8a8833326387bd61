"""P0 — is the embedding space right? Encoder, norms, text-vector alignment, recall, duplicates.

Each test here is one check's summary (all its gates); test_gates.py holds one test per
gate, with its threshold in the id. Run: ``pytest quality_tests --dataset=NAME``.
"""

from collections.abc import Callable

import pytest

from lvmqa.plugin import failed_gates
from lvmqa.results import CheckResult

CheckFixture = Callable[[str], CheckResult]

pytestmark = pytest.mark.p0


def test_fingerprint(lvmqa_check: CheckFixture) -> None:
    """The dataset's encoder produces the pinned vectors for fixed canary texts."""
    failed, table = failed_gates(lvmqa_check("fingerprint"))
    assert failed == 0, table


def test_norms(lvmqa_check: CheckFixture) -> None:
    """Targets and contexts are L2-normalised, with no NaN, Inf or zero vectors."""
    failed, table = failed_gates(lvmqa_check("norms"))
    assert failed == 0, table


def test_alignment(lvmqa_check: CheckFixture) -> None:
    """Re-encoding stored texts gives back their stored vectors (no shift, same encoder)."""
    failed, table = failed_gates(lvmqa_check("alignment"))
    assert failed == 0, table


def test_oracle_recall(lvmqa_check: CheckFixture) -> None:
    """A FAISS index over the targets finds each target from itself."""
    failed, table = failed_gates(lvmqa_check("oracle_recall"))
    assert failed == 0, table


def test_duplicates(lvmqa_check: CheckFixture) -> None:
    """Few exact or near-duplicate target vectors."""
    failed, table = failed_gates(lvmqa_check("duplicates"))
    assert failed == 0, table
