"""Hostile inputs (issue 13): every case of tests/make_bad_inputs.py's HOSTILE corpus.

In process, each data file must open or fail with a one-line ``LvmqaError`` naming the
file and the key; each registry must load or fail the same way. Through real
subprocesses (``lvmqa`` and ``pytest quality_tests``) run under an address-space cap
(RLIMIT_AS), a timeout and a private TMPDIR, each case must end with exit 2 (CLI) / 4
(pytest) and one error line naming file and key, or a correct result; never a
traceback; no marker file written by hostile code; inputs byte-identical; peak RSS
(from wait4) under ``RSS_BOUND``; nothing left in the temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lvmqa.errors import LvmqaError
from lvmqa.io import open_dataset
from lvmqa.registry import load_registry
from tests import make_bad_inputs as bad
from tests.conftest import REPO

CLI_USAGE_EXIT, PYTEST_USAGE_EXIT = 2, 4
ADDRESS_SPACE_CAP = 6 << 30  # virtual: numpy/pandas/torch map far more than they touch
RSS_BOUND_MB = 600  # a clean 40-row file peaks near 100-300 MB (imports); 2.4x spare
TIMEOUT_S = 120
LVMQA = [sys.executable, "-m", "lvmqa.cli"]
PYTEST = [sys.executable, "-m", "pytest", str(REPO / "quality_tests"), "-p", "lvmqa.plugin"]
PYTEST += ["-p", "no:cacheprovider", "-q", "-m", "not smoke"]

# case -> what the one error line must contain (file and key), or None: it must load.
DATA: dict[str, list[str] | None] = {
    "pickle_bytearray_1gib": ["pickle_bytearray_1gib.npz", "key 'target_texts'"],
    "pickle_billion_laughs": ["key 'target_texts'", "expands far beyond its size"],
    "pickle_memo_amplification": ["key 'target_texts'", "expands far beyond its size"],
    "binbytes8_claim_deflated": ["key 'target_texts'", "a length of 4294967296 bytes"],
    "many_deflated_members": None,
    "deflated_json_bomb": ["key 'manifest.json'", "JSON member is too large"],
    "sparse_manifest_folder": ["key 'manifest.json'", "JSON file is too large"],
    "header_claims_rows": ["key 'context_sequences'", "array data is truncated"],
    "header_shape_infinite": ["key 'target_vectors'", "integer dimensions"],
    "header_shape_1e12": ["key 'target_vectors'", "array data is truncated"],
    "header_empty_rows_1e12": ["key 'target_vectors'", "more rows than the member holds"],
    "huge_headers_deflated": ["key 'pad_0'", "a header under 10000 bytes"],
    "ids_2_pow_63": ["key 'metadata.article_index'", "9223372036854775808"],
    "ids_1e30": ["key 'metadata.article_index'", "1e+30"],
    "ids_complex": ["key 'metadata.article_index'", "complex number"],
    "bank_uint64_ids": ["key 'article_indices'", "18446744073709551615 at row 17"],
    "json_nested_deep": ["key 'manifest'", "nesting too deep"],
    "texts_lone_surrogates": None,
    "fifo_npy": ["fifo_npy.npy", "not a regular file", "a FIFO"],
    "fifo_member_folder": ["key 'target_vectors'", "not a regular file"],
    "fifo_json_folder": ["key 'manifest.json'", "not a regular file"],
    "html_name": None,
    "shell_name": None,
}
REGISTRY: dict[str, list[str] | None] = {
    "registry_shell_key": ["registry_shell_key.toml", "unsafe name"],
    "registry_html_key": ["registry_html_key.toml", "unsafe name"],
    "registry_code_encoder": None,
    "registry_catastrophic_regex": None,
    "registry_backreference_regex": [
        "key 'datasets.good.blocklist'",
        "unsupported regular expression",
    ],
    "registry_build_dev_zero": ["key 'datasets.zero.build.from'", "not a regular file"],
    "registry_toml_deep": ["registry_toml_deep.toml", "nesting too deep"],
    "registry_string_threshold": ["key 'datasets.good.thresholds.low_coherence'", "'high'"],
    "registry_nan_threshold": ["key 'datasets.good.thresholds.low_coherence'", "nan"],
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return bad.build_hostile(tmp_path_factory.mktemp("hostile"))


def test_the_tables_cover_every_hostile_case() -> None:
    assert set(DATA) | set(REGISTRY) == set(bad.HOSTILE)


# ------------------------------------------------------------------ in process
@pytest.mark.parametrize("case", sorted(DATA))
def test_data_case_opens_or_fails_in_one_line(corpus: dict[str, Path], case: str) -> None:
    expected = DATA[case]
    started = time.monotonic()
    if expected is None:
        ds = open_dataset(corpus[case])
        assert ds.n > 0
    else:
        with pytest.raises(LvmqaError) as refused:
            open_dataset(corpus[case])
        line = str(refused.value)
        assert "\n" not in line and str(corpus[case].name) in line, line
        for needle in expected:
            assert needle in line, line
    assert time.monotonic() - started < 10  # cost follows the bytes present, not claims


@pytest.mark.parametrize("case", sorted(REGISTRY))
def test_registry_case_loads_or_fails_in_one_line(corpus: dict[str, Path], case: str) -> None:
    expected = REGISTRY[case]
    if expected is None:
        registry = load_registry(corpus[case])
        assert not registry.trusted  # found by location or named: never trusted by default
        return
    with pytest.raises(LvmqaError) as refused:
        load_registry(corpus[case])
    line = str(refused.value)
    assert "\n" not in line and str(corpus[case]) in line, line
    for needle in expected:
        assert needle in line, line


def test_unused_deflated_members_are_never_expanded(corpus: dict[str, Path]) -> None:
    ds = open_dataset(corpus["many_deflated_members"])
    extra = ds.data.members["extra_0"]
    assert extra._deflated is not None  # still compressed: nothing decompressed at open
    np.testing.assert_array_equal(ds.targets_matrix(), bad.good_arrays()["target_vectors"])


# ----------------------------------------------------------------- subprocesses
@dataclass(frozen=True)
class Run:
    argv: list[str]
    code: int
    out: str
    err: str
    rss_mb: float
    seconds: float


def _limits(fsize: int | None) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))
    if fsize is not None:  # a full disk: writes past fsize fail with EFBIG, not a signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))


def run_capped(
    commands: list[list[str]], cwd: Path, tmp: Path, *, fsize: int | None = None
) -> list[Run]:
    """Run ``commands`` two at a time (2 cores) under the caps; each child's own peak RSS."""
    env = {**os.environ, "TMPDIR": str(tmp), "LVMQA_CACHE_DIR": str(tmp / "cache")}
    env.pop("LVMQA_TRUST_REGISTRY", None)
    env["PYTHONPATH"] = str(REPO)
    done: list[Run] = []
    pending = list(commands)
    while pending:
        batch, pending = pending[:2], pending[2:]
        procs = []
        for argv in batch:
            hwm = tmp / f"hwm-{len(done) + len(procs)}-{time.monotonic_ns()}.txt"
            procs.append(
                (
                    argv,
                    time.monotonic(),
                    subprocess.Popen(
                        _measured(argv),
                        cwd=cwd,
                        env={**env, "LVMQA_TEST_HWM_FILE": str(hwm)},
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                        errors="replace",
                        preexec_fn=lambda: _limits(fsize),
                    ),
                    hwm,
                )
            )
        for argv, started, proc, hwm in procs:
            try:
                out, err = proc.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                pytest.fail(f"hang: {argv} ran past {TIMEOUT_S}s")
            rss = _own_peak(proc, hwm)
            done.append(Run(argv, proc.returncode, out, err, rss, time.monotonic() - started))
    return done


