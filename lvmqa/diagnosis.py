"""From check results to a diagnosis: ranked root causes, what is ruled out, what to do.

Each rule reads only metrics that its check puts in the JSON, so the same diagnosis
can be recomputed from a results file. Confidence grows with the strength and the
number of independent signals; causes are ranked by it. Rules are written to tell
apart the pairs that look alike from a single number:

* ordering/boundary vs dilution — windows crossing articles and a file-order
  coherence that sorting by (article, chunk) recovers, vs blocklisted pages and a
  drop that persists *inside* articles;
* wrong encoder vs shifted texts — no nearby row matches vs a fixed offset matches;
* exact duplicates vs index error — duplicate-aware recall vs exact ground truth;
* evaluation fault vs bad data — a model far below every trivial predictor.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lvmqa.results import CheckResult

ROOT_CAUSE_CODES = (
    "encoder_mismatch",
    "normalization",
    "text_vector_misalignment",
    "duplicates",
    "ordering_or_boundary",
    "low_coherence_dilution",
    "split_leakage",
    "index_recall",
    "evaluation_fault",
    "healthy",
)
DEFAULT_BLOCKLIST = "List of|Disambiguation|Category:"

TITLES = {
    "encoder_mismatch": "Encoder mismatch: vectors come from another embedding space",
    "normalization": "Vectors are not L2-normalised",
    "text_vector_misalignment": "Texts are shifted against their vectors",
    "duplicates": "Duplicate target vectors",
    "ordering_or_boundary": "Ordering / article-boundary defect: windows cross articles",
    "low_coherence_dilution": "Low-coherence dilution: list / disambiguation / low-quality pages",
    "split_leakage": "Leakage between train and val/OOD splits",
    "index_recall": "Approximate index loses recall",
    "evaluation_fault": "Evaluation fault: the model evaluation itself is broken",
    "healthy": "Healthy: no check found a problem",
}


@dataclass
class Facts:
    """What the actions need to be runnable: names and paths of this dataset's world."""

    name: str
    path: str | None = None
    registered: bool = True
    baseline: str | None = None
    source_path: str | None = None
    context_length: int = 5
    encoder: str | None = None

    @property
    def target(self) -> str:
        return self.name if self.registered or not self.path else self.path


@dataclass
class Cause:
    code: str
    confidence: float
    evidence: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "title": TITLES[self.code],
            "confidence": round(min(max(self.confidence, 0.0), 0.99), 2),
            "evidence": self.evidence,
        }


def _m(results: Mapping[str, CheckResult], check: str) -> dict[str, Any]:
    r = results.get(check)
    return r.metrics if r is not None else {}


def _status(results: Mapping[str, CheckResult], check: str) -> str | None:
    r = results.get(check)
    return r.status if r is not None else None


def _gate_failed(results: Mapping[str, CheckResult], check: str, metric: str) -> bool:
    r = results.get(check)
    return r is not None and any(g.metric == metric and not g.passed for g in r.gates)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _pct(value: Any, digits: int = 1) -> str:
    v = _num(value)
    return "n/a" if v is None else f"{100 * v:.{digits}f} %"


def _f(value: Any, digits: int = 4) -> str:
    v = _num(value)
    return "n/a" if v is None else f"{v:.{digits}f}"


# ----------------------------------------------------------------------------- rules
def _normalization(results: Mapping[str, CheckResult]) -> Cause | None:
    if _status(results, "norms") != "failed":
        return None
    m = _m(results, "norms")
    bad = sum(
        int(m.get(f"{p}_{b}_count", 0) or 0)
        for p in ("target", "context")
        for b in ("nan", "inf", "zero")
    )
    mean, std = _num(m.get("target_norm_mean")), _num(m.get("target_norm_std"))
    evidence = [f"target norms: mean {_f(mean, 6)}, std {_f(std, 4)} (expected 1 ± 0.01)"]
    if bad:
        evidence.append(f"{bad} vectors are NaN, Inf or all-zero")
    off = abs((mean or 1.0) - 1.0) + (std or 0.0)
    return Cause("normalization", 0.7 + min(0.25, 5 * off) + (0.05 if bad else 0), evidence)


