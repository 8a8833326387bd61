"""Evaluate lvmqa's diagnosis on real corpora that are not Wikipedia, with injected defects.

The banks come from ``fixtures/build_eval.py`` (``fixtures/data/eval-*.bank.npz``): Python
package docstrings (``pydoc``) and the Debian Administrator's Handbook (``handbook``), each
split by document into train / control / val / ood, plus a pool of real low-quality pages
(changelogs, command indexes, tables of contents, API listings) and CLS-pooled vectors.

For each corpus the script writes, into a temporary folder, origin-layout sequences files
(5 contexts + target) for clean controls and for each defect in two shapes or strengths,
and an ``lvmqa.toml`` that names the control set as the baseline. It then runs every lvmqa
check on every set through the Session API, as ``lvmqa check`` would, and prints::

    set | corpus | injected defect | expected root cause | verdict | top cause | correct?
        | failing checks

followed by the detection rate, the top-cause accuracy and the false alarms on clean sets.
Every defect is injected from a fixed seed, so reruns give the same files.

Usage::

    python bench/eval_diagnosis.py                      # all sets, smoke training skipped
    python bench/eval_diagnosis.py --only 'pydoc-order*' --smoke
    python bench/eval_diagnosis.py --out /tmp/eval_table.txt --json /tmp/eval.json
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DATA = REPO / "fixtures" / "data"
CORPORA = ("pydoc", "handbook")
CONTEXT = 5
ENCODER_MODEL = "all-MiniLM-L6-v2"
LOWQ_SEED = 11
HEALTHY = "healthy"

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
ObjArray = npt.NDArray[np.object_]


# ================================================================== banks and windows


@dataclass(frozen=True)
class Bank:
    """Rows of chunks: vectors, texts, ids. Row order is the order a builder would read."""

    vectors: FloatArray
    texts: ObjArray
    ids: ObjArray
    article: IntArray
    chunk: IntArray
    titles: ObjArray

    def __len__(self) -> int:
        return len(self.vectors)

    def take(self, rows: IntArray) -> Bank:
        return Bank(
            self.vectors[rows],
            self.texts[rows],
            self.ids[rows],
            self.article[rows],
            self.chunk[rows],
            self.titles[rows],
        )

    def documents(self) -> list[IntArray]:
        """Rows of each document, documents in order of first appearance."""
        _, first = np.unique(self.article, return_index=True)
        return [np.flatnonzero(self.article == self.article[i]) for i in np.sort(first)]


def load_bank(path: Path) -> Bank:
    """A bank file through lvmqa's safe loader (its text columns are pickled object arrays)."""
    from lvmqa.npzfile import DataFile

    members = DataFile(path).members
    return Bank(
        vectors=np.asarray(members["vectors"].load(), dtype=np.float32),
        texts=members["concept_texts"].load(),
        ids=members["cpe_ids"].load(),
        article=members["article_indices"].load().astype(np.int64),
        chunk=members["chunk_indices"].load().astype(np.int64),
        titles=members["article_titles"].load(),
    )


def concat(banks: Sequence[Bank]) -> Bank:
    return Bank(
        *(np.concatenate([getattr(b, f) for b in banks]) for f in Bank.__dataclass_fields__)
    )


def of_documents(bank: Bank, docs: Sequence[IntArray]) -> Bank:
    return bank.take(np.concatenate(docs)) if docs else bank.take(np.empty(0, np.int64))


@dataclass(frozen=True)
class Windows:
    """A sequences set: rows of ``bank`` for each window's contexts and target."""

    bank: Bank
    contexts: IntArray  # (n, CONTEXT)
    targets: IntArray  # (n,)

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, order: IntArray) -> Windows:
        return Windows(self.bank, self.contexts[order], self.targets[order])


