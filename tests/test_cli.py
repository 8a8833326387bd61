"""The lvmqa command line: help, one-line errors, exit codes, windows and datasets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lvmqa.cli import main
from lvmqa.io import open_dataset
from tests.conftest import REPO, random_sequences


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lvmqa.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.parametrize("command", ["check", "filter", "windows", "fingerprint", "report",
                                     "datasets"])
def test_every_command_has_help_with_an_example(command: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "example: lvmqa " + command in capsys.readouterr().out


def test_datasets_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--lvmqa-config", str(REPO / "lvmqa.toml"), "datasets"]) == 0
    out = capsys.readouterr().out
    assert "wiki-790k" in out and "baseline=wiki-baseline" in out and "ood=wiki-ood" in out


def test_windows_rebuilds_inside_articles(tmp_path: Path) -> None:
    bank = REPO / "fixtures" / "data" / "wiki-790k.bank.npz"
    out = tmp_path / "rebuilt.npz"
    assert main(["windows", str(bank), "--context", "5", "--out", str(out),
                 "--blocklist", "List of|disambiguation"]) == 0
    ds = open_dataset(out)
    assert ds.kind == "sequences" and ds.context_length == 5
    assert not ds.meta["context_articles_differ"].any()
    titles = ds.meta["article"].nunique()
    assert titles > 10
    # refusing to overwrite without --force is a one-line error, exit 2
    assert main(["windows", str(bank), "--out", str(out)]) == 2


def test_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npz"
    done = run_cli("windows", str(missing), "--out", str(tmp_path / "x.npz"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.npz" in lines[0] and "file not found" in lines[0]


def test_check_exit_codes(tmp_path: Path) -> None:
    good = random_sequences(tmp_path / "good.npz")
    bad = random_sequences(tmp_path / "bad.npz", scale=2.0)
    assert main(["check", str(good), "--no-smoke", "--json", str(tmp_path / "g.json")]) in (0, 1)
    with np.load(good) as data:
        assert data["target_vectors"].shape == (60, 16)
    assert main(["check", str(bad), "--no-smoke"]) == 1
    assert main(["check", str(tmp_path / "missing.npz")]) == 2


def test_changed_datasets_for_ci_gating(tmp_path: Path) -> None:
    from lvmqa.cli import changed_datasets

    old = tmp_path / "old.toml"
    new = tmp_path / "new.toml"
    old.write_text('[datasets.a]\npath = "a.npz"\n[datasets.b]\npath = "b.npz"\n')
    new.write_text('[datasets.a]\npath = "a.npz"\n\n[datasets.b]\npath = "b2.npz"\n'
                   '[datasets.c]\npath = "c.npz"\n')
    assert changed_datasets(new, old) == ["b", "c"]
    assert changed_datasets(new, tmp_path / "missing.toml") == ["a", "b", "c"]
