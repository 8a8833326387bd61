"""lvmqa as a user installs it: the wheel in a fresh venv, in a folder outside the repo.

The venv is created without system site-packages and gets only the wheel (``--no-deps``).
Its dependencies cannot be downloaded here, so they come from this venv's site-packages
through a symlinked overlay on the new venv's path, WITHOUT lvmqa itself (the editable
install) and without the dev-only packages (hypothesis, ruff, mypy, gensim): ``pip check``
then proves the wheel's declared dependencies are complete, and the runs prove that
nothing outside the wheel is needed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

# Not runtime dependencies of lvmqa: must not be visible to the installed wheel.
DEV_ONLY = {"lvmqa", "hypothesis", "ruff", "mypy", "mypyc", "gensim", "smart_open", "pip",
            "__pycache__"}


def dev_only(name: str) -> bool:
    """A site-packages entry (module, package, .dist-info, .pth) of lvmqa or a dev tool."""
    base = re.split(r"[-.]", name)[0]
    return (base in DEV_ONLY or base.startswith(("_hypothesis", "__editable__"))
            or "__mypyc" in name)


GATE_ID = re.compile(r"^test_gate\[tiny-[a-z0-9_]+-[a-z0-9_]+(>=|<=|==|<|>)([-+0-9.e]+|unset)\]$")


def _run(args: list[str | Path], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "LVMQA_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel built from this checkout; returns its bin folder."""
    root = tmp_path_factory.mktemp("lvmqa-wheel")
    assert not root.resolve().is_relative_to(REPO)
    built = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                  "--no-build-isolation", "-w", root / "dist", REPO], cwd=root)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (root / "dist").glob("lvmqa-*.whl")
    venv = root / "venv"
    # Without pip and setuptools of its own: this venv's pip installs into it.
    made = _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root)
    assert made.returncode == 0, made.stderr[-2000:]
    bin_dir = venv / "bin"
    pip = [sys.executable, "-m", "pip", "--python", bin_dir / "python"]
    done = _run([*pip, "install", "-q", "--no-deps", "--no-index", wheel], cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    overlay = root / "deps"
    overlay.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not dev_only(entry.name):
            (overlay / entry.name).symlink_to(entry)
    site = _run([bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()"
                 "['purelib'])"], cwd=root).stdout.strip()
    (Path(site) / "lvmqa_test_deps.pth").write_text(f"{overlay}\n")
    checked = _run([*pip, "check"], cwd=root)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    where = _run([bin_dir / "python", "-c", "import lvmqa, quality_tests; "
                  "print(lvmqa.__file__); print(quality_tests.__file__)"], cwd=root)
    assert where.returncode == 0, where.stderr
    assert all(Path(p).is_relative_to(venv) for p in where.stdout.split()), where.stdout
    return bin_dir


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """An empty folder with an lvmqa.toml pointing at a small data file."""
    from tests.conftest import random_sequences

    random_sequences(tmp_path / "data.npz")
    (tmp_path / "lvmqa.toml").write_text('[datasets.tiny]\npath = "data.npz"\n')
    return tmp_path


def _gate_cases(junit: Path) -> list[str]:
    names = [case.get("name", "") for case in ET.parse(junit).iter("testcase")]
    return [n for n in names if n.startswith("test_gate[")]


def _declared_gate_count() -> int:
    from lvmqa.gates import GATES

    return len(GATES)


def test_pyargs_quality_tests_run_every_gate(installed: Path, user_folder: Path) -> None:
    done = _run([installed / "python", "-m", "pytest", "--pyargs", "quality_tests",
                 "--dataset=tiny", "--junitxml=j.xml", "-p", "no:cacheprovider",
                 "--strict-markers"], cwd=user_folder)
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-2000:]
    cases = _gate_cases(user_folder / "j.xml")
    assert len(cases) == _declared_gate_count()
    assert all(GATE_ID.match(name) for name in cases), [n for n in cases if not GATE_ID.match(n)]
    assert "test_gate[tiny-oracle_recall-dup_aware_recall_at_5>=0.97]" in cases
    assert "lvmqa tiny:" in done.stdout  # the terminal diagnosis summary


def test_lvmqa_check_runs_every_gate(installed: Path, user_folder: Path) -> None:
    done = _run([installed / "lvmqa", "check", "tiny", "--junitxml", "j.xml"], cwd=user_folder)
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-2000:]
    assert len(_gate_cases(user_folder / "j.xml")) == _declared_gate_count()


def test_users_own_test_file(installed: Path, user_folder: Path) -> None:
    (user_folder / "test_mine.py").write_text(
        "import pytest\n\n\n"
        "def test_norms(lvmqa_check):\n"
        '    assert lvmqa_check("norms").metrics["target_norm_mean"] == pytest.approx(1.0, '
        "abs=1e-3)\n"
    )
    done = _run([installed / "python", "-m", "pytest", "test_mine.py", "--dataset=tiny",
                 "-p", "no:cacheprovider"], cwd=user_folder)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "1 passed" in done.stdout


def test_example_custom_check(installed: Path, tmp_path: Path) -> None:
    folder = tmp_path / "custom_check"
    shutil.copytree(REPO / "examples" / "custom_check", folder,
                    ignore=shutil.ignore_patterns("data", "__pycache__"))
    made = _run([installed / "python", "make_data.py"], cwd=folder)
    assert made.returncode == 0, made.stderr
    done = _run([installed / "python", "-m", "pytest", "--pyargs", "quality_tests", ".",
                 "--dataset=tiny", "--junitxml=j.xml", "-m", "not smoke",
                 "-p", "no:cacheprovider"], cwd=folder)
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-2000:]
    cases = {case.get("name"): case for case in ET.parse(folder / "j.xml").iter("testcase")}
    # The registry's override (0.02), not the declared default (0.05), is in the id.
    assert "test_gate[tiny-title_case-lower_case_share<=0.02]" in cases
    mine = [f"test_{n}[tiny]" for n in ("target_norms_are_one", "texts_are_sentences",
                                         "dataset_is_not_empty")]
    for name in mine:
        assert name in cases, sorted(cases)
        assert len(cases[name]) == 0, ET.tostring(cases[name])  # no failure, no skip