def _alignment(results: Mapping[str, CheckResult]) -> list[Cause]:
    causes: list[Cause] = []
    a = _m(results, "alignment")
    verdict = a.get("diagnosis")
    fp_failed = _status(results, "fingerprint") == "failed"
    fp = _m(results, "fingerprint")
    # shift: texts at a fixed offset; partial: the offset starts after a gap; misaligned:
    # texts found elsewhere in the file (the stored geometry does not match the texts').
    if _status(results, "alignment") == "failed" and verdict in ("shift", "partial", "misaligned"):
        k = a.get("best_shift")
        explained = _num(a.get("shift_explained_share")) or _num(a.get("displaced_share")) or 0
        causes.append(
            Cause(
                "text_vector_misalignment",
                0.6 + 0.35 * explained,
                [
                    f"re-encoded text i matches stored vector i{int(k):+d} "
                    f"(explains {_pct(a.get('shift_explained_share'))} of sampled rows)"
                    if isinstance(k, int) and k != 0
                    else f"re-encoded texts match other rows than their own "
                    f"({_pct(a.get('displaced_share'))} found elsewhere in the file)",
                    f"cosine of text i to its own vector: mean {_f(a.get('cosine_mean'))}, "
                    f"p5 {_f(a.get('cosine_p5'))}",
                ],
            )
        )
    wrong = _status(results, "alignment") == "failed" and verdict == "wrong_encoder"
    if wrong or fp_failed:
        evidence = []
        if wrong:
            evidence.append(
                f"re-encoded texts match no nearby stored vector: own-row cosine "
                f"mean {_f(a.get('cosine_mean'))}, p5 {_f(a.get('cosine_p5'))} "
                f"(same encoder gives ≈ 1.0)"
            )
            if _status(results, "norms") == "passed":
                evidence.append(
                    "norms are fine, so the vectors are valid unit vectors — from a different space"
                )
        if fp_failed:
            if fp.get("dim") != fp.get("dataset_dim"):
                evidence.append(
                    f"encoder dimension {fp.get('dim')} ≠ dataset dimension {fp.get('dataset_dim')}"
                )
            if fp.get("fingerprint_matches") == 0:
                evidence.append("the encoder fingerprint differs from the pinned one")
        causes.append(Cause("encoder_mismatch", 0.85 if wrong else 0.75, evidence))
    return causes


def _duplicates_and_index(results: Mapping[str, CheckResult]) -> list[Cause]:
    causes: list[Cause] = []
    d, r = _m(results, "duplicates"), _m(results, "oracle_recall")
    if _status(results, "duplicates") == "failed":
        exact = _num(d.get("exact_duplicate_share")) or 0.0
        near = _num(d.get("near_duplicate_share")) or 0.0
        evidence = [
            f"{_pct(exact)} of targets are exact duplicates, {_pct(near)} "
            f"near-duplicates (gate ≤ 1 %)"
        ]
        if _num(r.get("recall_at_1")) is not None:
            evidence.append(
                f"strict recall@1 = {_f(r.get('recall_at_1'), 3)} while "
                f"duplicate-aware recall@1 = {_f(r.get('dup_aware_recall_at_1'), 3)}"
                ": the misses are ties with duplicate rows, not index error"
            )
        keys = _m(results, "text_quality").get("duplicate_key_count")
        if keys:
            evidence.append(
                f"{keys} (article, chunk) keys occur more than once: whole windows "
                "were written twice"
            )
        causes.append(Cause("duplicates", 0.6 + min(0.35, 3 * max(exact, near)), evidence))
    if _status(results, "oracle_recall") == "failed":
        err = max(
            (_num(v) or 0.0 for k, v in r.items() if k.startswith("index_error_at_")), default=0.0
        )
        exact_ok = all(
            (_num(v) or 0.0) >= 0.97
            for k, v in r.items()
            if k.startswith("exact_recall_at_") and not k.endswith("_1")
        )
        evidence = [
            f"recall@5 = {_f(r.get('recall_at_5'), 3)}, duplicate-aware "
            f"{_f(r.get('dup_aware_recall_at_5'), 3)} with index "
            f"'{r.get('index_factory', '?')}'"
        ]
        if err > 0:
            evidence.append(
                f"exact search finds what the index misses (index error up to "
                f"{_pct(err)}): tune nprobe / efSearch or use an exact index"
            )
        causes.append(Cause("index_recall", 0.8 if err > 0 and exact_ok else 0.5, evidence))
    return causes


