"""End to end on real Wikipedia data: one injected defect per variant of the fixtures.

Each variant must trip exactly the checks it should (and no others), and the diagnosis
must rank the matching root cause first. The clean variants must not raise an alarm.
Real components throughout: MiniLM re-encodes texts, FAISS searches, the coherence and
integrity passes stream the files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lvmqa.checks import RunOptions, Session
from lvmqa.diagnosis import diagnose, facts_from_context
from lvmqa.io import open_dataset
from lvmqa.registry import load_registry
from lvmqa.texts import is_disambiguation_lead
from lvmqa.windows import build_sequences, plan_windows, write_windows
from tests.conftest import REPO

pytestmark = pytest.mark.slow

DATA = REPO / "fixtures" / "data"
NON_SMOKE = ("fingerprint", "norms", "alignment", "oracle_recall", "duplicates", "coherence",
             "coherence_drift", "sequence_integrity", "split_leakage", "text_quality")
BLOCKLIST = r"List of|\(disambiguation\)"


def _arrays(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=True) as data:  # our own fixture files: trusted
        return {k: data[k] for k in data.files}


def _rewrite(src: Path, dst: Path, **changes: Any) -> Path:
    arrays = _arrays(src)
    arrays.update(changes)
    np.savez(dst, **arrays)
    return dst


def _insert_duplicates(arrays: dict[str, Any], share: float, rng: np.random.Generator) -> None:
    """Repeat ``share`` of the windows right after themselves (all per-row arrays)."""
    n = len(arrays["target_vectors"])
    chosen = np.sort(rng.choice(n, size=round(share * n), replace=False))
    order = np.sort(np.concatenate([np.arange(n), chosen]), kind="stable")
    for key, value in list(arrays.items()):
        if isinstance(value, np.ndarray) and value.ndim and len(value) == n:
            arrays[key] = value[order]
    arrays["num_sequences"] = np.array(len(order))


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("variants")
    rng = np.random.default_rng(2026)
    clean = build_sequences(DATA / "wiki-baseline.bank.npz", root / "clean.npz")
    build_sequences(DATA / "wiki-ood.bank.npz", root / "ood.npz")
    d = open_dataset(clean).dim

    # wrong encoder: a random rotation keeps norms and every cosine, changes the space
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a = _arrays(clean)
    _rewrite(clean, root / "rotated.npz",
             target_vectors=(a["target_vectors"] @ q).astype(np.float32),
             context_sequences=(a["context_sequences"] @ q).astype(np.float32))
    # texts shifted by one row against their vectors
    _rewrite(clean, root / "shifted.npz", target_texts=np.roll(a["target_texts"], 1),
             context_texts=np.roll(a["context_texts"], 1, axis=0))
    # 8 % duplicated windows
    dup = _arrays(clean)
    _insert_duplicates(dup, 0.08, rng)
    np.savez(root / "duplicated.npz", **dup)
    # 30 % of rows scaled off unit norm (targets and their contexts)
    scaled_t, scaled_c = a["target_vectors"].copy(), a["context_sequences"].copy()
    rows = rng.choice(len(scaled_t), size=int(0.3 * len(scaled_t)), replace=False)
    factor = rng.choice([0.9, 1.1], size=len(rows)).astype(np.float32)
    scaled_t[rows] *= factor[:, None]
    scaled_c[rows] *= factor[:, None, None]
    _rewrite(clean, root / "unnormalised.npz", target_vectors=scaled_t,
             context_sequences=scaled_c)
    # interleaved order only: the 790k ingestion order without list/disambiguation pages
    bank = open_dataset(DATA / "wiki-790k.bank.npz")
    titles = bank.bank_table()["title"].fillna("").to_numpy(str)
    keep = np.array([not re.search(BLOCKLIST, t) for t in titles])
    # ... and the pages that open "X may refer to:" under a plain title ("Ada", "Alien")
    table = bank.bank_table()
    texts = _arrays(DATA / "wiki-790k.bank.npz")["concept_texts"]
    leads = np.array([is_disambiguation_lead(str(x)) for x in texts])
    keep &= ~table["article"].isin(set(table["article"][leads])).to_numpy()
    write_windows(bank, root / "interleaved.npz",
                  plan_windows(bank, windows="file_order", keep=keep))
    # dilution only: list/disambiguation pages added, every window inside its article
    build_sequences(DATA / "wiki-790k.bank.npz", root / "diluted.npz")
    # leaked OOD: the OOD split also holds four baseline articles
    ood, base = _arrays(root / "ood.npz"), _arrays(clean)
    leaked_articles = sorted({m["article_index"] for m in base["metadata"]})[:4]
    take = np.array([m["article_index"] in leaked_articles for m in base["metadata"]])
    merged = {k: np.concatenate([ood[k], base[k][take]]) for k in ood
              if isinstance(ood[k], np.ndarray) and ood[k].ndim and k in base}
    np.savez(root / "leaky-ood.npz", **merged)

    entries = {
        "clean": ("clean.npz", 'ood = "ood"'),
        "ood": ("ood.npz", 'baseline = "clean"'),
        "rotated": ("rotated.npz", 'baseline = "clean"'),
        "shifted": ("shifted.npz", 'baseline = "clean"'),
        "duplicated": ("duplicated.npz", 'baseline = "clean"'),
        "unnormalised": ("unnormalised.npz", 'baseline = "clean"'),
        "interleaved": ("interleaved.npz", 'baseline = "clean"'),
        "diluted": ("diluted.npz", 'baseline = "clean"'),
        "leaky": ("clean.npz", 'ood = "leaky-ood"'),
        "leaky-ood": ("leaky-ood.npz", ""),
    }
    toml = '[encoders.minilm]\nmodel = "all-MiniLM-L6-v2"\ndim = 384\n'
    for name, (path, extra) in entries.items():
        toml += f'\n[datasets.{name}]\npath = "{path}"\nencoder = "minilm"\n{extra}\n'
    (root / "lvmqa.toml").write_text(toml, encoding="utf-8")
    return root


def _run(root: Path, name: str, **options: Any) -> tuple[set[str], dict[str, Any], Session]:
    session = Session(load_registry(root / "lvmqa.toml"),
                      RunOptions(recall_sample=400, alignment_sample=128, **options))
    session.add(name)
    results = {cid: session.run(name, cid) for cid in NON_SMOKE}
    errors = {cid: r.message for cid, r in results.items() if r.status == "error"}
    assert not errors, errors
    failed = {cid for cid, r in results.items() if r.status == "failed"}
    diagnosis = diagnose(name, results, facts_from_context(session.context(name)))
    return failed, diagnosis, session


CASES = [
    ("clean", set(), "healthy"),
    ("ood", set(), "healthy"),  # a second clean sample vs the baseline: no drift alarm
    ("rotated", {"alignment"}, "encoder_mismatch"),
    ("shifted", {"alignment"}, "text_vector_misalignment"),
    # duplicated windows also repeat their (article, chunk) keys, which text_quality owns
    ("duplicated", {"duplicates", "text_quality"}, "duplicates"),
    ("unnormalised", {"norms"}, "normalization"),
    ("interleaved", {"sequence_integrity", "coherence_drift"}, "ordering_or_boundary"),
    ("diluted", {"text_quality"}, "low_coherence_dilution"),
    ("leaky", {"split_leakage"}, "split_leakage"),
]


@pytest.mark.parametrize(("name", "expected_failures", "first_cause"), CASES,
                         ids=[c[0] for c in CASES])
def test_each_defect_trips_exactly_its_checks(variants: Path, name: str,
                                              expected_failures: set[str],
                                              first_cause: str) -> None:
    failed, diagnosis, _ = _run(variants, name)
    assert failed == expected_failures, diagnosis
    assert diagnosis["root_causes"][0]["code"] == first_cause, diagnosis["root_causes"]
    if first_cause == "healthy":
        assert diagnosis["verdict"] == "healthy"
        assert len(diagnosis["root_causes"]) == 1
    else:
        assert diagnosis["verdict"] == "failed"
        assert diagnosis["actions"], "every diagnosed defect comes with an action"


def test_shift_and_duplicates_are_quantified(variants: Path) -> None:
    _, _, session = _run(variants, "shifted")
    alignment = session.results["shifted"]["alignment"].metrics
    assert alignment["diagnosis"] == "shift"
    assert alignment["best_shift"] in (1, -1)
    assert alignment["shift_explained_share"] > 0.9
    _, _, session = _run(variants, "duplicated")
    dup = session.results["duplicated"]["duplicates"].metrics
    assert dup["exact_duplicate_share"] == pytest.approx(0.08 / 1.08, abs=0.002)
    recall = session.results["duplicated"]["oracle_recall"].metrics
    assert recall["recall_at_1"] < 0.99 < recall["dup_aware_recall_at_1"]
    assert session.results["duplicated"]["oracle_recall"].status == "passed"


def test_approximate_index_error_is_not_blamed_on_data(variants: Path) -> None:
    failed, diagnosis, session = _run(variants, "clean", index_factory="IVF64,PQ4", nprobe=1)
    assert failed == {"oracle_recall"}
    assert diagnosis["root_causes"][0]["code"] == "index_recall"
    metrics = session.results["clean"]["oracle_recall"].metrics
    assert any(k.startswith("index_error_at_") and v > 0 for k, v in metrics.items()
               if isinstance(v, float))


def test_interleaving_is_told_apart_from_dilution(variants: Path) -> None:
    _, diagnosis, session = _run(variants, "interleaved")
    codes = [c["code"] for c in diagnosis["root_causes"]]
    assert "low_coherence_dilution" not in codes
    drift = session.results["interleaved"]["coherence_drift"].metrics
    assert drift["file_order_drift_verdict"] == "significant"
    assert drift["article_order_drift_verdict"] == "none"
    _, diagnosis, _ = _run(variants, "diluted")
    assert "ordering_or_boundary" not in [c["code"] for c in diagnosis["root_causes"]]
