"""Crash-safe output: write to a temporary file beside the target, fsync, rename.

A killed run leaves either the old file or the new one, never a half-written file,
and never a stray temporary either once the process exits normally.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from lvmqa.errors import LvmqaError


@contextlib.contextmanager
def atomic_write(path: str | Path, *, mode: str = "wb", force: bool = True) -> Iterator[IO]:  # type: ignore[type-arg]
    """Yield a file handle whose content replaces ``path`` only on success.

    ``force=False`` refuses to replace an existing file.
    """
    target = Path(path)
    if target.exists() and not force:
        raise LvmqaError("output exists (pass --force to replace it)", path=target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode) as handle:
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


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry is flushed too.
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
