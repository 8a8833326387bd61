"""Building sequences from a bank: article windows (the remedy) and file-order windows
(the origin's bug, reproduced on purpose for the demo)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lvmqa.errors import DatasetFormatError, LvmqaError
from lvmqa.io import Dataset, open_dataset
from lvmqa.windows import build_sequences, plan_windows, write_windows

C, D = 5, 6


def write_bank(
    path: Path, keys: list[tuple[int, int]], *, seed: int = 0, titles: dict[int, str] | None = None
) -> dict[str, np.ndarray]:
    """An origin bank whose rows are ``keys`` (article, chunk) in the given (file) order."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(keys), D))
    titles = titles or {}
    arrays = {
        "vectors": (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16),
        "concept_texts": np.array([f"a{a} c{c}" for a, c in keys], dtype=object),
        "cpe_ids": np.array([f"cpe-{a}-{c}" for a, c in keys], dtype=object),
        "article_indices": np.array([a for a, _ in keys], dtype=np.int32),
        "chunk_indices": np.array([c for _, c in keys], dtype=np.int32),
        "article_titles": np.array([titles.get(a, f"Article {a}") for a, _ in keys], dtype=object),
    }
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return arrays


def shuffled_keys(lengths: dict[int, int], seed: int = 0) -> list[tuple[int, int]]:
    keys = [(a, c) for a, k in lengths.items() for c in range(k)]
    order = np.random.default_rng(seed).permutation(len(keys))
    return [keys[i] for i in order]


def window_keys(bank: Dataset, target: int, contexts: np.ndarray) -> list[tuple[int, int]]:
    table = bank.bank_table()
    rows = [*contexts.tolist(), target]
    return list(zip(table["article"].iloc[rows], table["chunk"].iloc[rows], strict=True))


# ----------------------------------------------------------------- article windows
def reference_windows(
    keys: list[tuple[int, int]], keep: np.ndarray, context: int
) -> set[tuple[int, ...]]:
    """Brute force: every run of context + 1 kept rows, consecutive chunks, one article."""
    row = {key: i for i, key in enumerate(keys)}
    found = set()
    for article, last in keys:
        chunks = range(last - context, last + 1)
        rows = [row.get((article, c)) for c in chunks]
        if all(r is not None and keep[r] for r in rows):
            found.add(tuple(int(r) for r in rows if r is not None))
    return found


