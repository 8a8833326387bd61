"""Filter the demo's broken dataset and run the suite again on the result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lvmqa.cli import main
from lvmqa.io import open_dataset
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_filter_wiki_790k_then_rerun_the_suite(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("LVMQA_CACHE_DIR", str(tmp_path / "cache"))
    prefix = tmp_path / "filtered" / "wiki-790k"
    assert main(["filter", "wiki-790k", "--out", str(prefix)]) == 0
    manifest = json.loads(prefix.with_suffix(".manifest.json").read_text())
    mask = np.load(prefix.with_suffix(".mask.npy"))
    source = open_dataset(manifest["input"]["path"])
    filtered = open_dataset(prefix.with_suffix(".npz"))

    # filtered == input[mask], row for row, for vectors, texts and ids
    assert mask.dtype == bool and mask.shape == (source.n,)
    assert filtered.n == int(mask.sum()) == manifest["counts"]["kept"]
    kept = np.flatnonzero(mask)
    np.testing.assert_array_equal(filtered.targets_matrix(), source.targets_at(kept))
    np.testing.assert_array_equal(filtered.contexts_at(np.arange(filtered.n)),
                                  source.contexts_at(kept))
    assert list(filtered.target_texts) == list(source.target_texts[kept])
    assert list(filtered.meta["target_id"]) == list(source.meta["target_id"].iloc[kept])
    counts = manifest["counts"]
    assert counts["kept"] + counts["dropped"] == counts["input"] == source.n
    assert sum(manifest["dropped_by_primary_reason"].values()) == counts["dropped"]
    assert manifest["dropped_by_primary_reason"]["blocklist"] > 0

    # the suite runs on the output; the blocklisted pages are gone
    out_json = tmp_path / "rerun.json"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "quality_tests", f"--dataset={prefix}.npz",
         "-m", "not smoke", "-k", "text_quality or norms or duplicates", "-p",
         "no:cacheprovider", "--import-mode=importlib", f"--lvmqa-json={out_json}"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode in (0, 1), done.stdout[-2000:] + done.stderr[-2000:]
    checks = json.loads(out_json.read_text())["datasets"]["wiki-790k"]["checks"]
    assert checks["norms"]["status"] == "passed"
    assert checks["text_quality"]["metrics"]["blocklist_share"] < 0.01
