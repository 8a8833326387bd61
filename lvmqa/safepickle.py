"""Read numpy object arrays without running code from the file.

``np.load(allow_pickle=True)`` hands the bytes to ``pickle.load``, which calls any
global the pickle names — ``os.system`` included. Datasets arrive in pull requests,
so lvmqa unpickles with an allowlist: plain Python values (built from pickle opcodes,
no globals needed), a few harmless builtins, and numpy's own reconstructors. Anything
else is refused *before* it is called, and the refusal names the global.

numpy's reconstructors are not called while unpickling either. ``ndarray.__setstate__``
and ``dtype.__setstate__`` trust their state: a tampered dtype state (its flags, say)
makes numpy treat raw bytes as object pointers, which crashes the process or worse.
So the unpickler hands out inert tokens for ``numpy.dtype``, ``_reconstruct``,
``scalar`` and ``_frombuffer``; afterwards each token is rebuilt through numpy's public
constructors, and only after its state matches what numpy itself writes for that dtype.

Memory is budgeted by the bytes actually present (issue 13). Before the C unpickler
sees the stream, :func:`scan_pickle` walks its opcodes: a length that claims more
bytes than follow, or a memo index beyond the entries written so far (the C unpickler
would size and zero its memo table to twice that index), is refused without
allocating. The allowed callables cannot allocate from a number (``bytes(n)``,
``bytearray(n)``). And the rebuilt graph's *expanded* size — each shared container or
string counted every time it is referenced, as a consumer that copies or walks it
would — must stay within ``EXPANSION_FACTOR`` times the pickle's size plus
``EXPANSION_ALLOWANCE``: a billion-laughs list or one long text referenced from every
row is refused in time linear in the pickle.
"""

from __future__ import annotations

import _compat_pickle
import io
import math
import pickle
from collections import OrderedDict
from collections.abc import Callable
from typing import IO, Any

import numpy as np

from lvmqa.errors import DatasetFormatError, UnsafePickleError


class _Token:
    """What a numpy reconstructor call becomes while unpickling: its arguments, inert."""

    def __init__(self, kind: str, args: tuple[Any, ...]) -> None:
        self.kind = kind
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:  # pickle's BUILD lands here, not in numpy
        self.state = state


class _Allowed:
    """An allowed global as the unpickler sees it: callable, and closed to BUILD.

    Not a class, so NEWOBJ on it fails; and BUILD (setattr/``__dict__`` updates) cannot
    patch the function or type behind it for later loads.
    """

    __slots__ = ("_function",)

    def __init__(self, function: Callable[..., Any]) -> None:
        self._function = function

    def __call__(self, *args: Any) -> Any:
        return self._function(*args)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("BUILD on an allowed global")


def _no_ndarray(*args: Any) -> Any:
    raise pickle.UnpicklingError("numpy.ndarray may only be passed to _reconstruct")


_NDARRAY = _Allowed(_no_ndarray)  # stands for the class passed to ``_reconstruct``