def slide(rows: IntArray) -> tuple[IntArray, IntArray]:
    """Windows sliding over ``rows`` as given: contexts rows[i:i+5], target rows[i+5]."""
    if len(rows) <= CONTEXT:
        return np.empty((0, CONTEXT), np.int64), np.empty(0, np.int64)
    contexts = np.stack([rows[j : len(rows) - CONTEXT + j] for j in range(CONTEXT)], axis=1)
    return contexts, rows[CONTEXT:]


def segment_windows(bank: Bank, segments: Sequence[IntArray]) -> Windows:
    """Windows sliding inside each segment of rows, never across two segments."""
    parts = [slide(np.asarray(s, dtype=np.int64)) for s in segments]
    contexts = np.concatenate([p[0] for p in parts]) if parts else np.empty((0, CONTEXT), np.int64)
    targets = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int64)
    return Windows(bank, contexts, targets)


def article_windows(bank: Bank) -> Windows:
    """The correct builder: windows inside each document, in chunk order."""
    return segment_windows(
        bank, [d[np.argsort(bank.chunk[d], kind="stable")] for d in bank.documents()]
    )


def file_windows(bank: Bank, order: IntArray | None = None) -> Windows:
    """The origin's bug: one window slides over the rows as stored, across documents."""
    rows = np.arange(len(bank)) if order is None else order
    return segment_windows(bank, [rows])


def ingestion_order(bank: Bank, docs: Sequence[IntArray]) -> IntArray:
    """Rows of ``docs`` as parallel workers insert them (fixtures/build_wiki.py's model)."""
    from fixtures.build_wiki import Page, ingestion_rows

    pages = []
    for order, rows in enumerate(docs):
        page = Page(
            order=order,
            page_id=str(int(bank.article[rows[0]])),
            title=str(bank.titles[rows[0]]),
            kind="article",
            clean_chars=0,
            chunks=[str(t) for t in bank.texts[rows]],
        )
        page.first_row = 0
        pages.append((page, rows))
    by_page = {id(p): rows for p, rows in pages}
    return np.array(
        [by_page[id(p)][c] for p, c in ingestion_rows([p for p, _ in pages])], dtype=np.int64
    )


# ============================================================================ writing


@dataclass(frozen=True)
class Layout:
    """How a sequences file carries its per-row ids."""

    ids: str  # "origin": per-sequence metadata dicts; "alias": top-level article_index /
    # target_chunk_index arrays (keys the origin never used); "none": no ids at all


ORIGIN = Layout("origin")
ALIAS = Layout("alias")
NO_IDS = Layout("none")


def write_sequences(path: Path, windows: Windows, layout: Layout = ORIGIN) -> Path:
    """An origin-layout sequences npz (float32 vectors, object text/metadata columns)."""
    bank, ctx, tgt = windows.bank, windows.contexts, windows.targets
    n = len(tgt)
    arrays: dict[str, Any] = {
        "context_sequences": bank.vectors[ctx].astype(np.float32),
        "target_vectors": bank.vectors[tgt].astype(np.float32),
        "target_texts": bank.texts[tgt].astype(object),
    }
    if layout.ids == "origin":
        arrays["context_texts"] = bank.texts[ctx].astype(object)
        arrays["target_ids"] = bank.ids[tgt].astype(object)
        meta = np.empty(n, dtype=object)
        target_article, context_article = bank.article[tgt], bank.article[ctx]
        for i in range(n):
            meta[i] = {
                "article_index": int(target_article[i]),
                "last_context_article": int(context_article[i, -1]),
                "target_chunk_index": int(bank.chunk[tgt[i]]),
                "target_cpe_id": str(bank.ids[tgt[i]]),
                "article_title": str(bank.titles[tgt[i]]),
                "crosses_article": bool((context_article[i] != target_article[i]).any()),
            }
        arrays["metadata"] = meta
        arrays["context_length"] = np.array(CONTEXT)
        arrays["num_sequences"] = np.array(n)
        arrays["vector_dim"] = np.array(bank.vectors.shape[1])
    elif layout.ids == "alias":
        arrays["article_index"] = bank.article[tgt].astype(np.int64)
        arrays["target_chunk_index"] = bank.chunk[tgt].astype(np.int64)
    else:
        arrays["metadata"] = np.array(
            {"context_length": CONTEXT, "num_sequences": n, "source": "ingestion table"},
            dtype=object,
        )
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    return path


