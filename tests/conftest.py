"""Shared helpers for lvmqa's own tests: small origin-format files with known answers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
QUALITY_TESTS = REPO / "quality_tests"


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_sequences(path: Path, contexts: np.ndarray, targets: np.ndarray, **extra: object) -> Path:
    np.savez(path, context_sequences=contexts, target_vectors=targets, **extra)  # type: ignore[arg-type]
    return path


def random_sequences(path: Path, n: int = 60, c: int = 5, d: int = 16, seed: int = 0,
                     scale: float = 1.0) -> Path:
    rng = np.random.default_rng(seed)
    ctx = unit_rows(rng, n * c, d).reshape(n, c, d) * scale
    tgt = unit_rows(rng, n, d) * scale
    texts = np.array([f"sentence number {i} of the test set" for i in range(n)], dtype=object)
    return write_sequences(path, ctx.astype(np.float32), tgt.astype(np.float32),
                           target_texts=texts)


@pytest.fixture
def quality_pytester(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester folder holding a copy of quality_tests and a conftest loading the plugin."""
    shutil.copytree(QUALITY_TESTS, pytester.path / "quality_tests")
    pytester.makeconftest('pytest_plugins = ["lvmqa.plugin"]')
    # importlib mode: the outer process may already hold the repo's quality_tests modules
    pytester.makeini("[pytest]\naddopts = --import-mode=importlib\n"
                     "markers =\n    p0: p0\n    p1: p1\n    p2: p2\n"
                     "    smoke: smoke\n    slow: slow\n")
    return pytester
