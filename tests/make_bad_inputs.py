"""Write the bad-input corpus: one file per way a dataset or registry can be wrong.

Usage: ``python tests/make_bad_inputs.py FOLDER`` (prints the files it wrote).

Every data file uses the origin's key names (``context_sequences``/``target_vectors``,
``target_texts``, ``metadata``; the bank's ``vectors``/``article_indices``/...) and is
written with plain numpy, as the origin project wrote its files. What lvmqa must say
about each case lives in ``tests/test_bad_inputs.py``; this module only builds them.
"""

from __future__ import annotations

import io
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


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/make_bad_inputs.py FOLDER")
    for case, written in build_all(Path(sys.argv[1])).items():
        print(f"{case:28} {written}")
