"""pytester runs of quality_tests: parametrisation, skips, JSON, exit codes, bad input."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import random_sequences


def test_norms_pass_and_fail_per_dataset(quality_pytester: pytest.Pytester) -> None:
    good = random_sequences(quality_pytester.path / "good.npz")
    bad = random_sequences(quality_pytester.path / "bad.npz", scale=1.3)
    result = quality_pytester.runpytest("quality_tests", f"--dataset={good}",
                                        f"--dataset={bad}", "-k", "norms",
                                        "--lvmqa-json=out.json")
    # Per dataset: the norms summary test and its 10 gates; bad fails both mean gates.
    result.assert_outcomes(passed=19, failed=3)
    result.stdout.fnmatch_lines(["*test_norms?bad?*", "*target norms near 1*"])
    assert ("FAILED quality_tests/test_gates.py::test_gate[bad-norms-target_norm_mean_error<0.01]"
            in result.stdout.str())
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
    result.stdout.fnmatch_lines(["*test_gate[[]tiny-fingerprint-dim==16[]]*",
                                 "*test_gate[[]tiny-norms-target_norm_mean_error<0.01[]]*",
                                 "*test_gate[[]tiny-oracle_recall-dup_aware_recall_at_5>=0.97[]]*",
                                 "*test_gate[[]tiny-smoke_train-val_cosine_best>=unset[]]*",
                                 "*test_norms[[]tiny[]]*", "*test_smoke_train[[]tiny[]]*"])


def test_checks_needing_an_encoder_skip_with_reason(quality_pytester: pytest.Pytester) -> None:
    path = random_sequences(quality_pytester.path / "plain.npz")
    result = quality_pytester.runpytest("quality_tests", f"--dataset={path}", "-k",
                                        "fingerprint or coherence_drift", "-rs")
    # 2 summary tests, 3 fingerprint gates, 8 drift gates (2 per adjacency definition).
    result.assert_outcomes(skipped=13)
    result.stdout.fnmatch_lines(["*no encoder configured*", "*baseline*"])


def test_without_dataset_everything_skips(quality_pytester: pytest.Pytester) -> None:
    result = quality_pytester.runpytest("quality_tests", "-k", "norms or test_gate", "-rs")
    result.assert_outcomes(skipped=2)  # test_norms[no-dataset], test_gate[no-dataset]
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
    result = quality_pytester.runpytest("quality_tests", f"--dataset={path}", "-k", "test_norms",
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


# ------------------------------------------------------------ one item per gate
def test_failing_gate_shows_value_threshold_and_source_without_a_list_diff(
    quality_pytester: pytest.Pytester,
) -> None:
    bad = random_sequences(quality_pytester.path / "bad.npz", scale=1.3)
    result = quality_pytester.runpytest("quality_tests", f"--dataset={bad}", "-k", "norms")
    result.stdout.fnmatch_lines([
        "*test_gate[[]bad-norms-target_norm_mean_error<0.01[]]*",
        "*value*target_norm_mean_error = 0.3",
        "*operator*<",
        "*threshold*0.01",
        "*source*lvmqa default; set `norm_mean_tolerance = …` in [[]datasets.bad.thresholds[]]*",
        "*assert 0.3 < 0.01",
    ])
    out = result.stdout.str()
    assert "Left contains" not in out and "Use -v" not in out and "== []" not in out


def _registry(folder: Path, body: str) -> None:
    (folder / "lvmqa.toml").write_text(body)


def test_registry_threshold_is_in_the_id_and_the_junit_row(
    quality_pytester: pytest.Pytester,
) -> None:
    random_sequences(quality_pytester.path / "data.npz")
    _registry(quality_pytester.path, '[datasets.mine]\npath = "data.npz"\n'
              '[datasets.mine.thresholds]\nrecall_at_5 = 0.5\n')
    result = quality_pytester.runpytest("quality_tests", "--dataset=mine", "-m", "not smoke",
                                        "-k", "oracle_recall", "--junitxml=j.xml")
    result.assert_outcomes(passed=3)
    cases = {c.get("name"): c for c in ET.parse(quality_pytester.path / "j.xml").iter("testcase")}
    row = cases["test_gate[mine-oracle_recall-dup_aware_recall_at_5>=0.5]"]
    props = {p.get("name"): p.get("value") for p in row.iter("property")}
    assert props["threshold"] == "0.5" and props["op"] == ">=" and props["kind"] == "registry"
    assert props["source"] == "registry: [datasets.mine.thresholds] recall_at_5"
    assert float(props["value"]) == 1.0
    assert "test_gate[mine-oracle_recall-dup_aware_recall_at_1000>=0.97]" in cases


def test_unconfigured_gate_skips_saying_how_to_set_it(
    quality_pytester: pytest.Pytester,
) -> None:
    path = random_sequences(quality_pytester.path / "plain.npz")
    result = quality_pytester.runpytest("quality_tests", f"--dataset={path}", "-k",
                                        "val_cosine_best", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*smoke_train.val_cosine_best has no threshold for 'plain': "
                                 "set `smoke_final_min = …` in [[]datasets.plain.thresholds[]]*"])


def test_drift_gate_asserts_the_drift_and_its_ci(quality_pytester: pytest.Pytester) -> None:
    from tests.synthetic import file_windows, walk_articles

    rng = np.random.default_rng(18)
    for name, shuffle in (("base", False), ("new", True)):
        rows, _, _ = walk_articles(rng, [30] * 40, 32, 0.8)
        if shuffle:
            rows = rows[rng.permutation(len(rows))]
        contexts, targets = file_windows(rows)
        np.savez(quality_pytester.path / f"{name}.npz", context_sequences=contexts,
                 target_vectors=targets)
    _registry(quality_pytester.path, '[datasets.base]\npath = "base.npz"\n'
              '[datasets.new]\npath = "new.npz"\nbaseline = "base"\n')
    result = quality_pytester.runpytest("quality_tests", "--dataset=new", "-k",
                                        "test_gate and file_order_mean_drift_pct")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*test_gate[[]new-coherence_drift-file_order_mean_drift_pct>=-5[]]*",
        "*value*file_order_mean_drift_pct = -*",
        "*CI (95 %)*",
        "*assert not (-* < -5.0 and -* < 0.0)",
    ])
    assert "drift_level" not in result.stdout.str()


def test_plugin_registers_its_markers(pytester: pytest.Pytester) -> None:
    """No ini markers and no conftest: the entry point loads the plugin and its markers."""
    pytester.makepyfile(test_marked="import pytest\n\n\n@pytest.mark.p0\n@pytest.mark.smoke\n"
                                    "def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--strict-markers", "-m", "p0", "-p",
                                           "no:cacheprovider")
    result.assert_outcomes(passed=1)
    help_text = pytester.runpytest_subprocess("--help").stdout.str()
    assert "--dataset=NAME_OR_PATH" in help_text


def test_a_registered_check_gets_gate_items(quality_pytester: pytest.Pytester,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # A subprocess: registering a check changes lvmqa's tables for the whole process.
    monkeypatch.setenv("PYTHONPATH", str(quality_pytester.path))
    random_sequences(quality_pytester.path / "data.npz")
    _registry(quality_pytester.path, '[datasets.mine]\npath = "data.npz"\n')
    quality_pytester.makepyfile(mycheck='''
import lvmqa


def check_rows(ctx):
    n = ctx.dataset.n
    gate = lvmqa.make_gate(ctx, "row_count", "n_rows", n)
    return lvmqa.from_gates("row_count", {"n_rows": n}, [gate], f"{n} rows")
''')
    quality_pytester.makeconftest('''
import lvmqa
from mycheck import check_rows

lvmqa.register_check("row_count", check_rows, title="Row count", phase="P0", gates=[
    lvmqa.declare_gate("row_count", "n_rows", ">=", key="min_rows", default=100)])
''')
    result = quality_pytester.runpytest_subprocess("quality_tests", "--dataset=mine", "-k",
                                                   "row_count")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_gate[[]mine-row_count-n_rows>=100[]]*",
                                 "*assert 60 >= 100"])
