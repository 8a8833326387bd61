"""Write data/tiny.npz: 60 random unit-vector windows with texts (for the example only)."""

from pathlib import Path

import numpy as np

rng = np.random.default_rng(0)
n, c, d = 60, 5, 16


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


Path("data").mkdir(exist_ok=True)
np.savez(
    "data/tiny.npz",
    context_sequences=unit(rng.normal(size=(n, c, d))),
    target_vectors=unit(rng.normal(size=(n, d))),
    target_texts=np.array([f"Sentence number {i} of the example." for i in range(n)], dtype=object),
)
print("wrote data/tiny.npz")
