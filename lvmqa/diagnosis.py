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
from lvmqa.texts import DEFAULT_BLOCKLIST

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
    """A candidate root cause. ``confidence`` is a measured share (see :func:`_score`):
    of the coherence gap its remedy recovers, or of its own check's gap."""

    code: str
    confidence: float
    evidence: list[str] = field(default_factory=list)
    own_share: float | None = None
    measured: str | None = None  # "coherence", "own", or None (not measurable)

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "title": TITLES[self.code],
            "confidence": round(min(max(self.confidence, 0.0), 0.99), 2),
            "measured_on": self.measured,
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
# Each rule gathers the evidence for one candidate cause from its own failed check,
# and says how much of that check's own gap the cause's remedy recovers
# (``own_share``). How much of the *coherence* gap a remedy recovers comes from
# lvmqa.attribution and decides the ranking where the data lost coherence.
COHERENCE_FAMILY = ("ordering_or_boundary", "duplicates", "low_coherence_dilution")


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
        evidence.append(
            f"{bad} vectors are NaN, Inf or all-zero: re-normalising cannot fix them, "
            "dropping them does"
        )
    evidence.append(
        "re-normalising (x / ||x||) gives every finite non-zero vector norm 1: it "
        "recovers the whole norm gap, and changes no cosine"
    )
    return Cause("normalization", 0.0, evidence, own_share=1.0)


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
        explained = _num(a.get("shift_explained_share"))
        displaced = _num(a.get("displaced_share"))
        share = explained if explained else displaced
        causes.append(
            Cause(
                "text_vector_misalignment",
                0.0,
                [
                    f"re-encoded text i matches stored vector i{int(k):+d}: re-aligning "
                    f"by that offset recovers {_pct(explained)} of the sampled rows"
                    if isinstance(k, int) and k != 0
                    else f"re-encoded texts match other rows than their own "
                    f"({_pct(displaced)} found elsewhere in the file)",
                    f"cosine of text i to its own vector: mean {_f(a.get('cosine_mean'))}, "
                    f"p5 {_f(a.get('cosine_p5'))}",
                ],
                own_share=share,
            )
        )
    wrong = _status(results, "alignment") == "failed" and verdict == "wrong_encoder"
    if wrong or fp_failed:
        evidence = []
        if wrong:
            evidence.append(
                f"re-encoded texts match no nearby stored vector: own-row cosine "
                f"mean {_f(a.get('cosine_mean'))}, p5 {_f(a.get('cosine_p5'))} "
                f"(same encoder gives ≈ 1.0); no offset re-aligns them"
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
        # Re-encoding with the registry's encoder recovers every row that no offset
        # explains; a fingerprint mismatch alone is the whole gap by itself.
        unexplained = None
        if wrong:
            unexplained = 1.0 - (_num(a.get("shift_explained_share")) or 0.0)
            unexplained -= _num(a.get("displaced_share")) or 0.0
        causes.append(
            Cause(
                "encoder_mismatch",
                0.0,
                evidence,
                own_share=max(0.0, unexplained) if unexplained is not None else 1.0,
            )
        )
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
        causes.append(Cause("duplicates", 0.0, evidence, own_share=1.0))
    if _status(results, "oracle_recall") == "failed":
        err = max(
            (_num(v) or 0.0 for k, v in r.items() if k.startswith("index_error_at_")), default=0.0
        )
        evidence = [
            f"recall@5 = {_f(r.get('recall_at_5'), 3)}, duplicate-aware "
            f"{_f(r.get('dup_aware_recall_at_5'), 3)} with index "
            f"'{r.get('index_factory', '?')}'"
        ]
        missing = 1.0 - (_num(r.get("dup_aware_recall_at_5")) or 0.0)
        if err > 0:
            evidence.append(
                f"exact search finds what the index misses (index error up to "
                f"{_pct(err)}): tune nprobe / efSearch or use an exact index"
            )
        share = min(1.0, err / missing) if missing > 0 else 0.0
        causes.append(Cause("index_recall", 0.0, evidence, own_share=share))
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
    if crossing is not None and s.get("windows_checked"):
        evidence.append(
            f"{_pct(crossing)} of windows cross an article boundary "
            f"({s.get('crossing_count')} of {s.get('windows_checked')}; "
            f"ids from {s.get('ids_source')})"
        )
    if wrong_order:
        evidence.append(f"{_pct(wrong_order)} of windows run backwards in chunk order")
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
    if verdict == "broken":
        evidence.append(
            "statistical ordering test: cos(row i, row i+k) does not decay with k "
            f"(decay {_f(s.get('decay'), 3)}) — neighbours are no closer than "
            "distant rows"
        )
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
    # Windows rebuilt inside articles have no crossing: the structural gap is recovered
    # in full. A purely statistical finding has no structural gap to recover.
    share = 1.0 if structural else None
    return Cause("ordering_or_boundary", 0.0, evidence, own_share=share)


def _dilution(results: Mapping[str, CheckResult]) -> Cause | None:
    if _status(results, "text_quality") != "failed":
        return None
    t, drift = _m(results, "text_quality"), _m(results, "coherence_drift")
    evidence: list[str] = []
    blocked = _num(t.get("blocklist_share")) or 0.0
    if _gate_failed(results, "text_quality", "blocklist_share") and blocked > 0:
        evidence.append(
            f"{_pct(blocked)} of rows come from {t.get('blocklist_articles')} "
            f"blocklisted pages (titles like 'List of …', disambiguation and category pages)"
        )
    low_quality = _num(t.get("low_quality_row_share"))
    if low_quality:
        evidence.append(
            f"{_pct(low_quality)} of rows come from {t.get('low_quality_article_count')} "
            "pages whose own statistics (within-page coherence, text shape) lie outside "
            "the baseline's pages"
        )
    short = _num(t.get("too_short_share")) or 0.0
    if _gate_failed(results, "text_quality", "too_short_share"):
        evidence.append(
            f"{_pct(short)} of texts are shorter than {t.get('min_text_chars', 8)} "
            "characters (list entries, fragments)"
        )
    # A drop INSIDE articles cannot come from ordering; a drop inside windows can, when
    # the windows themselves cross articles.
    crossing = _status(results, "sequence_integrity") == "failed"
    for definition in ("article_order", "within_window"):
        if definition == "within_window" and crossing:
            continue
        if drift.get(f"{definition}_drift_verdict") == "significant":
            evidence.append(
                f"{definition.replace('_', '-')} coherence is lower than the "
                f"baseline: {_f(drift.get(f'{definition}_mean_drift_pct'), 1)} % "
                f"(low share {_f(drift.get(f'{definition}_low_share_change_pp'), 1)}"
                " pp), beyond sampling noise: the content changed, not only its order"
            )
            break
    if not evidence:
        evidence.append(results["text_quality"].message)
    return Cause("low_coherence_dilution", 0.0, evidence, own_share=1.0)


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
        and "unconfirmed" not in k
    ][:4]
    evidence.append("dropping the shared articles from one side removes every shared item")
    return Cause(
        "split_leakage", 0.0, evidence or [results["split_leakage"].message], own_share=1.0
    )


