"""Crash-safe outputs: an exception or a SIGKILL never leaves a partial file behind."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lvmqa.atomic import atomic_write, write_text_atomic
from lvmqa.errors import LvmqaError
from lvmqa.io import open_dataset
from lvmqa.windows import build_sequences
from tests.conftest import REPO


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_success_replaces_the_target_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "out" / "result.bin"  # the folder is created
    with atomic_write(target) as handle:
        handle.write(b"first")
        assert not target.exists()  # nothing visible until the block ends
    with atomic_write(target) as handle:
        handle.write(b"second")
    assert target.read_bytes() == b"second"
    assert leftovers(target.parent) == []
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_an_exception_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "result.txt"
    write_text_atomic(target, "old ✓")

    def fail_midway() -> None:
        with atomic_write(target) as handle:
            handle.write(b"half of the new content")
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        fail_midway()
    assert target.read_text(encoding="utf-8") == "old ✓"
    assert leftovers(tmp_path) == []
    fresh = tmp_path / "fresh.txt"
    with pytest.raises(KeyboardInterrupt), atomic_write(fresh):
        raise KeyboardInterrupt
    assert not fresh.exists()
    assert leftovers(tmp_path) == []


def test_force_false_refuses_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.txt"
    write_text_atomic(target, "precious")
    with pytest.raises(LvmqaError, match="output exists") as error:
        write_text_atomic(target, "clobbered", force=False)
    assert str(target) in str(error.value)
    assert target.read_text() == "precious"
    assert leftovers(tmp_path) == []


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "data.npz"
    host = socket.gethostname()
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(finished.stdout)
    stale = tmp_path / f".data.npz.{host}.{dead_pid}.abc123.tmp"
    live = tmp_path / f".data.npz.{host}.{os.getpid()}.def456.tmp"  # a writer still running
    other_host = tmp_path / f".data.npz.elsewhere.{dead_pid}.ghi789.tmp"
    unrelated = tmp_path / f".other.npz.{host}.{dead_pid}.jkl012.tmp"
    for path in (stale, live, other_host, unrelated):
        path.write_bytes(b"partial")
    write_text_atomic(target, "done")
    assert not stale.exists()
    assert live.exists()
    assert other_host.exists()
    assert unrelated.exists()


def make_bank(path: Path, rows: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.savez(
        path,
        vectors=vectors,
        article_indices=(np.arange(rows) // 50).astype(np.int32),
        chunk_indices=(np.arange(rows) % 50).astype(np.int32),
        concept_texts=np.array([f"chunk {i}" for i in range(rows)], dtype=object),
    )


def _writing_into(pid: int, folder: Path, min_bytes: int = 1 << 20) -> bool:
    """Whether process ``pid`` holds an open output file in ``folder`` of at least min_bytes.

    Works for named temporaries and for unnamed O_TMPFILE inodes ("/dir/#123 (deleted)").
    """
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        entries = list(fd_dir.iterdir())
    except OSError:
        return False
    for entry in entries:
        try:
            target = os.readlink(entry)
            if target.startswith(str(folder)) and os.stat(entry).st_size >= min_bytes:
                return True
        except OSError:
            continue
    return False


def _kill_mid_write(command: list[str], out_folder: Path) -> subprocess.Popen[bytes]:
    child = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not _writing_into(child.pid, out_folder):
            assert child.poll() is None, "the run finished before it could be killed"
            assert time.monotonic() < deadline, "no output file was ever opened"
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    return child


def test_sigkill_mid_write_leaves_no_output_and_the_input_untouched(tmp_path: Path) -> None:
    # ~60k windows x 6 x 128 float32 = 180 MB of output: long enough to be caught
    # mid-write, in a real child process.
    rows = 60_000
    bank, out_dir = tmp_path / "bank.npz", tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "seq.npz"
    make_bank(bank, rows, 128)
    before = sha256(bank)
    _kill_mid_write([sys.executable, "-c",
                     "import sys; from lvmqa.windows import build_sequences; "
                     "build_sequences(sys.argv[1], sys.argv[2])", str(bank), str(out)], out_dir)
    assert list(out_dir.iterdir()) == []  # no partial output, not even a hidden temporary
    assert sha256(bank) == before
    build_sequences(bank, out)  # and a later run writes a complete file
    assert open_dataset(out).n == rows - (rows // 50) * 5
    assert leftovers(out_dir) == []
    assert sha256(bank) == before


def test_sigkill_mid_filter_leaves_no_output_and_the_input_untouched(tmp_path: Path) -> None:
    rows = 60_000
    bank, seq, out_dir = tmp_path / "bank.npz", tmp_path / "seq.npz", tmp_path / "filtered"
    make_bank(bank, rows, 128)
    build_sequences(bank, seq)
    out_dir.mkdir()
    before = sha256(seq)
    _kill_mid_write([sys.executable, "-m", "lvmqa.cli", "filter", str(seq), "--min-coherence",
                     "-0.5", "--out", str(out_dir / "kept")], out_dir)
    assert list(out_dir.iterdir()) == []
    assert sha256(seq) == before
