"""Synthetic articles with known structure, shared by the coherence and integrity tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lvmqa.checks import RunOptions, Session
from lvmqa.registry import DatasetEntry, Registry


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def walk_articles(
    rng: np.random.Generator, lengths: list[int], dim: int, steps: list[float] | float = 0.7
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Articles as random walks on the sphere: next = normalise(prev + noise).

    Adjacency inside an article is high and decays with distance; across articles it is
    ~0 (independent random starts in ``dim`` dimensions).
    """
    vectors, article, chunk = [], [], []
    for a, length in enumerate(lengths):
        step = steps[a] if isinstance(steps, list) else steps
        v = unit(rng.standard_normal(dim))
        for c in range(length):
            vectors.append(v)
            article.append(a)
            chunk.append(c)
            v = unit(v + step * rng.standard_normal(dim) / np.sqrt(dim))
    return np.array(vectors, dtype=np.float32), np.array(article), np.array(chunk)


def file_windows(rows: np.ndarray, c: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The origin's builder: windows slide over the rows as stored (no boundary check)."""
    n = len(rows) - c
    return np.stack([rows[j : j + n] for j in range(c)], axis=1), rows[c:]


def session_for(
    tmp_path: Path,
    files: dict[str, dict[str, Any]],
    entries: dict[str, dict[str, Any]] | None = None,
) -> Session:
    """Write each dataset with numpy.savez (the origin's writer) and register it."""
    datasets = {}
    for name, arrays in files.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        datasets[name] = DatasetEntry(name, path, **(entries or {}).get(name, {}))
    return Session(Registry(None, {}, datasets), RunOptions(debug=True))
