"""The report: sections, tables, embedded plots, escaping, Markdown, robustness, pytest-html.

The results dicts are built by hand with the seed's numbers, so every rendered value is
known. HTML is parsed with ``html.parser`` (the standard library), never matched as text,
so a test cannot pass on an escaped or misplaced fragment.
"""

from __future__ import annotations

import base64
import copy
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lvmqa.errors import LvmqaError
from lvmqa.report import (
    check_extras,
    load_results,
    render_html,
    render_markdown,
    terminal_summary,
    write_json,
)
from lvmqa.results import CheckResult, Gate, from_gates
from tests.conftest import random_sequences

HOSTILE = "<script>alert('owned')</script>"
HOSTILE_IMG = '<img src=x onerror="alert(1)">'
VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
}

# The seed's "Distribution Comparison" (584k vs 790k), bins of 0.1.
SEED_BINS = [
    ("[0.0, 0.1)", 0.5, 4.1),
    ("[0.1, 0.2)", 4.4, 17.3),
    ("[0.2, 0.3)", 13.0, 23.3),
    ("[0.3, 0.4)", 20.7, 22.5),
    ("[0.4, 0.5)", 22.1, 17.3),
    ("[0.5, 0.6)", 16.5, 9.6),
    ("[0.6, 0.7)", 8.6, 3.8),
    ("[0.7, 1.0]", 14.2, 2.0),
]


# ------------------------------------------------------------------------ parsing


