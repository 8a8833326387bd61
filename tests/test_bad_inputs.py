"""The bad-input corpus (tests/make_bad_inputs.py): what lvmqa says about each case.

For every case: the exact error class and message content from ``open_dataset`` /
``load_registry``; and, through a real ``lvmqa check`` and ``pytest quality_tests``
subprocess, the exit code, exactly one line of error (never a traceback) and the input
left byte-identical. Loadable-but-bad files (NaN / Inf / zero rows) must load and fail
the norms check with exact counts.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lvmqa.checks import Session
from lvmqa.errors import DatasetFormatError, LvmqaError, RegistryError
from lvmqa.io import open_dataset
from lvmqa.metrics import norm_statistics
from lvmqa.registry import Registry, load_registry
from tests import make_bad_inputs as bad
from tests.conftest import REPO

CLI_USAGE_EXIT, PYTEST_USAGE_EXIT = 2, 4


@dataclass(frozen=True)
class Refusal:
    """An input lvmqa must refuse: the error class and what its one line must say."""

    error: type[LvmqaError]
    says: list[str]
    registry: bool = False
    fast: bool = False  # also run the CLI/pytest subprocesses outside the slow tier
    extra: dict[str, Any] = field(default_factory=dict)


REFUSED: dict[str, Refusal] = {
    "truncated": Refusal(
        DatasetFormatError,
        ["truncated.npz", "not an npz archive, or truncated", "expected a zip file"],
        fast=True,
    ),
    "zero_bytes": Refusal(DatasetFormatError, ["zero_bytes.npz", "empty file (0 bytes)"]),
    "not_a_zip": Refusal(DatasetFormatError, ["not_a_zip.npz", "not an npz archive"]),
    "member_not_npy": Refusal(
        DatasetFormatError,
        [
            "member_not_npy.npz",
            "key 'notes.txt'",
            "member is not a .npy array",
            "expected NAME.npy members",
        ],
    ),
    "missing_vectors": Refusal(
        DatasetFormatError,
        [
            "missing_vectors.npz",
            "no vector array found",
            "expected one of target_vectors",
            "found keys ['sequence_positions', 'target_texts']",
        ],
    ),
    "length_mismatch": Refusal(
        DatasetFormatError,
        [
            "length_mismatch.npz",
            "key 'context_sequences'",
            "disagree in length",
            f"expected {bad.N - 1} rows like 'target_vectors'",
            f"found {bad.N}",
        ],
    ),
    "dim_mismatch": Refusal(
        DatasetFormatError,
        [
            "dim_mismatch.npz",
            "key 'context_sequences'",
            "context dimension differs",
            f"expected D={2 * bad.D}",
            f"found D={bad.D}",
        ],
    ),
    "empty": Refusal(
        DatasetFormatError,
        ["empty.npz", "key 'target_vectors'", "no sequences", "expected N >= 1", "found N=0"],
    ),
    "bank_too_short": Refusal(
        DatasetFormatError,
        [
            "bank_too_short.npz",
            "key 'article_indices'",
            "no article with more chunks than the context length",
            f"expected at least one article with > {bad.C} chunks",
            "found none",
        ],
    ),
    "texts_not_strings": Refusal(
        DatasetFormatError,
        [
            "texts_not_strings.npz",
            "key 'target_texts'",
            "texts must be strings",
            "expected str",
            "found int64 at row 0",
        ],
    ),
    "texts_non_utf8": Refusal(
        DatasetFormatError,
        [
            "texts_non_utf8.npz",
            "key 'target_texts'",
            "not valid UTF-8",
            "expected UTF-8 text",
            f"row {bad.NON_UTF8_ROW}",
        ],
    ),
    "registry_duplicate_dataset": Refusal(
        RegistryError,
        ["registry_duplicate_dataset.toml", "duplicate entry", "'good'"],
        registry=True,
    ),
    "registry_unknown_encoder": Refusal(
        RegistryError,
        [
            "registry_unknown_encoder.toml",
            "key 'datasets.good.encoder'",
            "unknown encoder 'gtr'",
            "expected one of minilm",
        ],
        registry=True,
    ),
    "registry_self_baseline": Refusal(
        RegistryError,
        [
            "registry_self_baseline.toml",
            "key 'datasets.good.baseline'",
            "baseline cycle: good -> good",
        ],
        registry=True,
        fast=True,
    ),
}

# Files that must load; the norms check decides whether their vectors are healthy.
LOADABLE = [
    "float16",
    "float64",
    "fortran_order",
    "strided",
    "dim_1",
    "dim_4096",
    "nan_rows",
    "inf_rows",
    "zero_rows",
    "text_1mb",
    "metadata_missing_fields",
    "metadata_extra_fields",
    "metadata_single_dict",
]
BROKEN_VECTORS = {  # case -> exact (target, context) counts of the broken rows
    "nan_rows": ("nan", len(bad.NAN_ROWS), 1),
    "inf_rows": ("inf", len(bad.INF_ROWS), 1),
    "zero_rows": ("zero", len(bad.ZERO_ROWS), 1),
}


def test_the_corpus_covers_every_case() -> None:
    assert set(bad.CASES) == set(REFUSED) | set(LOADABLE)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return bad.build_all(tmp_path_factory.mktemp("bad_inputs"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------- in process
@pytest.mark.parametrize("case", list(REFUSED))
def test_refusal_names_file_key_expected_and_found(corpus: dict[str, Path], case: str) -> None:
    expected = REFUSED[case]
    path = corpus[case]
    before = digest(path)
    read = load_registry if expected.registry else open_dataset
    with pytest.raises(expected.error) as error:
        read(path)
    assert type(error.value) is expected.error
    message = str(error.value)
    assert "\n" not in message
    for needle in expected.says:
        assert needle in message
    assert digest(path) == before


def test_float_widths_and_layouts_read_as_float32(corpus: dict[str, Path]) -> None:
    good = bad.good_arrays()
    for case, stored in (
        ("float16", np.float16),
        ("float64", np.float64),
        ("fortran_order", np.float32),
    ):
        ds = open_dataset(corpus[case])
        assert ds.stored_dtype == np.dtype(stored)
        np.testing.assert_array_equal(
            ds.targets_matrix(), good["target_vectors"].astype(stored).astype(np.float32)
        )
        np.testing.assert_array_equal(
            ds.context_rows(0, bad.N), good["context_sequences"].astype(stored).astype(np.float32)
        )
    twice = bad.good_arrays(2 * bad.N)
    np.testing.assert_array_equal(
        open_dataset(corpus["strided"]).context_rows(0, bad.N), twice["context_sequences"][::2]
    )


@pytest.mark.parametrize(("case", "dim"), [("dim_1", 1), ("dim_4096", 4096)])
def test_extreme_dimensions_load(corpus: dict[str, Path], case: str, dim: int) -> None:
    ds = open_dataset(corpus[case])
    assert ds.dim == dim
    stats = norm_statistics(ds)
    assert stats["target_norm_mean"] == pytest.approx(1.0, abs=1e-5)
    assert stats["context_nan_count"] == stats["target_zero_count"] == 0


@pytest.mark.parametrize("case", list(BROKEN_VECTORS))
def test_nan_inf_zero_rows_load_and_fail_norms_with_counts(
    corpus: dict[str, Path], case: str
) -> None:
    kind, target_count, context_count = BROKEN_VECTORS[case]
    session = Session(Registry(None, {}, {}))
    result = session.run(session.add(str(corpus[case])), "norms")
    assert result.status == "failed"
    assert result.metrics[f"target_{kind}_count"] == target_count
    assert result.metrics[f"context_{kind}_count"] == context_count
    others = {"nan", "inf", "zero"} - {kind}
    assert all(result.metrics[f"target_{o}_count"] == 0 for o in others)
    assert f"no {kind} target vectors" in " ".join(result.failed_gates)


def test_huge_text_loads_whole(corpus: dict[str, Path]) -> None:
    ds = open_dataset(corpus["text_1mb"])
    assert ds.target_texts is not None
    assert len(ds.target_texts[bad.BIG_TEXT_ROW]) == bad.BIG_TEXT_CHARS


def test_metadata_with_missing_fields_reads_missing_as_unknown(corpus: dict[str, Path]) -> None:
    meta = open_dataset(corpus["metadata_missing_fields"]).meta
    rows = np.arange(bad.N)
    assert meta["article"].isna().to_numpy().tolist() == (rows % 3 == 0).tolist()
    assert meta["article"].dropna().tolist() == [i // 8 for i in rows if i % 3]
    differ = meta["context_articles_differ"]
    # a missing crosses_article is unknown, never True; with no article either it stays NA
    assert differ.isna().to_numpy().tolist() == (rows % 12 == 0).tolist()
    assert not differ.dropna().any()


def test_metadata_with_extra_fields_keeps_the_known_ones(corpus: dict[str, Path]) -> None:
    ds = open_dataset(corpus["metadata_extra_fields"])
    assert ds.meta["target_id"].tolist() == [f"id-{i}" for i in range(bad.N)]
    assert ds.meta["chunk"].tolist() == [i % 8 for i in range(bad.N)]
    assert "ingest_batch" not in ds.meta.columns
    assert ds.has_article_ids


def test_single_dict_metadata_is_file_metadata(corpus: dict[str, Path]) -> None:
    ds = open_dataset(corpus["metadata_single_dict"])
    assert ds.file_metadata == {
        "context_length": bad.C,
        "num_sequences": bad.N,
        "vector_dim": bad.D,
        "source": "bank.npz",
    }
    assert ds.meta["position"].tolist() == list(range(bad.N))
    assert not ds.has_article_ids


# ------------------------------------------------------------------ fuzzed damage
def small_origin_file(compressed: bool) -> bytes:
    arrays = bad.good_arrays(n=8, dim=4)
    meta = np.empty(8, dtype=object)
    meta[:] = [{"article_index": i // 4, "target_chunk_index": i} for i in range(8)]
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays, metadata=meta)
    return buffer.getvalue()


CLEAN = {compressed: small_origin_file(compressed) for compressed in (False, True)}


@given(
    compressed=st.booleans(),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4),
)
def test_damaged_files_load_or_fail_with_a_format_error(
    compressed: bool, cut: float, flips: list[tuple[float, int]]
) -> None:
    data = bytearray(CLEAN[compressed])
    for where, xor in flips:
        data[int(where * (len(data) - 1))] ^= xor
    data = data[: max(1, int(cut * len(data)))] if cut < 0.98 else data
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "damaged.npz"
        path.write_bytes(bytes(data))
        try:
            ds = open_dataset(path)
            for _chunk in ds.iter_chunks(3):
                pass
            ds.targets_matrix()
            message = ""
        except DatasetFormatError as error:
            message = str(error)
        if message:
            assert "\n" not in message
            assert str(path) in message


def test_zip_with_a_directory_entry_and_a_duplicate_member(tmp_path: Path) -> None:
    arrays = bad.good_arrays()
    path = tmp_path / "twice.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("extras/", "")
        for name in ("context_sequences", "target_vectors", "target_vectors"):
            buffer = io.BytesIO()
            np.save(buffer, arrays[name])
            archive.writestr(f"{name}.npy", buffer.getvalue())
    with pytest.raises(DatasetFormatError, match="holds this member twice"):
        open_dataset(path)


# --------------------------------------------------------- through CLI and pytest
def cli_command(case: str, path: Path, refusal: Refusal | None) -> list[str]:
    if refusal is not None and refusal.registry:
        return [
            sys.executable,
            "-m",
            "lvmqa.cli",
            "--lvmqa-config",
            str(path),
            "check",
            "good",
            "--no-smoke",
        ]
    return [sys.executable, "-m", "lvmqa.cli", "check", str(path), "--no-smoke"]


def pytest_command(case: str, path: Path, refusal: Refusal | None) -> list[str]:
    where = (
        [f"--lvmqa-config={path}", "--dataset=good"]
        if refusal is not None and refusal.registry
        else [f"--dataset={path}"]
    )
    return [
        sys.executable,
        "-m",
        "pytest",
        "quality_tests",
        *where,
        "-m",
        "not smoke",
        "-p",
        "no:cacheprovider",
    ]


def run_together(commands: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Start every command at once (they are mostly start-up time), then collect them."""
    procs = {
        name: subprocess.Popen(
            argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, argv in commands.items()
    }
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        done[name] = subprocess.CompletedProcess(commands[name], proc.returncode, out, err)
    return done


def one_error_line(run: subprocess.CompletedProcess[str]) -> str:
    text = run.stdout + run.stderr
    assert "Traceback" not in text, text
    assert "INTERNALERROR" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def check_refusal_end_to_end(case: str, corpus: dict[str, Path]) -> None:
    refusal = REFUSED[case]
    path = corpus[case]
    before = digest(path)
    runs = run_together(
        {"cli": cli_command(case, path, refusal), "pytest": pytest_command(case, path, refusal)}
    )
    assert runs["cli"].returncode == CLI_USAGE_EXIT
    assert runs["pytest"].returncode == PYTEST_USAGE_EXIT
    for run in runs.values():
        line = one_error_line(run)
        for needle in refusal.says:
            assert needle in line
    assert digest(path) == before


@pytest.mark.parametrize("case", [c for c, r in REFUSED.items() if r.fast])
def test_refusal_end_to_end(corpus: dict[str, Path], case: str) -> None:
    check_refusal_end_to_end(case, corpus)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c, r in REFUSED.items() if not r.fast])