_CHILD_PEAKS: dict[int, float] = {}  # pid -> peak RSS (MB) of that child alone

# Linux carries the parent's memory high-water mark into a child across exec (it is
# folded into the process's maxrss), so wait4's ru_maxrss of a child of a large pytest
# process is at least that process's size. The child therefore reports the VmHWM of its
# own address space (after exec) at exit; wait4's number is the fallback.
_HWM_WRAPPER = (
    "import atexit, os, runpy, sys\n"
    "def _report():\n"
    "    with open('/proc/self/status') as status:\n"
    "        line = next(l for l in status if l.startswith('VmHWM'))\n"
    "    with open(os.environ['LVMQA_TEST_HWM_FILE'], 'w') as out:\n"
    "        out.write(line.split()[1])\n"
    "atexit.register(_report)\n"
    "module = sys.argv[1]\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
)


def _measured(argv: list[str]) -> list[str]:
    """``python -m MODULE args`` run through the VmHWM-reporting wrapper."""
    if len(argv) >= 3 and argv[1] == "-m":
        return [argv[0], "-c", _HWM_WRAPPER, argv[2], *argv[3:]]
    return argv


def _own_peak(proc: subprocess.Popen[str], hwm: Path) -> float:
    """Peak RSS (MB) of the child's own address space."""
    if hwm.exists():
        text = hwm.read_text().strip()
        hwm.unlink()
        if text.isdigit():
            return int(text) / 1024
    return _CHILD_PEAKS[proc.pid]