def _ordering(results: Mapping[str, CheckResult]) -> Cause | None:
    s = _m(results, "sequence_integrity")
    if _status(results, "sequence_integrity") != "failed":
        return None
    crossing = _num(s.get("crossing_share"))
    wrong_order = _num(s.get("wrong_order_share")) or 0.0
    verdict = s.get("ordering_verdict")
    structural = (crossing or 0.0) > 0 or wrong_order > 0
    if not structural and verdict != "broken" and s.get("position_profile_rises") is not False:
        return None
    evidence: list[str] = []
    confidence = 0.45
    if crossing is not None and s.get("windows_checked"):
        evidence.append(
            f"{_pct(crossing)} of windows cross an article boundary "
            f"({s.get('crossing_count')} of {s.get('windows_checked')}; "
            f"ids from {s.get('ids_source')})"
        )
        confidence += 0.35 * min(1.0, crossing / 0.2)
    if wrong_order:
        evidence.append(f"{_pct(wrong_order)} of windows run backwards in chunk order")
        confidence += 0.1
    fo, ao = _num(s.get("within_article_mean")), _num(s.get("across_article_mean"))
    if fo is not None and ao is not None:
        evidence.append(
            f"adjacent rows from the same article have cosine {_f(fo, 3)}, rows "
            f"straddling a boundary {_f(ao, 3)}"
        )
    low_cross = _num(s.get("low_pairs_crossing_share"))
    if low_cross is not None:
        evidence.append(
            f"{_pct(low_cross)} of low-coherence file-order pairs are article crossings"
        )
    gain = _num(s.get("article_order_gain"))
    c = _m(results, "coherence")
    if gain is not None and gain > 0:
        evidence.append(
            f"file-order coherence {_f(c.get('file_order_mean'), 4)} vs "
            f"article-order {_f(s.get('article_order_mean'), 4)}: sorting rows by "
            f"(article, chunk) recovers +{gain:.4f}"
        )
        confidence += 0.1
    if verdict == "broken":
        evidence.append(
            "statistical ordering test: cos(row i, row i+k) does not decay with k "
            f"(decay {_f(s.get('decay'), 3)}) — neighbours are no closer than "
            "distant rows"
        )
        confidence += 0.05
    if s.get("position_profile_rises") is False:
        evidence.append("the context-position profile does not rise toward the target")
    drift = _m(results, "coherence_drift")
    if drift.get("file_order_drift_verdict") in ("moderate", "significant"):
        art = drift.get("article_order_drift_verdict")
        evidence.append(
            f"file-order coherence drift vs baseline "
            f"{_f(drift.get('file_order_mean_drift_pct'), 1)} %"
            + (
                f", but article-order drift only "
                f"{_f(drift.get('article_order_mean_drift_pct'), 1)} % ({art}): the "
                "drop comes from the order, not the content"
                if art == "none"
                else ""
            )
        )
        if art == "none":
            confidence += 0.05
    return Cause("ordering_or_boundary", confidence, evidence)


