"""The evaluation harness (bench/eval_diagnosis.py) end to end on the committed eval banks.

It builds three sets of the pydoc corpus (clean train, whole-file ingestion order, strong
dilution), runs every lvmqa check on them and prints the table. The diagnosis itself is not
asserted here (it is being rewritten); the injected defects and the table are.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SETS = ("pydoc-train", "pydoc-order-whole", "pydoc-dilution-strong")


def load_harness():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "eval_diagnosis", REPO / "bench" / "eval_diagnosis.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["eval_diagnosis"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_eval_harness_builds_sets_runs_lvmqa_and_prints_the_table(tmp_path):
    harness = load_harness()
    by_name = {s.name: s for s in harness.corpus_sets(harness.load_corpus("pydoc"))}
    sets = [by_name[name] for name in SETS]
    json_path = tmp_path / "results.json"
    options = {"recall_sample": 200, "alignment_sample": 64}
    rows = harness.evaluate(sets, tmp_path, options=options, json_path=json_path)

    # The defects are what the set names say.
    with np.load(tmp_path / "pydoc-order-whole.npz", allow_pickle=True) as order:
        assert {"article_index", "target_chunk_index"} <= set(order.files)
        assert "metadata" not in order.files  # ids only under the non-origin keys
        article = order["article_index"]
        assert np.mean(article[1:] != article[:-1]) > 0.2  # bursts of documents interleave
    with np.load(tmp_path / "pydoc-dilution-strong.npz", allow_pickle=True) as diluted:
        lowq = diluted["article_index"] >= 900_000
        assert 0.12 < lowq.mean() < 0.20  # ~16 % of windows from low-quality pages
    with np.load(tmp_path / "pydoc-train.npz", allow_pickle=True) as train:
        meta = train["metadata"]
        assert not any(m["crosses_article"] for m in meta)  # clean windows stay inside pages

    # lvmqa ran every P0/P1 check on each set and the table has one row per set.
    results = json.loads(json_path.read_text())["datasets"]
    assert set(SETS) <= set(results)
    for name in SETS:
        assert {"norms", "coherence", "sequence_integrity"} <= set(results[name]["checks"])
    assert [r.set for r in rows] == list(SETS)
    lines = harness.table(rows)
    assert lines[0].startswith("| set | corpus | injected defect | expected root cause |")
    for name, line in zip(SETS, lines[2:], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == name
        assert cells[4] in {"healthy", "failed", "incomplete", "error"}
        assert cells[6] in {"yes", "NO"}
    assert any(line.startswith("top-cause accuracy: ") for line in harness.summary(rows))