@pytest.fixture(autouse=True)
def _wait4_children(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reap children with os.wait4, which returns each child's own rusage (RUSAGE_CHILDREN
    is a high-water mark over all of them)."""

    def try_wait(self: subprocess.Popen[str], wait_flags: int) -> tuple[int, int]:
        pid, status, usage = os.wait4(self.pid, wait_flags)
        if pid:
            _CHILD_PEAKS[pid] = usage.ru_maxrss / 1024
        return pid, status

    monkeypatch.setattr(subprocess.Popen, "_try_wait", try_wait)


def one_error_line(run: Run, prefix: str) -> str:
    text = run.err + run.out
    assert "Traceback" not in text, f"{run.argv}\n{text[-3000:]}"
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"{run.argv}\n{text[-3000:]}"
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Each input's bytes (hash), or for a FIFO / a sparse giant its stat fingerprint."""
    out: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        if path.is_file() and info.st_size < 64 << 20:
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[str(path)] = f"{info.st_mode}:{info.st_size}:{info.st_mtime_ns}"
    return out


# The dataset each loadable registry names.
REGISTRY_DATASET = {"registry_catastrophic_regex": "aaa"}


@pytest.mark.slow
def test_every_hostile_case_through_cli_and_pytest(corpus: dict[str, Path], tmp_path: Path) -> None:
    folder = next(iter(corpus.values())).parent
    before = snapshot(folder)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "out"
    commands: list[list[str]] = []
    labels: list[tuple[str, str]] = []
    for case in sorted(DATA):
        path = str(corpus[case])
        commands.append(
            [*LVMQA, "filter", path, "--out", str(out / case / "x"), "--min-coherence", "-2"]
        )
        labels.append((case, "cli"))
        commands.append([*PYTEST, f"--dataset={path}", "-k", "norms or integrity"])
        labels.append((case, "pytest"))
    for case in sorted(REGISTRY):
        commands.append([*LVMQA, "--lvmqa-config", str(corpus[case]), "datasets"])
        labels.append((case, "cli"))
        name = REGISTRY_DATASET.get(case, "good")
        commands.append(
            [
                *PYTEST,
                f"--lvmqa-config={corpus[case]}",
                f"--dataset={name}",
                "-k",
                "norms or text",
            ]  # text_quality runs the blocklist
        )
        labels.append((case, "pytest"))
    runs = run_capped(commands, folder, tmp)
    for (case, tool), run in zip(labels, runs, strict=True):
        expected = DATA.get(case, REGISTRY.get(case))
        assert run.rss_mb < RSS_BOUND_MB, f"{case} {tool}: peak RSS {run.rss_mb:.0f} MB"
        if expected is None:  # a correct result: the checks ran (pass or fail), no traceback
            assert "Traceback" not in run.err + run.out, f"{case} {tool}\n{run.err[-3000:]}"
            assert run.code in (0, 1), f"{case} {tool}: {run.code}\n{run.err[-2000:]}"
            continue
        if tool == "cli":
            assert run.code == CLI_USAGE_EXIT, f"{case}: {run.code}\n{run.err[-2000:]}"
            line = one_error_line(run, "lvmqa: error:")
        else:
            assert run.code == PYTEST_USAGE_EXIT, f"{case}: {run.code}\n{run.out[-2000:]}"
            line = one_error_line(run, "ERROR:")
        for needle in expected:
            assert needle in line, f"{case} {tool}: {line}"
    assert not (folder / bad.MARKER_NAME).exists() and not (REPO / bad.MARKER_NAME).exists()
    assert snapshot(folder) == before  # inputs byte-identical, nothing added beside them
    assert sorted(p.name for p in tmp.iterdir() if p.name != "cache") == []


