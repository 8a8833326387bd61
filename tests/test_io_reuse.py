"""Reused chunk buffers (the coherence pass's fast path) give the same data as fresh ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lvmqa.io import open_dataset
from tests.conftest import unit_rows


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("reuse", [1, 4])
def test_reused_chunks_equal_fresh_chunks(tmp_path: Path, dtype: type, compressed: bool,
                                          reuse: int) -> None:
    rng = np.random.default_rng(5)
    ctx = unit_rows(rng, 37 * 5, 8).reshape(37, 5, 8).astype(dtype)
    tgt = unit_rows(rng, 37, 8).astype(dtype)
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "s.npz", context_sequences=ctx, target_vectors=tgt)
    ds = open_dataset(tmp_path / "s.npz")
    fresh = [(c.start, c.contexts.copy(), c.targets.copy()) for c in ds.iter_chunks(6)]
    reused = []
    for chunk in ds.iter_chunks(6, reuse=reuse):
        assert not chunk.targets.flags.writeable
        reused.append((chunk.start, chunk.contexts.copy(), chunk.targets.copy()))
    assert len(fresh) == len(reused) == 7
    for (s1, c1, t1), (s2, c2, t2) in zip(fresh, reused, strict=True):
        assert s1 == s2
        np.testing.assert_array_equal(c1, c2)
        np.testing.assert_array_equal(t1, t2)
    np.testing.assert_array_equal(np.concatenate([t for _, _, t in reused]),
                                  tgt.astype(np.float32))


def test_reused_chunks_stay_valid_for_reuse_minus_one_steps(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    tgt = unit_rows(rng, 40, 4).astype(np.float64)  # float64: read into the reuse ring
    np.savez(tmp_path / "s.npz", context_sequences=np.repeat(tgt[:, None], 5, axis=1),
             target_vectors=tgt)
    ds = open_dataset(tmp_path / "s.npz")
    held = []
    for chunk in ds.iter_chunks(10, reuse=3):
        held.append(chunk)
        if len(held) >= 2:  # the previous chunk is still intact one step later
            np.testing.assert_array_equal(held[-2].targets,
                                          tgt[held[-2].start:held[-2].stop].astype(np.float32))
