"""Crash-safe output: write to a temporary file beside the target, fsync, rename.

A killed run leaves either the old file or the new one, never a half-written file.
On Linux the data is written to an unnamed O_TMPFILE inode that gets a name only when
complete, so even SIGKILL leaves nothing. Elsewhere an exception removes the named
temporary at once, and one left by a run killed outright (``.NAME.HOST.PID.*.tmp``)
is removed by the next write of the same target once that process is gone.
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

    ``force=False`` refuses to replace an existing file. A read-only or full disk
    (any OSError while writing) is one ``LvmqaError`` line naming the target; the old
    file, if any, is left as it was.
    """
    try:
        with _atomic_write(path, mode=mode, force=force) as handle:
            yield handle
    except OSError as exc:
        raise LvmqaError(
            "cannot write output", path=path, found=exc.strerror or type(exc).__name__
        ) from None


@contextlib.contextmanager
def _atomic_write(path: str | Path, *, mode: str, force: bool) -> Iterator[IO[Any]]:
    target = Path(path)
    if target.exists() and not force:
        raise LvmqaError("output exists (pass --force to replace it)", path=target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    encoding = None if "b" in mode else "utf-8"
    fd = _open_anonymous(target.parent)
    if fd is not None:
        # Linux O_TMPFILE: the data has no name until it is complete, so even SIGKILL
        # or a power cut leaves nothing behind.
        os.fchmod(fd, _output_mode(target))
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            named = target.parent / f"{_temp_prefix(target, os.getpid())}{os.urandom(4).hex()}.tmp"
            _link_anonymous(handle.fileno(), named)
        try:
            os.replace(named, target)
        except BaseException:
            named.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        return
    fd, tmp_name = tempfile.mkstemp(
        prefix=_temp_prefix(target, os.getpid()), suffix=".tmp", dir=target.parent
    )
    tmp = Path(tmp_name)
    try:
        # mkstemp creates 0600; the output gets the mode a plain open() would give it
        # (or keeps the mode of the file it replaces).
        os.fchmod(fd, _output_mode(target))
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _link_anonymous(fd: int, name: Path) -> None:
    # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N; os.link only passes that flag when a
    # dir_fd is given (plain link() would try to link the /proc symlink itself).
    proc = os.open("/proc/self/fd", os.O_RDONLY)
    try:
        os.link(str(fd), name, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def _open_anonymous(folder: Path) -> int | None:
    """An unnamed file in ``folder`` (O_TMPFILE), or None where the OS or filesystem lacks it."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not Path("/proc/self/fd").is_dir():
        return None
    try:
        return os.open(folder, flag | os.O_RDWR, 0o600)
    except OSError:
        return None


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