@pytest.mark.slow
def test_loadable_hostile_names_give_safe_ids_and_a_report(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    folder = next(iter(corpus.values())).parent
    previous = tmp_path / "report.html"
    previous.write_text("previous report")
    args = [f"--dataset={corpus[c]}" for c in ("html_name", "shell_name", "texts_lone_surrogates")]
    html = [f"--html={previous}", "--self-contained-html", f"--lvmqa-json={tmp_path / 'r.json'}"]
    (run,) = run_capped([[*PYTEST, *args, *html, "-k", "norms", "-v"]], folder, tmp_path)
    assert "Traceback" not in run.out + run.err, run.out[-3000:]
    assert run.code in (0, 1), run.out[-3000:]
    assert "<img" not in run.out and "$(" not in run.out
    assert "img_src_x_onerror_alert_1" in run.out and "touch_PWNED" in run.out
    report = previous.read_text(encoding="utf-8")
    assert len(report) > 1000 and "<img src=x" not in report
    assert not (folder / bad.MARKER_NAME).exists()
    assert json.loads((tmp_path / "r.json").read_text())


def _bank(path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = 64
    np.savez(
        path,
        vectors=bad.unit_rows(rng, (rows, 8)),
        article_indices=np.arange(rows) // 16,
        chunk_indices=np.arange(rows) % 16,
        concept_texts=np.array([f"text {i}" for i in range(rows)], dtype=object),
    )
    return path


@pytest.mark.slow
def test_outputs_never_overwrite_inputs_and_full_disks_fail_in_one_line(
    tmp_path: Path,
) -> None:
    bank = _bank(tmp_path / "bank.npz")
    seqs = bad._save(tmp_path / "seqs.npz", **bad.good_arrays())
    folder = tmp_path / "folder_ds"
    folder.mkdir()
    for key, array in bad.good_arrays().items():
        np.save(folder / f"{key}.npy", array, allow_pickle=True)
    before = snapshot(tmp_path)
    cli = {
        "windows --out BANK": [*LVMQA, "windows", str(bank), "--out", str(bank), "--force"],
        "filter --out DIR/x": [*LVMQA, "filter", str(folder), "--out", str(folder / "x")],
        "check --json DATA": [*LVMQA, "check", str(seqs), "--json", str(seqs), "--no-smoke"],
        "fingerprint factory": [*LVMQA, "fingerprint", "os:getcwd"],
    }
    pytest_runs = {
        "--lvmqa-json DATA": [*PYTEST, f"--dataset={seqs}", f"--lvmqa-json={seqs}"],
        "--html DATA": [*PYTEST, f"--dataset={seqs}", f"--html={seqs}", "--self-contained-html"],
    }
    runs = run_capped([*cli.values(), *pytest_runs.values()], tmp_path, tmp_path)
    for name, run in zip([*cli, *pytest_runs], runs, strict=True):
        is_cli = name in cli
        assert run.code == (CLI_USAGE_EXIT if is_cli else PYTEST_USAGE_EXIT), (name, run.err)
        # `lvmqa check` runs pytest, whose usage error is pytest's "ERROR:" line
        prefix = "lvmqa: error:" if is_cli and name != "check --json DATA" else "ERROR:"
        line = one_error_line(run, prefix)
        if name == "fingerprint factory":
            assert "untrusted registry cannot run code" in line, line
        else:
            assert "would overwrite the input" in line, (name, line)
    assert snapshot(tmp_path) == before
    # A full disk (RLIMIT_FSIZE): one line naming the output, no partial file left.
    out = tmp_path / "full"
    (run,) = run_capped(
        [[*LVMQA, "filter", str(seqs), "--out", str(out / "x"), "--min-coherence", "-2"]],
        tmp_path,
        tmp_path,
        fsize=16 << 10,
    )
    assert run.code == CLI_USAGE_EXIT, run.err
    assert "cannot write output" in one_error_line(run, "lvmqa: error:")
    assert not out.exists() or not [p for p in out.iterdir() if p.name.endswith(".npz")]


@pytest.mark.slow
def test_a_killed_spill_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "deflated.npz"
    np.savez_compressed(path, **bad.good_arrays())
    spill = tmp_path / "spill"
    spill.mkdir()
    script = (
        "import sys, time\n"
        "from lvmqa import npzfile\n"
        "npzfile._IN_MEMORY_LIMIT = 0\n"
        f"data = npzfile.DataFile({str(path)!r})\n"
        "data.members['target_vectors'].rows(0, 4)\n"
        "print('spilled', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "LVMQA_SPILL_DIR": str(spill), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"spilled"
    assert list(spill.iterdir()) == []  # unnamed while alive: nothing to leave behind
    proc.kill()
    proc.wait()
    assert list(spill.iterdir()) == []


def test_concurrent_filters_leave_a_consistent_output_set(tmp_path: Path) -> None:
    from lvmqa.filtering import verify_output_set

    seqs = bad._save(tmp_path / "seqs.npz", **bad.good_arrays())
    argv = [*LVMQA, "filter", str(seqs), "--out", str(tmp_path / "o" / "x"), "--force"]
    runs = run_capped([argv, [*argv, "--min-coherence", "-2"]], tmp_path, tmp_path)
    assert [r.code for r in runs] == [0, 0], [r.err for r in runs]
    manifest = verify_output_set(tmp_path / "o" / "x.manifest.json")
    assert manifest["counts"]["input"] == bad.N
    (tmp_path / "o" / "x.mask.npy").write_bytes(b"tampered")
    with pytest.raises(LvmqaError, match="incomplete or mixed"):
        verify_output_set(tmp_path / "o" / "x.manifest.json")


def test_catastrophic_blocklist_runs_in_linear_time(corpus: dict[str, Path]) -> None:
    from lvmqa.patterns import compile_pattern

    pattern = compile_pattern("^(a+)+$", where="blocklist")
    started = time.monotonic()
    assert pattern.search("a" * 40 + "b") is None
    assert pattern.search("a" * 40) is not None
    assert time.monotonic() - started < 1


def test_trust_is_never_inferred_from_the_registry_location(
    corpus: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lvmqa.registry import trust_granted

    monkeypatch.delenv("LVMQA_TRUST_REGISTRY", raising=False)
    assert trust_granted(None) is False
    monkeypatch.setenv("LVMQA_TRUST_REGISTRY", "1")
    assert trust_granted(None) is True
    assert trust_granted(False) is False


def test_checking_a_mixed_filter_output_set_fails_in_one_line(tmp_path: Path) -> None:
    """Readers verify the set: `lvmqa check` on a filtered file whose mask no longer
    matches its manifest refuses it (exit 2) instead of checking a mixed set."""
    seqs = bad._save(tmp_path / "seqs.npz", **bad.good_arrays())
    out = tmp_path / "o" / "x"
    (ok,) = run_capped([[*LVMQA, "filter", str(seqs), "--out", str(out)]], tmp_path, tmp_path)
    assert ok.code == 0, ok.err
    (tmp_path / "o" / "x.mask.npy").write_bytes(b"tampered")
    (run,) = run_capped([[*LVMQA, "check", str(tmp_path / "o" / "x.npz"), "--no-smoke"]],
                        tmp_path, tmp_path)
    assert run.code == 2
    line = one_error_line(run, "ERROR: ")
    assert "incomplete or mixed" in line and "x.mask.npy" in line