class Page(HTMLParser):
    """Headings, tables, images, <pre> blocks, tag counts and nesting errors of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.headings: list[tuple[str, str]] = []
        self.tables: list[list[list[str]]] = []
        self.images: list[dict[str, str | None]] = []
        self.pres: list[str] = []
        self.starttags: dict[str, int] = {}
        self.attributes: list[str] = []
        self.errors: list[str] = []
        self._stack: list[str] = []
        self._text: list[str] | None = None
        self._heading: str | None = None
        self._row: list[str] | None = None
        self._tables: list[list[list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starttags[tag] = self.starttags.get(tag, 0) + 1
        self.attributes += [name for name, _ in attrs]
        if tag not in VOID:
            self._stack.append(tag)
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._heading, self._text = tag, []
        elif tag == "table":
            self._tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th", "pre"):
            self._text = []
        elif tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self._stack or self._stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self._stack[-1:] or 'nothing'}")
        else:
            self._stack.pop()
        text = "".join(self._text or []).strip()
        if tag == self._heading:
            self.headings.append((tag, text))
            self._heading, self._text = None, None
        elif tag in ("td", "th") and self._row is not None:
            self._row.append(text)
            self._text = None
        elif tag == "tr" and self._tables and self._row is not None:
            self._tables[-1].append(self._row)
            self._row = None
        elif tag == "table" and self._tables:
            self.tables.append(self._tables.pop())
        elif tag == "pre":
            self.pres.append(text)
            self._text = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)


def parse(page: str) -> Page:
    parser = Page()
    parser.feed(page)
    parser.close()
    assert parser.errors == [], parser.errors[:5]
    assert parser._stack in ([], ["html"], ["html", "body"]) or not parser._stack, parser._stack
    return parser


def table_with_header(page: Page, first: str) -> list[list[str]]:
    found = [t for t in page.tables if t and t[0] and t[0][0] == first]
    assert found, f"no table whose first header is {first!r}"
    return found[0]


def heading_texts(page: Page) -> list[str]:
    return [text for _tag, text in page.headings]


# ------------------------------------------------------------------------ results


def gate(
    name: str, metric: str, value: float, op: str, threshold: float, kind: str = "absolute"
) -> dict[str, Any]:
    return Gate(name, metric, value, op, threshold, kind).to_json()  # type: ignore[arg-type]


def seed_results() -> dict[str, Any]:
    """A results dict with every section, the seed's numbers and hostile texts."""
    bins = [
        {"range": r, "baseline_pct": b, "current_pct": c, "change_pp": round(c - b, 6)}
        for r, b, c in SEED_BINS
    ]
    labels = [r for r, _b, _c in SEED_BINS]
    checks: dict[str, Any] = {
        "fingerprint": {
            "status": "passed",
            "message": "encoder 'gtr' is 768-D",
            "metrics": {
                "encoder": "gtr",
                "dim": 768,
                "dataset_dim": 768,
                "norm_min": 1.0,
                "norm_max": 1.0,
                "fingerprint": "sha256:abc123",
                "pinned_fingerprint": "sha256:abc123",
                "fingerprint_matches": 1,
            },
            "gates": [gate("encoder dim matches dataset", "dim", 768, "==", 768, "structural")],
            "details": {
                "modules": ["Transformer(T5EncoderModel)", "Pooling(mean)", "Dense", "Normalize()"],
                "scheme": "lvmqa-fp1",
            },
        },
        "norms": {
            "status": "passed",
            "message": "targets L2-normalised",
            "metrics": {
                "target_norm_mean": 1.0,
                "target_norm_std": 0.0,
                "target_norm_min": 0.999999,
                "target_norm_max": 1.000001,
                "target_nan_count": 0,
                "target_inf_count": 0,
                "target_zero_count": 0,
            },
            "gates": [gate("target norm spread", "target_norm_std", 0.0, "<", 0.01)],
            "details": {},
        },
        "alignment": {
            "status": "failed",
            "message": "texts are shifted by +1 rows",
            "metrics": {
                "diagnosis": "shift",
                "best_shift": 1,
                "shift_explained_share": 0.97,
                "sample_size": 256,
                "cosine_mean": 0.21,
                "cosine_p5": 0.02,
                "cosine_min": -0.05,
                "aligned_share": 0.0,
                "shifted_share": 0.97,
                "displaced_share": 0.0,
                "unmatched_share": 0.03,
            },
            "gates": [
                gate("texts re-encode to their stored vectors", "cosine_p5", 0.02, ">=", 0.98)
            ],
            "details": {
                "segments": [{"offset": "1", "first_row": 3, "last_row": 900, "rows": 250}],
                "worst_rows": [{"row": 7, "cosine": -0.05, "matched_offset": "1", "text": HOSTILE}],
            },
        },
        "oracle_recall": {
            "status": "passed",
            "message": "recall@1 = 0.946 because of duplicates",
            "metrics": {
                "n_rows": 726014,
                "n_queries": 1000,
                "index_factory": "Flat",
                "index_kind": "exact",
                "recall_at_1": 0.946,
                "recall_at_5": 0.998,
                "recall_at_1000": 1.0,
                "dup_aware_recall_at_1": 1.0,
                "dup_aware_recall_at_5": 1.0,
                "dup_aware_recall_at_1000": 1.0,
                "exact_duplicate_share": 0.05,
                "query_in_duplicate_group_share": 0.1,
            },
            "gates": [
                gate("own vector retrievable in top 5", "dup_aware_recall_at_5", 1.0, ">=", 0.97)
            ],
            "details": {},
        },
        "duplicates": {
            "status": "failed",
            "message": "5.00% of targets repeat an earlier vector",
            "metrics": {
                "exact_duplicate_share": 0.05,
                "exact_duplicate_rows": 36300,
                "exact_duplicate_groups": 12000,
                "largest_exact_group": 40,
                "near_duplicate_share": 0.001,
                "near_duplicate_threshold": 0.995,
                "near_duplicate_exhaustive": True,
            },
            "gates": [gate("exact duplicate targets", "exact_duplicate_share", 0.05, "<=", 0.01)],
            "details": {"exact_groups": [{"size": 40, "rows": [1, 2, 3], "texts": [HOSTILE]}]},
        },
        "coherence": {
            "status": "passed",
            "message": "file-order adjacency mean 0.3367",
            "metrics": {
                "file_order_mean": 0.3367,
                "file_order_std": 0.1594,
                "file_order_p10": 0.15,
                "file_order_p25": 0.22,
                "file_order_p50": 0.3221,
                "file_order_p75": 0.44,
                "file_order_p90": 0.5470,
                "file_order_low_share": 0.4478,
                "file_order_n": 726013,
                "file_order_histogram": [41, 173, 233, 225, 173, 96, 38, 20],
                "article_order_mean": 0.4842,
                "article_order_std": 0.21,
                "article_order_p50": 0.45,
                "article_order_low_share": 0.18,
                "article_order_n": 700000,
                "article_order_histogram": [5, 44, 130, 207, 221, 165, 86, 142],
                "position_profile": [0.340, 0.370, 0.400, 0.430, 0.457],
                "low_threshold": 0.30,
                "random_pair_mean": 0.02,
            },
            "gates": [],
            "details": {
                "histogram_labels": labels,
                "lowest_articles": {
                    "basis": "article order",
                    "rows": [
                        {
                            "article": 11,
                            "title": HOSTILE_IMG,
                            "n": 40,
                            "mean": 0.12,
                            "examples": [
                                {
                                    "rows": [5, 6],
                                    "cosine": 0.01,
                                    "first": HOSTILE,
                                    "second": "Category: things",
                                }
                            ],
                        }
                    ],
                },
            },
        },
        "coherence_drift": {
            "status": "failed",
            "message": "vs baseline '584k': significant",
            "metrics": {
                "baseline": "584k",
                "compared": ["file_order"],
                "file_order_baseline_mean": 0.4842,
                "file_order_current_mean": 0.3367,
                "file_order_mean_drift": -0.1475,
                "file_order_mean_drift_pct": -30.5,
                "file_order_mean_drift_ci": [-0.15, -0.145],
                "file_order_mean_drift_pct_ci": [-31.0, -30.0],
                "file_order_baseline_low_share": 0.1791,
                "file_order_current_low_share": 0.4478,
                "file_order_low_share_change_pp": 26.87,
                "file_order_low_share_change_ci_pp": [26.0, 27.7],
                "file_order_baseline_p50": 0.4499,
                "file_order_current_p50": 0.3221,
                "file_order_baseline_p90": 0.8147,
                "file_order_current_p90": 0.5470,
                "file_order_drift_verdict": "significant",
                "drift_verdict": "significant",
            },
            "gates": [
                gate(
                    "file order: no significant drift",
                    "file_order_drift_level",
                    2,
                    "<",
                    2,
                    "statistical",
                )
            ],
            "details": {
                "tables": {"file_order": bins},
                "reasons": {"file_order": ["mean drift -30.5 % is beyond -5.0 %"]},
            },
        },
        "sequence_integrity": {
            "status": "failed",
            "message": "99.99 % of windows cross article boundaries",
            "metrics": {
                "ids_source": "source bank",
                "windows_checked": 7787,
                "windows_unchecked": 1,
                "crossing_share": 0.9999,
                "crossing_count": 7786,
                "non_consecutive_share": 0.0,
                "wrong_order_share": 0.0,
                "ordering_verdict": "ordered",
                "decay_profile": [0.102, 0.100, 0.094],
                "decay": 0.008,
                "decay_ci": [0.002, 0.013],
                "runs_z": -4.5,
                "position_profile": [0.0958, 0.0987, 0.1022, 0.1004, 0.1015],
                "position_profile_rises": False,
                "within_article_mean": 0.42,
                "across_article_mean": 0.04,
                "within_article_low_share": 0.25,
                "across_article_low_share": 0.98,
            },
            "gates": [
                gate(
                    "windows stay inside one article",
                    "crossing_share",
                    0.9999,
                    "<=",
                    0,
                    "structural",
                )
            ],
            "details": {
                "crossing_examples": [
                    {"row": 1, "article": 70, "title": "Paris", "target": HOSTILE}
                ]
            },
        },
        "split_leakage": {
            "status": "failed",
            "message": "LEAKAGE val",
            "metrics": {
                "splits": ["val"],
                "near_threshold": 0.995,
                "val_article_count": 100,
                "val_article_overlap_count": 91,
                "val_article_overlap_share": 0.915,
                "val_row_overlap_share": 0.9,
                "val_shared_exact_duplicate_count": 3,
                "val_shared_near_duplicate_count": 1,
                "val_near_duplicate_sampled_rows": 500,
            },
            "gates": [
                gate(
                    "val_article_overlap_count",
                    "val_article_overlap_count",
                    91,
                    "<=",
                    0,
                    "structural",
                )
            ],
            "details": {"val_name": "790k-val"},
        },
        "text_quality": {
            "status": "failed",
            "message": "6.0% of rows from blocklisted pages",
            "metrics": {
                "blocklist_share": 0.06,
                "blocklist_count": 468,
                "blocklist_articles": 2,
                "empty_count": 0,
                "empty_share": 0.0,
            },
            "gates": [gate("blocklist_share", "blocklist_share", 0.06, "<=", 0.01)],
            "details": {
                "blocklist_pattern": "List of|Disambiguation|Category:",
                "blocklist_articles": [
                    {"title": "List of things", "article": 3, "rows": 120, "by_title": True}
                ],
                "blocklist_examples": [{"row": 1, "text": HOSTILE}],
            },
        },
        "smoke_train": {
            "status": "failed",
            "message": "val cosine 0.4621 vs mean-of-context 0.546",
            "metrics": {
                "val_cosine_per_epoch": [0.4457, 0.452, 0.456, 0.459, 0.4621],
                "val_cosine_final": 0.4621,
                "val_cosine_best": 0.4621,
                "best_epoch": 5,
                "baseline_mean_context_cosine": 0.546,
                "split_kind": "article",
                "evaluation_fault": False,
            },
            "gates": [
                gate("beats_mean_of_context", "val_cosine_final", 0.4621, ">", 0.546, "relative")
            ],
            "details": {
                "training_curves": {
                    "epoch": [1, 2, 3, 4, 5],
                    "train_loss": [0.01, 0.009, 0.008, 0.0075, 0.007],
                    "val_mse": [0.002] * 5,
                    "val_cosine": [0.4457, 0.452, 0.456, 0.459, 0.4621],
                    "lr": [5e-4] * 5,
                    "baselines": {
                        "copy_last": 0.438,
                        "mean_context": 0.546,
                        "global_mean": 0.422,
                        "random": 0.0,
                    },
                }
            },
        },
        "ood_eval": {
            "status": "error",
            "message": "evaluation fault: the smoke model scores 0.021",
            "metrics": {
                "ood_cosine": 0.0211,
                "ood_baseline_mean_context_cosine": 0.55,
                "ood_dataset": "ood",
                "evaluation_fault": True,
            },
            "gates": [],
            "details": {},
        },
    }
    diagnosis = {
        "verdict": "failed",
        "headline": "ordering / article-boundary defect",
        "root_causes": [
            {
                "code": "low_coherence_dilution",
                "confidence": 0.3,
                "evidence": ["6.0 % of rows come from blocklisted pages"],
            },
            {
                "code": "ordering_or_boundary",
                "confidence": 0.95,
                "title": "Ordering / article-boundary defect",
                "evidence": [
                    "99.99 % of windows cross an article boundary",
                    HOSTILE,
                    "article-order drift only +1.8 %",
                ],
            },
        ],
        "rules_out": ["encoder version mismatch", "FAISS index corruption"],
        "actions": [
            {
                "title": "Rebuild the windows inside each article",
                "command": "lvmqa windows BANK.npz --context 5 --out rebuilt.npz",
            },
            "pytest quality_tests --dataset=rebuilt.npz",
            "Pin the encoder fingerprint",
        ],
    }
    manifest = {
        "counts": {"input": 726014, "kept": 277078, "dropped": 448936},
        "parameters": {"min_coherence": 0.35, "blocklist": "List of|Disambiguation|Category:"},
        "reasons": {"low_coherence": 440000, "blocklist": 9000},
        "dropped_by_primary_reason": {"low_coherence": 440000, "blocklist": 8936},
        "windows_contiguous": False,
        "windows_note": "rows were dropped from inside articles",
        "coherence": {
            "input": {"file_order_adjacency": {"mean": 0.3367, "p50": 0.3221}},
            "output": {"file_order_adjacency": {"mean": 0.4250, "p50": 0.4334}},
            "note": "output.adjacency_score is inflated by selection",
        },
        "output": {"dataset": "artifacts/filtered.npz"},
    }
    return {
        "lvmqa_version": "0.1.0",
        "datasets": {
            "790k": {
                "path": "artifacts/790k.npz",
                "sha256": "sha256:" + "0" * 64,
                "n_sequences": 726014,
                "dim": 768,
                "kind": "sequences",
                "encoder": "gtr",
                "baseline": "584k",
                "checks": checks,
                "diagnosis": diagnosis,
                "filter": manifest,
            }
        },
    }


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return seed_results()


