"""The same seed gives the same JSON results: across runs and across 1 and 2 threads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

# Wall-clock quantities are the only fields allowed to differ between runs.
TIMING = re.compile(r"(seconds|per_second|duration|_time$|timestamp)")


def _strip_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_timing(v) for k, v in value.items() if not TIMING.search(k)}
    if isinstance(value, list):
        return [_strip_timing(v) for v in value]
    return value


def _run(tmp_path: Path, threads: int, tag: str) -> dict[str, Any]:
    out = tmp_path / f"{tag}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "LVMQA_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "quality_tests", "--dataset=wiki-baseline",
         "--dataset=wiki-790k", "--smoke-epochs=2", "--smoke-max-sequences=2000",
         "--recall-sample=300", "--alignment-sample=64", f"--lvmqa-json={out}",
         "-p", "no:cacheprovider", "-q", "--import-mode=importlib"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def _close(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two JSON values differ by more than last-bit float noise (1e-6)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a for d in _close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: lengths {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in _close(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if abs(a - b) <= 1e-6 * max(1.0, abs(a)) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_json_results_are_identical_across_runs_and_threads(tmp_path: Path) -> None:
    first = _strip_timing(_run(tmp_path, 2, "first"))
    again = _strip_timing(_run(tmp_path, 2, "again"))
    one_thread = _strip_timing(_run(tmp_path, 1, "one-thread"))
    # the same seed and thread count: byte-identical results
    assert first == again
    # 1 vs 2 threads: identical too (smoke training pins its torch threads; JSON floats
    # carry 6 significant digits); on a mismatch, show where and by how much
    assert _close(first, one_thread) == []
    assert first == one_thread
