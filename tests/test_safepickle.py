"""Object arrays are read without running code: legit pickles load, hostile ones are refused.

The hostile files are real: a class whose ``__reduce__`` names a dangerous callable is
pickled by ``np.save(allow_pickle=True)`` into the ``target_texts`` or ``metadata``
member of an npz. Each payload would create a marker file if it ever ran.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import posix
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lvmqa.errors import DatasetFormatError, UnsafePickleError
from lvmqa.io import open_dataset
from lvmqa.safepickle import safe_loads
from tests.conftest import REPO

N, C, D = 6, 5, 4


class Payload:
    """Pickles as ``func(*args)``: what an attacker's object array would call on load."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def payloads(marker: Path) -> dict[str, tuple[str, Payload]]:
    """name -> (global the pickle names, payload that would create ``marker``)."""
    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": ("posix.system", Payload(os.system, f"touch {marker}")),
        "posix.system": ("posix.system", Payload(posix.system, f"touch {marker}")),
        "subprocess.Popen": ("subprocess.Popen", Payload(subprocess.Popen, ["touch", str(marker)])),
        "subprocess.call": ("subprocess.call", Payload(subprocess.call, ["touch", str(marker)])),
        "builtins.eval": ("builtins.eval", Payload(builtins.eval, touch)),
        "builtins.exec": ("builtins.exec", Payload(builtins.exec, touch)),
        "builtins.__import__": ("builtins.__import__", Payload(builtins.__import__, "antigravity")),
        "builtins.getattr": (
            "builtins.getattr",
            Payload(getattr, Payload(builtins.__import__, "os"), "system"),
        ),
        "io.open": ("io.open", Payload(open, str(marker), "w")),
    }


def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "context_sequences": rng.standard_normal((N, C, D)).astype(np.float32),
        "target_vectors": rng.standard_normal((N, D)).astype(np.float32),
    }


def npy_bytes(array: np.ndarray, protocol: int | None = None) -> bytes:
    """``np.save`` bytes; with ``protocol`` the object array is pickled at that protocol."""
    buffer = io.BytesIO()
    if protocol is None:
        np.save(buffer, array, allow_pickle=True)
        return buffer.getvalue()
    header = np.lib.format.header_data_from_array_1_0(array)
    np.lib.format.write_array_header_1_0(buffer, header)
    pickle.dump(array, buffer, protocol=protocol)
    return buffer.getvalue()


def write_npz(path: Path, members: dict[str, bytes], compressed: bool) -> Path:
    mode = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=mode) as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    return path


def evil_npz(
    path: Path,
    payload: Payload,
    member: str,
    *,
    compressed: bool = False,
    protocol: int | None = None,
) -> Path:
    """An origin sequences file whose ``member`` hides ``payload`` in one element."""
    if member == "target_texts":
        hostile = np.empty(N, dtype=object)
        hostile[:] = [f"text {i}" for i in range(N)]
        hostile[3] = payload
    elif member == "metadata":  # the origin's single dict, hostile value inside
        hostile = np.array({"context_length": C, "source": payload}, dtype=object)
    else:  # per-sequence metadata dicts
        hostile = np.empty(N, dtype=object)
        hostile[:] = [{"article_index": 0, "target_cpe_id": f"c{i}"} for i in range(N)]
        hostile[2] = {"article_index": 0, "target_cpe_id": payload}
        member = "metadata"
    members = {name: npy_bytes(a) for name, a in arrays().items()}
    members[member] = npy_bytes(hostile, protocol)
    return write_npz(path, members, compressed)