def _token_factory(kind: str) -> _Allowed:
    return _Allowed(lambda *args: _Token(kind, args))


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """Protocol 0-2 pickles write ``bytes`` as ``_codecs.encode(str, 'latin1')``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("codecs.encode is allowed only for latin1 bytes")
    return text.encode("latin1")


def _bytes(*args: Any) -> bytes:
    """Protocol 0-2 pickles write ``b""`` as ``bytes()``; ``bytes(n)`` would allocate n."""
    if args and not (len(args) == 1 and isinstance(args[0], (bytes, bytearray))):
        raise pickle.UnpicklingError("bytes() is allowed only for empty or copied bytes")
    return bytes(*args)


def _bytearray(*args: Any) -> bytearray:
    """Like :func:`_bytes`: ``bytearray(n)`` would allocate n bytes from a 5-byte pickle."""
    if args and not (len(args) == 1 and isinstance(args[0], (bytes, bytearray))):
        raise pickle.UnpicklingError("bytearray() is allowed only for empty or copied bytes")
    return bytearray(*args)


_ALLOWED: dict[tuple[str, str], _Allowed] = {
    ("builtins", "bytes"): _Allowed(_bytes),
    ("builtins", "set"): _Allowed(set),
    ("builtins", "frozenset"): _Allowed(frozenset),
    ("builtins", "complex"): _Allowed(complex),
    ("builtins", "bytearray"): _Allowed(_bytearray),
    ("builtins", "slice"): _Allowed(slice),
    ("collections", "OrderedDict"): _Allowed(OrderedDict),
    ("_codecs", "encode"): _Allowed(_latin1_encode),
    ("codecs", "encode"): _Allowed(_latin1_encode),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _token_factory("dtype"),
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _token_factory("reconstruct")
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _token_factory("scalar")
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _token_factory("frombuffer")

# Globals that numpy object arrays and numpy scalars legitimately reference.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(_ALLOWED)

# Plain dtypes only: no structured, void, datetime or user-defined dtypes in object arrays.
_DTYPE_KINDS = frozenset("biufcOUS")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], source: str, key: str | None) -> None:
        super().__init__(file)
        self._source = source
        self._key = key

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles name Python 2 modules ('__builtin__.set'); pickle maps
        # them to Python 3 names, so check the name that would be used.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise UnsafePickleError(
            f"refused to unpickle global '{module}.{name}' (object arrays may only hold "
            "plain values and numpy arrays; nothing was executed)",
            path=self._source,
            key=self._key,
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            "refused a persistent-id reference in an object array",
            path=self._source,
            key=self._key,
        )


class _Rebuilder:
    """Turns the unpickled graph's tokens into real numpy objects, checking each one."""

    _ATOMIC = (str, int, float, bytes, complex, type(None))
    _LEAF = (*_ATOMIC, bytearray, np.ndarray, np.generic, np.dtype)  # nothing left to rebuild

    def __init__(self, source: str, key: str | None) -> None:
        self._source = source
        self._key = key
        self._tokens: dict[int, tuple[Any, _Token]] = {}  # dtypes and arrays, often shared
        self._active: set[int] = set()  # containers on the current path, to stop cycles
        self._done: dict[int, tuple[Any, Any]] = {}  # containers already rebuilt

    def refuse(self, what: str, found: Any) -> DatasetFormatError:
        return UnsafePickleError(
            f"refused {what} in an object array (nothing was executed)",
            path=self._source,
            key=self._key,
            found=_short(found),
        )

    def value(self, obj: Any) -> Any:
        if isinstance(obj, self._LEAF):
            return obj
        if isinstance(obj, _Token):
            return self.token(obj)
        key = id(obj)
        done = self._done.get(key)
        if done is not None:  # a shared container is rebuilt once (the graph keeps ids alive)
            return done[0]
        if key in self._active:  # a cycle: containers rebuilt in place are already right
            if isinstance(obj, (list, dict, set)):
                return obj
            raise self.refuse("a cyclic tuple", type(obj).__name__)
        self._active.add(key)
        try:
            rebuilt = self.container(obj)
        finally:
            self._active.discard(key)
        self._done[key] = (rebuilt, obj)  # obj kept: its id stays unique
        return rebuilt

    def token(self, token: _Token) -> Any:
        if token.kind == "scalar":  # one per value, never shared: no memo (saves memory)
            return self.scalar(token)
        done = self._tokens.get(id(token))
        if done is None:
            build = {
                "dtype": self.dtype,
                "reconstruct": self.reconstruct,
                "frombuffer": self.frombuffer,
            }[token.kind]
            done = self._tokens[id(token)] = (build(token), token)  # token kept: id stays unique
        return done[0]

    def container(self, obj: Any) -> Any:
        atomic = self._ATOMIC
        if isinstance(obj, list):  # in place, so shared and cyclic lists stay so
            for i, item in enumerate(obj):
                if not isinstance(item, atomic):
                    obj[i] = self.value(item)
            return obj
        if isinstance(obj, dict):  # dict and OrderedDict, in place
            if not all(isinstance(v, atomic) for v in obj.values()) or not all(
                isinstance(k, atomic) for k in obj
            ):
                items = list(obj.items())
                obj.clear()
                for k, v in items:
                    obj[self.value(k)] = self.value(v)
            return obj
        if isinstance(obj, set):
            items = [self.value(item) for item in obj]
            obj.clear()
            obj.update(items)
            return obj
        if isinstance(obj, (tuple, frozenset)):
            if all(isinstance(item, atomic) for item in obj):
                return obj
            return type(obj)(self.value(item) for item in obj)
        if isinstance(obj, slice):
            return slice(self.value(obj.start), self.value(obj.stop), self.value(obj.step))
        if obj is _NDARRAY:
            raise self.refuse("a bare numpy.ndarray class", "numpy.ndarray")
        raise self.refuse("a value of unexpected type", type(obj).__name__)

    # ------------------------------------------------------------------ numpy
    def dtype(self, token: _Token) -> np.dtype[Any]:
        args, state = token.args, token.state
        if len(args) != 3 or not isinstance(args[0], str):
            raise self.refuse("a malformed numpy dtype", args)
        try:
            base = np.dtype(args[0])
        except (TypeError, ValueError):
            raise self.refuse("an unknown numpy dtype", args[0]) from None
        if base.kind not in _DTYPE_KINDS or base.fields is not None or base.subdtype:
            raise self.refuse("a numpy dtype other than plain numbers, strings or objects", args[0])
        if not isinstance(state, tuple) or len(state) != 8:
            raise self.refuse("a malformed numpy dtype state", state)
        byteorder, elsize = state[1], state[5]
        if byteorder not in ("<", ">", "|", "=") or not isinstance(elsize, int):
            raise self.refuse("a malformed numpy dtype state", state)
        dtype = base
        if base.kind == "U" and elsize > 0:
            dtype = np.dtype(f"U{elsize // 4}")
        elif base.kind == "S" and elsize > 0:
            dtype = np.dtype(f"S{elsize}")
        if byteorder in "<>" and dtype.byteorder != "|":
            dtype = dtype.newbyteorder(byteorder)
        reduced = dtype.__reduce__()
        assert isinstance(reduced, tuple)
        _, canonical_args, canonical_state = reduced
        # numpy's setstate would trust every field (flags, sizes): accept only the exact
        # state numpy writes for this dtype, and never call setstate.
        if tuple(args) != canonical_args or state != canonical_state:
            raise self.refuse("a tampered numpy dtype state", state)
        return dtype

    def _as_dtype(self, obj: Any) -> np.dtype[Any]:
        dtype = self.value(obj)
        if not isinstance(dtype, np.dtype):
            raise self.refuse("an array without a numpy dtype", type(dtype).__name__)
        return dtype

    def _numeric(self, raw: Any, dtype: np.dtype[Any], shape: Any, fortran: bool) -> np.ndarray:
        shape = self._shape(shape)
        if not isinstance(raw, (bytes, bytearray)):
            raise self.refuse("array data that is not bytes", type(raw).__name__)
        if len(raw) != math.prod(shape) * dtype.itemsize:
            raise self.refuse(
                "array data of the wrong length", f"{len(raw)} bytes for shape {shape} of {dtype}"
            )
        flat = np.frombuffer(bytes(raw), dtype=dtype)
        return flat.reshape(shape, order="F" if fortran else "C").copy(order="K")

    def _shape(self, shape: Any) -> tuple[int, ...]:
        if not isinstance(shape, tuple) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise self.refuse("a malformed array shape", shape)
        return shape

    def reconstruct(self, token: _Token) -> np.ndarray:
        if not token.args or token.args[0] is not _NDARRAY:
            raise self.refuse("an array of a class other than numpy.ndarray", token.args[:1])
        state = token.state
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise self.refuse("a malformed numpy array state", state)
        shape, dtype_token, fortran, raw = state
        dtype = self._as_dtype(dtype_token)
        if dtype.kind != "O":
            return self._numeric(raw, dtype, shape, bool(fortran))
        shape = self._shape(shape)
        if not isinstance(raw, list) or len(raw) != math.prod(shape):
            raise self.refuse(
                "object array data that is not a list of its size", type(raw).__name__
            )
        out = np.empty(len(raw), dtype=object)
        for i, item in enumerate(raw):
            out[i] = item if isinstance(item, self._ATOMIC) else self.value(item)
        # numpy lists object elements in C order even for a Fortran-ordered array
        return np.asarray(out.reshape(shape), order="F" if fortran else "C")

    def scalar(self, token: _Token) -> Any:
        if len(token.args) not in (1, 2):
            raise self.refuse("a malformed numpy scalar", token.args)
        dtype = self._as_dtype(token.args[0])
        data = token.args[1] if len(token.args) == 2 else None
        if dtype.kind == "O":
            return self.value(data)
        return self._numeric(data, dtype, (1,), False)[0]

    def frombuffer(self, token: _Token) -> np.ndarray:
        if len(token.args) != 4 or token.args[3] not in ("C", "F"):
            raise self.refuse("a malformed numpy buffer array", token.args[1:])
        raw, dtype_token, shape, order = token.args
        dtype = self._as_dtype(dtype_token)
        if dtype.kind == "O":
            raise self.refuse("an object array stored as raw bytes", str(dtype))
        return self._numeric(self.value(raw), dtype, shape, order == "F")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# The rebuilt graph may expand (shared references counted each time) to this many times
