"""Low-level access to the arrays inside an ``.npz`` archive, a ``.npy`` file or a folder of them.

Members stored uncompressed are read in place: row ranges with ``pread`` (so a
streaming pass keeps resident memory flat, unlike a long-lived memory map whose
touched pages count towards RSS) and random rows through a memory map. Compressed
members are decompressed once, in blocks, into a temporary ``.npy`` file and then
read the same way; small ones are simply held in memory. Object arrays are read
only through the restricted unpickler.

Every file is untrusted (issue 13), so nothing is sized from a claim alone. A header's
shape must fit in the bytes the member holds (for a deflated member: what its
compressed bytes can expand to) before anything is allocated for it; a deflated member
is expanded only when its data is first read, into memory up to a per-file budget, else
into an unnamed spill file that the kernel removes when lvmqa exits, even by SIGKILL;
JSON members have a size cap; and only regular files are read (a FIFO would block).
"""

from __future__ import annotations

import ast
import atexit
import io
import lzma
import math
import mmap
import os
import shutil
import stat
import struct
import sys
import tempfile
import weakref
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from lvmqa.errors import DatasetFormatError
from lvmqa.safepickle import safe_load

_NPY_MAGIC = b"\x93NUMPY"
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header, 30 bytes
_IN_MEMORY_LIMIT = 64 * 1024 * 1024  # one decompressed member held in memory, at most
_IN_MEMORY_TOTAL = 256 * 1024 * 1024  # all decompressed members of one file held in memory
_COPY_BLOCK = 16 * 1024 * 1024
# numpy itself refuses headers over 10,000 bytes (literal_eval of more is slow and
# memory-hungry); a longer one is corruption or an attack, not data.
_MAX_HEADER_BYTES = 10_000
# Deflate cannot expand data by more than about 1032:1, so a deflated member claiming
# more than this is lying (checked before anything is sized from the claim).
_DEFLATE_MAX_RATIO = 1032
JSON_MEMBER_LIMIT = 64 * 1024 * 1024  # a JSON member or file, decompressed
SPILL_MARGIN = 256 * 1024 * 1024  # free space left on the spill disk after a spill
# What reading a damaged zip member can raise, from the zip layer or its decompressors.
_ZIP_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    RuntimeError,
    NotImplementedError,
)


@dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran_order: bool
    header_size: int  # bytes from the start of the .npy member to its data

    @property
    def nbytes(self) -> int:
        # Python ints: a corrupt shape must not wrap around to a small size.
        return math.prod(self.shape) * self.dtype.itemsize


def read_npy_header(handle: IO[bytes], *, source: str, key: str) -> NpyHeader:
    """Parse a .npy header from ``handle`` positioned at the start of the member."""
    magic = handle.read(8)
    if len(magic) < 8 or magic[:6] != _NPY_MAGIC:
        raise DatasetFormatError(
            "member is not a .npy array",
            path=source,
            key=key,
            expected="NPY magic bytes",
            found=repr(magic[:6]),
        )
    major = magic[6]
    if major == 1:
        raw = handle.read(2)
        length = struct.unpack("<H", raw)[0] if len(raw) == 2 else -1
        prefix = 10
    elif major in (2, 3):
        raw = handle.read(4)
        length = struct.unpack("<I", raw)[0] if len(raw) == 4 else -1
        prefix = 12
    else:
        raise DatasetFormatError(
            "unsupported .npy version", path=source, key=key, expected="1, 2 or 3", found=str(major)
        )
    if length > _MAX_HEADER_BYTES:
        raise DatasetFormatError(
            "corrupt .npy header",
            path=source,
            key=key,
            expected=f"a header under {_MAX_HEADER_BYTES} bytes",
            found=f"{length} bytes",
        )
    text = handle.read(length) if length >= 0 else b""
    if length < 0 or len(text) < length:
        raise DatasetFormatError("truncated .npy header", path=source, key=key)
    try:
        header = ast.literal_eval(text.decode("utf-8" if major == 3 else "latin1"))
        dtype = np.lib.format.descr_to_dtype(header["descr"])
        shape = tuple(header["shape"])
        fortran = bool(header["fortran_order"])
    except (
        ValueError,
        SyntaxError,
        KeyError,
        TypeError,
        MemoryError,
        RecursionError,
        OverflowError,
    ) as exc:
        raise DatasetFormatError(
            "unreadable .npy header", path=source, key=key, found=type(exc).__name__
        ) from None
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise DatasetFormatError(
            "unreadable .npy header",
            path=source,
            key=key,
            expected="integer dimensions",
            found=f"shape {_short_text(repr(header['shape']))}",
        )
    if any(s < 0 for s in shape):
        raise DatasetFormatError(
            "unreadable .npy header",
            path=source,
            key=key,
            expected="non-negative dimensions",
            found=f"shape {shape}",
        )
    return NpyHeader(shape, dtype, fortran, prefix + length)


