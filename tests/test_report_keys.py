"""Every run lists the file's keys it did not use, with shape, dtype and how to map them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lvmqa.report import build_results, render_html, terminal_summary
from tests.synthetic import session_for, unit


def test_unused_keys_reach_the_json_the_report_and_the_terminal(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    targets = unit(rng.standard_normal((40, 8)))
    contexts = unit(rng.standard_normal((40, 5, 8)))
    session = session_for(tmp_path, {"d": {
        "context_sequences": contexts,
        "target_vectors": targets,
        "doc_ids": np.repeat(np.arange(4), 10),
        "weird_<b>_scores": rng.standard_normal(40).astype(np.float32),
    }})
    session.add("d")
    session.run("d", "norms")
    results = build_results(session)
    data = results["datasets"]["d"]
    assert data["id_keys"]["article"] == "doc_ids"
    unused = data["unused_keys"]["weird_<b>_scores"]
    assert unused["shape"] == [40] and unused["dtype"] == "float32"
    page = render_html(results)
    assert "weird_&lt;b&gt;_scores (40, float32)" in page  # escaped: keys come from the file
    assert "<b>_scores" not in page
    lines = terminal_summary(results)
    assert any("keys not used (1): weird_<b>_scores (40, float32)" in line for line in lines)


def test_the_report_shows_what_each_remedy_recovers() -> None:
    from lvmqa.report import render_markdown

    remedy = {"code": "ordering_or_boundary", "remedy": "sorting by (article, chunk)",
              "candidate": True, "recovered_share": 0.94, "recovered_share_ci": [0.9, 0.97],
              "recovered_share_alone": 0.95, "held_out": False, "estimate": None}
    results = {"datasets": {"d": {
        "checks": {},
        "diagnosis": {"verdict": "failed", "root_causes": []},
        "attribution": {"coherence": {"gap_significant": True, "statistic": "file_order",
                                      "reference": "baseline", "current_mean": 0.31,
                                      "reference_mean": 0.42, "remedies": [remedy]}},
    }}}
    page = render_markdown(results)
    assert "| sorting by (article, chunk) | 94% | 90% – 97% | 95% | yes |" in page


def test_the_filter_preview_is_computed_only_for_a_report(tmp_path: Path) -> None:
    """It scores every row (30 s at 200k rows): the terminal summary never needs it."""
    rng = np.random.default_rng(3)
    targets = unit(rng.standard_normal((60, 8)))
    targets[30:] = targets[:30]  # half the rows are exact duplicates: a filterable cause
    contexts = unit(rng.standard_normal((60, 5, 8)))
    session = session_for(tmp_path, {"d": {"context_sequences": contexts,
                                           "target_vectors": targets}})
    session.add("d")
    session.run("d", "duplicates")
    assert "filter" not in build_results(session)["datasets"]["d"]
    session.report_requested = True
    assert "filter" in build_results(session)["datasets"]["d"]
