"""P2 — smoke training: a short AMN training beats the trivial predictors, in and out of domain."""

from collections.abc import Callable

import pytest

from lvmqa.plugin import failed_gates
from lvmqa.results import CheckResult

CheckFixture = Callable[[str], CheckResult]

pytestmark = [pytest.mark.p2, pytest.mark.smoke]


def test_smoke_train(lvmqa_check: CheckFixture) -> None:
    """val_cosine passes its gates and is not worse than predicting the mean of the context
    (beats it, where the split has the power to show the expected gain)."""
    failed, table = failed_gates(lvmqa_check("smoke_train"))
    assert failed == 0, table


def test_ood_eval(lvmqa_check: CheckFixture) -> None:
    """The smoke model generalises to the held-out OOD articles."""
    failed, table = failed_gates(lvmqa_check("ood_eval"))
    assert failed == 0, table
