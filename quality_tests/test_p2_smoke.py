"""P2 — smoke training: a short AMN training beats the trivial predictors, in and out of domain."""

import pytest

pytestmark = [pytest.mark.p2, pytest.mark.smoke]


def test_smoke_train(lvmqa_check):
    """val_cosine passes its gates and is not worse than predicting the mean of the context
    (beats it, where the split has the power to show the expected gain)."""
    result = lvmqa_check("smoke_train")
    assert result.failed_gates == [], result.message


def test_ood_eval(lvmqa_check):
    """The smoke model generalises to the held-out OOD articles."""
    result = lvmqa_check("ood_eval")
    assert result.failed_gates == [], result.message
