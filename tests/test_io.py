"""Known answers for the loaders: every origin layout, written with plain numpy.

Each test writes a file exactly as the origin project did (``np.savez`` /
``np.savez_compressed``, its key names and aliases) and checks what ``open_dataset``
reads back against the arrays that were written.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lvmqa import npzfile
from lvmqa.io import META_COLUMNS, open_dataset

C = 5


def unit_rows(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.standard_normal(shape)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def save(path: Path, compressed: bool = False, **arrays: object) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)  # type: ignore[operator]
    return path


# ---------------------------------------------------------------------------- bank
# Three articles: 8, 6 and 3 chunks. With C = 5: windows target chunks 5, 6, 7 of
# article 10 and chunk 5 of article 20; article 30 is too short for any window.
BANK_ARTICLES = {10: 8, 20: 6, 30: 3}
EXPECTED_WINDOWS = [(10, 5), (10, 6), (10, 7), (20, 5)]


def write_bank(
    path: Path,
    *,
    vector_key: str = "vectors",
    seed: int = 0,
    dtype: type = np.float32,
    compressed: bool = False,
    chunks: dict[int, list[int]] | None = None,
) -> dict[str, np.ndarray]:
    """An origin bank with rows SHUFFLED (not in article/chunk order); returns its arrays."""
    rng = np.random.default_rng(seed)
    chunks = chunks or {a: list(range(k)) for a, k in BANK_ARTICLES.items()}
    keys = [(a, c) for a, cs in chunks.items() for c in cs]
    order = rng.permutation(len(keys))
    keys = [keys[i] for i in order]
    arrays = {
        vector_key: unit_rows(rng, (len(keys), 8)).astype(dtype),
        "concept_texts": np.array([f"article {a} chunk {c}" for a, c in keys], dtype=object),
        "cpe_ids": np.array([f"cpe-{a}-{c}" for a, c in keys], dtype=object),
        "article_indices": np.array([a for a, _ in keys], dtype=np.int32),
        "chunk_indices": np.array([c for _, c in keys], dtype=np.int32),
        "article_titles": np.array([f"Title {a}" for a, _ in keys], dtype=object),
    }
    save(path, compressed, **arrays)
    return arrays


def row_of(arrays: dict[str, np.ndarray], article: int, chunk: int) -> int:
    hit = np.flatnonzero(
        (arrays["article_indices"] == article) & (arrays["chunk_indices"] == chunk)
    )
    assert hit.size == 1
    return int(hit[0])


@pytest.mark.parametrize("vector_key", ["vectors", "embeddings"])
@pytest.mark.parametrize("compressed", [False, True])
def test_bank_windows_inside_articles_in_chunk_order(
    tmp_path: Path, vector_key: str, compressed: bool
) -> None:
    arrays = write_bank(tmp_path / "bank.npz", vector_key=vector_key, compressed=compressed)
    ds = open_dataset(tmp_path / "bank.npz")

    assert ds.kind == "bank"
    assert (ds.n, ds.dim, ds.context_length) == (4, 8, C)
    assert ds.keys == {
        "vectors": vector_key,
        "targets": vector_key,
        "article_indices": "article_indices",
        "chunk_indices": "chunk_indices",
        "cpe_ids": "cpe_ids",
        "article_titles": "article_titles",
        "concept_texts": "concept_texts",
    }
    assert list(ds.meta.columns[: len(META_COLUMNS)]) == list(META_COLUMNS)
    assert list(zip(ds.meta["article"], ds.meta["chunk"], strict=True)) == EXPECTED_WINDOWS
    assert ds.meta["target_id"].tolist() == [f"cpe-{a}-{c}" for a, c in EXPECTED_WINDOWS]
    assert ds.meta["title"].tolist() == [f"Title {a}" for a, _ in EXPECTED_WINDOWS]
    assert not ds.meta["context_articles_differ"].any()
    assert ds.meta["context_chunks_consecutive"].all()
    assert ds.has_article_ids

    vectors = arrays[vector_key]
    target_rows = [row_of(arrays, a, c) for a, c in EXPECTED_WINDOWS]
    context_rows = [
        [row_of(arrays, a, c - k) for k in range(C, 0, -1)] for a, c in EXPECTED_WINDOWS
    ]
    np.testing.assert_array_equal(ds.target_rows(0, 4), vectors[target_rows])
    np.testing.assert_array_equal(ds.context_rows(0, 4), vectors[context_rows])
    np.testing.assert_array_equal(
        ds.targets_at(np.array([3, 0, 3])),
        vectors[[target_rows[3], target_rows[0], target_rows[3]]],
    )
    np.testing.assert_array_equal(ds.contexts_at(np.array([2])), vectors[[context_rows[2]]])
    assert ds.target_texts is not None
    assert ds.context_texts is not None
    assert ds.target_texts.tolist() == [f"article {a} chunk {c}" for a, c in EXPECTED_WINDOWS]
    assert ds.context_texts[0].tolist() == [f"article 10 chunk {k}" for k in range(5)]
    # the per-ROW table is still the file's rows, in file order
    table = ds.bank_table()
    assert table["article"].tolist() == arrays["article_indices"].tolist()


def test_bank_chunk_gap_is_flagged_not_bridged_silently(tmp_path: Path) -> None:
    write_bank(tmp_path / "gap.npz", chunks={1: [0, 1, 2, 3, 4, 6, 7]})
    ds = open_dataset(tmp_path / "gap.npz")
    assert ds.meta["chunk"].tolist() == [6, 7]
    assert ds.meta["context_chunks_consecutive"].tolist() == [False, False]
    assert not ds.meta["context_articles_differ"].any()


def test_bank_without_chunk_ids_keeps_file_order_inside_articles(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    articles = np.array([1, 2, 1, 1, 2, 1, 1, 2, 1, 2, 2, 2, 2], dtype=np.int32)
    vectors = unit_rows(rng, (len(articles), 4))
    save(tmp_path / "bank.npz", vectors=vectors, article_indices=articles)
    ds = open_dataset(tmp_path / "bank.npz")
    rows_1 = np.flatnonzero(articles == 1)  # 6 rows -> 1 window
    rows_2 = np.flatnonzero(articles == 2)  # 7 rows -> 2 windows
    assert ds.n == 3
    assert ds.meta["article"].tolist() == [1, 2, 2]
    assert ds.meta["chunk"].isna().all()
    assert not ds.meta["context_articles_differ"].any()  # known: windows stay in articles
    assert ds.meta["context_chunks_consecutive"].isna().all()  # unknown without chunk ids
    np.testing.assert_array_equal(ds.target_rows(0, 3), vectors[[rows_1[5], rows_2[5], rows_2[6]]])
    np.testing.assert_array_equal(ds.context_rows(2, 3)[0], vectors[rows_2[1:6]])


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_bank_vectors_are_upcast_to_float32(tmp_path: Path, dtype: type) -> None:
    arrays = write_bank(tmp_path / "bank.npz", dtype=dtype)
    ds = open_dataset(tmp_path / "bank.npz")
    assert ds.stored_dtype == np.dtype(dtype)
    got = ds.targets_matrix()
    assert got.dtype == np.float32
    expected = arrays["vectors"][[row_of(arrays, a, c) for a, c in EXPECTED_WINDOWS]]
    np.testing.assert_array_equal(got, expected.astype(np.float32))


# ----------------------------------------------------------------------- sequences
N, D = 12, 8


def crossing(i: int) -> bool:
    # windows 0, 4, 8 start a new article at the target; 1, 5, 9 still hold one
    # context from the previous article
    return i % 4 in (0, 1)


def per_sequence_file(path: Path, compressed: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    meta = np.empty(N, dtype=object)
    for i in range(N):
        meta[i] = {
            "article_index": i // 4,
            "last_context_article": i // 4 - 1 if i % 4 == 0 else i // 4,
            "target_chunk_index": i % 4 + 5,
            "target_cpe_id": f"cpe-{i}",
            "crosses_article": crossing(i),
        }
    arrays = {
        "context_sequences": unit_rows(rng, (N, C, D)),
        "target_vectors": unit_rows(rng, (N, D)),
        "target_texts": np.array([f"target {i}" for i in range(N)]),
        "context_texts": np.array([[f"ctx {i}.{j}" for j in range(C)] for i in range(N)]),
        "metadata": meta,
    }
    save(
        path,
        compressed,
        **arrays,
        context_length=C,
        num_sequences=N,
        vector_dim=D,
        source_dataset="wiki_bank.npz",
    )
    return arrays


@pytest.mark.parametrize("compressed", [False, True])
def test_sequences_with_per_sequence_metadata(tmp_path: Path, compressed: bool) -> None:
    arrays = per_sequence_file(tmp_path / "seq.npz", compressed)
    ds = open_dataset(tmp_path / "seq.npz")

    assert ds.kind == "sequences"
    assert (ds.n, ds.context_length, ds.dim) == (N, C, D)
    assert ds.stored_dtype == np.float32
    assert ds.keys == {
        "targets": "target_vectors",
        "contexts": "context_sequences",
        "target_texts": "target_texts",
        "context_texts": "context_texts",
        "metadata": "metadata",
    }
    assert ds.file_metadata == {
        "context_length": C,
        "num_sequences": N,
        "vector_dim": D,
        "source_dataset": "wiki_bank.npz",
    }
    assert ds.meta["article"].tolist() == [i // 4 for i in range(N)]
    assert ds.meta["chunk"].tolist() == [i % 4 + 5 for i in range(N)]
    assert ds.meta["target_id"].tolist() == [f"cpe-{i}" for i in range(N)]
    assert ds.meta["context_articles_differ"].tolist() == [crossing(i) for i in range(N)]
    assert ds.meta["title"].isna().all()
    assert ds.has_article_ids
    assert ds.target_texts is not None
    assert ds.context_texts is not None
    assert ds.target_texts.dtype == object
    assert ds.target_texts[3] == "target 3"
    assert ds.context_texts.shape == (N, C)
    assert ds.context_texts[2, 4] == "ctx 2.4"
    np.testing.assert_array_equal(ds.context_rows(3, 7), arrays["context_sequences"][3:7])
    np.testing.assert_array_equal(ds.target_rows(3, 7), arrays["target_vectors"][3:7])
    idx = np.array([11, 0, 5, 5])
    np.testing.assert_array_equal(ds.targets_at(idx), arrays["target_vectors"][idx])
    np.testing.assert_array_equal(ds.contexts_at(idx), arrays["context_sequences"][idx])
    # reads past the end are clamped, like slicing
    assert ds.target_rows(N - 2, N + 10).shape == (2, D)


def test_sequences_with_single_dict_metadata_and_origin_790k_keys(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    targets = unit_rows(rng, (N, D))
    texts = np.empty(N, dtype=object)
    texts[:] = [f"text {i}" for i in range(N)]
    texts[4] = None  # a missing text stays missing
    save(
        tmp_path / "seq.npz",
        context_sequences=unit_rows(rng, (N, C, D)),
        target_vectors=targets,
        target_texts=texts,
        target_ids=np.array([f"cpe-{i}" for i in range(N)], dtype=object),
        sequence_positions=np.arange(100, 100 + N, dtype=np.int32),
        target_tmds=np.full(N, 7, dtype=np.int32),
        metadata=np.array({"context_length": C, "num_sequences": N, "source": "x"}, dtype=object),
    )
    ds = open_dataset(tmp_path / "seq.npz")

    assert ds.file_metadata == {"context_length": C, "num_sequences": N, "source": "x"}
    assert "metadata" not in ds.keys  # not per-sequence
    assert ds.meta["target_id"].tolist() == [f"cpe-{i}" for i in range(N)]
    assert ds.meta["position"].tolist() == list(range(100, 100 + N))
    assert ds.meta["article"].isna().all()
    assert not ds.has_article_ids
    assert ds.meta["context_articles_differ"].isna().all()
    assert ds.target_texts is not None
    assert ds.target_texts[4] is None
    assert ds.target_texts[5] == "text 5"
    assert ds.context_texts is None
    np.testing.assert_array_equal(ds.targets_matrix(), targets)


def test_context_texts_share_the_target_text_objects(tmp_path: Path) -> None:
    # each member is pickled on its own, so equal texts load as separate copies; the
    # loader points context texts at the equal target text (half the text memory)
    rng = np.random.default_rng(10)
    chunks = [f"chunk number {i} " * 5 for i in range(N + C)]
    contexts = np.array([[chunks[i + j] for j in range(C)] for i in range(N)], dtype=object)
    save(
        tmp_path / "seq.npz",
        context_sequences=unit_rows(rng, (N, C, D)),
        target_vectors=unit_rows(rng, (N, D)),
        target_texts=np.array(chunks[C:], dtype=object),
        context_texts=contexts,
    )
    ds = open_dataset(tmp_path / "seq.npz")
    assert ds.target_texts is not None and ds.context_texts is not None
    assert ds.context_texts.tolist() == contexts.tolist()
    assert ds.context_texts[7, 4] is ds.target_texts[6]  # chunk 11: one object, not two
    assert ds.context_texts[0, 0] == chunks[0]  # texts before the first target stay


def test_single_dict_metadata_in_a_one_element_array(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    save(
        tmp_path / "seq.npz",
        context_sequences=unit_rows(rng, (N, C, D)),
        target_vectors=unit_rows(rng, (N, D)),
        metadata=np.array([{"context_length": C}], dtype=object),
    )
    assert open_dataset(tmp_path / "seq.npz").file_metadata == {"context_length": C}


@pytest.mark.parametrize(
    ("context_key", "target_key"),
    [("contexts", "targets"), ("train_context_sequences", "train_target_vectors")],
)
def test_sequence_key_aliases(tmp_path: Path, context_key: str, target_key: str) -> None:
    rng = np.random.default_rng(5)
    contexts, targets = unit_rows(rng, (N, 3, D)), unit_rows(rng, (N, D))
    save(tmp_path / "seq.npz", **{context_key: contexts, target_key: targets})
    ds = open_dataset(tmp_path / "seq.npz")
    assert ds.keys == {"contexts": context_key, "targets": target_key}
    assert ds.context_length == 3  # taken from the file, not the default
    np.testing.assert_array_equal(ds.context_rows(0, N), contexts)
    np.testing.assert_array_equal(ds.target_rows(0, N), targets)


# --------------------------------------------------------------------- index layout
def index_layout(
    path: Path, *, article_per_vector: bool, json_member: bool
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(6)
    rows = 30
    vectors = unit_rows(rng, (rows, D))
    vector_article = np.arange(rows) // 10  # rows 0-9 article 0, 10-19 article 1, ...
    targets = np.array([5, 6, 7, 8, 9, 15, 16, 25, 12, 21], dtype=np.int64)
    contexts = targets[:, None] + np.arange(-C, 0)[None, :]
    articles = vector_article if article_per_vector else vector_article[targets]
    manifest = {"source": "bank.npz", "context": C}
    arrays = {
        "vectors": vectors,
        "target_indices": targets,
        "context_indices": contexts,
        "article_ids": articles,
    }
    if json_member:
        save(path, **arrays)
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("manifest.json", json.dumps(manifest))
    else:
        save(path, **arrays, manifest=json.dumps(manifest))
    return arrays


@pytest.mark.parametrize("article_per_vector", [False, True])
@pytest.mark.parametrize("json_member", [False, True])
def test_index_layout(tmp_path: Path, article_per_vector: bool, json_member: bool) -> None:
    arrays = index_layout(
        tmp_path / "idx.npz", article_per_vector=article_per_vector, json_member=json_member
    )
    ds = open_dataset(tmp_path / "idx.npz")
    targets, contexts, vectors = (
        arrays["target_indices"],
        arrays["context_indices"],
        arrays["vectors"],
    )
    assert ds.kind == "sequences"
    assert (ds.n, ds.context_length, ds.dim) == (10, C, D)
    assert ds.keys["vectors"] == "vectors"
    assert ds.keys["contexts"] == "context_indices"
    assert ds.file_metadata["manifest"] == {"source": "bank.npz", "context": C}
    np.testing.assert_array_equal(ds.target_rows(0, 10), vectors[targets])
    np.testing.assert_array_equal(ds.context_rows(0, 10), vectors[contexts])
    np.testing.assert_array_equal(ds.contexts_at(np.array([9, 1])), vectors[contexts[[9, 1]]])
    assert ds.meta["article"].tolist() == (targets // 10).tolist()
    if article_per_vector:  # the article of every context row is known too
        expected = ((contexts // 10) != (targets // 10)[:, None]).any(axis=1)
        assert ds.meta["context_articles_differ"].tolist() == expected.tolist()
        assert ds.meta["context_articles_differ"].sum() == 2  # targets 12 and 21


# ------------------------------------------------------------------ storage variants
@pytest.mark.parametrize("dtype", [np.float16, np.float64])
@pytest.mark.parametrize("compressed", [False, True])
def test_sequence_vectors_are_upcast_to_float32(
    tmp_path: Path, dtype: type, compressed: bool
) -> None:
    rng = np.random.default_rng(7)
    contexts = unit_rows(rng, (N, C, D)).astype(dtype)
    targets = unit_rows(rng, (N, D)).astype(dtype)
    save(tmp_path / "seq.npz", compressed, context_sequences=contexts, target_vectors=targets)
    ds = open_dataset(tmp_path / "seq.npz")
    assert ds.stored_dtype == np.dtype(dtype)
    for got, want in (
        (ds.context_rows(0, N), contexts),
        (ds.target_rows(2, 9), targets[2:9]),
        (ds.targets_at(np.array([4, 1])), targets[[4, 1]]),
        (ds.targets_matrix(), targets),
    ):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want.astype(np.float32))


@pytest.mark.parametrize("compressed", [False, True])
def test_fortran_order_members(tmp_path: Path, compressed: bool) -> None:
    rng = np.random.default_rng(8)
    contexts, targets = unit_rows(rng, (N, C, D)), unit_rows(rng, (N, D))
    save(
        tmp_path / "f.npz",
        compressed,
        context_sequences=np.asfortranarray(contexts),
        target_vectors=np.asfortranarray(targets),
    )
    with zipfile.ZipFile(tmp_path / "f.npz") as archive:  # really stored Fortran-ordered
        assert b"'fortran_order': True" in archive.read("target_vectors.npy")[:128]
    ds = open_dataset(tmp_path / "f.npz")
    np.testing.assert_array_equal(ds.context_rows(1, 11), contexts[1:11])
    np.testing.assert_array_equal(ds.target_rows(0, N), targets)
    np.testing.assert_array_equal(ds.targets_matrix(), targets)
    np.testing.assert_array_equal(ds.targets_at(np.array([7, 2])), targets[[7, 2]])


def test_uncompressed_float32_targets_are_mapped_not_copied(tmp_path: Path) -> None:
    arrays = per_sequence_file(tmp_path / "seq.npz")
    matrix = open_dataset(tmp_path / "seq.npz").targets_matrix()
    assert isinstance(matrix, np.memmap)
    assert not matrix.flags.writeable
    np.testing.assert_array_equal(matrix, arrays["target_vectors"])


def test_large_compressed_member_is_spilled_and_read_in_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Members above the in-memory limit are decompressed to a private temp file; a
    # zero limit sends every numeric member down that path.
    monkeypatch.setattr(npzfile, "_IN_MEMORY_LIMIT", 0)
    arrays = per_sequence_file(tmp_path / "seq.npz", compressed=True)
    ds = open_dataset(tmp_path / "seq.npz")
    assert ds.data.members["target_vectors"]._file_path != tmp_path / "seq.npz"
    np.testing.assert_array_equal(ds.context_rows(0, N), arrays["context_sequences"])
    np.testing.assert_array_equal(ds.targets_matrix(), arrays["target_vectors"])


def test_folder_of_npy_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    folder = tmp_path / "seqdir"
    folder.mkdir()
    contexts, targets = unit_rows(rng, (N, C, D)), unit_rows(rng, (N, D))
    np.save(folder / "context_sequences.npy", contexts)
    np.save(folder / "target_vectors.npy", np.asfortranarray(targets))
    np.save(
        folder / "target_texts.npy",
        np.array([f"t{i}" for i in range(N)], dtype=object),
        allow_pickle=True,
    )
    (folder / "manifest.json").write_text(json.dumps({"built_by": "test"}))
    ds = open_dataset(folder)
    assert ds.kind == "sequences"
    assert ds.n == N
    assert ds.file_metadata == {"manifest": {"built_by": "test"}}
    np.testing.assert_array_equal(ds.context_rows(0, N), contexts)
    np.testing.assert_array_equal(ds.target_rows(0, N), targets)
    assert ds.target_texts is not None
    assert ds.target_texts[11] == "t11"
    first = ds.sha256()
    (folder / "target_texts.npy").write_bytes((folder / "target_texts.npy").read_bytes())
    assert open_dataset(folder).sha256() == first  # deterministic over the folder's files


def test_sha256_is_of_the_file_bytes(tmp_path: Path) -> None:
    per_sequence_file(tmp_path / "seq.npz")
    digest = hashlib.sha256((tmp_path / "seq.npz").read_bytes()).hexdigest()
    assert open_dataset(tmp_path / "seq.npz").sha256() == f"sha256:{digest}"


# --------------------------------------------------------------------- streaming
STORAGE = ["npz", "npz_compressed", "fortran", "float16", "folder", "bank"]


def write_variant(
    folder: Path, storage: str, n: int, c: int, d: int, seed: int
) -> tuple[Path, np.ndarray, np.ndarray]:
    """A file in the given storage variant plus the contexts and targets it must read as."""
    rng = np.random.default_rng(seed)
    if storage == "bank":
        # one article, rows shuffled: windows are the rows in chunk order
        vectors = unit_rows(rng, (n + c, d))
        chunk = rng.permutation(n + c).astype(np.int32)
        path = save(
            folder / "bank.npz",
            vectors=vectors,
            chunk_indices=chunk,
            article_indices=np.zeros(n + c, np.int32),
        )
        by_chunk = vectors[np.argsort(chunk)]
        contexts = np.stack([by_chunk[i : i + c] for i in range(n)])
        return path, contexts, by_chunk[c:]
    contexts, targets = unit_rows(rng, (n, c, d)), unit_rows(rng, (n, d))
    if storage == "float16":
        contexts, targets = contexts.astype(np.float16), targets.astype(np.float16)
    if storage == "folder":
        path = folder / "npy"
        path.mkdir()
        np.save(path / "contexts.npy", contexts)
        np.save(path / "targets.npy", targets)
    else:
        stored = (
            (np.asfortranarray(contexts), np.asfortranarray(targets))
            if storage == "fortran"
            else (contexts, targets)
        )
        path = save(
            folder / "seq.npz",
            storage == "npz_compressed",
            context_sequences=stored[0],
            target_vectors=stored[1],
        )
    return path, contexts.astype(np.float32), targets.astype(np.float32)


@given(
    n=st.integers(1, 40),
    c=st.integers(1, 4),
    d=st.integers(1, 6),
    rows_choice=st.sampled_from(["one", "non_divisor", "larger_than_n", "default", "any"]),
    any_rows=st.integers(1, 50),
    storage=st.sampled_from(STORAGE),
    seed=st.integers(0, 2**16),
)
def test_chunked_iteration_equals_in_memory(
    n: int, c: int, d: int, rows_choice: str, any_rows: int, storage: str, seed: int
) -> None:
    rows = {
        "one": 1,
        "non_divisor": next((k for k in range(2, n) if n % k), 2),
        "larger_than_n": n + 3,
        "default": None,
        "any": any_rows,
    }[rows_choice]
    with tempfile.TemporaryDirectory() as tmp:
        path, contexts, targets = write_variant(Path(tmp), storage, n, c, d, seed)
        ds = open_dataset(path, context_length=c)
        assert (ds.n, ds.context_length, ds.dim) == (n, c, d)
        chunks = list(ds.iter_chunks(rows))
        assert [ch.start for ch in chunks] == list(range(0, n, rows or ds.chunk_rows()))
        assert chunks[-1].stop == n
        assert all(a.stop == b.start for a, b in itertools.pairwise(chunks))
        got_ctx = np.concatenate([ch.contexts for ch in chunks])
        got_tgt = np.concatenate([ch.targets for ch in chunks])
        assert got_ctx.dtype == got_tgt.dtype == np.float32
        np.testing.assert_array_equal(got_ctx, contexts)
        np.testing.assert_array_equal(got_tgt, targets)
        streamed = np.concatenate([block for _, block in ds.iter_target_chunks(rows)])
        np.testing.assert_array_equal(streamed, targets)
        np.testing.assert_array_equal(ds.targets_matrix(), targets)


# ------------------------------------------------------------- ids under any name
def plain_sequences(n: int = 12, seed: int = 9) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "context_sequences": unit_rows(rng, (n, C, D)),
        "target_vectors": unit_rows(rng, (n, D)),
    }


def test_top_level_ids_under_other_names_are_read_and_the_rest_listed(tmp_path: Path) -> None:
    n = 12
    arrays = plain_sequences(n)
    save(
        tmp_path / "s.npz",
        **arrays,
        article_index=np.arange(n) // 4,  # the names of the documentation corpus
        target_chunk_index=(np.arange(n) % 4 + C).astype(np.int32),
        quality_scores=np.linspace(0, 1, n),
        context_mask=np.ones((n, C), dtype=bool),
    )
    ds = open_dataset(tmp_path / "s.npz")
    assert ds.has_article_ids
    assert ds.meta["article"].tolist() == [i // 4 for i in range(n)]
    assert ds.meta["chunk"].tolist() == [i % 4 + C for i in range(n)]
    assert ds.id_keys == {"article": "article_index", "chunk": "target_chunk_index"}
    assert set(ds.unused_keys) == {"quality_scores", "context_mask"}
    scores = ds.unused_keys["quality_scores"]
    assert (scores["shape"], scores["dtype"]) == ([n], "float64")
    assert 'chunk = "quality_scores"' in scores["note"] or "article" in scores["note"]
    assert ds.unused_keys["context_mask"]["shape"] == [n, C]
    assert "not one value per row" in ds.unused_keys["context_mask"]["note"]


def test_metadata_fields_under_other_names(tmp_path: Path) -> None:
    n = 8
    meta = np.empty(n, dtype=object)
    meta[:] = [
        {"doc_id": f"guide/page{i // 4}.md", "position": i % 4, "tag": "x"} for i in range(n)
    ]
    save(tmp_path / "s.npz", **plain_sequences(n), metadata=meta)
    ds = open_dataset(tmp_path / "s.npz")
    assert ds.id_keys == {"article": "metadata.doc_id", "chunk": "metadata.position"}
    articles = ds.meta["article"].tolist()
    # string document ids become stable numbers: equal names equal, different names differ
    assert articles[:4] == [articles[0]] * 4 and articles[4:] == [articles[4]] * 4
    assert articles[0] != articles[4] and min(articles) >= 0
    assert ds.meta["chunk"].tolist() == [i % 4 for i in range(n)]
    assert list(ds.unused_keys) == ["metadata.tag"]

    # the same document name gets the same id in another file (leakage compares them)
    save(tmp_path / "t.npz", **plain_sequences(n, seed=3), metadata=meta[::-1].copy())
    other = open_dataset(tmp_path / "t.npz")
    assert set(other.meta["article"].tolist()) == set(articles)


def test_single_dict_metadata_with_per_row_lists(tmp_path: Path) -> None:
    n = 6
    info = np.empty(1, dtype=object)
    info[0] = {"source": "docs", "document_ids": [0, 0, 0, 1, 1, 1]}
    save(tmp_path / "s.npz", **plain_sequences(n), metadata=info)
    ds = open_dataset(tmp_path / "s.npz")
    assert ds.meta["article"].tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.id_keys == {"article": "metadata.document_ids"}
    assert ds.unused_keys == {}  # the one dict was read, as file metadata


def test_an_alias_that_does_not_fit_is_skipped_with_the_reason(tmp_path: Path) -> None:
    n = 6
    save(
        tmp_path / "s.npz",
        **plain_sequences(n),
        doc_ids=np.arange(n + 1),  # wrong length: not ids of these rows
        chunk_id=np.array([0.5] * n),  # not integers
        page_id=np.arange(n) // 3,
    )
    ds = open_dataset(tmp_path / "s.npz")
    assert ds.id_keys == {"article": "page_id"}
    assert ds.meta["article"].tolist() == [0, 0, 0, 1, 1, 1]
    assert "not one per row" in ds.unused_keys["doc_ids"]["note"]
    assert "not an integer" in ds.unused_keys["chunk_id"]["note"]


def test_registry_key_map_wins_and_a_missing_key_is_one_line(tmp_path: Path) -> None:
    from lvmqa.checks import Session
    from lvmqa.errors import DatasetFormatError, RegistryError
    from lvmqa.registry import load_registry

    n = 6
    save(
        tmp_path / "s.npz",
        **plain_sequences(n),
        article_ids=np.zeros(n, dtype=np.int64),
        section_of=np.arange(n) // 2,
    )
    (tmp_path / "lvmqa.toml").write_text(
        '[datasets.d]\npath = "s.npz"\n[datasets.d.keys]\narticle = "section_of"\n',
        encoding="utf-8",
    )
    session = Session(load_registry(tmp_path / "lvmqa.toml"))
    ds = session.context("d").dataset
    assert ds.meta["article"].tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.id_keys == {"article": "section_of"}
    assert "article_ids" in ds.unused_keys  # the alias lost to the explicit mapping

    with pytest.raises(DatasetFormatError, match="doc_ids") as info:
        open_dataset(tmp_path / "s.npz", key_map={"article": "doc_ids"})
    assert "\n" not in str(info.value) and "section_of" in str(info.value)
    (tmp_path / "bad.toml").write_text(
        '[datasets.d]\npath = "s.npz"\n[datasets.d.keys]\nparagraph = "x"\n', encoding="utf-8"
    )
    with pytest.raises(RegistryError, match="paragraph"):
        load_registry(tmp_path / "bad.toml")


@given(
    st.sampled_from(
        ["article_ids", "article_index", "doc_ids", "doc_id", "document_id", "document_index"]
    ),
    st.sampled_from(["chunk_index", "target_chunk_index", "chunk_id", "position"]),
    st.lists(st.integers(0, 50), min_size=1, max_size=20),
)
def test_any_alias_pair_reads_the_same_ids(
    article_key: str, chunk_key: str, ids: list[int]
) -> None:
    n = len(ids)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "s.npz"
        save(
            path,
            **plain_sequences(n),
            **{article_key: np.array(ids), chunk_key: np.arange(n)[::-1].copy()},
        )
        ds = open_dataset(path)
        assert ds.meta["article"].tolist() == ids
        assert ds.meta["chunk"].tolist() == list(range(n))[::-1]
        assert ds.unused_keys == {}