@pytest.fixture(scope="module")
def html_page(results: dict[str, Any]) -> str:
    return render_html(results)


@pytest.fixture(scope="module")
def page(html_page: str) -> Page:
    return parse(html_page)


# -------------------------------------------------------------------------- HTML


def test_sections_come_in_the_seed_order(page: Page) -> None:
    texts = heading_texts(page)
    order = [
        "Dataset 790k: FAILED",
        "Executive summary",
        "P0: Space alignment",
        "P1: Data triage",
        "Filter results",
        "Dataset statistics",
        "P2: Smoke training",
    ]
    positions = [texts.index(name) for name in order]
    assert positions == sorted(positions)
    checks = [t for t in texts if "CHECK:" in t]
    assert len(checks) == 12
    assert "✅ CHECK: Vector norms (norms) — PASS" in checks
    assert "❌ CHECK: Coherence drift (coherence_drift) — FAIL" in checks
    assert "⚠️ CHECK: OOD evaluation (ood_eval) — ERROR" in checks


def test_drift_table_is_the_seeds_distribution_comparison(page: Page) -> None:
    table = table_with_header(page, "range")
    assert table[0] == ["range", "584k", "790k", "change"]
    rows = {row[0]: row[1:] for row in table[1:]}
    assert list(rows) == [r for r, _b, _c in SEED_BINS]
    assert rows["[0.2, 0.3)"] == ["13.0%", "23.3%", "+10.30pp ❌"]
    # Under 2 pp the change is shown unmarked, as the seed left +1.8 pp unmarked.
    assert rows["[0.3, 0.4)"] == ["20.7%", "22.5%", "+1.80pp"]
    # Coherent bins that lost mass moved the distribution toward low coherence.
    assert rows["[0.7, 1.0]"] == ["14.2%", "2.0%", "-12.20pp ❌"]