# ---------------------------------------------------------------------- legit values
LEGIT = {
    "text": "a chunk of text — with ünïcode",
    "none": None,
    "ints": [1, -2, 3 * 10**20],
    "floats": (1.5, float("inf")),
    "nested": [[1, [2, [3, {"deep": True}]]], {"k": (None, b"raw bytes")}],
    "numpy_scalars": [np.int64(7), np.float32(0.5), np.bool_(True), np.str_("s")],
    "numpy_array": np.arange(6, dtype=np.int32).reshape(2, 3),
    "set": {1, 2},
    "complex": 1 + 2j,
}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_values_and_numpy_reconstructors_round_trip(protocol: int) -> None:
    value = safe_loads(pickle.dumps(LEGIT, protocol=protocol))
    assert value.keys() == LEGIT.keys()
    np.testing.assert_array_equal(value.pop("numpy_array"), LEGIT["numpy_array"])
    assert value == {k: v for k, v in LEGIT.items() if k != "numpy_array"}
    assert type(value["numpy_scalars"][0]) is np.int64


NUMPY_VALUES = {
    "big_endian_float": np.arange(6, dtype=">f4").reshape(2, 3),
    "fortran_int8": np.asfortranarray(np.arange(6, dtype=np.int8).reshape(2, 3)),
    "unicode": np.array(["ab", "c"]),
    "bytes": np.array([b"x", b"yz"]),
    "zero_d": np.array(3.5),
    "empty": np.zeros((0, 3), dtype=np.complex64),
    "bool": np.array([True, False]),
    "fortran_object": np.asfortranarray(np.array([["a", 1], [None, 2.5]], dtype=object)),
    "mixed_object": np.array(
        [np.int64(3), np.str_("q"), np.float16(1.5), {"k": np.arange(2)}, b"", bytearray(b"z")],
        dtype=object,
    ),
}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("name", list(NUMPY_VALUES))
def test_numpy_arrays_are_rebuilt_exactly(protocol: int, name: str) -> None:
    original = NUMPY_VALUES[name]
    rebuilt = safe_loads(pickle.dumps(original, protocol=protocol))
    assert type(rebuilt) is np.ndarray
    assert (rebuilt.dtype, rebuilt.shape) == (original.dtype, original.shape)
    assert rebuilt.flags.f_contiguous == original.flags.f_contiguous
    assert rebuilt.flags.c_contiguous == original.flags.c_contiguous
    if original.dtype != object:
        np.testing.assert_array_equal(rebuilt, original)
    else:
        assert [type(v) for v in rebuilt.flat] == [type(v) for v in original.flat]


def test_shared_and_cyclic_containers_keep_their_shape() -> None:
    shared = {"article_index": np.int64(4)}
    cyclic: list[Any] = ["head", shared]
    cyclic.append(cyclic)
    value = safe_loads(
        pickle.dumps(
            {"a": shared, "b": shared, "loop": cyclic, "arrays": [np.arange(3)] * 2}, protocol=2
        )
    )
    assert value["a"] is value["b"]
    assert value["a"] == {"article_index": 4}
    assert type(value["a"]["article_index"]) is np.int64
    assert value["loop"][2] is value["loop"]
    assert value["loop"][1] is value["a"]
    assert value["arrays"][0] is value["arrays"][1]


class TamperedDtype:
    """int64 whose pickled state claims numpy's object flags (63): numpy would then treat
    the array's bytes as object pointers and crash (or worse) when it touches them."""

    def __reduce__(self) -> tuple[Any, ...]:
        return np.dtype, ("i8", False, True), (3, "<", None, None, None, -1, -1, 63)


class ArrayWithTamperedDtype:
    def __reduce__(self) -> tuple[Any, ...]:
        from numpy._core.multiarray import _reconstruct

        pointers = (0x4141414141414141).to_bytes(8, "little") * 2
        return _reconstruct, (np.ndarray, (0,), b"b"), (1, (2,), TamperedDtype(), False, pointers)


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_tampered_numpy_dtype_state_is_refused_not_applied(protocol: int) -> None:
    with pytest.raises(UnsafePickleError, match="tampered numpy dtype state") as refused:
        safe_loads(pickle.dumps([ArrayWithTamperedDtype()], protocol=protocol))
    assert "63" in str(refused.value)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (np.zeros(2, dtype=[("a", "i4")]), "other than plain numbers"),
        (np.ma.array([1, 2], mask=[0, 1]), "'numpy.ma.core._mareconstruct'"),
        (np.array(["2020-01-01"], dtype="datetime64[D]"), "other than plain numbers"),
    ],
)
def test_numpy_values_outside_plain_arrays_are_refused(value: Any, needle: str) -> None:
    with pytest.raises(UnsafePickleError, match=needle):
        safe_loads(pickle.dumps(value, protocol=2))