def test_refusal_end_to_end_every_case(corpus: dict[str, Path], case: str) -> None:
    check_refusal_end_to_end(case, corpus)


def check_loadable_end_to_end(
    cases: list[str], corpus: dict[str, Path], tmp_path: Path
) -> dict[str, dict[str, Any]]:
    """One CLI run and one pytest run over all ``cases`` at once; returns pytest's JSON."""
    paths = [corpus[case] for case in cases]
    before = {path: digest(path) for path in paths}
    json_cli, json_pytest = tmp_path / "cli.json", tmp_path / "pytest.json"
    runs = run_together(
        {
            "cli": [
                sys.executable,
                "-m",
                "lvmqa.cli",
                "check",
                *map(str, paths),
                "--no-smoke",
                "--json",
                str(json_cli),
            ],
            "pytest": [
                sys.executable,
                "-m",
                "pytest",
                "quality_tests",
                *[f"--dataset={p}" for p in paths],
                "-m",
                "not smoke",
                "-p",
                "no:cacheprovider",
                f"--lvmqa-json={json_pytest}",
            ],
        }
    )
    for run in runs.values():
        text = run.stdout + run.stderr
        assert run.returncode in (0, 1), text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        assert "INTERNALERROR" not in text, text[-3000:]
    results = json.loads(json_pytest.read_text())["datasets"]
    assert json.loads(json_cli.read_text())["datasets"].keys() == results.keys()
    assert set(results) == set(cases)
    for case in cases:
        norms = results[case]["checks"]["norms"]
        assert norms["status"] == ("failed" if case in BROKEN_VECTORS else "passed"), case
    assert {path: digest(path) for path in paths} == before
    return results


def test_nan_inf_zero_end_to_end(corpus: dict[str, Path], tmp_path: Path) -> None:
    results = check_loadable_end_to_end(list(BROKEN_VECTORS), corpus, tmp_path)
    for case, (kind, target_count, context_count) in BROKEN_VECTORS.items():
        metrics = results[case]["checks"]["norms"]["metrics"]
        assert metrics[f"target_{kind}_count"] == target_count
        assert metrics[f"context_{kind}_count"] == context_count


@pytest.mark.slow
def test_every_loadable_case_end_to_end_without_check_errors(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    results = check_loadable_end_to_end(
        [c for c in LOADABLE if c not in BROKEN_VECTORS], corpus, tmp_path
    )
    errors = {
        f"{case}.{check}": result["message"]
        for case, data in results.items()
        for check, result in data["checks"].items()
        if result["status"] == "error"
    }
    assert errors == {}
