"""Untrusted registries and files never run code; concurrent runs do not interfere."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvmqa.errors import LvmqaError
from lvmqa.io import open_dataset
from tests.conftest import REPO, random_sequences

FACTORY = '''
import pathlib
pathlib.Path({marker!r}).write_text("imported")

def make():
    raise SystemExit("the factory ran")
'''


def _registry_with_factory(tmp_path: Path) -> Path:
    marker = tmp_path / "factory-was-imported"
    (tmp_path / "evil_factory.py").write_text(FACTORY.format(marker=str(marker)))
    random_sequences(tmp_path / "data.npz")
    (tmp_path / "lvmqa.toml").write_text(
        '[encoders.evil]\nmodel = "evil_factory:make"\ndim = 16\n'
        '[datasets.pr]\npath = "data.npz"\nencoder = "evil"\n')
    return marker


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(REPO / "quality_tests"), "-p", "lvmqa.plugin",
         "-p", "no:cacheprovider", "--import-mode=importlib", "-k", "fingerprint", "-rs",
         "--dataset=pr", *args],
        cwd=tmp_path, env={"PYTHONPATH": f"{REPO}:{tmp_path}", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_a_registry_entry_cannot_run_its_own_code(tmp_path: Path) -> None:
    marker = _registry_with_factory(tmp_path)
    config = f"--lvmqa-config={tmp_path / 'lvmqa.toml'}"
    untrusted = _pytest(tmp_path, config)
    assert untrusted.returncode == 0, untrusted.stdout[-2000:]
    assert "untrusted registry cannot run code" in untrusted.stdout
    assert not marker.exists()
    # the registry found as the project's own lvmqa.toml is trusted, unless CI says not
    gated = _pytest(tmp_path, "--no-trust-registry")
    assert "untrusted registry cannot run code" in gated.stdout
    assert not marker.exists()
    # the flag really is what stands between the entry and its code
    trusted = _pytest(tmp_path, config, "--trust-registry")
    assert marker.exists(), trusted.stdout[-2000:]


@pytest.mark.slow
def test_two_runs_writing_reports_at_once_do_not_interfere(tmp_path: Path) -> None:
    runs = []
    for tag in ("a", "b"):
        runs.append(subprocess.Popen(
            [sys.executable, "-m", "pytest", "quality_tests", "--dataset=wiki-baseline",
             "-m", "not smoke", "-k", "norms or coherence or integrity", "-p",
             "no:cacheprovider", "--import-mode=importlib",
             f"--lvmqa-json={tmp_path / tag / 'r.json'}", f"--html={tmp_path / tag / 'r.html'}",
             "--self-contained-html"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**__import__("os").environ, "LVMQA_CACHE_DIR": str(tmp_path / "cache")}))
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    first, second = (json.loads((tmp_path / t / "r.json").read_text()) for t in ("a", "b"))
    assert first["datasets"]["wiki-baseline"]["checks"] == \
        second["datasets"]["wiki-baseline"]["checks"]
    for tag in ("a", "b"):
        assert "wiki-baseline" in (tmp_path / tag / "r.html").read_text()
    assert not list((tmp_path / "cache").glob("*.tmp"))


def _valid_npz_bytes() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    ctx = rng.normal(size=(12, 5, 4)).astype(np.float32)
    tgt = rng.normal(size=(12, 4)).astype(np.float32)
    meta = np.array([{"article_index": i // 4, "target_chunk_index": i % 4} for i in range(12)],
                    dtype=object)
    np.savez(buffer, context_sequences=ctx, target_vectors=tgt, metadata=meta,
             target_texts=np.array([f"t{i}" for i in range(12)], dtype=object))
    return buffer.getvalue()


VALID = _valid_npz_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)),
                      min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(0, len(VALID))))
def test_fuzzed_files_raise_only_lvmqa_errors(tmp_path: Path, edits: list[tuple[int, int]],
                                              cut: int | None) -> None:
    """Random byte edits and truncations: a result or an LvmqaError, never anything else."""
    data = bytearray(VALID)
    for position, value in edits:
        data[position] = value
    path = tmp_path / "fuzzed.npz"
    path.write_bytes(bytes(data[:cut]) if cut is not None else bytes(data))
    try:
        ds = open_dataset(path)
        for chunk in ds.iter_chunks(5):
            assert chunk.targets.dtype == np.float32
        ds.targets_matrix()
        _ = ds.meta, ds.target_texts
    except LvmqaError as exc:
        message = str(exc)
    else:
        message = ""
    assert "\n" not in message  # errors are one line