# the pickle's bytes, plus a fixed allowance; real object arrays stay far below it.
EXPANSION_FACTOR = 16
EXPANSION_ALLOWANCE = 64 * 1024 * 1024
_WORD = 8  # what one reference or small value counts for


def expanded_size(graph: Any, budget: int) -> int:
    """Bytes the unpickled graph takes with every shared reference expanded, or a number
    above ``budget`` as soon as it is certain to exceed it.

    Linear in the distinct objects: each container's expanded size is computed once and
    added at each reference, so a billion-laughs list costs as little to measure as to
    unpickle. A reference back into a container being measured (a cycle) counts as one
    word, since a consumer that walks it must stop there anyway.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    keep: list[Any] = []  # measured objects stay alive: their ids stay unique

    def size(obj: Any) -> int:
        if isinstance(obj, (str, bytes, bytearray)):
            return _WORD + len(obj)
        if isinstance(obj, int):
            return _WORD + obj.bit_length() // 8
        if isinstance(obj, (float, complex, type(None), _Allowed)):
            return _WORD
        key = id(obj)
        known = sizes.get(key)
        if known is not None:
            return known
        if key in active:
            return _WORD
        if isinstance(obj, _Token):
            children: Any = (obj.args, obj.state)
        elif isinstance(obj, dict):
            children = (*obj.keys(), *obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            children = obj
        elif isinstance(obj, slice):
            children = (obj.start, obj.stop, obj.step)
        else:
            return _WORD
        active.add(key)
        total = _WORD
        for child in children:
            total += _WORD + size(child)
            if total > budget:
                break
        active.discard(key)
        sizes[key] = total
        keep.append(obj)
        return total

    return size(graph)


def safe_load(
    file: IO[bytes], *, source: str = "<pickle>", key: str | None = None, limit: int | None = None
) -> Any:
    """Unpickle from ``file`` allowing only plain values and numpy arrays/scalars/dtypes.

    ``limit`` bounds the bytes read (the bytes the member can hold); a longer stream is
    refused before it is held in memory.
    """
    data = file.read() if limit is None else file.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise DatasetFormatError(
            "object array is longer than its member",
            path=source,
            key=key,
            expected=f"at most {limit} bytes",
        )
    return safe_loads(data, source=source, key=key)


def safe_loads(data: bytes, *, source: str = "<pickle>", key: str | None = None) -> Any:
    end = scan_pickle(data, source=source, key=key)
    graph = _RestrictedUnpickler(io.BytesIO(memoryview(data)[:end]), source, key).load()
    budget = EXPANSION_FACTOR * end + EXPANSION_ALLOWANCE
    expanded = expanded_size(graph, budget)
    if expanded > budget:
        raise UnsafePickleError(
            "refused an object array that expands far beyond its size "
            "(shared references; nothing was executed)",
            path=source,
            key=key,
            expected=f"under {budget} bytes expanded",
            found=f"over {budget} bytes from {end} bytes of pickle",
        )
    return _Rebuilder(source, key).value(graph)


# ------------------------------------------------------------------ opcode scan
# Argument widths of the pickle opcodes (protocols 0-5), by opcode byte.
_NO_ARGUMENT = frozenset(
    b"(.0123NRQbaed}l]su)to\x81\x85\x86\x87\x88\x89\x8f\x90\x91\x92\x93\x97\x98"
)
_FIXED: dict[int, int] = {op: 0 for op in _NO_ARGUMENT}
_FIXED.update({op: 1 for op in b"K\x80\x82h"})  # BININT1 PROTO EXT1 BINGET
_FIXED.update({op: 2 for op in b"M\x83"})  # BININT2 EXT2
_FIXED.update({op: 4 for op in b"J\x84j"})  # BININT EXT4 LONG_BINGET
_FIXED.update({op: 8 for op in b"G\x95"})  # BINFLOAT FRAME
# Opcodes followed by a little-endian length of this many bytes, then that many bytes.
_COUNTED: dict[int, int] = {op: 1 for op in b"UC\x8c\x8a"}
_COUNTED.update({op: 4 for op in b"TBX\x8b"})
_COUNTED.update({op: 8 for op in b"\x8d\x8e\x96"})
# Text-protocol opcodes: arguments end at a newline (GLOBAL and INST have two lines).
_LINES: dict[int, int] = {op: 1 for op in b"ILFSVgpP"}
_LINES.update({op: 2 for op in b"ci"})
_STOP, _BINPUT, _LONG_BINPUT, _PUT, _MEMOIZE = 0x2E, 0x71, 0x72, 0x70, 0x94


def scan_pickle(data: bytes, *, source: str = "<pickle>", key: str | None = None) -> int:
    """Check a pickle's opcodes without building anything; returns the offset after STOP.

    Refuses a counted string or bytes longer than the bytes that follow (the C unpickler
    would allocate the claimed size first), a memo index beyond the entries written so
    far (it would size its memo table to twice the index), and unknown opcodes.
    """

    def refuse(what: str, at: int) -> DatasetFormatError:
        return DatasetFormatError(
            f"unreadable object array ({what})", path=source, key=key, found=f"offset {at}"
        )

    pos, end, puts = 0, len(data), 0
    fixed, counted, lines = _FIXED, _COUNTED, _LINES
    number = int.from_bytes
    while pos < end:
        start = pos
        op = data[pos]
        pos += 1
        width = fixed.get(op)
        if width is not None:
            pos += width
            if op == _STOP:
                return pos
            continue
        if op == _MEMOIZE:
            puts += 1
            continue
        if op in (_BINPUT, _LONG_BINPUT):
            width = 1 if op == _BINPUT else 4
            index = number(data[pos : pos + width], "little")
            pos += width
        else:
            width = counted.get(op, 0)
            if width:
                claimed = number(
                    data[pos : pos + width], "little", signed=op in b"T\x8b"
                )  # BINSTRING, LONG4
                pos += width
                if claimed < 0 or claimed > end - pos:
                    raise refuse(f"a length of {claimed} bytes where {end - pos} remain", start)
                pos += claimed
                continue
            count = lines.get(op)
            if count is None:
                raise refuse(f"unknown pickle opcode {op:#04x}", start)
            for _ in range(count):
                newline = data.find(b"\n", pos)
                if newline < 0:
                    raise refuse("truncated pickle", start)
                argument, pos = data[pos:newline], newline + 1
            if op != _PUT:
                continue
            if not argument.isdigit() or len(argument) > 12:
                raise refuse("a malformed memo index", start)
            index = int(argument)
        if index > puts:
            raise refuse(f"memo index {index} beyond the {puts} entries written", start)
        puts = max(puts, index + 1)
    raise refuse("truncated pickle (no STOP)", end)