def _short_text(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_claim(header: NpyHeader, available: int, *, source: str, key: str) -> None:
    """Refuse a header whose shape needs more bytes than the member holds.

    Runs at open, before anything (a metadata table, a buffer) is sized from the shape.
    An object array needs at least one pickle byte per element; an array without data
    (a zero dimension) still may not claim more rows than there are bytes, or 2^20.
    """
    shape = header.shape
    need = math.prod(shape) if header.dtype.hasobject else header.nbytes
    if need > available:
        raise DatasetFormatError(
            "array data is truncated",
            path=source,
            key=key,
            expected=f"{need} bytes for shape {shape}",
            found=f"{max(available, 0)} bytes",
        )
    if shape and max(shape) > max(available, 1 << 20):
        raise DatasetFormatError(
            "header claims more rows than the member holds bytes",
            path=source,
            key=key,
            expected=f"at most {max(available, 1 << 20)} rows",
            found=f"shape {shape}",
        )


def open_regular(path: Path, *, source: str, key: str | None = None) -> io.BufferedReader:
    """``path`` opened for reading, refused unless it is a regular file.

    Opened non-blocking, then checked on the descriptor: a FIFO would block ``open``
    itself, and a device (``/dev/zero``) never ends.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise DatasetFormatError("file not found", path=source, key=key) from None
    except OSError as exc:
        raise DatasetFormatError(
            "cannot read file", path=source, key=key, found=exc.strerror or str(exc)
        ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise not_regular(source, key, info)
    handle = os.fdopen(fd, "rb")
    assert isinstance(handle, io.BufferedReader)
    return handle


def not_regular(source: str, key: str | None, info: os.stat_result) -> DatasetFormatError:
    kinds = {
        stat.S_IFIFO: "a FIFO",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
        stat.S_IFSOCK: "a socket",
    }
    return DatasetFormatError(
        "not a regular file",
        path=source,
        key=key,
        expected="a regular file",
        found=kinds.get(stat.S_IFMT(info.st_mode), "a special file"),
    )


def _unpickle_array(
    stream: IO[bytes], header: NpyHeader, source: str, key: str, limit: int | None = None
) -> np.ndarray:
    """An object array through the restricted unpickler, checked against its header."""
    try:
        value = safe_load(stream, source=source, key=key, limit=limit)
    except DatasetFormatError:
        raise
    except Exception as exc:  # corrupt pickle streams raise many types, MemoryError included
        raise DatasetFormatError(
            "unreadable object array (corrupt or truncated pickle)",
            path=source,
            key=key,
            found=type(exc).__name__,
        ) from None
    array = np.asarray(value, dtype=object)
    if array.shape != header.shape:
        try:
            array = array.reshape(header.shape)
        except ValueError:
            raise DatasetFormatError(
                "object array has the wrong shape",
                path=source,
                key=key,
                expected=str(header.shape),
                found=str(array.shape),
            ) from None
    return array


def pread_full(fd: int, into: memoryview, offset: int) -> int:
    """Read ``len(into)`` bytes at ``offset`` (one read returns at most ~2 GB on Linux);
    returns the bytes read, fewer only at the end of the file."""
    filled = 0
    while filled < len(into):
        got = os.preadv(fd, [into[filled:]], offset + filled)
        if not got:
            break
        filled += got
    return filled


def file_sha256(path: Path) -> str:
    """``sha256:HEX`` of a data file's bytes (of a folder: its files in name order), streamed."""
    import hashlib

    digest = hashlib.sha256()
    files = sorted(p for p in path.glob("*") if p.is_file()) if path.is_dir() else [path]
    buffer = bytearray(8 * 1024 * 1024)  # reused: fresh 8 MB blocks cost page faults
    view = memoryview(buffer)
    for file in files:
        with open_regular(file, source=str(file)) as handle:
            while got := handle.readinto(view):
                digest.update(view[:got])
    return "sha256:" + digest.hexdigest()


class Member:
    """One array of a data file, readable by row ranges without loading it whole."""

    def __init__(
        self,
        name: str,
        source: str,
        header: NpyHeader,
        file_path: Path | None,
        data_offset: int,
        in_memory: np.ndarray | None = None,
        zip_entry: zipfile.ZipInfo | None = None,
        deflated: _Deflated | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.header = header
        self._file_path = file_path
        self._data_offset = data_offset
        self._array = in_memory
        self._mmap: np.ndarray | None = None
        # A compressed object array: unpickled from the archive on each load(), so
        # opening a file runs no unpickler and holds no large pickles in memory.
        self._zip_entry = zip_entry
        # A compressed numeric array: expanded when its data is first read, never if unused.
        self._deflated = deflated

    def _expand(self) -> None:
        """Decompress a deflated numeric member now (into memory, or an unnamed spill file)."""
        deflated, self._deflated = self._deflated, None
        if deflated is None:
            return
        array, spill = deflated.expand(self.header, self.name)
        if array is not None:
            self._array = array
        else:
            assert spill is not None
            fd, self._file_path = spill
            # The spill file has no name; it lives as long as this descriptor.
            weakref.finalize(self, os.close, fd)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.header.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.header.dtype

    @property
    def n_rows(self) -> int:
        return self.shape[0] if self.shape else 1

    def _check_size(self) -> None:
        self._expand()
        if self._file_path is None or self._zip_entry is not None:
            return
        available = self._file_path.stat().st_size - self._data_offset
        if available < self.header.nbytes:
            raise DatasetFormatError(
                "array data is truncated",
                path=self.source,
                key=self.name,
                expected=f"{self.header.nbytes} bytes for shape {self.shape}",
                found=f"{max(available, 0)} bytes",
            )

    def mmap(self) -> np.ndarray:
        """A read-only view of the whole array (a memory map when on disk)."""
        self._expand()
        if self._array is not None:
            return self._array
        if self._mmap is None:
            if self.dtype.hasobject:
                raise DatasetFormatError(
                    "object arrays cannot be memory-mapped", path=self.source, key=self.name
                )
            self._check_size()
            assert self._file_path is not None
            if self.header.nbytes == 0:
                self._mmap = np.empty(self.shape, dtype=self.dtype)
            else:
                self._mmap = np.memmap(
                    self._file_path,
                    dtype=self.dtype,
                    mode="r",
                    offset=self._data_offset,
                    shape=self.shape,
                    order="F" if self.header.fortran_order else "C",
                )
        return self._mmap

    @property
    def reads_in_place(self) -> bool:
        """True when row ranges are read straight from the file (C order, numeric)."""
        self._expand()
        return not (self._array is not None or self.header.fortran_order or self.dtype.hasobject)

    @property
    def maps_aligned(self) -> bool:
        """True when a memory map of the rows is aligned for the dtype.

        Members of an npz archive start wherever the zip headers end (numpy aligns the
        .npy header to 64 bytes within the member, not within the archive), so a float32
        member is often at an odd byte offset. numpy flags such maps as unaligned and
        falls back from BLAS to loops several times slower; they are read, not mapped,
        where the consumer multiplies them.
        """
        return self.reads_in_place and self._data_offset % self.dtype.alignment == 0

    def rows(self, start: int, stop: int) -> np.ndarray:
        """A fresh array with rows ``start:stop`` (read with pread, no lasting mapping)."""
        if not self.reads_in_place:
            return np.array(self.load()[start:stop])
        stop = min(stop, self.n_rows)
        start = min(start, stop)
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        return self.rows_into(start, out)

    def rows_mapped(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a read-only view of a memory map of just those rows.

        The window is mapped and its page table filled at once (MADV_POPULATE_READ,
        which reads from disk if needed), so on a cached file the rows cost neither a
        copy nor a page fault each. The mapping lives as long as the returned array
        (and its views): a streaming caller that drops each block keeps resident
        memory to the blocks it holds. Needs :attr:`reads_in_place`.
        """
        if not self.reads_in_place:
            raise ValueError(f"{self.name} cannot be mapped (in memory, Fortran order or objects)")
        self._check_size()
        stop = min(stop, self.n_rows)
        start = min(start, stop)
        row_shape = self.shape[1:]
        row_bytes = math.prod(row_shape) * self.dtype.itemsize
        if row_bytes == 0 or stop == start:
            return np.empty((stop - start, *row_shape), dtype=self.dtype)
        assert self._file_path is not None
        offset = self._data_offset + start * row_bytes
        aligned = offset - offset % mmap.ALLOCATIONGRANULARITY
        length = offset - aligned + (stop - start) * row_bytes
        with open(self._file_path, "rb", buffering=0) as handle:
            window = mmap.mmap(handle.fileno(), length, access=mmap.ACCESS_READ, offset=aligned)
        _populate(window)
        count = (stop - start) * math.prod(row_shape)
        array = np.frombuffer(window, dtype=self.dtype, count=count, offset=offset - aligned)
        return array.reshape(stop - start, *row_shape)

    def rows_into(self, start: int, out: np.ndarray) -> np.ndarray:
        """Rows ``start:start + len(out)`` written into ``out``, which is returned.

        With a C-contiguous ``out`` of the stored dtype the bytes go straight from the
        file (page cache) into it: a caller that reuses ``out`` across blocks touches no
        fresh pages, which on a cached file costs more than the copy itself. Any other
        ``out`` is filled through :meth:`rows` (a cast or a copy).
        """
        stop = start + len(out)
        if stop > self.n_rows or start < 0:
            raise ValueError(f"rows {start}:{stop} outside 0:{self.n_rows} of {self.name}")
        direct = (
            self.reads_in_place
            and out.dtype == self.dtype
            and out.shape[1:] == self.shape[1:]
            and out.flags.c_contiguous
        )
        if not direct:
            out[...] = self.rows(start, stop)
            return out
        self._check_size()
        row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize
        if row_bytes == 0 or stop == start:
            return out
        assert self._file_path is not None
        view = memoryview(out.reshape(-1).view(np.uint8).data)
        offset = self._data_offset + start * row_bytes
        fd = os.open(self._file_path, os.O_RDONLY)
        try:
            if pread_full(fd, view, offset) < len(view):
                raise DatasetFormatError("array data is truncated", path=self.source, key=self.name)
        finally:
            os.close(fd)
        return out

    def load(self) -> np.ndarray:
        """The whole array; object arrays go through the restricted unpickler.

        Object arrays are not kept: the caller holds what it needs (texts), and what it
        only reads once (per-sequence metadata dicts) is freed after use.
        """
        self._expand()
        if self._array is not None:
            return self._array
        if not self.dtype.hasobject:
            return self.mmap()
        assert self._file_path is not None
        if self._zip_entry is not None:
            limit = _deflated_capacity(self._zip_entry) - self._data_offset
            try:
                with (
                    zipfile.ZipFile(self._file_path) as archive,
                    archive.open(self._zip_entry) as stream,
                ):
                    stream.read(self._data_offset)  # skip the .npy header
                    return _unpickle_array(stream, self.header, self.source, self.name, limit)
            except _ZIP_READ_ERRORS as exc:
                raise DatasetFormatError(
                    "compressed member is corrupt or truncated",
                    path=self.source,
                    key=self.name,
                    found=type(exc).__name__,
                ) from None
        with open_regular(self._file_path, source=self.source, key=self.name) as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(self._data_offset)
            limit = max(size - self._data_offset, 0)
            return _unpickle_array(handle, self.header, self.source, self.name, limit)


# Linux >= 5.14: fault a mapping's pages in now (reading them if needed) in one call.
_MADV_POPULATE_READ = 22


def _populate(window: mmap.mmap) -> None:
    """Fill the page table of a fresh mapping now, in the calling (prefetch) thread."""
    if sys.platform == "linux":
        try:
            window.madvise(_MADV_POPULATE_READ)
            return
        except OSError:  # an older kernel: fall back to asynchronous readahead
            pass
    if hasattr(mmap, "MADV_WILLNEED"):
        window.madvise(mmap.MADV_WILLNEED)


class DataFile:
    """The arrays of an ``.npz`` archive, a single ``.npy`` file, or a folder of ``.npy`` files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.source = str(self.path)
        self.members: dict[str, Member] = {}
        self.json_members: dict[str, bytes] = {}
        self._held = _Held()  # decompressed bytes this file holds in memory
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            raise DatasetFormatError("file not found", path=self.path) from None
        except OSError as exc:
            raise DatasetFormatError(
                "cannot read file", path=self.path, found=exc.strerror or str(exc)
            ) from None
        if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
            raise not_regular(self.source, None, info)
        if stat.S_ISDIR(info.st_mode):
            for npy in sorted(self.path.glob("*.npy")):
                self.members[npy.stem] = self._open_npy(npy, npy.stem)
            # The folder layout's metadata table / manifest, like JSON members of an npz.
            self.json_members = {
                js.stem: self._read_json_file(js) for js in sorted(self.path.glob("*.json"))
            }
            if not self.members:
                raise DatasetFormatError(
                    "folder holds no .npy arrays",
                    path=self.path,
                    expected="NAME.npy files (e.g. target_vectors.npy)",
                )
        elif self.path.suffix == ".npy":
            self.members[self.path.stem] = self._open_npy(self.path, self.path.stem)
        else:
            self._open_npz()

    def __contains__(self, key: str) -> bool:
        return key in self.members

    def keys(self) -> list[str]:
        return list(self.members)

    def _open_npy(self, path: Path, key: str) -> Member:
        with open_regular(path, source=str(path), key=key) as handle:
            header = read_npy_header(handle, source=str(path), key=key)
            size = os.fstat(handle.fileno()).st_size
        check_claim(header, size - header.header_size, source=str(path), key=key)
        return Member(key, str(path), header, path, header.header_size)

    def _read_json_file(self, path: Path) -> bytes:
        with open_regular(path, source=self.source, key=path.name) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > JSON_MEMBER_LIMIT:
                raise DatasetFormatError(
                    "JSON file is too large",
                    path=self.source,
                    key=path.name,
                    expected=f"at most {JSON_MEMBER_LIMIT} bytes",
                    found=f"{size} bytes",
                )
            return handle.read(size)

    def _open_npz(self) -> None:
        if self.path.stat().st_size == 0:
            raise DatasetFormatError(
                "empty file (0 bytes)", path=self.path, expected="an .npz archive"
            )
        try:
            archive = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError):
            raise DatasetFormatError(
                "not an npz archive, or truncated (no zip central directory)",
                path=self.path,
                expected="a zip file written by numpy.savez",
            ) from None
        except OSError as exc:
            raise DatasetFormatError(
                "cannot read file", path=self.path, found=exc.strerror or str(exc)
            ) from None
        with archive, open(self.path, "rb") as raw:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                if info.filename.endswith(".json"):
                    self.json_members[info.filename[:-5]] = self._read_json_member(archive, info)
                    continue
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                if not info.filename.endswith(".npy"):
                    raise DatasetFormatError(
                        "member is not a .npy array",
                        path=self.path,
                        key=info.filename,
                        expected="NAME.npy members",
                    )
                if key in self.members:
                    raise DatasetFormatError(
                        "the archive holds this member twice",
                        path=self.path,
                        key=info.filename,
                        expected="unique member names",
                    )
                self.members[key] = self._open_member(archive, raw, info, key)

    def _read_json_member(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
        too_large = DatasetFormatError(
            "JSON member is too large",
            path=self.path,
            key=info.filename,
            expected=f"at most {JSON_MEMBER_LIMIT} bytes",
            found=f"{info.file_size} bytes",
        )
        if info.file_size > JSON_MEMBER_LIMIT:
            raise too_large
        try:
            with archive.open(info) as stream:
                data = stream.read(JSON_MEMBER_LIMIT + 1)  # the directory's size may lie
        except _ZIP_READ_ERRORS as exc:
            raise DatasetFormatError(
                "member is corrupt or truncated",
                path=self.path,
                key=info.filename,
                found=type(exc).__name__,
            ) from None
        if len(data) > JSON_MEMBER_LIMIT:
            raise too_large
        return data

    def _open_member(
        self, archive: zipfile.ZipFile, raw: IO[bytes], info: zipfile.ZipInfo, key: str
    ) -> Member:
        if info.compress_type == zipfile.ZIP_STORED:
            if not 0 <= info.header_offset < self.path.stat().st_size:
                raise DatasetFormatError(
                    "corrupt zip directory",
                    path=self.path,
                    key=key,
                    expected="a member offset inside the file",
                    found=str(info.header_offset),
                )
            raw.seek(info.header_offset)
            local = raw.read(_LOCAL_HEADER.size)
            if len(local) < _LOCAL_HEADER.size:
                raise DatasetFormatError("truncated zip member", path=self.path, key=key)
            fields = _LOCAL_HEADER.unpack(local)
            if fields[0] != b"PK\x03\x04":
                raise DatasetFormatError("corrupt zip member header", path=self.path, key=key)
            name_len, extra_len = fields[-2], fields[-1]
            member_start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
            raw.seek(member_start)
            header = read_npy_header(raw, source=self.source, key=key)
            present = min(info.file_size, self.path.stat().st_size - member_start)
            check_claim(header, present - header.header_size, source=self.source, key=key)
            return Member(key, self.source, header, self.path, member_start + header.header_size)
        try:
            with archive.open(info) as stream:
                header = read_npy_header(stream, source=self.source, key=key)
            capacity = _deflated_capacity(info) - header.header_size
            check_claim(header, capacity, source=self.source, key=key)
            if header.dtype.hasobject:
                return Member(
                    key, self.source, header, self.path, header.header_size, zip_entry=info
                )
            deflated = _Deflated(self.path, info, self._held)
            return Member(key, self.source, header, None, 0, deflated=deflated)
        except _ZIP_READ_ERRORS as exc:
            raise DatasetFormatError(
                "compressed member is corrupt or truncated",
                path=self.path,
                key=key,
                found=type(exc).__name__,
            ) from None
        except DatasetFormatError:
            raise
        except (ValueError, TypeError) as exc:
            raise DatasetFormatError(
                "unreadable array", path=self.path, key=key, found=str(exc).splitlines()[0][:120]
            ) from None


def _deflated_capacity(info: zipfile.ZipInfo) -> int:
    """The most bytes a deflated member can expand to: its stated size, if deflate allows."""
    return min(info.file_size, info.compress_size * _DEFLATE_MAX_RATIO + 1024)


class _Held:
    """Decompressed bytes one data file holds in memory (a budget shared by its members)."""

    def __init__(self) -> None:
        self.bytes = 0


class _Deflated:
    """Where a deflated numeric member's data is, until it is first read."""

    def __init__(self, archive: Path, info: zipfile.ZipInfo, held: _Held) -> None:
        self.archive = archive
        self.info = info
        self.held = held

    def expand(
        self, header: NpyHeader, key: str
    ) -> tuple[np.ndarray | None, tuple[int, Path] | None]:
        """The array in memory, or (descriptor, path) of an unnamed spill file holding it."""
        source = str(self.archive)
        try:
            with zipfile.ZipFile(self.archive) as archive, archive.open(self.info) as stream:
                stream.read(header.header_size)
                fits = header.nbytes <= _IN_MEMORY_LIMIT
                if fits and self.held.bytes + header.nbytes <= _IN_MEMORY_TOTAL:
                    data = stream.read(header.nbytes)
                    if len(data) < header.nbytes:
                        raise DatasetFormatError(
                            "array data is truncated",
                            path=source,
                            key=key,
                            expected=f"{header.nbytes} bytes for shape {header.shape}",
                            found=f"{len(data)} bytes",
                        )
                    self.held.bytes += header.nbytes
                    array = np.frombuffer(data, dtype=header.dtype).reshape(
                        header.shape, order="F" if header.fortran_order else "C"
                    )
                    return array, None
                return None, _spill_to_disk(stream, header, source, key)
        except _ZIP_READ_ERRORS as exc:
            raise DatasetFormatError(
                "compressed member is corrupt or truncated",
                path=source,
                key=key,
                found=type(exc).__name__,
            ) from None


def spill_folder() -> Path:
    """Where decompressed members spill: ``$LVMQA_SPILL_DIR``, else the temp folder."""
    return Path(os.environ.get("LVMQA_SPILL_DIR") or tempfile.gettempdir())


_SPILL_DIR: Path | None = None  # only where unnamed files are unavailable (not Linux)


def _spill_file(folder: Path) -> tuple[int, Path]:
    """A new spill file: unnamed where the OS allows, so no crash can leave it behind."""
    global _SPILL_DIR
    if Path("/proc/self/fd").is_dir():
        flag = getattr(os, "O_TMPFILE", 0)
        fd = -1
        if flag:
            try:
                fd = os.open(folder, flag | os.O_RDWR, 0o600)
            except OSError:
                fd = -1
        if fd < 0:  # a filesystem without O_TMPFILE: name it, then unlink it at once
            fd, name = tempfile.mkstemp(dir=folder, prefix="lvmqa-spill-", suffix=".raw")
            os.unlink(name)
        return fd, Path(f"/proc/self/fd/{fd}")
    if _SPILL_DIR is None:
        _SPILL_DIR = Path(tempfile.mkdtemp(prefix="lvmqa-spill-", dir=folder))
        atexit.register(shutil.rmtree, _SPILL_DIR, True)
    fd, name = tempfile.mkstemp(dir=_SPILL_DIR, suffix=".raw")
    return fd, Path(name)


def _spill_to_disk(stream: IO[bytes], header: NpyHeader, source: str, key: str) -> tuple[int, Path]:
    """Decompress a large member block by block into a private temporary file."""
    folder = spill_folder()
    try:
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise DatasetFormatError(
            "cannot use the spill folder", path=folder, found=exc.strerror or str(exc)
        ) from None
    if header.nbytes + SPILL_MARGIN > free:
        raise DatasetFormatError(
            "no room to decompress the member (set LVMQA_SPILL_DIR to a larger disk)",
            path=source,
            key=key,
            expected=f"{header.nbytes + SPILL_MARGIN} bytes free in {folder}",
            found=f"{free} bytes",
        )
    fd, path = _spill_file(folder)
    remaining = header.nbytes
    try:
        with open(fd, "wb", closefd=False) as out:
            while remaining:
                block = stream.read(min(_COPY_BLOCK, remaining))
                if not block:
                    raise EOFError("member ended early")
                out.write(block)
                remaining -= len(block)
    except BaseException:
        os.close(fd)
        if not str(path).startswith("/proc/"):
            path.unlink(missing_ok=True)  # a corrupt member leaves no multi-GB spill
        raise
    return fd, path


def iter_row_chunks(member: Member, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, member.n_rows, rows):
        yield start, member.rows(start, start + rows)


class NpzWriter:
    """Write an uncompressed ``.npz`` member by member, large arrays row-chunk by row-chunk.

    The result is what ``numpy.savez`` writes (ZIP_STORED ``NAME.npy`` members), so
    lvmqa can memory-map it back and numpy can load it. Use inside
    ``lvmqa.atomic.atomic_write`` so a crash leaves no partial file.
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self._zip = zipfile.ZipFile(
            handle, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True
        )

    def write_array(self, name: str, array: np.ndarray) -> None:
        with self._zip.open(self._info(name), "w", force_zip64=True) as out:
            np.lib.format.write_array(out, np.asanyarray(array), allow_pickle=True)

    def write_rows(
        self, name: str, shape: tuple[int, ...], dtype: np.dtype[Any], chunks: Iterator[np.ndarray]
    ) -> None:
        """Stream a C-order numeric array given as consecutive row chunks."""
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
            "fortran_order": False,
            "shape": tuple(shape),
        }
        written = 0
        with self._zip.open(self._info(name), "w", force_zip64=True) as out:
            np.lib.format.write_array_header_2_0(out, header)
            for chunk in chunks:
                block = np.ascontiguousarray(chunk, dtype=dtype)
                out.write(block.tobytes())
                written += block.shape[0] if block.ndim else 1
        if shape and written != shape[0]:
            raise ValueError(f"{name}: wrote {written} rows, header says {shape[0]}")

    @staticmethod
    def _info(name: str) -> zipfile.ZipInfo:
        # A fixed timestamp keeps outputs byte-identical across runs.
        info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        return info

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