def test_drift_table_marks_an_improvement_without_misleading_marks(
    results: dict[str, Any],
) -> None:
    improved = copy.deepcopy(results)
    drift = improved["datasets"]["790k"]["checks"]["coherence_drift"]
    drift["details"]["tables"]["file_order"] = [
        {"range": r, "baseline_pct": c, "current_pct": b, "change_pp": b - c}
        for r, b, c in SEED_BINS
    ]
    rows = {row[0]: row[3] for row in table_with_header(parse(render_html(improved)), "range")}
    assert rows["[0.7, 1.0]"] == "+12.20pp ✅"
    assert rows["[0.4, 0.5)"] == "+4.80pp ✅"
    # a low bin that shrank is not praised: its mass may have fallen into lower bins
    assert rows["[0.2, 0.3)"] == "-10.30pp"


def test_drift_summary_has_verdict_with_confidence_interval(page: Page) -> None:
    table = table_with_header(page, "")
    assert table[0] == ["", "584k (baseline)", "790k (current)", "change"]
    assert table[1] == ["mean adjacency cosine", "0.4842", "0.3367", "-0.1475 (-30.5%) ❌"]
    assert table[2] == ["low coherence (< 0.3)", "17.91%", "44.78%", "+26.87pp ❌"]


def test_coherence_side_by_side_and_dataset_statistics(page: Page) -> None:
    side = table_with_header(page, "statistic")
    assert side[0] == ["statistic", "file order", "article order"]
    assert ["mean", "0.3367", "0.4842"] in side
    stats = table_with_header(page, "metric")
    assert stats[0] == ["metric", "584k (baseline)", "790k (current)", "filtered"]
    assert ["sequences", "—", "726,014", "277,078"] in stats
    assert ["mean coherence (file order)", "0.4842", "0.3367", "0.4250"] in stats
    assert ["smoke val_cosine (best)", "—", "0.4621", "TBD"] in stats


