"""Output paths may never be inputs: no ``--force`` overwrites the data being checked.

``windows --out``, ``filter --out``, ``--lvmqa-json``, ``--html`` and ``check --json``
each name a file to write. Pointed at the dataset (or into a folder dataset, where a
new ``x.mask.npy`` would become one of its members) they would destroy or change the
input, so they are refused before anything runs. Paths are compared resolved (symlinks
and ``..`` followed) and by inode (hard links, bind mounts), for the output itself and
for every folder above it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from lvmqa.errors import LvmqaError

PathLike = str | os.PathLike[str]


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _overlap(output: Path, source: Path) -> str | None:
    """Why writing ``output`` would change ``source``, or None."""
    out, src = output.resolve(), source.resolve()
    if out == src:
        return "is the input itself"
    source_inode = _inode(src)
    if source_inode is not None and _inode(out) == source_inode:
        return "is the input itself (same file)"
    if src.is_dir():
        if out.is_relative_to(src):
            return "is inside the input folder"
        for parent in out.parents:
            if source_inode is not None and _inode(parent) == source_inode:
                return "is inside the input folder (same folder)"
    return None


def refuse_overwrite_of_inputs(
    outputs: Iterable[PathLike | None], inputs: Iterable[PathLike | None], *, option: str = "output"
) -> None:
    """Raise a one-line ``LvmqaError`` when an output is an input or lies inside one."""
    sources = [Path(p) for p in inputs if p is not None]
    for output in outputs:
        if output is None:
            continue
        for source in sources:
            why = _overlap(Path(output), source)
            if why is not None:
                raise LvmqaError(
                    f"output would overwrite the input: the {option} {why} "
                    "(refused even with --force)",
                    path=str(output),
                    expected="an output path outside every input",
                    found=f"input {source}",
                )


def refuse_unwritable(outputs: Iterable[PathLike | None], *, option: str = "output") -> None:
    """Refuse now, in one line, an output whose folder cannot be created or written."""
    for output in outputs:
        if output is None:
            continue
        folder = Path(output).resolve().parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise LvmqaError(
                f"cannot write the {option}: its folder is not writable",
                path=str(output),
                found=f"folder {folder}",
            )