def _dilution(results: Mapping[str, CheckResult], ordering: Cause | None) -> Cause | None:
    t, drift = _m(results, "text_quality"), _m(results, "coherence_drift")
    evidence: list[str] = []
    confidence = 0.0
    blocked = _num(t.get("blocklist_share")) or 0.0
    if _gate_failed(results, "text_quality", "blocklist_share") and blocked > 0:
        evidence.append(
            f"{_pct(blocked)} of rows come from {t.get('blocklist_articles')} "
            f"blocklisted pages ({t.get('blocklist_pattern') or DEFAULT_BLOCKLIST}: "
            f"{t.get('blocklist_title_count', 0)} by title, "
            f"{t.get('blocklist_text_count', 0)} by text)"
        )
        confidence += 0.45 + min(0.3, 3 * blocked)
    short = _num(t.get("too_short_share")) or 0.0
    if _gate_failed(results, "text_quality", "too_short_share"):
        evidence.append(
            f"{_pct(short)} of texts are shorter than {t.get('min_text_chars', 8)} "
            "characters (list entries, fragments)"
        )
        confidence += 0.05
    list_like = _num(t.get("short_text_article_share")) or 0.0
    if list_like > 0.01:
        evidence.append(
            f"{_pct(list_like)} of rows come from list-like pages (median text under 40 characters)"
        )
        confidence += 0.05
    # A drop in coherence INSIDE articles cannot come from ordering.
    for definition in ("article_order", "within_window"):
        verdict = drift.get(f"{definition}_drift_verdict")
        if verdict == "significant" and not (definition == "within_window" and ordering):
            evidence.append(
                f"{definition.replace('_', '-')} coherence is lower than the "
                f"baseline: {_f(drift.get(f'{definition}_mean_drift_pct'), 1)} % "
                f"(low share {_f(drift.get(f'{definition}_low_share_change_pp'), 1)}"
                " pp), beyond sampling noise"
            )
            confidence += 0.3
            break
    else:
        if ordering is None and drift.get("drift_verdict") == "significant":
            evidence.append(
                f"file-order coherence drift "
                f"{_f(drift.get('file_order_mean_drift_pct'), 1)} % vs baseline with "
                "no ordering defect found"
            )
            confidence += 0.4
        elif evidence and drift.get("article_order_drift_verdict") == "none":
            evidence.append(
                "within-article coherence matches the baseline (drift none), so "
                "these pages dilute the signal rather than break its order"
            )
    low_pattern = _m(results, "sequence_integrity").get("low_pairs_pattern")
    if evidence and low_pattern == "clustered":
        evidence.append("low-coherence pairs cluster in runs (whole bad pages), not spread evenly")
        confidence += 0.05
    if not evidence or confidence < 0.3:
        return None
    return Cause("low_coherence_dilution", confidence, evidence)


def _leakage(results: Mapping[str, CheckResult]) -> Cause | None:
    if _status(results, "split_leakage") != "failed":
        return None
    m = _m(results, "split_leakage")
    evidence = [
        f"{k.replace('_', ' ')}: {v}"
        for k, v in m.items()
        if isinstance(v, (int, float))
        and not isinstance(v, bool)
        and v
        and ("overlap" in k or "shared" in k)
    ][:4]
    return Cause("split_leakage", 0.9, evidence or [results["split_leakage"].message])


def _evaluation(results: Mapping[str, CheckResult]) -> Cause | None:
    for check in ("ood_eval", "smoke_train"):
        m = _m(results, check)
        if m.get("evaluation_fault"):
            return Cause(
                "evaluation_fault",
                0.9,
                [
                    f"{check}: {results[check].message}",
                    "a score far below every trivial predictor (mean of context, copy last, "
                    "global mean) is a bug in the evaluation, not a property of the data",
                ],
            )
    return None


# ---------------------------------------------------------------- rules out, actions
def _rules_out(results: Mapping[str, CheckResult]) -> list[str]:
    out: list[str] = []

    def passed(check: str) -> bool:
        return _status(results, check) == "passed"

    if passed("fingerprint"):
        m = _m(results, "fingerprint")
        out.append(
            f"encoder version mismatch: the encoder gives {m.get('dim')}-D unit vectors"
            + (" matching the pinned fingerprint" if m.get("fingerprint_matches") else "")
        )
    if passed("norms"):
        norms = _m(results, "norms")
        out.append(
            f"a normalisation bug: target norms {_f(norms.get('target_norm_mean'), 6)}"
            f" ± {_f(norms.get('target_norm_std'), 6)}"
        )
    if passed("alignment"):
        a = _m(results, "alignment")
        out.append(
            f"a wrong encoder or shifted texts: re-encoded texts match their own vectors "
            f"(p5 cosine {_f(a.get('cosine_p5'))})"
        )
    if passed("oracle_recall"):
        r = _m(results, "oracle_recall")
        out.append(
            f"FAISS index corruption or a space mismatch: recall@5 "
            f"{_f(r.get('recall_at_5'), 3)}, recall@1000 {_f(r.get('recall_at_1000'), 3)}"
        )
    if passed("duplicates"):
        d = _m(results, "duplicates")
        out.append(
            f"duplicate inflation: {_pct(d.get('exact_duplicate_share'))} exact, "
            f"{_pct(d.get('near_duplicate_share'))} near duplicates"
        )
    if passed("sequence_integrity"):
        s = _m(results, "sequence_integrity")
        if s.get("windows_checked"):
            out.append(
                f"ordering/boundary defects: no window crosses an article "
                f"({s.get('windows_checked')} windows checked)"
            )
        else:
            out.append("ordering defects: adjacency decays with distance as in ordered text")
    if passed("coherence_drift"):
        out.append("a coherence drift from the baseline beyond sampling noise")
    if passed("text_quality"):
        out.append(
            f"dilution by list/disambiguation pages: blocklist share "
            f"{_pct(_m(results, 'text_quality').get('blocklist_share'))}"
        )
    if passed("split_leakage"):
        out.append("leakage: no article or target shared with the val/OOD splits")
    if passed("smoke_train"):
        beats = _m(results, "smoke_train").get("mean_context_gate") == "beats_mean_of_context"
        out.append(
            "a training bug: the smoke model "
            + ("beats" if beats else "is not worse than")
            + " predicting the mean of the context"
        )
    if passed("ood_eval"):
        out.append(
            "an evaluation bug on OOD: the reloaded model scores above the trivial predictors"
        )
    return out


