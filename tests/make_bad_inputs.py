"""Write the bad-input corpus: one file per way a dataset or registry can be wrong.

Usage: ``python tests/make_bad_inputs.py FOLDER`` (prints the files it wrote).

Every data file uses the origin's key names (``context_sequences``/``target_vectors``,
``target_texts``, ``metadata``; the bank's ``vectors``/``article_indices``/...) and is
written with plain numpy, as the origin project wrote its files. What lvmqa must say
about each case lives in ``tests/test_bad_inputs.py``; this module only builds them.
"""

from __future__ import annotations

import io
import os
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

N, C, D = 40, 5, 16
SEED = 7

# Rows broken on purpose in the NaN / Inf / zero cases (targets; one context vector each).
NAN_ROWS = (3, 4)
INF_ROWS = (7,)
ZERO_ROWS = (9, 10, 11)
BAD_CONTEXT = (20, 2)  # (sequence, position) of the broken context vector
NON_UTF8_ROW = 7
BIG_TEXT_ROW = 5
BIG_TEXT_CHARS = 1_000_000


def unit_rows(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.standard_normal(shape)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def good_arrays(n: int = N, dim: int = D, seed: int = SEED) -> dict[str, np.ndarray]:
    """A healthy sequences file in the origin's per-sequence layout."""
    rng = np.random.default_rng(seed)
    texts = np.array([f"chunk {i} of a made-up article" for i in range(n)], dtype=object)
    return {
        "context_sequences": unit_rows(rng, (n, C, dim)),
        "target_vectors": unit_rows(rng, (n, dim)),
        "target_texts": texts,
    }


def _save(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


# ------------------------------------------------------------------ unreadable files
def truncated(folder: Path) -> Path:
    whole = _save(folder / "whole.npz", **good_arrays())
    data = whole.read_bytes()
    whole.unlink()
    path = folder / "truncated.npz"
    path.write_bytes(data[: len(data) // 2])
    return path


def zero_bytes(folder: Path) -> Path:
    path = folder / "zero_bytes.npz"
    path.write_bytes(b"")
    return path


def not_a_zip(folder: Path) -> Path:
    path = folder / "not_a_zip.npz"
    path.write_text("context_sequences,target_vectors\n0.1,0.2\n")
    return path


def member_not_npy(folder: Path) -> Path:
    path = folder / "member_not_npy.npz"
    arrays = good_arrays()
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("context_sequences", "target_vectors"):
            archive.writestr(f"{name}.npy", _npy_bytes(arrays[name]))
        archive.writestr("notes.txt", "exported by hand")
    return path


# --------------------------------------------------------------- wrong keys / shapes
def missing_vectors(folder: Path) -> Path:
    arrays = good_arrays()
    return _save(
        folder / "missing_vectors.npz",
        target_texts=arrays["target_texts"],
        sequence_positions=np.arange(N, dtype=np.int32),
    )


def length_mismatch(folder: Path) -> Path:
    arrays = good_arrays()
    arrays["target_vectors"] = arrays["target_vectors"][:-1]
    arrays.pop("target_texts")
    return _save(folder / "length_mismatch.npz", **arrays)


def dim_mismatch(folder: Path) -> Path:
    rng = np.random.default_rng(SEED)
    return _save(
        folder / "dim_mismatch.npz",
        context_sequences=unit_rows(rng, (N, C, D)),
        target_vectors=unit_rows(rng, (N, 2 * D)),
    )


def empty(folder: Path) -> Path:
    return _save(
        folder / "empty.npz",
        context_sequences=np.zeros((0, C, D), np.float32),
        target_vectors=np.zeros((0, D), np.float32),
    )


def bank_too_short(folder: Path) -> Path:
    """A bank of C rows: no article has a chunk after a full context."""
    rng = np.random.default_rng(SEED)
    return _save(
        folder / "bank_too_short.npz",
        vectors=unit_rows(rng, (C, D)),
        concept_texts=np.array([f"chunk {i}" for i in range(C)], dtype=object),
        cpe_ids=np.array([f"id-{i}" for i in range(C)], dtype=object),
        article_indices=np.zeros(C, np.int32),
        chunk_indices=np.arange(C, dtype=np.int32),
        article_titles=np.array(["Short"] * C, dtype=object),
    )


# ---------------------------------------------------------- loadable storage variants
def float16(folder: Path) -> Path:
    arrays = good_arrays()
    return _save(
        folder / "float16.npz",
        **{k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in arrays.items()},
    )


def float64(folder: Path) -> Path:
    arrays = good_arrays()
    return _save(
        folder / "float64.npz",
        **{k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in arrays.items()},
    )


def fortran_order(folder: Path) -> Path:
    arrays = good_arrays()
    return _save(
        folder / "fortran_order.npz",
        context_sequences=np.asfortranarray(arrays["context_sequences"]),
        target_vectors=np.asfortranarray(arrays["target_vectors"]),
    )


def strided(folder: Path) -> Path:
    """Non-contiguous views (every other row of a twice-as-long array) handed to savez."""
    big = good_arrays(2 * N)
    return _save(
        folder / "strided.npz",
        context_sequences=big["context_sequences"][::2],
        target_vectors=big["target_vectors"][::2],
    )


def dim_1(folder: Path) -> Path:
    return _save(folder / "dim_1.npz", **good_arrays(dim=1))


def dim_4096(folder: Path) -> Path:
    return _save(folder / "dim_4096.npz", **good_arrays(n=12, dim=4096))


# ---------------------------------------------------------- loadable but bad vectors
def _broken(folder: Path, name: str, rows: tuple[int, ...], value: float) -> Path:
    arrays = good_arrays()
    arrays["target_vectors"][list(rows)] = value
    arrays["context_sequences"][BAD_CONTEXT] = value
    return _save(folder / name, **arrays)


def nan_rows(folder: Path) -> Path:
    return _broken(folder, "nan_rows.npz", NAN_ROWS, np.nan)


def inf_rows(folder: Path) -> Path:
    return _broken(folder, "inf_rows.npz", INF_ROWS, np.inf)


def zero_rows(folder: Path) -> Path:
    return _broken(folder, "zero_rows.npz", ZERO_ROWS, 0.0)


# ----------------------------------------------------------------------- texts
def texts_not_strings(folder: Path) -> Path:
    arrays = good_arrays()
    arrays["target_texts"] = np.arange(N, dtype=np.int64)
    return _save(folder / "texts_not_strings.npz", **arrays)


def texts_non_utf8(folder: Path) -> Path:
    arrays = good_arrays()
    arrays["target_texts"][NON_UTF8_ROW] = "café".encode("latin-1")
    return _save(folder / "texts_non_utf8.npz", **arrays)


def text_1mb(folder: Path) -> Path:
    arrays = good_arrays()
    arrays["target_texts"][BIG_TEXT_ROW] = "word " * (BIG_TEXT_CHARS // 5)
    return _save(folder / "text_1mb.npz", **arrays)


# --------------------------------------------------------------------- metadata
def _meta(i: int) -> dict[str, object]:
    return {
        "article_index": i // 8,
        "last_context_article": i // 8,
        "target_chunk_index": i % 8,
        "target_cpe_id": f"id-{i}",
        "crosses_article": False,
    }


def metadata_missing_fields(folder: Path) -> Path:
    meta = np.empty(N, dtype=object)
    for i in range(N):
        record = _meta(i)
        if i % 3 == 0:
            del record["article_index"]
        if i % 4 == 0:
            del record["crosses_article"]
        meta[i] = record
    return _save(folder / "metadata_missing_fields.npz", **good_arrays(), metadata=meta)


def metadata_extra_fields(folder: Path) -> Path:
    meta = np.empty(N, dtype=object)
    for i in range(N):
        meta[i] = {**_meta(i), "ingest_batch": i % 3, "notes": ["x", None]}
    return _save(folder / "metadata_extra_fields.npz", **good_arrays(), metadata=meta)


def metadata_single_dict(folder: Path) -> Path:
    meta = np.array(
        {"context_length": C, "num_sequences": N, "vector_dim": D, "source": "bank.npz"},
        dtype=object,
    )
    return _save(
        folder / "metadata_single_dict.npz",
        **good_arrays(),
        metadata=meta,
        target_ids=np.array([f"id-{i}" for i in range(N)], dtype=object),
        sequence_positions=np.arange(N, dtype=np.int32),
        target_tmds=np.zeros(N, dtype=np.int32),
    )


# --------------------------------------------------------------------- registry
def _registry(folder: Path, name: str, body: str) -> Path:
    _save(folder / "registry_data.npz", **good_arrays())
    path = folder / name
    path.write_text(body)
    return path


def registry_duplicate_dataset(folder: Path) -> Path:
    return _registry(
        folder,
        "registry_duplicate_dataset.toml",
        """
[datasets.good]
path = "registry_data.npz"

[datasets.good]
path = "registry_data.npz"
""",
    )


def registry_unknown_encoder(folder: Path) -> Path:
    return _registry(
        folder,
        "registry_unknown_encoder.toml",
        """
[encoders.minilm]
model = "all-MiniLM-L6-v2"

[datasets.good]
path = "registry_data.npz"
encoder = "gtr"
""",
    )


def registry_self_baseline(folder: Path) -> Path:
    return _registry(
        folder,
        "registry_self_baseline.toml",
        """
[datasets.good]
path = "registry_data.npz"
baseline = "good"
""",
    )


CASES: dict[str, Callable[[Path], Path]] = {
    builder.__name__: builder
    for builder in (
        truncated,
        zero_bytes,
        not_a_zip,
        member_not_npy,
        missing_vectors,
        length_mismatch,
        dim_mismatch,
        empty,
        bank_too_short,
        float16,
        float64,
        fortran_order,
        strided,
        dim_1,
        dim_4096,
        nan_rows,
        inf_rows,
        zero_rows,
        texts_not_strings,
        texts_non_utf8,
        text_1mb,
        metadata_missing_fields,
        metadata_extra_fields,
        metadata_single_dict,
        registry_duplicate_dataset,
        registry_unknown_encoder,
        registry_self_baseline,
    )
}


def build_all(folder: Path) -> dict[str, Path]:
    """Write every case into ``folder``; returns case name -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    return {name: builder(folder) for name, builder in CASES.items()}


# ====================================================================== hostile inputs
# Files built to attack lvmqa rather than to be merely broken (issue 13): pickles that
# allocate, decompression bombs, lying headers, names that are shell or HTML, FIFOs,
# catastrophic regexes. tests/test_hostile.py states what lvmqa must do with each one.
MARKER_NAME = "PWNED"  # a hostile encoder or name that runs writes this file


def _pickle_member(pickle_bytes: bytes, shape: tuple[int, ...]) -> bytes:
    """An object-array .npy member whose pickle is ``pickle_bytes`` (any bytes at all)."""
    header = {"descr": "|O", "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + pickle_bytes


def _npy_header_bytes(header_text: str) -> bytes:
    """A version-1 .npy header with a raw (possibly lying) header dict text."""
    body = header_text.encode("latin1")
    body += b" " * ((-(len(body) + 11)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


def _zip_with(path: Path, members: dict[str, bytes], *, deflate: set[str] | None = None) -> Path:
    arrays = good_arrays()
    with zipfile.ZipFile(path, "w") as archive:
        for key in ("context_sequences", "target_vectors"):
            if f"{key}.npy" not in members:
                archive.writestr(f"{key}.npy", _npy_bytes(arrays[key]))
        for name, data in members.items():
            kind = zipfile.ZIP_DEFLATED if deflate and name in deflate else zipfile.ZIP_STORED
            archive.writestr(name, data, compress_type=kind)
    return path


def _deflated_stream(path: Path, name: str, head: bytes, fill: bytes, total: int) -> Path:
    """Add ``name`` to the zip at ``path``: ``head`` then ``fill`` repeated to ``total``
    bytes, deflated as it is written (a bomb costs little to build)."""
    with zipfile.ZipFile(path, "a", compresslevel=1) as archive:
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as out:
            out.write(head)
            block = fill * (1024 * 1024 // len(fill))
            left = total - len(head)
            while left > 0:
                out.write(block[:left])
                left -= len(block)
    return path


def pickle_bytearray_1gib(folder: Path) -> Path:
    # PROTO 2; GLOBAL builtins.bytearray; BININT 1 GiB; TUPLE1; REDUCE; STOP
    payload = b"\x80\x02cbuiltins\nbytearray\nJ\x00\x00\x00@\x85R."
    return _zip_with(
        folder / "pickle_bytearray_1gib.npz",
        {"target_texts.npy": _pickle_member(payload, (N,))},
    )


def pickle_billion_laughs(folder: Path) -> Path:
    """Lists of lists each holding the previous one 10 times: 10^30 leaves, 3 KB."""
    out = bytearray(b"\x80\x02]q\x00X\x03\x00\x00\x00lola0")  # memo 0 = ['lol']
    for level in range(1, 30):  # memo k = [memo k-1] * 10, built with BINGETs, then popped
        out += b"](" + (b"h" + bytes([level - 1])) * 10 + b"eq" + bytes([level]) + b"0"
    array = b"](" + (b"h" + bytes([29])) * N + b"e."
    return _zip_with(
        folder / "pickle_billion_laughs.npz",
        {"target_texts.npy": _pickle_member(bytes(out) + array, (N,))},
    )


def pickle_memo_amplification(folder: Path) -> Path:
    """One 1 MiB text referenced from every row of 100,000 (100 GB as copies)."""
    rows = 100_000
    text = ("a" * (1 << 20)).encode()
    body = b"\x80\x04X" + len(text).to_bytes(4, "little") + text + b"\x94"
    body += b"]\x94(" + b"h\x00" * rows + b"e."
    arrays = good_arrays(n=rows, dim=4)
    with zipfile.ZipFile(folder / "pickle_memo_amplification.npz", "w") as archive:
        for key in ("context_sequences", "target_vectors"):
            archive.writestr(f"{key}.npy", _npy_bytes(arrays[key]))
        archive.writestr("target_texts.npy", _pickle_member(body, (rows,)))
    return folder / "pickle_memo_amplification.npz"


def binbytes8_claim_deflated(folder: Path) -> Path:
    """A deflated object member whose BINBYTES8 claims 4 GiB, followed by 128 MiB of zeros."""
    path = _zip_with(folder / "binbytes8_claim_deflated.npz", {})
    head = _pickle_member(b"\x80\x04\x8e" + (4 << 30).to_bytes(8, "little"), (N,))
    return _deflated_stream(path, "target_texts.npy", head, b"\x00", 128 << 20)


def many_deflated_members(folder: Path) -> Path:
    """12 unused deflated members of 60 MiB each (720 MB if all were expanded)."""
    path = _zip_with(folder / "many_deflated_members.npz", {})
    count, size = 12, 60 << 20
    header = _npy_header_bytes(
        f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({size // 4},), }}"
    )
    for i in range(count):
        _deflated_stream(path, f"extra_{i}.npy", header, b"\x00", size + len(header))
    return path


def deflated_json_bomb(folder: Path) -> Path:
    """A deflated 256 MiB JSON member (mostly spaces)."""
    path = _zip_with(folder / "deflated_json_bomb.npz", {})
    return _deflated_stream(path, "manifest.json", b'{"a": 1', b" ", 256 << 20)


def sparse_manifest_folder(folder: Path) -> Path:
    """A folder dataset whose manifest.json is a sparse 4 GiB file."""
    target = folder / "sparse_manifest_folder"
    target.mkdir()
    for key, array in good_arrays().items():
        np.save(target / f"{key}.npy", array, allow_pickle=True)
    with open(target / "manifest.json", "wb") as handle:
        handle.write(b'{"a": ')
        handle.truncate(4 << 30)
    return target


def header_claims_rows(folder: Path) -> Path:
    """Headers claim 10^8 rows over 200 rows of data."""
    n = 200
    arrays = good_arrays(n=n)
    members = {}
    for key, claimed in (("context_sequences", (10**8, C, D)), ("target_vectors", (10**8, D))):
        data = arrays[key].tobytes()
        members[f"{key}.npy"] = (
            _npy_header_bytes(f"{{'descr': '<f4', 'fortran_order': False, 'shape': {claimed}, }}")
            + data
        )
    return _zip_with(folder / "header_claims_rows.npz", members)


def header_shape_infinite(folder: Path) -> Path:
    header = _npy_header_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1e999, 16), }")
    return _zip_with(folder / "header_shape_infinite.npz", {"target_vectors.npy": header})


def header_shape_1e12(folder: Path) -> Path:
    header = _npy_header_bytes(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 16), }"
    )
    return _zip_with(folder / "header_shape_1e12.npz", {"target_vectors.npy": header})


def header_empty_rows_1e12(folder: Path) -> Path:
    """10^12 rows of width 0: zero bytes of data, yet a 10^12-row metadata table."""
    members = {
        "target_vectors.npy": _npy_header_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 0), }"
        ),
        "context_sequences.npy": _npy_header_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 5, 0), }"
        ),
    }
    return _zip_with(folder / "header_empty_rows_1e12.npz", members)


def huge_headers_deflated(folder: Path) -> Path:
    """40 deflated members each with a 1 MB header (padding spaces): cost, not size."""
    path = _zip_with(folder / "huge_headers_deflated.npz", {})
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), " + " " * 1_000_000 + "}"
    body = text.encode() + b"\n"
    header = b"\x93NUMPY\x02\x00" + len(body).to_bytes(4, "little") + body + bytes(16)
    with zipfile.ZipFile(path, "a") as archive:
        for i in range(40):
            archive.writestr(f"pad_{i}.npy", header, compress_type=zipfile.ZIP_DEFLATED)
    return path


def _metadata_with_ids(folder: Path, name: str, value: object) -> Path:
    meta = np.empty(N, dtype=object)
    for i in range(N):
        meta[i] = {**_meta(i), "article_index": value if i == 3 else i // 8}
    return _save(folder / f"{name}.npz", **good_arrays(), metadata=meta)


def ids_2_pow_63(folder: Path) -> Path:
    return _metadata_with_ids(folder, "ids_2_pow_63", 2**63)


def ids_1e30(folder: Path) -> Path:
    return _metadata_with_ids(folder, "ids_1e30", 1e30)


def ids_complex(folder: Path) -> Path:
    return _metadata_with_ids(folder, "ids_complex", 1 + 2j)


def bank_uint64_ids(folder: Path) -> Path:
    """A bank whose article ids are uint64, one of them 2^64 - 1."""
    rows = 48
    rng = np.random.default_rng(SEED)
    articles = (np.arange(rows) // 8).astype(np.uint64)
    articles[17] = np.uint64(2**64 - 1)
    return _save(
        folder / "bank_uint64_ids.npz",
        vectors=unit_rows(rng, (rows, D)),
        article_indices=articles,
        chunk_indices=(np.arange(rows) % 8).astype(np.int32),
        concept_texts=np.array([f"text {i}" for i in range(rows)], dtype=object),
    )


def json_nested_deep(folder: Path) -> Path:
    return _zip_with(
        folder / "json_nested_deep.npz", {"manifest.json": b"[" * 100_000 + b"]" * 100_000}
    )


def texts_lone_surrogates(folder: Path) -> Path:
    arrays = good_arrays()
    texts = arrays["target_texts"].copy()
    texts[2] = "broken \ud800 surrogate"
    texts[5] = "\udfff"
    return _save(folder / "texts_lone_surrogates.npz", **{**arrays, "target_texts": texts})


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def fifo_npy(folder: Path) -> Path:
    return _fifo(folder / "fifo_npy.npy")


def fifo_member_folder(folder: Path) -> Path:
    target = folder / "fifo_member_folder"
    target.mkdir()
    np.save(target / "context_sequences.npy", good_arrays()["context_sequences"])
    _fifo(target / "target_vectors.npy")
    return target


def fifo_json_folder(folder: Path) -> Path:
    target = folder / "fifo_json_folder"
    target.mkdir()
    for key, array in good_arrays().items():
        np.save(target / f"{key}.npy", array, allow_pickle=True)
    _fifo(target / "manifest.json")
    return target


def html_name(folder: Path) -> Path:
    """A file stem that is an HTML element with a script handler."""
    return _save(folder / "<img src=x onerror=alert(1)>.npz", **good_arrays())


def shell_name(folder: Path) -> Path:
    return _save(folder / f"$(touch {MARKER_NAME}).npz", **good_arrays())


def _hostile_registry(folder: Path, name: str, body: str) -> Path:
    _save(folder / "hostile_data.npz", **good_arrays())
    path = folder / name
    path.write_text(body, encoding="utf-8")
    return path


def registry_shell_key(folder: Path) -> Path:
    return _hostile_registry(
        folder,
        "registry_shell_key.toml",
        f'[datasets."$(touch {MARKER_NAME})"]\npath = "hostile_data.npz"\n',
    )


def registry_html_key(folder: Path) -> Path:
    return _hostile_registry(
        folder,
        "registry_html_key.toml",
        '[datasets."<img src=x onerror=alert(1)>"]\npath = "hostile_data.npz"\n',
    )


def registry_code_encoder(folder: Path) -> Path:
    """A registry whose encoder is the PR's own code: importing it writes the marker."""
    module = folder / "pr_encoder.py"
    module.write_text(
        "from pathlib import Path\n"
        f"Path(__file__).with_name({MARKER_NAME!r}).write_text('ran')\n"
        "def make():\n    raise SystemExit('encoder factory ran')\n"
    )
    return _hostile_registry(
        folder,
        "lvmqa.toml",  # the checkout's own registry: found by location, never trusted
        '[encoders.pr]\nmodel = "pr_encoder:make"\n\n'
        '[datasets.good]\npath = "hostile_data.npz"\nencoder = "pr"\n',
    )


def registry_catastrophic_regex(folder: Path) -> Path:
    arrays = good_arrays()
    texts = np.array(["a" * 40] * N, dtype=object)
    _save(folder / "regex_data.npz", **{**arrays, "target_texts": texts})
    path = folder / "registry_catastrophic_regex.toml"
    path.write_text('[datasets.aaa]\npath = "regex_data.npz"\nblocklist = "^(a+)+$"\n')
    return path


def registry_backreference_regex(folder: Path) -> Path:
    return _hostile_registry(
        folder,
        "registry_backreference_regex.toml",
        '[datasets.good]\npath = "hostile_data.npz"\nblocklist = "(a)\\\\1"\n',
    )


def registry_build_dev_zero(folder: Path) -> Path:
    return _hostile_registry(
        folder,
        "registry_build_dev_zero.toml",
        '[datasets.zero]\nbuild = { from = "/dev/zero" }\n',
    )


def registry_toml_deep(folder: Path) -> Path:
    return _hostile_registry(
        folder, "registry_toml_deep.toml", "x = " + "[" * 5000 + "]" * 5000 + "\n"
    )


def registry_string_threshold(folder: Path) -> Path:
    return _hostile_registry(
        folder,
        "registry_string_threshold.toml",
        '[datasets.good]\npath = "hostile_data.npz"\n[datasets.good.thresholds]\n'
        'low_coherence = "high"\n',
    )


def registry_nan_threshold(folder: Path) -> Path:
    return _hostile_registry(
        folder,
        "registry_nan_threshold.toml",
        '[datasets.good]\npath = "hostile_data.npz"\n[datasets.good.thresholds]\n'
        "low_coherence = nan\n",
    )


HOSTILE: dict[str, Callable[[Path], Path]] = {
    builder.__name__: builder
    for builder in (
        pickle_bytearray_1gib,
        pickle_billion_laughs,
        pickle_memo_amplification,
        binbytes8_claim_deflated,
        many_deflated_members,
        deflated_json_bomb,
        sparse_manifest_folder,
        header_claims_rows,
        header_shape_infinite,
        header_shape_1e12,
        header_empty_rows_1e12,
        huge_headers_deflated,
        ids_2_pow_63,
        ids_1e30,
        ids_complex,
        bank_uint64_ids,
        json_nested_deep,
        texts_lone_surrogates,
        fifo_npy,
        fifo_member_folder,
        fifo_json_folder,
        html_name,
        shell_name,
        registry_shell_key,
        registry_html_key,
        registry_code_encoder,
        registry_catastrophic_regex,
        registry_backreference_regex,
        registry_build_dev_zero,
        registry_toml_deep,
        registry_string_threshold,
        registry_nan_threshold,
    )
}


def build_hostile(folder: Path) -> dict[str, Path]:
    """Write every hostile case into ``folder``; returns case name -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    return {name: builder(folder) for name, builder in HOSTILE.items()}


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[1] != "--hostile"):
        sys.exit("usage: python tests/make_bad_inputs.py [--hostile] FOLDER")
    build = build_hostile if len(sys.argv) == 3 else build_all
    for case, written in build(Path(sys.argv[-1])).items():
        print(f"{case:28} {written}")