def test_build_cannot_patch_an_allowed_global() -> None:
    # GLOBAL builtins.set, then BUILD with {'x': 1}: would setattr on what find_class gave
    with pytest.raises(pickle.UnpicklingError, match="BUILD on an allowed global"):
        safe_loads(b"cbuiltins\nset\n}S'x'\nK\x01sb.")


def test_bytes_cannot_allocate_from_a_number() -> None:
    with pytest.raises(pickle.UnpicklingError, match="bytes"):
        safe_loads(b"cbuiltins\nbytes\nJ\x00\x00\x00\x7f\x85R.")  # bytes(0x7f000000)


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("protocol", [None, 2, 5])
def test_legit_object_arrays_load_through_open_dataset(
    tmp_path: Path, compressed: bool, protocol: int | None
) -> None:
    texts = np.empty(N, dtype=object)
    texts[:] = [f"text {i}" for i in range(N)]
    texts[1] = None
    per_sequence = np.empty(N, dtype=object)
    per_sequence[:] = [
        {
            "article_index": np.int64(i // 2),
            "target_chunk_index": i,
            "target_cpe_id": f"c{i}",
            "crosses_article": np.bool_(False),
            "extra": [None, {"x": [1.0]}],
        }
        for i in range(N)
    ]
    members = {name: npy_bytes(a) for name, a in arrays().items()}
    members["target_texts"] = npy_bytes(texts, protocol)
    members["metadata"] = npy_bytes(per_sequence, protocol)
    members["manifest"] = npy_bytes(np.array(dict(LEGIT), dtype=object), protocol)
    ds = open_dataset(write_npz(tmp_path / "legit.npz", members, compressed))
    assert ds.target_texts is not None
    assert ds.target_texts.tolist() == ["text 0", None, *[f"text {i}" for i in range(2, N)]]
    assert ds.meta["article"].tolist() == [i // 2 for i in range(N)]
    assert ds.meta["target_id"].tolist() == [f"c{i}" for i in range(N)]
    assert ds.file_metadata["manifest"]["nested"] == LEGIT["nested"]


# ------------------------------------------------------------------- hostile values
@pytest.mark.parametrize("name", list(payloads(Path("m"))))
@pytest.mark.parametrize("member", ["target_texts", "metadata", "per_sequence_metadata"])
@pytest.mark.parametrize("compressed", [False, True])
def test_hostile_pickles_are_refused_before_running(
    tmp_path: Path, name: str, member: str, compressed: bool
) -> None:
    marker = tmp_path / "PWNED"
    global_name, payload = payloads(marker)[name]
    path = evil_npz(tmp_path / "evil.npz", payload, member, compressed=compressed)
    with pytest.raises(UnsafePickleError) as refused:
        open_dataset(path)
    message = str(refused.value)
    assert f"'{global_name}'" in message
    assert str(path) in message
    assert f"key '{'target_texts' if member == 'target_texts' else 'metadata'}'" in message
    assert "nothing was executed" in message
    assert "\n" not in message
    assert isinstance(refused.value, DatasetFormatError)  # the CLI's one-line error class
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 1, 2, 4, 5])
def test_every_pickle_protocol_is_restricted(tmp_path: Path, protocol: int) -> None:
    # protocol 0 uses INST/GLOBAL text opcodes, 4+ uses STACK_GLOBAL: all go through
    # the same allowlist
    marker = tmp_path / "PWNED"
    path = evil_npz(
        tmp_path / "evil.npz",
        Payload(os.system, f"touch {marker}"),
        "target_texts",
        protocol=protocol,
    )
    with pytest.raises(UnsafePickleError, match=r"posix\.system"):
        open_dataset(path)
    assert not marker.exists()


