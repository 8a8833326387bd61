"""The action the diagnosis proposes for wiki-790k really repairs it."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _pytest(*args: str, env_cache: Path) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "pytest", "quality_tests", "-p", "no:cacheprovider",
         "--import-mode=importlib", "-m", "not smoke", *args],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "LVMQA_CACHE_DIR": str(env_cache)})


def test_rebuilding_windows_as_proposed_makes_wiki_790k_healthy(tmp_path: Path) -> None:
    before = tmp_path / "before.json"
    done = _pytest("--dataset=wiki-790k", f"--lvmqa-json={before}", env_cache=tmp_path)
    assert done.returncode == 1
    action = json.loads(before.read_text())["datasets"]["wiki-790k"]["diagnosis"]["actions"][0]
    rebuild = shlex.split(action["command"].splitlines()[0])
    assert rebuild[:2] == ["lvmqa", "windows"]
    out = tmp_path / "rebuilt.npz"
    rebuild[rebuild.index("--out") + 1] = str(out)
    subprocess.run([sys.executable, "-m", "lvmqa.cli", *rebuild[1:]], cwd=REPO, check=True,
                   timeout=300)
    after = tmp_path / "after.json"
    done = _pytest(f"--dataset={out}", "--baseline=wiki-baseline", "--encoder=minilm",
                   f"--lvmqa-json={after}", env_cache=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    result = json.loads(after.read_text())["datasets"]["rebuilt"]
    assert result["diagnosis"]["verdict"] == "healthy"
    assert result["checks"]["sequence_integrity"]["metrics"]["crossing_share"] == 0
    assert result["checks"]["coherence_drift"]["status"] == "passed"
