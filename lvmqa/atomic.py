"""Crash-safe output: write to a temporary file beside the target, fsync, rename.

A killed run leaves either the old file or the new one, never a half-written file.
An exception removes the temporary at once; a run killed outright (SIGKILL, power
loss) leaves a hidden ``.NAME.HOST.PID.*.tmp`` beside the target, which the next
write of the same target removes once that process is gone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from lvmqa.errors import LvmqaError


@contextlib.contextmanager
def atomic_write(path: str | Path, *, mode: str = "wb", force: bool = True) -> Iterator[IO[Any]]:
    """Yield a file handle whose content replaces ``path`` only on success.

    ``force=False`` refuses to replace an existing file.
    """
    target = Path(path)
    if target.exists() and not force:
        raise LvmqaError("output exists (pass --force to replace it)", path=target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    fd, tmp_name = tempfile.mkstemp(
        prefix=_temp_prefix(target, os.getpid()), suffix=".tmp", dir=target.parent
    )
    tmp = Path(tmp_name)
    try:
        # mkstemp creates 0600; the output gets the mode a plain open() would give it
        # (or keeps the mode of the file it replaces).
        os.fchmod(fd, _output_mode(target))
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str, *, force: bool = True) -> None:
    with atomic_write(path, mode="w", force=force) as handle:
        handle.write(text)


def _output_mode(target: Path) -> int:
    with contextlib.suppress(OSError):
        return stat.S_IMODE(target.stat().st_mode)
    umask = os.umask(0o022)  # read the umask: there is no getter
    os.umask(umask)
    return 0o666 & ~umask


def _temp_prefix(target: Path, pid: int) -> str:
    # Host and pid in the name tell a later run whether the writer is still alive.
    return f".{target.name}.{socket.gethostname()}.{pid}."


def _remove_stale_temporaries(target: Path) -> None:
    """Delete temporaries of ``target`` left by killed writers on this host."""
    host_prefix = f".{target.name}.{socket.gethostname()}."
    for candidate in target.parent.iterdir():
        name = candidate.name
        if not (name.startswith(host_prefix) and name.endswith(".tmp")):
            continue
        pid_text = name[len(host_prefix) :].split(".", 1)[0]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            with contextlib.suppress(OSError):
                candidate.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry is flushed too.
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