def _actions(causes: list[Cause], facts: Facts) -> list[dict[str, str]]:
    actions: list[dict[str, str]] = []
    q = shlex.quote
    rerun = f"pytest quality_tests --dataset={q(facts.target)}"
    codes = [c.code for c in causes]
    out_name = f"{facts.name}-rebuilt.npz"
    base = f" --baseline={q(facts.baseline)}" if facts.baseline else ""
    repaired = facts.target  # the dataset to train on once the actions are done
    if "ordering_or_boundary" in codes:
        repaired = out_name
        bank = q(facts.source_path) if facts.source_path else "BANK.npz"
        blocklist = ""
        if "low_coherence_dilution" in codes:
            blocklist = f" --blocklist {q('List of|disambiguation|Category:')}"
        actions.append(
            {
                "title": "Rebuild the windows inside each article, in chunk order"
                + (", dropping blocklisted pages" if blocklist else "")
                + (
                    " (source bank from the registry)"
                    if facts.source_path
                    else " (from the vector bank the sequences were cut from)"
                ),
                "command": f"lvmqa windows {bank} --context {facts.context_length}{blocklist} "
                f"--out {q(out_name)}\npytest quality_tests --dataset={q(out_name)}{base}",
            }
        )
    elif "low_coherence_dilution" in codes:
        out = f"filtered/{facts.name}"
        repaired = out + ".npz"
        actions.append(
            {
                "title": "Drop blocklisted pages and low-coherence rows, then re-check the result",
                "command": f"lvmqa filter {q(facts.target)} --min-coherence 0.35 "
                f"--blocklist {q(DEFAULT_BLOCKLIST)} --out {q(out)}\n"
                f"pytest quality_tests --dataset={q(out + '.npz')}{base}",
            }
        )
    if "duplicates" in codes:
        out = f"filtered/{facts.name}-dedup"
        actions.append(
            {
                "title": "Drop exact duplicate targets (keep the first occurrence)",
                "command": f"lvmqa filter {q(facts.target)} --drop-duplicates "
                f"--min-coherence -1 --blocklist '' --out {q(out)}",
            }
        )
    if "normalization" in codes:
        actions.append(
            {
                "title": "L2-normalise every vector (x / ||x||) and drop NaN/Inf/zero "
                "rows at the source, then re-check",
                "command": rerun + " -m p0",
            }
        )
    if "encoder_mismatch" in codes:
        enc = facts.encoder or "ENCODER"
        actions.append(
            {
                "title": "Re-encode the texts with the registry's encoder (or fix the "
                "registry's encoder entry); compare fingerprints",
                "command": f"lvmqa fingerprint {q(enc)}",
            }
        )
    if "text_vector_misalignment" in codes:
        actions.append(
            {
                "title": "Rebuild the file so texts and vectors are indexed through the "
                "same row list (the shift shows which index drifted)",
                "command": rerun + " -k alignment",
            }
        )
    if "split_leakage" in codes:
        actions.append(
            {
                "title": "Split by article ranges so train, val and OOD share no article",
                "command": rerun + " -k split_leakage",
            }
        )
    if "index_recall" in codes:
        actions.append(
            {
                "title": "Use an exact index or raise nprobe / efSearch",
                "command": rerun + " -k oracle_recall --index-factory Flat",
            }
        )
    if "evaluation_fault" in codes:
        actions.append(
            {
                "title": "Fix the evaluation: load checkpoints with "
                "lvmqa.smoke.load_checkpoint(path, AMN), which refuses a "
                "different model class",
                "command": rerun + " -m smoke",
            }
        )
    if actions and causes and causes[0].code != "healthy":
        actions.append(
            {
                "title": "Then train on the repaired data (the smoke gate must pass first)",
                "command": f"pytest quality_tests --dataset={q(repaired)}{base} -m smoke",
            }
        )
    return actions


