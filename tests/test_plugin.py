"""pytester runs of quality_tests: parametrisation, skips, JSON, exit codes, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import random_sequences


def test_norms_pass_and_fail_per_dataset(quality_pytester: pytest.Pytester) -> None:
    good = random_sequences(quality_pytester.path / "good.npz")
    bad = random_sequences(quality_pytester.path / "bad.npz", scale=1.3)
    result = quality_pytester.runpytest("quality_tests", f"--dataset={good}",
                                        f"--dataset={bad}", "-k", "norms",
                                        "--lvmqa-json=out.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_norms?bad?*", "*target norms near 1*"])
    data = json.loads((quality_pytester.path / "out.json").read_text())
    assert set(data["datasets"]) == {"good", "bad"}
    bad_norms = data["datasets"]["bad"]["checks"]["norms"]
    assert bad_norms["status"] == "failed"
    assert bad_norms["metrics"]["target_norm_mean"] == pytest.approx(1.3, abs=1e-5)
    assert data["datasets"]["good"]["checks"]["norms"]["status"] == "passed"
    assert data["datasets"]["good"]["n_sequences"] == 60
    assert data["datasets"]["good"]["sha256"].startswith("sha256:")


def test_test_ids_are_dataset_names(quality_pytester: pytest.Pytester) -> None:
    path = random_sequences(quality_pytester.path / "tiny.npz")
    result = quality_pytester.runpytest("quality_tests", f"--dataset={path}", "--collect-only",
                                        "-q")
    result.stdout.fnmatch_lines(["*test_norms[[]tiny[]]*", "*test_smoke_train[[]tiny[]]*"])


def test_checks_needing_an_encoder_skip_with_reason(quality_pytester: pytest.Pytester) -> None:
    path = random_sequences(quality_pytester.path / "plain.npz")
    result = quality_pytester.runpytest("quality_tests", f"--dataset={path}", "-k",
                                        "fingerprint or drift", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*no encoder configured*", "*baseline*"])


def test_without_dataset_everything_skips(quality_pytester: pytest.Pytester) -> None:
    result = quality_pytester.runpytest("quality_tests", "-k", "norms", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no --dataset given*"])


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"", "empty file"), (b"not a zip at all", "not an npz archive")],
)
def test_bad_file_is_a_usage_error(quality_pytester: pytest.Pytester, content: bytes,
                                   needle: str) -> None:
    path = quality_pytester.path / "broken.npz"
    path.write_bytes(content)
    result = quality_pytester.runpytest("quality_tests", f"--dataset={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*broken.npz*{needle}*"])
    assert "Traceback" not in result.stderr.str()


def test_unknown_dataset_name(quality_pytester: pytest.Pytester) -> None:
    result = quality_pytester.runpytest("quality_tests", "--dataset=no-such-dataset")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown dataset 'no-such-dataset'*"])


def test_nan_rows_fail_norms_with_counts(quality_pytester: pytest.Pytester) -> None:
    path = random_sequences(quality_pytester.path / "nan.npz")
    with np.load(path, allow_pickle=True) as data:
        arrays = dict(data)
    arrays["target_vectors"][[3, 7]] = np.nan
    arrays["target_vectors"][9] = 0.0
    np.savez(path, **arrays)
    result = quality_pytester.runpytest("quality_tests", f"--dataset={path}", "-k", "norms",
                                        "--lvmqa-json=out.json")
    result.assert_outcomes(failed=1)
    metrics = json.loads((quality_pytester.path / "out.json").read_text())[
        "datasets"]["nan"]["checks"]["norms"]["metrics"]
    assert metrics["target_nan_count"] == 2
    assert metrics["target_zero_count"] == 1


def assert_results_schema(data: dict) -> None:
    """The design.md JSON contract, checked field by field."""
    from lvmqa.checks import CHECKS
    from lvmqa.diagnosis import ROOT_CAUSE_CODES

    assert isinstance(data["lvmqa_version"], str)
    assert data["datasets"]
    for entry in data["datasets"].values():
        assert isinstance(entry["path"], str)
        assert entry["sha256"].startswith("sha256:") and len(entry["sha256"]) == 71
        assert isinstance(entry["n_sequences"], int) and isinstance(entry["dim"], int)
        for check_id, check in entry["checks"].items():
            assert check_id in CHECKS
            assert check["status"] in ("passed", "failed", "skipped", "error")
            assert isinstance(check["metrics"], dict) and isinstance(check["message"], str)
            assert all(k == k.lower() and " " not in k for k in check["metrics"])
        diagnosis = entry["diagnosis"]
        assert isinstance(diagnosis["verdict"], str)
        for cause in diagnosis["root_causes"]:
            assert cause["code"] in ROOT_CAUSE_CODES
            assert 0.0 <= cause["confidence"] <= 1.0
            assert all(isinstance(e, str) for e in cause["evidence"])
        assert isinstance(diagnosis["rules_out"], list)
        assert isinstance(diagnosis["actions"], list)


def test_json_results_follow_the_design_schema(quality_pytester: pytest.Pytester) -> None:
    path = random_sequences(quality_pytester.path / "tiny.npz")
    quality_pytester.runpytest("quality_tests", f"--dataset={path}", "-m", "not smoke",
                               "--lvmqa-json=out.json")
    data = json.loads((quality_pytester.path / "out.json").read_text())
    assert_results_schema(data)
    assert set(data["datasets"]["tiny"]["checks"]) >= {"norms", "coherence", "duplicates"}


@pytest.mark.slow
def test_demo_json_follows_the_design_schema(tmp_path: pytest.TempPathFactory) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "demo.json"  # type: ignore[operator]
    done = subprocess.run([sys.executable, "-m", "pytest", "quality_tests",
                           "--dataset=wiki-790k", "-m", "not smoke", "-p", "no:cacheprovider",
                           "--import-mode=importlib", f"--lvmqa-json={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 1, done.stdout[-2000:]
    data = json.loads(out.read_text())
    assert_results_schema(data)
    diagnosis = data["datasets"]["wiki-790k"]["diagnosis"]
    codes = [c["code"] for c in diagnosis["root_causes"]]
    assert codes[:2] == ["ordering_or_boundary", "low_coherence_dilution"]
    assert diagnosis["actions"][0]["command"].startswith("lvmqa windows ")