def test_filter_section_says_the_improvement_is_circular(html_page: str, page: Page) -> None:
    assert "Filter results" in heading_texts(page)
    counts = table_with_header(page, "sequences")
    assert counts[1:] == [
        ["original", "726,014", ""],
        ["kept", "277,078", "38.2%"],
        ["dropped", "448,936", "61.8%"],
    ]
    assert "circular" in html_page
    assert "pytest quality_tests --dataset=artifacts/filtered.npz --baseline=584k" in page.pres


def test_plots_are_embedded_png_data_uris(page: Page) -> None:
    sources = [str(img.get("src")) for img in page.images]
    # coherence histogram, drift histogram, context-position profile, training curve
    assert len(sources) == 4
    for src in sources:
        head, _, payload = src.partition(",")
        assert head == "data:image/png;base64"
        assert base64.b64decode(payload)[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(img.get("alt") for img in page.images)


def test_hostile_text_is_escaped(html_page: str, page: Page) -> None:
    assert page.starttags.get("script", 0) == 0
    assert "onerror" not in page.attributes
    assert HOSTILE not in html_page
    assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;" in html_page
    # the hostile title is shown as text in the lowest-coherence table
    lowest = table_with_header(page, "article")
    assert lowest[1][1] == HOSTILE_IMG


def test_executive_summary_ranks_causes_and_gives_commands(html_page: str, page: Page) -> None:
    first = html_page.index("Ordering / article-boundary defect (ordering_or_boundary)")
    second = html_page.index("Low coherence dilution (low_coherence_dilution)")
    assert first < second < html_page.index("P0: Space alignment")
    assert "confidence 95%" in html_page
    assert page.pres[:2] == [
        "lvmqa windows BANK.npz --context 5 --out rebuilt.npz",
        "pytest quality_tests --dataset=rebuilt.npz",
    ]
    assert "What the checks rule out" in heading_texts(page)
    assert "Pin the encoder fingerprint" in html_page
    # the seed's headline numbers
    assert "smoke val_cosine 0.4621 vs 0.5460 for the mean-of-context predictor" in html_page
    assert "0.3367 vs 0.4842 on the baseline (-30.5%); low share 44.8% vs 17.9%" in html_page


def test_context_position_profile_follows_the_integrity_verdict(html_page: str, page: Page) -> None:
    profiles = [t for t in page.tables if t[0][:2] == ["", "j=0"]]
    assert len(profiles) == 1  # shown once, under sequence_integrity
    assert profiles[0][1] == ["790k", "0.0958", "0.0987", "0.1022", "0.1004", "0.1015"]
    assert "it does not rise toward the target" in html_page


def test_evaluation_fault_and_alignment_shift_are_called_out(html_page: str) -> None:
    assert "Evaluation-fault guard fired" in html_page
    assert "texts shifted by +1 rows" in html_page


def test_standalone_page_is_a_full_document(html_page: str) -> None:
    assert html_page.startswith("<!DOCTYPE html>")
    assert "<meta charset='utf-8'>" in html_page
    assert "<style>" in html_page
    assert "http://" not in html_page
    assert "https://" not in html_page


# ---------------------------------------------------------------------- Markdown


def test_markdown_has_tables_and_no_images(results: dict[str, Any]) -> None:
    text = render_markdown(results)
    assert "| range | 584k | 790k | change |" in text
    assert "| `[0.2, 0.3)` | 13.0% | 23.3% | +10.30pp ❌ |" in text
    assert "| metric | 584k (baseline) | 790k (current) | filtered |" in text
    assert "### Executive summary" in text
    assert "```bash\nlvmqa windows BANK.npz --context 5 --out rebuilt.npz\n```" in text
    assert "data:image" not in text
    assert "<img" not in text
    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    # phases with failures are unfolded for the reader
    assert "<details open><summary>P1: Data triage" in text


def test_markdown_pipes_in_cells_do_not_break_tables(results: dict[str, Any]) -> None:
    text = render_markdown(results)
    row = next(line for line in text.splitlines() if line.startswith("| blocklisted pages"))
    assert "List of\\|Disambiguation\\|Category:" in row
    assert row.count(" | ") == 2  # three columns, the regex's pipes escaped


def test_markdown_drops_details_past_the_comment_limit(results: dict[str, Any]) -> None:
    big = copy.deepcopy(results)
    data = big["datasets"].pop("790k")
    for i in range(12):
        big["datasets"][f"790k-{i}"] = data
    text = render_markdown(big)
    assert len(text) < 65_536
    assert "Per-check details left out" in text
    assert text.count("### Executive summary") == 12


# -------------------------------------------------------------------- robustness


def only_skipped_and_errored() -> dict[str, Any]:
    return {
        "datasets": {
            "bare": {
                "checks": {
                    "fingerprint": CheckResult(
                        "fingerprint", "skipped", {}, "no encoder configured"
                    ).to_json(),
                    "coherence_drift": CheckResult(
                        "coherence_drift", "skipped", {}, "no baseline"
                    ).to_json(),
                    "smoke_train": CheckResult(
                        "smoke_train", "error", {}, "internal error ValueError"
                    ).to_json(),
                    "a_future_check": {
                        "status": "passed",
                        "metrics": {"x_share": 0.5},
                        "message": "fine",
                    },
                },
                "diagnosis": {"verdict": "inconclusive"},
            }
        }
    }


def test_only_skipped_and_errored_checks_render() -> None:
    results = only_skipped_and_errored()
    page = parse(render_html(results))
    texts = heading_texts(page)
    assert "⏭️ CHECK: Encoder fingerprint (fingerprint) — SKIPPED" in texts
    assert "⚠️ CHECK: Smoke training (smoke_train) — ERROR" in texts
    assert "Other checks" in texts  # an id the report does not know still gets a section
    assert page.images == []
    markdown = render_markdown(results)
    assert "no encoder configured" in markdown
    assert terminal_summary(results)[0].startswith("lvmqa bare: INCONCLUSIVE")


def test_empty_results_render() -> None:
    assert "no datasets" in render_html({"datasets": {}})
    assert render_markdown({"datasets": {}}).startswith("# lvmqa diagnosis")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
metric_names = st.sampled_from(
    [
        "recall_at_5",
        "dup_aware_recall_at_1",
        "file_order_mean",
        "position_profile",
        "compared",
        "splits",
        "val_cosine_per_epoch",
        "diagnosis",
        "best_shift",
        "crossing_share",
        "decay_profile",
        "evaluation_fault",
        "pinned_fingerprint",
        "dim",
        "ood_baseline_x_cosine",
    ]
) | st.text(max_size=12)
detail_names = st.sampled_from(
    [
        "tables",
        "training_curves",
        "lowest_articles",
        "histogram_labels",
        "segments",
        "worst_rows",
        "exact_groups",
        "crossing_examples",
        "blocklist_articles",
        "reasons",
    ]
) | st.text(max_size=12)


@given(
    check_id=st.sampled_from(
        [
            "fingerprint",
            "norms",
            "alignment",
            "oracle_recall",
            "duplicates",
            "coherence",
            "coherence_drift",
            "sequence_integrity",
            "split_leakage",
            "text_quality",
            "smoke_train",
            "ood_eval",
        ]
    ),
    metrics=st.dictionaries(metric_names, json_values, max_size=6),
    details=st.dictionaries(detail_names, json_values, max_size=4),
    status=st.sampled_from(["passed", "failed", "skipped", "error", "weird"]),
    diagnosis=st.dictionaries(
        st.sampled_from(["verdict", "root_causes", "actions", "rules_out", "headline"]), json_values
    ),
)
def test_any_json_shape_renders(
    check_id: str,
    metrics: dict[str, Any],
    details: dict[str, Any],
    status: str,
    diagnosis: dict[str, Any],
) -> None:
    results = {
        "datasets": {
            "d": {
                "checks": {
                    check_id: {
                        "status": status,
                        "metrics": metrics,
                        "details": details,
                        "message": "m",
                    }
                },
                "diagnosis": diagnosis,
                "filter": details,
            }
        }
    }
    parse(render_html(results))
    render_markdown(results)
    terminal_summary(results)


# ------------------------------------------------------------- JSON and extras


def test_json_round_trip_and_refusals(results: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_json(results, path)
    assert load_results(path) == results
    (tmp_path / "other.json").write_text('{"something": 1}')
    with pytest.raises(LvmqaError, match="not an lvmqa results file"):
        load_results(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(LvmqaError, match="not a JSON results file"):
        load_results(tmp_path / "broken.json")


def test_check_extras_is_one_html_extra_with_the_checks_section() -> None:
    result = from_gates(
        "coherence_drift",
        seed_results()["datasets"]["790k"]["checks"]["coherence_drift"]["metrics"],
        [
            Gate(
                "file order: no significant drift",
                "file_order_drift_level",
                2,
                "<",
                2,
                "statistical",
            )
        ],
        "significant drift",
        details={
            "tables": {
                "file_order": [
                    {"range": r, "baseline_pct": b, "current_pct": c, "change_pp": c - b}
                    for r, b, c in SEED_BINS
                ]
            }
        },
    )
    extras = check_extras("790k", result, session=None)
    assert [e["format_type"] for e in extras] == ["html"]
    page = parse(extras[0]["content"])
    assert "❌ CHECK: Coherence drift (coherence_drift) — FAIL" in heading_texts(page)
    assert table_with_header(page, "range")[3][0] == "[0.2, 0.3)"
    assert len(page.images) == 1


def test_terminal_summary_lists_causes_by_confidence(results: dict[str, Any]) -> None:
    lines = terminal_summary(results)
    assert lines[0].startswith("lvmqa 790k: FAILED — ordering / article-boundary defect")
    causes = [line for line in lines if "root cause" in line]
    assert causes[0].strip().startswith("root cause: ordering_or_boundary (confidence 0.95)")
    assert any(line.strip().startswith("next: lvmqa windows") for line in lines)


# ------------------------------------------------------------------- pytest-html


class PytestHtmlPage(HTMLParser):
    """The prefix summary (raw HTML in the page) and the test data (a JSON attribute)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0
        self.prefix_headings: list[str] = []
        self.jsonblob: str | None = None
        self._in_heading = False
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if "data-jsonblob" in values:
            self.jsonblob = values["data-jsonblob"]
        classes = (values.get("class") or "").split()
        if self.depth or ("additional-summary" in classes and "prefix" in classes):
            if tag not in VOID:
                self.depth += 1
            if tag in ("h2", "h3", "h4"):
                self._in_heading, self._text = True, []

    def handle_endtag(self, tag: str) -> None:
        if self.depth and tag not in VOID:
            self.depth -= 1
            if self._in_heading and tag in ("h2", "h3", "h4"):
                self.prefix_headings.append("".join(self._text).strip())
                self._in_heading = False

    def handle_data(self, data: str) -> None:
        if self._in_heading:
            self._text.append(data)


def test_pytest_html_report_starts_with_the_diagnosis(quality_pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_html")
    path = random_sequences(quality_pytester.path / "demo.npz")
    result = quality_pytester.runpytest(
        "quality_tests",
        f"--dataset={path}",
        "-k",
        "norms",
        "--html=report.html",
        "--self-contained-html",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=11)  # test_norms and one row per norms gate
    parser = PytestHtmlPage()
    parser.feed((quality_pytester.path / "report.html").read_text(encoding="utf-8"))
    # The summary is real markup in the page (pytest-html renders the prefix unescaped)...
    assert parser.prefix_headings[:2] == ["Dataset demo: HEALTHY", "Executive summary"]
    assert "✅ CHECK: Vector norms (norms) — PASS" in parser.prefix_headings
    # ...and the test row's extra, inside pytest-html's JSON blob, holds the norms section.
    assert parser.jsonblob is not None
    tests = json.loads(parser.jsonblob)["tests"]
    extras = [e for runs in tests.values() for run in runs for e in run.get("extras", [])]
    assert any("CHECK: Vector norms" in e["content"] for e in extras)
    # Each gate row carries its own small table: value, operator, threshold, source.
    gate_rows = [key for key in tests if "test_gate[demo-norms-" in key]
    assert len(gate_rows) == 10
    assert any('class="lvmqa-gate"' in e["content"] and "norm_mean_tolerance" in e["content"]
               for e in extras)
