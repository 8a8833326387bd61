"""A user's own assertions over lvmqa's results, next to the shipped quality tests."""

import pytest


def test_target_norms_are_one(lvmqa_check):
    assert lvmqa_check("norms").metrics["target_norm_mean"] == pytest.approx(1.0, abs=1e-3)


def test_texts_are_sentences(lvmqa_check):
    assert lvmqa_check("title_case").metrics["lower_case_share"] <= 0.05


def test_dataset_is_not_empty(lvmqa_dataset_obj):
    assert lvmqa_dataset_obj.n > 0