# ============================================================================== sets


@dataclass
class Corpus:
    """A corpus's banks, loaded once."""

    name: str
    splits: dict[str, Bank]
    lowq: Bank
    cls: Bank


@dataclass
class EvalSet:
    """One dataset to check, the defect injected and the answer lvmqa should give."""

    name: str
    corpus: str
    defect: str
    expected: str  # a root-cause code, or "healthy"
    build: Callable[[Path], dict[str, Any]]  # writes its files, returns its registry entry
    support: dict[str, Callable[[Path], dict[str, Any]]] = field(default_factory=dict)


def rng_for(*key: object) -> np.random.Generator:
    """A generator seeded from a readable key, so each defect has its own fixed stream."""
    import hashlib

    digest = hashlib.sha256(repr(key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def with_vectors(bank: Bank, vectors: FloatArray) -> Bank:
    return replace(bank, vectors=vectors.astype(np.float32))


def random_rotation(dim: int, seed: int) -> FloatArray:
    """A fixed random orthogonal matrix: same dim, same norms, another space."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def lowq_pages(corpus: Corpus, windows_wanted: int, salt: str) -> list[IntArray]:
    """Low-quality pages in a seeded order until they give ``windows_wanted`` windows."""
    pages = corpus.lowq.documents()
    order = rng_for(LOWQ_SEED, corpus.name, salt).permutation(len(pages))
    chosen, windows = [], 0
    for i in order:
        if windows >= windows_wanted:
            break
        chosen.append(pages[i])
        windows += max(0, len(pages[i]) - CONTEXT)
    return chosen


def diluted(corpus: Corpus, share: float, salt: str) -> Windows:
    """Train documents with low-quality pages inserted between them, windows inside pages."""
    train = corpus.splits["train"]
    clean_windows = len(article_windows(train))
    wanted = round(share / (1 - share) * clean_windows)
    pages = [corpus.lowq.take(p) for p in lowq_pages(corpus, wanted, salt)]
    docs = [train.take(d) for d in train.documents()]
    rng = rng_for("dilution", corpus.name, salt)
    for page in pages:  # each page at a random place in the document sequence
        docs.insert(int(rng.integers(0, len(docs) + 1)), page)
    bank = concat(docs)
    return segment_windows(bank, bank.documents())


def with_duplicates(windows: Windows, share: float, noise: float, salt: str) -> Windows:
    """Copies of random windows inserted at random positions; ``noise`` > 0: near-duplicates.

    Exact copies keep their ids (a re-run ingestion step); near-duplicates are re-encodings
    of the same chunks: tiny noise, renormalised, fresh chunk ids.
    """
    rng = rng_for("duplicates", salt)
    n = len(windows)
    k = round(share * n / (1 - share))
    source = np.sort(rng.choice(n, size=k, replace=False))
    bank, ctx, tgt = windows.bank, windows.contexts[source], windows.targets[source]
    if noise > 0:
        rows = np.concatenate([ctx, tgt[:, None]], axis=1)  # (k, 6) bank rows
        copies = bank.take(rows.reshape(-1))
        jitter = rng.standard_normal(copies.vectors.shape).astype(np.float32) * noise
        moved = copies.vectors + jitter
        moved /= np.linalg.norm(moved, axis=1, keepdims=True)
        fresh = np.array([f"near-dup-{salt}-{i}" for i in range(len(copies))], dtype=object)
        copies = replace(copies, vectors=moved.astype(np.float32), ids=fresh)
        new_rows = len(bank) + np.arange(len(copies)).reshape(k, CONTEXT + 1)
        bank = concat([bank, copies])
        ctx, tgt = new_rows[:, :CONTEXT], new_rows[:, CONTEXT]
    # Insert each copy at a random position of the file.
    positions = np.sort(rng.integers(0, n + 1, size=k))
    order_ctx = np.insert(windows.contexts, positions, ctx, axis=0)
    order_tgt = np.insert(windows.targets, positions, tgt)
    return Windows(bank, order_ctx, order_tgt)


def shifted_texts(bank: Bank, shift: int, start_share: float = 0.0) -> Bank:
    """Texts read ``shift`` rows ahead of their vectors, from ``start_share`` of the file on."""
    start = int(len(bank) * start_share)
    texts = bank.texts.copy()
    texts[start:] = np.roll(bank.texts[start:], -shift)
    return replace(bank, texts=texts)


def unnormalised(bank: Bank, share: float, salt: str) -> Bank:
    """``share`` = 1: every vector scaled by 1.8; else that share of rows by 0.3–3 (not ~1)."""
    vectors = bank.vectors.copy()
    if share >= 1:
        return with_vectors(bank, vectors * 1.8)
    rng = rng_for("norms", salt)
    rows = rng.choice(len(bank), size=int(share * len(bank)), replace=False)
    factors = np.where(
        rng.random(len(rows)) < 0.5,
        rng.uniform(0.3, 0.7, len(rows)),
        rng.uniform(1.5, 3.0, len(rows)),
    )
    vectors[rows] *= factors[:, None].astype(np.float32)
    return with_vectors(bank, vectors)


def partial_ingestion(bank: Bank, share: float, salt: str) -> Windows:
    """``share`` of the documents ingested in interleaved batches of 8; the rest in order.

    Windows slide inside each ingestion segment (a document, or one interleaved batch).
    """
    docs = bank.documents()
    rng = rng_for("partial-order", salt)
    chosen = set(rng.choice(len(docs), size=max(8, int(share * len(docs))), replace=False).tolist())
    batches: list[list[int]] = []
    for i in sorted(chosen):
        if not batches or len(batches[-1]) == 8:
            batches.append([])
        batches[-1].append(i)
    first_of_batch = {b[0]: b for b in batches}
    segments: list[IntArray] = []
    for i, rows in enumerate(docs):
        if i in first_of_batch:
            segments.append(ingestion_order(bank, [docs[j] for j in first_of_batch[i]]))
        elif i not in chosen:
            segments.append(rows)
    order = np.concatenate(segments)
    reordered = bank.take(order)
    bounds = np.cumsum([0] + [len(s) for s in segments])
    return segment_windows(reordered, [np.arange(a, b) for a, b in itertools.pairwise(bounds)])


def retitled(bank: Bank, rows: IntArray, title: str) -> Bank:
    titles = bank.titles.copy()
    titles[rows] = title
    return replace(bank, titles=titles)


LIST_WORDS = ("list of", "category:")


def mentions_list_words(bank: Bank, rows: IntArray) -> bool:
    return any(w in str(t).lower() for t in bank.texts[rows] for w in LIST_WORDS)


def corpus_sets(corpus: Corpus) -> list[EvalSet]:
    """Every set for one corpus: name, defect, expected cause, how to build its windows."""
    c = corpus.name
    train, control, val, ood = (corpus.splits[s] for s in ("train", "control", "val", "ood"))
    control_name, val_name, ood_name = f"{c}-control", f"{c}-val", f"{c}-ood"
    train_docs, ood_docs = train.documents(), ood.documents()
    # Decoy: the longest train and OOD documents get the same, very common, title.
    intro_train, intro_ood = max(train_docs, key=len), max(ood_docs, key=len)
    prose_docs = [d for d in val.documents() if mentions_list_words(val, d)]
    rotation = random_rotation(train.vectors.shape[1], seed=384)
    # The two ordering shapes swap id layouts between corpora, so each corpus has both.
    whole_layout, partial_layout = (ALIAS, NO_IDS) if c == "pydoc" else (NO_IDS, ALIAS)

    def leaky_val(share: float) -> Callable[[Path], dict[str, Any]]:
        def build(folder: Path) -> dict[str, Any]:
            rng = rng_for("leak", c, share)
            picked = rng.choice(len(train_docs), size=round(share * len(train_docs)), replace=False)
            bank = concat([val, of_documents(train, [train_docs[i] for i in np.sort(picked)])])
            path = folder / f"{c}-val-leak{round(share * 100)}.npz"
            return entry(write_sequences(path, article_windows(bank)), baseline=control_name)

        return build

    def intro_ood_file(folder: Path) -> dict[str, Any]:
        windows = article_windows(retitled(ood, intro_ood, "Introduction"))
        path = write_sequences(folder / f"{c}-ood-intro.npz", windows)
        return entry(path, baseline=control_name)

    def val_file(folder: Path) -> dict[str, Any]:
        path = write_sequences(folder / f"{val_name}.npz", article_windows(val))
        return entry(path, baseline=control_name)

    standard = {"baseline": control_name, "val": val_name, "ood": ood_name}
    # (suffix, injected defect, expected, windows, layout, split refs, extra support files)
    # fmt: off
    specs: list[tuple[str, str, str, Callable[[], Windows], Layout, dict[str, str], Support]] = [
        ("train", "none (clean train)", HEALTHY,
         lambda: article_windows(train), ORIGIN, standard, {}),
        ("control", "none (the baseline itself)", HEALTHY,
         lambda: article_windows(control), ORIGIN, {}, {}),
        ("ood", "none (held-out documents)", HEALTHY,
         lambda: article_windows(ood), ORIGIN, {"baseline": control_name}, {}),
        ("order-whole", "ingestion order, windows slide over the whole file",
         "ordering_or_boundary",
         lambda: file_windows(train.take(ingestion_order(train, train_docs))),
         whole_layout, standard, {}),
        ("order-partial", "20% of documents interleaved, windows slide over them",
         "ordering_or_boundary", lambda: partial_ingestion(train, 0.2, c), partial_layout,
         standard, {}),
        ("dilution-mild", "low-quality pages, ~5% of windows", "low_coherence_dilution",
         lambda: diluted(corpus, 0.05, "mild"), ORIGIN, standard, {}),
        ("dilution-strong", "low-quality pages, ~16% of windows", "low_coherence_dilution",
         lambda: diluted(corpus, 0.16, "strong"), ALIAS, standard, {}),
        ("dup-mild", "exact duplicate windows, 3%", "duplicates",
         lambda: with_duplicates(article_windows(train), 0.03, 0.0, f"{c}-mild"), ORIGIN,
         standard, {}),
        ("dup-strong", "exact duplicate windows, 10%", "duplicates",
         lambda: with_duplicates(article_windows(train), 0.10, 0.0, f"{c}-strong"), ORIGIN,
         standard, {}),
        ("dup-near", "near-duplicate windows, 10% (noise 0.002/dim, renormalised)", "duplicates",
         lambda: with_duplicates(article_windows(train), 0.10, 0.002, f"{c}-near"), ORIGIN,
         standard, {}),
        ("norm-all", "every vector scaled by 1.8", "normalization",
         lambda: article_windows(unnormalised(train, 1.0, c)), ORIGIN, standard, {}),
        ("norm-partial", "10% of rows unnormalised", "normalization",
         lambda: article_windows(unnormalised(train, 0.1, c)), ORIGIN, standard, {}),
        ("shift-1", "texts shifted by +1 row", "text_vector_misalignment",
         lambda: article_windows(shifted_texts(train, 1)), ORIGIN, standard, {}),
        ("shift-3-mid", "texts shifted by 3 after a gap mid-file", "text_vector_misalignment",
         lambda: article_windows(shifted_texts(train, 3, 0.5)), ORIGIN, standard, {}),
        ("leak-10", "val shares 10% of train documents", "split_leakage",
         lambda: article_windows(train), ORIGIN,
         {**standard, "val": f"{c}-val-leak10"}, {f"{c}-val-leak10": leaky_val(0.10)}),
        ("leak-50", "val shares 50% of train documents", "split_leakage",
         lambda: article_windows(train), ORIGIN,
         {**standard, "val": f"{c}-val-leak50"}, {f"{c}-val-leak50": leaky_val(0.50)}),
        ("enc-rotated", "MiniLM vectors under a fixed random rotation", "encoder_mismatch",
         lambda: article_windows(with_vectors(train, train.vectors @ rotation)), ORIGIN,
         standard, {}),
        ("enc-cls", "same model, CLS pooling instead of mean pooling", "encoder_mismatch",
         lambda: article_windows(corpus.cls), ORIGIN, standard, {}),
        ("decoy-title", "a train and an OOD document both titled 'Introduction'", HEALTHY,
         lambda: article_windows(retitled(train, intro_train, "Introduction")), ORIGIN,
         {**standard, "ood": f"{c}-ood-intro"}, {f"{c}-ood-intro": intro_ood_file}),
        ("decoy-prose", f"train + {len(prose_docs)} documents saying 'list of'/'category:'",
         HEALTHY, lambda: article_windows(concat([train, of_documents(val, prose_docs)])),
         ORIGIN, {"baseline": control_name, "ood": ood_name}, {}),
    ]
    # fmt: on
    sets = []
    for suffix, defect, expected, windows, layout, refs, support in specs:
        name = f"{c}-{suffix}"
        build = sequences_builder(name, windows, layout, refs)
        sets.append(EvalSet(name, c, defect, expected, build, {val_name: val_file, **support}))
    return sets


Support = dict[str, Callable[[Path], dict[str, Any]]]


def entry(path: Path, **refs: str) -> dict[str, Any]:
    """A registry entry: the file, the MiniLM encoder and its baseline / val / ood names."""
    return {"path": str(path), "encoder": "minilm", **refs}


def sequences_builder(
    name: str, windows: Callable[[], Windows], layout: Layout, refs: dict[str, str]
) -> Callable[[Path], dict[str, Any]]:
    def build(folder: Path) -> dict[str, Any]:
        return entry(write_sequences(folder / f"{name}.npz", windows(), layout), **refs)

    return build


def load_corpus(name: str) -> Corpus:
    splits = {
        s: load_bank(DATA / f"eval-{name}-{s}.bank.npz") for s in ("train", "control", "val", "ood")
    }
    return Corpus(
        name,
        splits,
        load_bank(DATA / "eval-lowq.bank.npz"),
        load_bank(DATA / f"eval-{name}-cls.bank.npz"),
    )


def all_sets() -> list[EvalSet]:
    return [s for name in CORPORA for s in corpus_sets(load_corpus(name))]


# ============================================================================ running


def toml_value(value: Any) -> str:
    return json.dumps(value)  # TOML basic strings share JSON's escapes for these values


def write_registry(
    folder: Path, entries: dict[str, dict[str, Any]], fingerprint: str | None
) -> Path:
    lines = ["[encoders.minilm]", f"model = {toml_value(ENCODER_MODEL)}", "dim = 384"]
    if fingerprint:
        lines.append(f"fingerprint = {toml_value(fingerprint)}")
    for name, body in entries.items():
        lines += ["", f"[datasets.{toml_value(name)}]"]
        lines += [f"{key} = {toml_value(value)}" for key, value in body.items()]
    path = folder / "lvmqa.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def pinned_fingerprint() -> str:
    """What ``lvmqa fingerprint`` prints for the bundled MiniLM: a new user pins it first."""
    from lvmqa.encoders import fingerprint, load_encoder

    return str(fingerprint(load_encoder(ENCODER_MODEL, trusted=False))["fingerprint"])


def prepare(sets: Sequence[EvalSet], folder: Path) -> dict[str, dict[str, Any]]:
    """Write every set and the support files it refers to; registry entries by name."""
    entries: dict[str, dict[str, Any]] = {}
    for s in sets:
        for name, build in s.support.items():
            if name not in entries:
                entries[name] = build(folder)
    for s in sets:
        entries[s.name] = s.build(folder)
    # Support files referred to by a support file (the baseline) must exist too.
    corpora = {s.corpus for s in sets}
    for c in corpora:
        for name, split in ((f"{c}-control", "control"), (f"{c}-ood", "ood")):
            if name not in entries:
                bank = load_bank(DATA / f"eval-{c}-{split}.bank.npz")
                path = write_sequences(folder / f"{name}.npz", article_windows(bank))
                entries[name] = {"path": str(path), "encoder": "minilm"}
                if split == "ood":
                    entries[name]["baseline"] = f"{c}-control"
    return entries


def run_checks(
    registry_path: Path, names: Sequence[str], smoke: bool, options: dict[str, Any]
) -> dict[str, Any]:
    """Every check on every set in one Session, as ``lvmqa check`` runs them; the results JSON."""
    from lvmqa.checks import CHECKS, RunOptions, Session
    from lvmqa.registry import load_registry
    from lvmqa.report import build_results

    session = Session(load_registry(registry_path, trusted=False), RunOptions(**options))
    for name in names:
        session.add(name)
    for i, name in enumerate(names, 1):
        started = time.perf_counter()
        for check_id, (phase, _, _) in CHECKS.items():
            if phase == "P2" and not smoke:
                continue
            session.run(name, check_id)
        print(
            f"  [{i}/{len(names)}] {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr
        )
    return build_results(session)


@dataclass(frozen=True)
class Row:
    set: str
    corpus: str
    defect: str
    expected: str
    verdict: str
    top_cause: str
    correct: bool
    failing: list[str]
    messages: dict[str, str]
    causes: list[tuple[str, Any]]


# The checks whose results should show each cause: printed for a wrong row even when they pass.
EVIDENCE: dict[str, tuple[str, ...]] = {
    "ordering_or_boundary": ("sequence_integrity", "coherence_drift"),
    "low_coherence_dilution": ("text_quality", "coherence_drift", "coherence"),
    "duplicates": ("duplicates",),
    "normalization": ("norms",),
    "text_vector_misalignment": ("alignment",),
    "split_leakage": ("split_leakage",),
    "encoder_mismatch": ("alignment", "fingerprint"),
}


def judge(s: EvalSet, result: dict[str, Any]) -> Row:
    diagnosis = result.get("diagnosis", {})
    checks = result.get("checks", {})
    failing = [cid for cid, c in checks.items() if c.get("status") in ("failed", "error")]
    causes = [(c.get("code", "?"), c.get("confidence")) for c in diagnosis.get("root_causes", [])]
    verdict = str(diagnosis.get("verdict", "?"))
    top = causes[0][0] if causes else "-"
    if s.expected == HEALTHY:
        correct = verdict == HEALTHY and not failing
    else:
        correct = top == s.expected
    # The failing checks, then the passing checks that should have seen the expected cause.
    shown = failing + [cid for cid in EVIDENCE.get(s.expected, ()) if cid not in failing]
    messages = {
        cid + ("" if cid in failing else f" ({checks[cid].get('status')})"): str(
            checks[cid].get("message", "")
        )
        for cid in shown
        if cid in checks
    }
    return Row(
        s.name, s.corpus, s.defect, s.expected, verdict, top, correct, failing, messages, causes
    )


def table(rows: Sequence[Row]) -> list[str]:
    header = (
        "set",
        "corpus",
        "injected defect",
        "expected root cause",
        "verdict",
        "top cause",
        "correct?",
        "failing checks",
    )
    cells = [header] + [
        (
            r.set,
            r.corpus,
            r.defect,
            r.expected,
            r.verdict,
            r.top_cause,
            "yes" if r.correct else "NO",
            ", ".join(r.failing) or "-",
        )
        for r in rows
    ]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("---" for _ in header) + "|")
    return lines


def summary(rows: Sequence[Row]) -> list[str]:
    clean = [r for r in rows if r.expected == HEALTHY]
    defects = [r for r in rows if r.expected != HEALTHY]
    detected = [r for r in defects if r.verdict != HEALTHY]
    right = [r for r in defects if r.correct]
    alarms = [r for r in clean if not r.correct]
    out = []
    if defects:
        out.append(f"detection rate: {len(detected)}/{len(defects)} defect sets not healthy")
        out.append(f"top-cause accuracy: {len(right)}/{len(defects)} defect sets")
    if clean:
        out.append(
            f"false alarms on clean sets: {len(alarms)}/{len(clean)} clean or decoy sets "
            "not healthy or with a failing check"
        )
    return out


def notes(rows: Sequence[Row]) -> list[str]:
    """For each wrong row: the ranked causes and the relevant checks' one-line messages."""
    out = []
    for r in rows:
        if r.correct:
            continue
        ranked = ", ".join(f"{code} {conf}" for code, conf in r.causes[:4])
        out.append(
            f"- {r.set}: expected {r.expected}, got {r.verdict} / {r.top_cause} (causes: {ranked})"
        )
        out += [f"    {cid}: {msg}" for cid, msg in r.messages.items()]
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Evaluate lvmqa's diagnosis on non-Wikipedia corpora."
    )
    parser.add_argument(
        "--only", default=None, metavar="PATTERN", help="glob over set names, e.g. 'pydoc-dup*'"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="include the smoke training (P2); default: skipped"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the table and notes to this file"
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="write lvmqa's full results JSON here"
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="write the sets into this folder and keep them"
    )
    parser.add_argument("--recall-sample", type=int, default=1000, help="RunOptions.recall_sample")
    parser.add_argument(
        "--alignment-sample", type=int, default=256, help="RunOptions.alignment_sample"
    )
    parser.add_argument("--smoke-max-sequences", type=int, default=None)
    return parser.parse_args(argv)


def evaluate(
    sets: Sequence[EvalSet],
    folder: Path,
    *,
    smoke: bool = False,
    options: dict[str, Any] | None = None,
    json_path: Path | None = None,
) -> list[Row]:
    """Write ``sets`` into ``folder``, run lvmqa on each, and judge its answers."""
    entries = prepare(sets, folder)
    registry = write_registry(folder, entries, pinned_fingerprint())
    results = run_checks(registry, [s.name for s in sets], smoke, options or {})
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=1, allow_nan=True) + "\n")
    return [judge(s, results["datasets"][s.name]) for s in sets]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    sets = [s for s in all_sets() if args.only is None or fnmatch.fnmatch(s.name, args.only)]
    if not sets:
        print(f"eval_diagnosis: no set matches --only {args.only!r}", file=sys.stderr)
        return 2
    options = {
        "recall_sample": args.recall_sample,
        "alignment_sample": args.alignment_sample,
        "smoke_max_sequences": args.smoke_max_sequences,
    }
    folder = args.keep or Path(tempfile.mkdtemp(prefix="lvmqa-eval-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        rows = evaluate(sets, folder, smoke=args.smoke, options=options, json_path=args.json)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    elapsed = time.perf_counter() - started
    smoke = "on" if args.smoke else "skipped"
    lines = [*table(rows), "", *summary(rows), f"run time: {elapsed:.0f} s, smoke {smoke}"]
    wrong = notes(rows)
    if wrong:
        lines += [
            "",
            "wrong rows (ranked causes, confidence; messages of failing and relevant checks):",
            *wrong,
        ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