def diagnose(
    name: str, results: Mapping[str, CheckResult], facts: Facts | None = None
) -> dict[str, Any]:
    """The diagnosis of one dataset from its check results."""
    facts = facts or Facts(name=name)
    causes: list[Cause] = []
    if (c := _normalization(results)) is not None:
        causes.append(c)
    causes += _alignment(results)
    causes += _duplicates_and_index(results)
    ordering = _ordering(results)
    if ordering is not None:
        causes.append(ordering)
    if (c := _dilution(results, ordering)) is not None:
        causes.append(c)
    if (c := _leakage(results)) is not None:
        causes.append(c)
    if (c := _evaluation(results)) is not None:
        causes.append(c)
    causes.sort(key=lambda cause: -cause.confidence)

    failed = [cid for cid, r in results.items() if r.status == "failed"]
    errored = [
        cid
        for cid, r in results.items()
        if r.status == "error" and not r.metrics.get("evaluation_fault")
    ]
    skipped = [cid for cid, r in results.items() if r.status == "skipped"]
    if failed and not causes:
        causes.append(
            Cause(
                "low_coherence_dilution",
                0.3,
                [
                    f"checks failed without a matching rule: {', '.join(failed)} — "
                    "read their details"
                ],
            )
            if any(f.startswith("coherence") for f in failed)
            else Cause("healthy", 0.0, [f"unexplained failures: {', '.join(failed)}"])
        )
    if not causes:
        evidence = [f"{len(results) - len(skipped) - len(errored)} checks passed"]
        if skipped:
            evidence.append(f"skipped (see reasons): {', '.join(skipped)}")
        if errored:
            evidence.append(f"could not run: {', '.join(errored)}")
        causes.append(Cause("healthy", 0.9 if not errored else 0.5, evidence))
    if causes[0].code == "healthy" and not failed:
        verdict = "incomplete" if errored else "healthy"
    else:
        verdict = "failed"
    headline = _headline(name, verdict, causes)
    return {
        "verdict": verdict,
        "headline": headline,
        "root_causes": [c.to_json() for c in causes],
        "rules_out": _rules_out(results),
        "actions": _actions([c for c in causes if c.code != "healthy"], facts),
        "checks": {"failed": failed, "error": errored, "skipped": skipped},
    }


def _headline(name: str, verdict: str, causes: list[Cause]) -> str:
    if verdict == "healthy":
        return f"{name}: healthy — no check found a problem"
    if verdict == "incomplete":
        return f"{name}: no failure found, but some checks could not run"
    main = [c for c in causes if c.code != "healthy"]
    names = " and ".join(TITLES[c.code].split(":")[0].lower() for c in main[:2])
    return f"{name}: {names}" + (f" (+{len(main) - 2} more)" if len(main) > 2 else "")


def facts_from_context(ctx: Any) -> Facts:
    """Facts for the actions, from a CheckContext (registry entry and related datasets)."""
    source_path = None
    source = ctx.entry.source
    if source:
        try:
            source_path = str(ctx.session.data_path(ctx.session.registry.dataset(source)))
        except Exception:  # an unreadable source is reported by its checks, not here
            source_path = None
    elif getattr(ctx.entry.build, "source", None) is not None:
        source_path = str(ctx.entry.build.source)
    baseline = ctx.baseline()
    return Facts(
        name=ctx.name,
        path=_short_path(str(ctx.dataset.path)),
        registered=ctx.entry.from_registry,
        baseline=baseline.name if baseline else None,
        source_path=_short_path(source_path) if source_path else None,
        context_length=ctx.dataset.context_length,
        encoder=ctx.encoder_name(),
    )


def _short_path(path: str) -> str:
    """Relative to the working folder when inside it, so commands read as typed."""
    import os

    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
