"""Known answers for the filter: the score, the mask reasons, the written files, the manifest."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lvmqa.errors import LvmqaError
from lvmqa.filtering import (
    REASONS,
    build_mask,
    filter_dataset,
    neighbour_order,
    primary_reason_counts,
    quality_scores,
    windows_stay_contiguous,
)
from lvmqa.io import open_dataset


def unit2(degrees: float) -> np.ndarray:
    rad = math.radians(degrees)
    return np.array([math.cos(rad), math.sin(rad)], dtype=np.float32)


def write_sequences(
    path: Path,
    targets: np.ndarray,
    contexts: np.ndarray | None = None,
    *,
    texts: list[Any] | None = None,
    articles: list[int] | None = None,
    chunks: list[int] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """An origin-layout sequences npz (per-sequence metadata dicts, scalar keys)."""
    targets = np.asarray(targets, dtype=np.float32)
    n = len(targets)
    if contexts is None:  # contexts equal to the target: window coherence 1
        contexts = np.repeat(targets[:, None, :], 5, axis=1)
    members: dict[str, Any] = {
        "context_sequences": np.asarray(contexts, dtype=np.float32),
        "target_vectors": targets,
        "context_length": np.array(contexts.shape[1]),
        "num_sequences": np.array(n),
    }
    if texts is not None:
        members["target_texts"] = np.array([*texts, None], dtype=object)[:-1]
    if articles is not None:
        meta = np.empty(n, dtype=object)
        for i in range(n):
            meta[i] = {
                "article_index": articles[i],
                "target_chunk_index": chunks[i] if chunks is not None else i,
            }
        members["metadata"] = meta
    members.update(extra or {})
    np.savez(path, **members)
    return path


# --- the score ---------------------------------------------------------------------------------


def test_score_is_the_arithmetic_mean_of_neighbour_cosines() -> None:
    # cos(t0,t1) = -0.5 and cos(t1,t2) = 0.9: the origin's geometric mean is NaN for t1
    step = math.degrees(math.acos(0.9))
    targets = np.stack([unit2(0), unit2(120), unit2(120 + step)])
    scores = quality_scores(targets, np.repeat(targets[:, None], 5, axis=1))
    np.testing.assert_allclose(scores, [-0.5, 0.2, 0.9], atol=1e-6)


def test_two_negative_cosines_stay_negative() -> None:
    # the geometric mean of -0.5 and -0.5 is +0.5 and would pass a 0.35 gate
    targets = np.stack([unit2(0), unit2(120), unit2(240)])
    scores = quality_scores(targets, np.repeat(targets[:, None], 5, axis=1))
    np.testing.assert_allclose(scores[1], -0.5, atol=1e-6)


def test_article_edges_use_one_neighbour_and_lone_rows_use_their_window() -> None:
    targets = np.stack([unit2(0), unit2(60), unit2(120), unit2(0), unit2(90)])
    contexts = np.repeat(targets[:, None], 3, axis=1).copy()
    # the lone row (article 9): contexts e1, e2, e1 then target e2 -> cosines 0, 0, 0
    contexts[4] = np.stack([unit2(0), unit2(90), unit2(0)])
    articles = np.array([1, 1, 1, 2, 9], dtype=float)
    chunks = np.array([0, 1, 2, 0, 0], dtype=float)
    # article 2 is also a single row: its window is all-equal vectors -> 1.0
    scores = quality_scores(targets, contexts, articles=articles, chunks=chunks)
    np.testing.assert_allclose(scores, [0.5, 0.5, 0.5, 1.0, 0.0], atol=1e-6)


def test_article_order_not_file_order_defines_neighbours() -> None:
    rng = np.random.default_rng(3)
    targets = rng.normal(size=(12, 8)).astype(np.float32)
    articles = np.repeat([0.0, 1.0, 2.0], 4)
    chunks = np.tile([0.0, 1.0, 2.0, 3.0], 3)
    contexts = rng.normal(size=(12, 5, 8)).astype(np.float32)
    sorted_scores = quality_scores(targets, contexts, articles=articles, chunks=chunks)
    perm = rng.permutation(12)
    shuffled = quality_scores(
        targets[perm], contexts[perm], articles=articles[perm], chunks=chunks[perm]
    )
    np.testing.assert_allclose(shuffled, sorted_scores[perm], atol=1e-6)
    # and the same rows in file order without ids give different scores
    assert not np.allclose(quality_scores(targets[perm], contexts[perm]), shuffled)


def test_non_finite_rows_get_nan_and_neighbours_skip_them() -> None:
    targets = np.stack([unit2(0), unit2(60), unit2(120)])
    contexts = np.repeat(targets[:, None], 5, axis=1).copy()
    targets[1, 0] = np.nan
    scores = quality_scores(targets, contexts)
    assert math.isnan(scores[1])
    # rows 0 and 2 have no usable neighbour left: their window coherence (1.0) is used
    np.testing.assert_allclose(scores[[0, 2]], [1.0, 1.0], atol=1e-6)


def test_zero_vectors_score_zero_not_nan() -> None:
    targets = np.stack([unit2(0), np.zeros(2, dtype=np.float32), unit2(0)])
    scores = quality_scores(targets, np.repeat(targets[:, None], 5, axis=1))
    np.testing.assert_allclose(scores, [0.0, 0.0, 0.0], atol=1e-6)


finite_floats = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def finite_datasets(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    n = draw(st.integers(1, 12))
    c = draw(st.integers(1, 5))
    d = draw(st.integers(1, 6))
    targets = draw(arrays(np.float32, (n, d), elements=finite_floats))
    contexts = draw(arrays(np.float32, (n, c, d), elements=finite_floats))
    articles = draw(st.none() | arrays(np.int64, (n,), elements=st.integers(0, 3)))
    return targets, contexts, None if articles is None else articles.astype(float)


any_finite_float32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@st.composite
def extreme_datasets(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    n = draw(st.integers(1, 6))
    targets = draw(arrays(np.float32, (n, 3), elements=any_finite_float32))
    contexts = draw(arrays(np.float32, (n, 2, 3), elements=any_finite_float32))
    return targets, contexts, None


@given(finite_datasets() | extreme_datasets())
def test_scores_are_finite_and_bounded_for_finite_inputs(
    data: tuple[np.ndarray, np.ndarray, np.ndarray | None],
) -> None:
    targets, contexts, articles = data
    scores = quality_scores(targets, contexts, articles=articles)
    assert np.isfinite(scores).all()
    assert (np.abs(scores) <= 1.0).all()


# --- masks and reasons --------------------------------------------------------------------------


def reasons_dataset(path: Path) -> Path:
    """Eight rows in one article, each reason planted once (row 6 has two)."""
    angles = [0, 10, 20, 30, 40, 50, 60, 70]
    targets = np.stack([unit2(a) for a in angles])
    contexts = np.repeat(targets[:, None], 5, axis=1).copy()
    contexts[2, 1, 0] = np.inf  # non_finite
    targets[5] = targets[4]  # duplicate of row 4
    targets[7] = unit2(200)  # low coherence: cos(60 deg, 200 deg) < 0
    texts = ["prose"] * 8
    texts[3] = "List of rivers"  # blocklist
    texts[6] = "Category: rivers"  # blocklist, and its neighbour row 7 drags it down
    return write_sequences(path, targets, contexts, texts=texts, articles=[0] * 8)


def test_build_mask_reasons_are_exact(tmp_path: Path) -> None:
    ds = open_dataset(reasons_dataset(tmp_path / "r.npz"))
    mask, reasons = build_mask(ds, min_coherence=0.35, drop_duplicates=True)
    assert set(reasons) == set(REASONS)
    assert np.flatnonzero(reasons["non_finite"]).tolist() == [2]
    assert np.flatnonzero(reasons["blocklist"]).tolist() == [3, 6]
    assert np.flatnonzero(reasons["duplicate"]).tolist() == [5]
    # row 6 (60 deg, after the 40 deg duplicate): (cos 20 + cos 140) / 2 = 0.087; row 7: -0.766
    assert np.flatnonzero(reasons["low_coherence"]).tolist() == [6, 7]
    assert np.flatnonzero(~mask).tolist() == [2, 3, 5, 6, 7]
    primary = primary_reason_counts(reasons)
    assert primary == {"non_finite": 1, "blocklist": 2, "duplicate": 1, "low_coherence": 1}
    assert sum(primary.values()) == int((~mask).sum())


def test_criteria_can_be_switched_off(tmp_path: Path) -> None:
    ds = open_dataset(reasons_dataset(tmp_path / "r.npz"))
    mask, reasons = build_mask(ds, min_coherence=None, blocklist=None, drop_duplicates=False)
    assert np.flatnonzero(~mask).tolist() == [2]  # non-finite rows always go
    assert not reasons["duplicate"].any()
    assert not reasons["blocklist"].any()


def test_contiguity_flags_drops_inside_a_chain() -> None:
    order, same = neighbour_order(6, np.array([0.0, 0, 0, 1, 1, 1]), None)
    edge_drop = np.array([False, True, True, True, True, False])
    middle_drop = np.array([True, False, True, True, True, True])
    assert windows_stay_contiguous(edge_drop, order, same)
    assert not windows_stay_contiguous(middle_drop, order, same)
    # rows 2 and 3 end article 0 and start article 1: contiguous per article, not per file
    boundary_drop = np.array([True, True, False, False, True, True])
    assert windows_stay_contiguous(boundary_drop, order, same)
    file_order, file_same = neighbour_order(6)
    assert not windows_stay_contiguous(boundary_drop, file_order, file_same)


# --- filter_dataset -----------------------------------------------------------------------------


def test_filter_writes_mask_dataset_and_manifest_that_add_up(tmp_path: Path) -> None:
    src = reasons_dataset(tmp_path / "in.npz")
    manifest = filter_dataset(src, tmp_path / "out" / "f", drop_duplicates=True, seed=1)
    paths = manifest.paths
    assert paths.dataset == tmp_path / "out" / "f.npz"
    mask = np.load(paths.mask)
    assert mask.dtype == bool
    assert np.flatnonzero(mask).tolist() == [0, 1, 4]
    data = json.loads(paths.manifest.read_text())
    assert data["counts"] == {"input": 8, "kept": 3, "dropped": 5}
    assert data["reasons"] == {"non_finite": 1, "blocklist": 2, "duplicate": 1, "low_coherence": 2}
    assert sum(data["dropped_by_primary_reason"].values()) == 5
    assert data["input"]["sha256"] == open_dataset(src).sha256()
    assert data["windows_contiguous"] is False  # rows 2, 3 dropped between kept rows 1 and 4
    assert "lvmqa windows" in data["windows_note"]
    coherence = data["coherence"]
    assert coherence["output"]["adjacency_score"]["mean"] >= 0.35
    assert "inflated" in coherence["note"]
    assert coherence["input"]["within_window_context_coherence"]["n"] == 7  # row 2 is inf
    assert data["lvmqa_version"]


def test_filtered_file_keeps_keys_and_metadata(tmp_path: Path) -> None:
    src = reasons_dataset(tmp_path / "in.npz")
    with np.load(src, allow_pickle=True) as raw:
        original = {k: raw[k] for k in raw.files}
    np.savez(tmp_path / "in2.npz", **original, source_dataset=np.array("bank.npz"))
    manifest = filter_dataset(tmp_path / "in2.npz", tmp_path / "f", drop_duplicates=True)
    mask = np.load(manifest.paths.mask)
    with np.load(manifest.paths.dataset, allow_pickle=True) as out:
        assert set(out.files) == set(original) | {"source_dataset"}
        assert int(out["num_sequences"]) == int(mask.sum())  # follows the filter
        assert int(out["context_length"]) == 5
        assert str(out["source_dataset"]) == "bank.npz"
        np.testing.assert_array_equal(out["target_vectors"], original["target_vectors"][mask])
        assert list(out["metadata"]) == list(original["metadata"][mask])
        assert list(out["target_texts"]) == list(original["target_texts"][mask])
    assert manifest.data["output"]["updated_keys"] == ["num_sequences"]


def test_single_dict_metadata_is_copied(tmp_path: Path) -> None:
    targets = np.stack([unit2(a) for a in (0, 10, 200, 20)])
    info = {"context_length": 5, "source": "x"}
    src = write_sequences(
        tmp_path / "s.npz", targets, extra={"metadata": np.array(info, dtype=object)}
    )
    manifest = filter_dataset(src, tmp_path / "o", blocklist=None)
    assert manifest.n_kept < 4
    with np.load(manifest.paths.dataset, allow_pickle=True) as out:
        assert out["metadata"].item() == info


@st.composite
def small_files(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(2, 10))
    d = draw(st.integers(2, 4))
    targets = draw(arrays(np.float32, (n, d), elements=finite_floats))
    contexts = draw(arrays(np.float32, (n, 2, d), elements=finite_floats))
    words = st.sampled_from(["prose text here", "List of things", "Category: x", "ok"])
    texts = draw(st.lists(words, min_size=n, max_size=n))
    articles = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    return {
        "targets": targets,
        "contexts": contexts,
        "texts": texts,
        "articles": articles,
        "min_coherence": draw(st.sampled_from([None, -0.5, 0.0, 0.35, 0.9])),
        "drop_duplicates": draw(st.booleans()),
    }


@given(small_files())
def test_filtered_equals_input_at_mask_for_every_per_row_array(case: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        extra = {"sequence_positions": np.arange(len(case["targets"]), dtype=np.int32)}
        src = write_sequences(
            tmp / "in.npz",
            case["targets"],
            case["contexts"],
            texts=case["texts"],
            articles=case["articles"],
            extra=extra,
        )
        manifest = filter_dataset(
            src,
            tmp / "out",
            min_coherence=case["min_coherence"],
            drop_duplicates=case["drop_duplicates"],
        )
        mask = np.load(manifest.paths.mask)
        with (
            np.load(src, allow_pickle=True) as before,
            np.load(manifest.paths.dataset, allow_pickle=True) as after,
        ):
            for key in before.files:
                if before[key].shape and before[key].shape[0] == len(mask):
                    np.testing.assert_array_equal(after[key], before[key][mask], err_msg=key)
        counts = manifest.data["counts"]
        assert counts["kept"] + counts["dropped"] == counts["input"] == len(mask)
        assert sum(manifest.dropped_by_primary_reason.values()) == counts["dropped"]


def test_refiltering_reapplies_row_reasons_idempotently(tmp_path: Path) -> None:
    src = reasons_dataset(tmp_path / "in.npz")
    first = filter_dataset(src, tmp_path / "a", min_coherence=None, drop_duplicates=True)
    second = filter_dataset(
        first.paths.dataset, tmp_path / "b", min_coherence=None, drop_duplicates=True
    )
    assert second.n_input == first.n_kept
    assert second.n_kept == second.n_input  # nothing left to drop for these reasons


def test_refiltering_on_coherence_is_not_idempotent_and_why(tmp_path: Path) -> None:
    # a0, a, x, b, b0: x is dropped (0.342 < 0.35); a and b then become neighbours at
    # cos(140 deg) = -0.766, so a second pass drops them too. Scores depend on neighbours.
    targets = np.stack([unit2(a) for a in (0, 0, 70, 140, 140)])
    src = write_sequences(tmp_path / "in.npz", targets)
    first = filter_dataset(src, tmp_path / "a", blocklist=None)
    assert np.flatnonzero(np.load(first.paths.mask)).tolist() == [0, 1, 3, 4]
    second = filter_dataset(first.paths.dataset, tmp_path / "b", blocklist=None)
    assert np.flatnonzero(np.load(second.paths.mask)).tolist() == [0, 3]


def test_existing_output_is_refused_unless_forced(tmp_path: Path) -> None:
    src = reasons_dataset(tmp_path / "in.npz")
    filter_dataset(src, tmp_path / "f")
    before = (tmp_path / "f.npz").read_bytes()
    with pytest.raises(LvmqaError, match="exists") as info:
        filter_dataset(src, tmp_path / "f")
    assert info.value.path is not None
    assert (tmp_path / "f.npz").read_bytes() == before
    filter_dataset(src, tmp_path / "f", force=True, min_coherence=None)
    assert (tmp_path / "f.npz").read_bytes() != before


def test_the_input_is_never_overwritten_or_modified(tmp_path: Path) -> None:
    src = reasons_dataset(tmp_path / "in.npz")
    original = src.read_bytes()
    with pytest.raises(LvmqaError, match="overwrite the input"):
        filter_dataset(src, tmp_path / "in", force=True)
    filter_dataset(src, tmp_path / "out")
    assert src.read_bytes() == original
    assert not list(tmp_path.glob(".*.tmp"))  # no temporaries left behind


def test_a_bank_is_refused_with_the_remedy(tmp_path: Path) -> None:
    bank = tmp_path / "bank.npz"
    np.savez(
        bank,
        vectors=np.eye(8, dtype=np.float32),
        article_indices=np.zeros(8, dtype=np.int32),
        chunk_indices=np.arange(8, dtype=np.int32),
    )
    with pytest.raises(LvmqaError, match="lvmqa windows"):
        filter_dataset(bank, tmp_path / "f")


def interleaved_bank(path: Path) -> Path:
    """Two 8-chunk articles stored interleaved (ingestion order): 'Rivers' turns slowly in
    the x-y plane, 'List of lakes' in the y-z plane, so only in-article pairs are close."""
    rows = 16
    article = np.arange(rows) % 2
    chunk = np.arange(rows) // 2
    angle = np.radians(5.0 * chunk)
    vectors = np.where(
        article[:, None] == 0,
        np.stack([np.cos(angle), np.sin(angle), np.zeros(rows)], axis=1),
        np.stack([np.zeros(rows), np.sin(angle), np.cos(angle)], axis=1),
    ).astype(np.float32)
    titles = np.array(["Rivers", "List of lakes"], dtype=object)[article]
    np.savez(
        path,
        vectors=vectors,
        concept_texts=np.array([f"plain chunk {i}" for i in range(rows)], dtype=object),
        cpe_ids=np.array([f"id-{i}" for i in range(rows)], dtype=object),
        article_indices=article.astype(np.int32),
        chunk_indices=chunk.astype(np.int32),
        article_titles=titles,
    )
    return path


def test_source_bank_gives_article_order_and_titles(tmp_path: Path) -> None:
    from lvmqa.windows import build_sequences

    bank = interleaved_bank(tmp_path / "bank.npz")
    # the origin's bug on purpose: windows slide over the interleaved rows
    seqs = build_sequences(bank, tmp_path / "seq.npz", windows="file_order", layout="origin-790k")
    alone = filter_dataset(seqs, tmp_path / "alone")
    assert alone.data["coherence"]["neighbour_order"] == "file"
    assert alone.reasons["low_coherence"] == 11  # every file-order neighbour is cross-article
    assert alone.reasons["blocklist"] == 0  # the texts alone do not say "List of"
    joined = filter_dataset(seqs, tmp_path / "joined", source=bank)
    assert joined.data["coherence"]["neighbour_order"] == "article"
    assert joined.reasons["low_coherence"] == 0
    # targets are bank rows 5..15; the odd ones belong to 'List of lakes'
    assert joined.reasons["blocklist"] == 6
    assert np.flatnonzero(np.load(joined.paths.mask)).tolist() == [1, 3, 5, 7, 9]


def test_compressed_npz_input_gives_the_same_rows(tmp_path: Path) -> None:
    src = reasons_dataset(tmp_path / "in.npz")
    with np.load(src, allow_pickle=True) as raw:
        members = {k: raw[k] for k in raw.files}
    np.savez_compressed(tmp_path / "zipped.npz", **members)
    plain = filter_dataset(src, tmp_path / "a", drop_duplicates=True)
    zipped = filter_dataset(tmp_path / "zipped.npz", tmp_path / "b", drop_duplicates=True)
    np.testing.assert_array_equal(np.load(plain.paths.mask), np.load(zipped.paths.mask))
    with np.load(plain.paths.dataset) as a, np.load(zipped.paths.dataset) as b:
        np.testing.assert_array_equal(a["context_sequences"], b["context_sequences"])


def test_folder_input_gives_a_folder_output(tmp_path: Path) -> None:
    src = reasons_dataset(tmp_path / "in.npz")
    folder = tmp_path / "in_folder"
    folder.mkdir()
    with np.load(src, allow_pickle=True) as raw:
        for key in raw.files:
            np.save(folder / f"{key}.npy", raw[key], allow_pickle=True)
    manifest = filter_dataset(folder, tmp_path / "out", drop_duplicates=True)
    assert manifest.paths.dataset == tmp_path / "out"
    assert manifest.paths.dataset.is_dir()
    mask = np.load(manifest.paths.mask)
    assert np.flatnonzero(mask).tolist() == [0, 1, 4]
    targets = np.load(manifest.paths.dataset / "target_vectors.npy")
    np.testing.assert_array_equal(targets, np.load(folder / "target_vectors.npy")[mask])
    texts = np.load(manifest.paths.dataset / "target_texts.npy", allow_pickle=True)
    assert texts.tolist() == ["prose", "prose", "prose"]
    assert open_dataset(manifest.paths.dataset).n == 3
    with pytest.raises(LvmqaError, match="exists"):
        filter_dataset(folder, tmp_path / "out")


def test_fortran_order_members_stream_correctly(tmp_path: Path) -> None:
    src = reasons_dataset(tmp_path / "in.npz")
    with np.load(src, allow_pickle=True) as raw:
        members = {k: raw[k] for k in raw.files}
    members["target_vectors"] = np.asfortranarray(members["target_vectors"])
    np.savez(tmp_path / "fortran.npz", **members)
    manifest = filter_dataset(tmp_path / "fortran.npz", tmp_path / "out", drop_duplicates=True)
    mask = np.load(manifest.paths.mask)
    with np.load(manifest.paths.dataset) as out:
        np.testing.assert_array_equal(out["target_vectors"], members["target_vectors"][mask])