def test_persistent_ids_are_refused() -> None:
    class WithPid(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            return "ref" if obj == "x" else None

    buffer = io.BytesIO()
    WithPid(buffer, protocol=2).dump(["x"])
    with pytest.raises(UnsafePickleError, match="persistent"):
        safe_loads(buffer.getvalue())


def test_an_unread_hostile_member_never_runs(tmp_path: Path) -> None:
    # lvmqa unpickles only the members it uses; an unknown object member is never read
    marker = tmp_path / "PWNED"
    members = {name: npy_bytes(a) for name, a in arrays().items()}
    members["attachment"] = npy_bytes(
        np.array([Payload(os.system, f"touch {marker}")], dtype=object)
    )
    ds = open_dataset(write_npz(tmp_path / "odd.npz", members, compressed=True))
    assert ds.n == N
    assert not marker.exists()


# --------------------------------------------------------------- CLI and pytest run
def test_cli_and_pytest_refuse_with_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = evil_npz(tmp_path / "evil.npz", Payload(os.system, f"touch {marker}"), "target_texts")
    before = path.read_bytes()
    runs = {
        "cli": ([sys.executable, "-m", "lvmqa.cli", "check", str(path), "--no-smoke"], 2),
        "pytest": (
            [
                sys.executable,
                "-m",
                "pytest",
                "quality_tests",
                f"--dataset={path}",
                "-m",
                "not smoke",
                "-p",
                "no:cacheprovider",
            ],
            4,
        ),
    }
    procs = {
        name: subprocess.Popen(
            argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, (argv, _) in runs.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        lines = [line for line in (out + err).splitlines() if line.strip()]
        assert proc.returncode == runs[name][1], (name, out, err)
        assert len(lines) == 1, (name, lines)
        assert "refused to unpickle global 'posix.system'" in lines[0]
        assert "key 'target_texts'" in lines[0]
        assert "evil.npz" in lines[0]
    assert not marker.exists()
    assert path.read_bytes() == before


# ------------------------------------------------------------ budgets (issue 13)
def test_bytearray_cannot_allocate_from_a_number() -> None:
    with pytest.raises(pickle.UnpicklingError, match="bytearray"):
        safe_loads(b"\x80\x02cbuiltins\nbytearray\nJ\x00\x00\x00@\x85R.")  # bytearray(1 GiB)


def test_a_length_claim_beyond_the_data_is_refused_before_allocating() -> None:
    claim = b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b"abc."  # BINBYTES8 1 TiB
    with pytest.raises(DatasetFormatError, match="a length of 1099511627776 bytes"):
        safe_loads(claim)


def test_a_memo_index_far_beyond_the_entries_written_is_refused() -> None:
    # LONG_BINPUT 2^28 would make the C unpickler zero a 4 GiB memo table
    with pytest.raises(DatasetFormatError, match="memo index 268435456"):
        safe_loads(b"\x80\x02N" + b"r" + (1 << 28).to_bytes(4, "little") + b".")


def test_billion_laughs_is_refused_in_linear_time() -> None:
    import time

    out = bytearray(b"\x80\x02]q\x00X\x03\x00\x00\x00lola0")
    for level in range(1, 40):
        out += b"](" + (b"h" + bytes([level - 1])) * 10 + b"eq" + bytes([level]) + b"0"
    out += b"h" + bytes([39]) + b"."
    started = time.monotonic()
    with pytest.raises(UnsafePickleError, match="expands far beyond its size"):
        safe_loads(bytes(out))
    assert time.monotonic() - started < 1


def test_shared_references_within_budget_still_load() -> None:
    title = "a title shared by every chunk of its article"
    rows = [{"article_title": title, "chunk": i} for i in range(1000)]
    assert safe_loads(pickle.dumps(rows, protocol=2)) == rows