@given(
    lengths=st.lists(st.integers(0, 14), min_size=1, max_size=6),
    context=st.integers(1, 5),
    drop=st.floats(0, 0.4),
    gap=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_article_windows_are_exactly_the_consecutive_runs(
    lengths: list[int], context: int, drop: float, gap: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    keys = shuffled_keys({10 * (i + 1): k for i, k in enumerate(lengths)}, seed)
    if gap and keys:  # a chunk missing from the bank itself
        keys.pop(int(rng.integers(len(keys))))
    if not keys:
        return
    keep = rng.random(len(keys)) >= drop
    with tempfile.TemporaryDirectory() as tmp:
        write_bank(Path(tmp) / "bank.npz", keys, seed=seed)
        try:
            bank = open_dataset(Path(tmp) / "bank.npz", context_length=context)
        except DatasetFormatError:  # no article long enough: nothing to plan
            rows_per_article = np.unique([a for a, _ in keys], return_counts=True)[1]
            assert rows_per_article.max() <= context
            return
        plan = plan_windows(bank, context=context, keep=keep)
    assert plan.context_rows.shape == (len(plan.target_rows), context)
    got = {
        (*ctx.tolist(), int(t)) for t, ctx in zip(plan.target_rows, plan.context_rows, strict=True)
    }
    assert len(got) == len(plan.target_rows)  # no window twice
    assert got == reference_windows(keys, keep, context)
    for window in got:
        articles = {keys[r][0] for r in window}
        chunks = [keys[r][1] for r in window]
        assert len(articles) == 1  # never crosses an article
        assert chunks == list(range(chunks[0], chunks[0] + context + 1))  # consecutive
        assert keep[list(window)].all()


def test_a_dropped_row_breaks_the_run(tmp_path: Path) -> None:
    keys = shuffled_keys({1: 12, 2: 7})
    write_bank(tmp_path / "bank.npz", keys)
    bank = open_dataset(tmp_path / "bank.npz")
    keep = np.array([key != (1, 6) for key in keys])
    plan = plan_windows(bank, context=C, keep=keep)
    # article 1: runs 0-5 (one window, target 5) and 7-11 (too short); article 2: 0-6
    # (targets 5 and 6)
    targets = [
        window_keys(bank, t, c)[-1]
        for t, c in zip(plan.target_rows, plan.context_rows, strict=True)
    ]
    assert targets == [(1, 5), (2, 5), (2, 6)]
    assert window_keys(bank, plan.target_rows[0], plan.context_rows[0]) == [
        (1, c) for c in range(6)
    ]
    assert len(plan_windows(bank, context=C).target_rows) == 7 + 2


def test_article_windows_need_ids(tmp_path: Path) -> None:
    np.savez(tmp_path / "bank.npz", vectors=np.eye(8, dtype=np.float32))
    with pytest.raises(DatasetFormatError, match="article windows need article and chunk ids"):
        plan_windows(open_dataset(tmp_path / "bank.npz"), context=C)


# --------------------------------------------------------------- file-order windows
def test_file_order_reproduces_the_origin_count(tmp_path: Path) -> None:
    # The origin: 726,019 chunks -> 726,014 windows, sliding over rows as stored.
    # The same arithmetic on 1,019 rows in ingestion order: 1,014 windows.
    keys = shuffled_keys({a: 1019 // 7 + (a < 1019 % 7) for a in range(7)}, seed=3)
    assert len(keys) == 1019
    write_bank(tmp_path / "bank.npz", keys)
    bank = open_dataset(tmp_path / "bank.npz")
    plan = plan_windows(bank, context=C, windows="file_order")
    assert len(plan.target_rows) == 1019 - C == 1014
    np.testing.assert_array_equal(plan.target_rows, np.arange(C, 1019))
    np.testing.assert_array_equal(plan.context_rows[0], np.arange(C))
    np.testing.assert_array_equal(plan.context_rows[-1], np.arange(1019 - 1 - C, 1019 - 1))
    out = write_windows(bank, tmp_path / "790k.npz", plan, layout="origin-790k")
    seq = open_dataset(out)
    assert seq.n == 1014
    crosses = np.array(
        [
            len({a for a, _ in window_keys(bank, t, c)}) > 1
            for t, c in zip(plan.target_rows, plan.context_rows, strict=True)
        ]
    )
    assert crosses.mean() > 0.5  # shuffled rows: most windows mix articles


def test_file_order_with_a_filter_slides_over_kept_rows(tmp_path: Path) -> None:
    write_bank(tmp_path / "bank.npz", shuffled_keys({1: 10}))
    keep = np.ones(10, dtype=bool)
    keep[[2, 7]] = False
    plan = plan_windows(
        open_dataset(tmp_path / "bank.npz"), context=3, windows="file_order", keep=keep
    )
    kept = [0, 1, 3, 4, 5, 6, 8, 9]
    np.testing.assert_array_equal(plan.target_rows, kept[3:])
    np.testing.assert_array_equal(plan.context_rows[0], kept[:3])


def test_too_few_rows_gives_no_windows_and_a_clear_error(tmp_path: Path) -> None:
    write_bank(tmp_path / "bank.npz", shuffled_keys({1: 8}))
    bank = open_dataset(tmp_path / "bank.npz")
    keep = np.zeros(8, dtype=bool)
    keep[:4] = True
    plan = plan_windows(bank, context=C, windows="file_order", keep=keep)
    assert plan.target_rows.shape == (0,)
    assert plan.context_rows.shape == (0, C)
    with pytest.raises(LvmqaError, match="no windows to write"):
        write_windows(bank, tmp_path / "out.npz", plan)
    assert not (tmp_path / "out.npz").exists()


# ------------------------------------------------------------------ written files
def test_per_sequence_output_loads_back_with_its_metadata(tmp_path: Path) -> None:
    keys = shuffled_keys({3: 9, 5: 7, 8: 2})
    arrays = write_bank(tmp_path / "bank.npz", keys)
    out = build_sequences(tmp_path / "bank.npz", tmp_path / "seq.npz", context=C)
    ds = open_dataset(out)
    expected = [(3, 5), (3, 6), (3, 7), (3, 8), (5, 5), (5, 6)]
    assert ds.kind == "sequences"
    assert (ds.n, ds.context_length, ds.dim) == (6, C, D)
    assert ds.file_metadata == {
        "context_length": C,
        "num_sequences": 6,
        "vector_dim": D,
        "source_dataset": "bank.npz",
    }
    assert list(zip(ds.meta["article"], ds.meta["chunk"], strict=True)) == expected
    assert ds.meta["target_id"].tolist() == [f"cpe-{a}-{c}" for a, c in expected]
    assert not ds.meta["context_articles_differ"].any()
    assert ds.has_article_ids
    assert ds.target_texts is not None
    assert ds.context_texts is not None
    assert ds.target_texts.tolist() == [f"a{a} c{c}" for a, c in expected]
    assert ds.context_texts[4].tolist() == [f"a5 c{c}" for c in range(5)]
    row = {key: i for i, key in enumerate(keys)}
    vectors = arrays["vectors"].astype(np.float32)
    np.testing.assert_array_equal(ds.target_rows(0, 6), vectors[[row[k] for k in expected]])
    np.testing.assert_array_equal(
        ds.context_rows(5, 6)[0], vectors[[row[(5, c)] for c in range(1, 6)]]
    )
    assert ds.stored_dtype == np.float32


def test_file_order_per_sequence_metadata_marks_crossings(tmp_path: Path) -> None:
    keys = [(1, 0), (1, 1), (2, 0), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7)]
    write_bank(tmp_path / "bank.npz", keys)
    out = build_sequences(
        tmp_path / "bank.npz", tmp_path / "seq.npz", context=C, windows="file_order"
    )
    ds = open_dataset(out)
    assert ds.n == len(keys) - C
    # windows whose contexts hold row 2 (article 2) cross: targets at rows 5, 6, 7
    assert ds.meta["context_articles_differ"].tolist() == [True, True, True, False]
    assert ds.meta["article"].tolist() == [1, 1, 1, 1]


def test_origin_790k_layout(tmp_path: Path) -> None:
    keys = shuffled_keys({1: 8, 2: 6})
    write_bank(tmp_path / "bank.npz", keys)
    out = build_sequences(
        tmp_path / "bank.npz",
        tmp_path / "seq.npz",
        context=C,
        windows="file_order",
        layout="origin-790k",
    )
    ds = open_dataset(out)
    assert set(ds.data.keys()) == {
        "context_sequences",
        "target_vectors",
        "target_texts",
        "target_ids",
        "sequence_positions",
        "target_tmds",
        "metadata",
    }
    assert ds.file_metadata == {
        "context_length": C,
        "num_sequences": 14 - C,
        "vector_dim": D,
        "source": "bank.npz",
    }
    assert ds.meta["target_id"].tolist() == [f"cpe-{a}-{c}" for a, c in keys[C:]]
    assert ds.meta["position"].tolist() == list(range(C, 14))
    assert not ds.has_article_ids  # the origin's 790k file carries no article ids
    assert ds.context_texts is None


def test_blocklist_drops_rows_before_windowing(tmp_path: Path) -> None:
    keys = shuffled_keys({1: 7, 2: 9})
    write_bank(tmp_path / "bank.npz", keys, titles={2: "List of rivers"})
    out = build_sequences(
        tmp_path / "bank.npz", tmp_path / "seq.npz", context=C, blocklist="list of|disambiguation"
    )
    ds = open_dataset(out)
    assert ds.meta["article"].tolist() == [1, 1]


def test_build_refuses_a_sequences_file_and_an_existing_output(tmp_path: Path) -> None:
    write_bank(tmp_path / "bank.npz", shuffled_keys({1: 8}))
    out = build_sequences(tmp_path / "bank.npz", tmp_path / "seq.npz", context=C)
    with pytest.raises(DatasetFormatError, match="not a vector bank"):
        build_sequences(out, tmp_path / "again.npz")
    before = out.read_bytes()
    with pytest.raises(LvmqaError, match="output exists"):
        build_sequences(tmp_path / "bank.npz", out, context=C)
    assert out.read_bytes() == before