def _evaluation(results: Mapping[str, CheckResult]) -> Cause | None:
    for check in ("ood_eval", "smoke_train"):
        m = _m(results, check)
        if m.get("evaluation_fault"):
            return Cause(
                "evaluation_fault",
                0.0,
                [
                    f"{check}: {results[check].message}",
                    "a score far below every trivial predictor (mean of context, copy last, "
                    "global mean) is a bug in the evaluation, not a property of the data",
                ],
                own_share=1.0,
            )
    return None


# ----------------------------------------------------------------- attribution
def _coherence_gap(attribution: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    gap = (attribution or {}).get("coherence")
    return gap if isinstance(gap, Mapping) and gap.get("gap_significant") else None


def _remedy(gap: Mapping[str, Any] | None, code: str) -> Mapping[str, Any] | None:
    if gap is None:
        return None
    for remedy in gap.get("remedies", []):
        if isinstance(remedy, Mapping) and remedy.get("code") == code:
            return remedy
    return None


def _share_words(remedy: Mapping[str, Any], gap: Mapping[str, Any]) -> str:
    lo, hi = [*(remedy.get("recovered_share_ci") or []), None, None][:2]
    ci = f" (CI {_pct(lo, 0)}–{_pct(hi, 0)})" if lo is not None and hi is not None else ""
    statistic = str(gap.get("statistic", "file_order")).replace("_", "-")
    against = "vs the baseline" if gap.get("reference") == "baseline" else "vs all remedies"
    how = " on held-out pairs" if remedy.get("held_out") else ""
    estimate = f"; {remedy['estimate']}" if remedy.get("estimate") else ""
    return (
        f"{remedy.get('remedy')} recovers {_pct(remedy.get('recovered_share'), 0)}{ci} of the "
        f"{statistic} coherence drop {against} ({_f(gap.get('current_mean'), 3)} → "
        f"{_f(gap.get('reference_mean'), 3)}){how}{estimate}"
    )


def _score(causes: list[Cause], attribution: Mapping[str, Any] | None) -> None:
    """Confidence from measurement: the share of the coherence gap a cause's remedy
    recovers where the data lost coherence, else the share of its own check's gap."""
    gap = _coherence_gap(attribution)
    measured = [
        share
        for r in (gap or {}).get("remedies", [])
        if (share := _num(r.get("recovered_share"))) is not None
    ]
    # What no measured remedy explains bounds what an unmeasured one could explain.
    unexplained = max(0.0, 1.0 - max(measured, default=0.0))
    for cause in causes:
        remedy = _remedy(gap, cause.code) if cause.code in COHERENCE_FAMILY else None
        share = _num(remedy.get("recovered_share")) if remedy else None
        if remedy is not None and gap is not None and share is not None:
            cause.evidence.insert(0, _share_words(remedy, gap))
            cause.confidence = share
            cause.measured = "coherence"
        elif cause.own_share is not None and gap is not None and cause.code in COHERENCE_FAMILY:
            why = (gap.get("not_measured") or {}).get(cause.code, "not measured")
            cause.evidence.append(
                f"its share of the coherence drop was not measured ({why}); at most the "
                f"{_pct(unexplained, 0)} that no measured remedy explains"
            )
            cause.confidence = cause.own_share * unexplained
            cause.measured = "own, bounded by the unexplained coherence drop"
        elif cause.own_share is not None:
            cause.confidence = cause.own_share
            cause.measured = "own"
        else:
            cause.confidence = 0.0
            cause.measured = None


def _ruled_out_by_attribution(attribution: Mapping[str, Any] | None, codes: set[str]) -> list[str]:
    """Remedies that recover none of the coherence drop, with the number."""
    gap = _coherence_gap(attribution)
    out: list[str] = []
    if gap is None:
        return out
    for remedy in gap.get("remedies", []):
        if remedy.get("explains_nothing") and remedy.get("code") not in codes:
            out.append(
                f"{TITLES[str(remedy['code'])].split(':')[0].lower()} as the cause of the "
                f"coherence drop: {_share_words(remedy, gap)}"
            )
    return out


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
            blocklist = f" --blocklist {q(DEFAULT_BLOCKLIST)}"
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
    name: str,
    results: Mapping[str, CheckResult],
    facts: Facts | None = None,
    attribution: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The diagnosis of one dataset from its check results and their attribution.

    Candidates come from failed checks; they are ranked by the share of the gap their
    remedy recovers (:mod:`lvmqa.attribution`), never by hand-set weights.
    """
    facts = facts or Facts(name=name)
    causes: list[Cause] = []
    if (c := _normalization(results)) is not None:
        causes.append(c)
    causes += _alignment(results)
    causes += _duplicates_and_index(results)
    for rule in (_ordering, _dilution, _leakage, _evaluation):
        if (c := rule(results)) is not None:
            causes.append(c)
    _score(causes, attribution)
    causes.sort(key=lambda cause: -cause.confidence)

    failed = [cid for cid, r in results.items() if r.status == "failed"]
    errored = [
        cid
        for cid, r in results.items()
        if r.status == "error" and not r.metrics.get("evaluation_fault")
    ]
    skipped = [cid for cid, r in results.items() if r.status == "skipped"]
    unexplained = [cid for cid in failed if cid in ("coherence", "coherence_drift")]
    if failed and not causes:
        gap = _coherence_gap(attribution)
        evidence = [
            f"checks failed without a candidate cause of their own: {', '.join(failed)} — "
            "read their details"
        ]
        if gap is not None:
            evidence.append(
                "no remedy lvmqa knows recovers the coherence drop "
                f"({_f(gap.get('current_mean'), 3)} vs {_f(gap.get('reference_mean'), 3)}): "
                "the content itself differs from the baseline"
            )
        if unexplained and _m(results, "sequence_integrity").get("windows_checked") in (None, 0):
            evidence.append(
                "without article ids lvmqa cannot tell an ordering defect from a change of "
                "content: map the file's id keys with [datasets.NAME.keys] and re-run"
            )
        code = "low_coherence_dilution" if unexplained else "healthy"
        causes.append(Cause(code, 0.0, evidence))
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
    codes = {c.code for c in causes}
    return {
        "verdict": verdict,
        "headline": headline,
        "root_causes": [c.to_json() for c in causes],
        "rules_out": _ruled_out_by_attribution(attribution, codes) + _rules_out(results),
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
