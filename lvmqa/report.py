"""Results JSON, the diagnosis report (HTML and Markdown), per-check extras and the summary.

``build_results`` is the single source for the JSON file, the pytest-html summary, the
standalone HTML page and the Markdown rendering, so all of them agree. The renderers read
nothing but that JSON (``lvmqa report RESULTS.json`` reproduces the report outside
pytest): every section takes what it needs from a check's ``metrics`` and ``details``.

Content is built once as a small tree of blocks (headings, paragraphs, tables, code,
plots, folds) and written out twice, as HTML and as GitHub-flavoured Markdown. Every
string from the data goes through one escaping function per format: texts come from
untrusted datasets. A section that meets data of an unexpected shape says so in the
report instead of failing the run.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvmqa import __version__
from lvmqa.atomic import write_text_atomic
from lvmqa.results import CheckResult, to_jsonable

# ============================================================================ results JSON


def build_results(session: Any) -> dict[str, Any]:
    from lvmqa.checks import CHECKS
    from lvmqa.diagnosis import diagnose

    datasets: dict[str, Any] = {}
    for name in session.requested:
        ctx = session.context(name)
        ds = ctx.dataset
        ran = session.results.get(name, {})
        checks = {cid: ran[cid].to_json() for cid in CHECKS if cid in ran}
        datasets[name] = {
            "path": str(ds.path),
            # None unless a report asked for the hash (a full read of the file).
            "sha256": ds.sha256_if_requested(),
            "n_sequences": ds.n,
            "dim": ds.dim,
            "kind": ds.kind,
            "encoder": ctx.encoder_name(),
            "baseline": (ctx.baseline().name if ctx.baseline() else None),
            "id_keys": dict(getattr(ds, "id_keys", {}) or {}),
            "unused_keys": dict(getattr(ds, "unused_keys", {}) or {}),
            "checks": checks,
        }
        ran_checks = {cid: ran[cid] for cid in checks}
        attribution = _safe_attribution(ctx, ran_checks)
        if attribution:
            datasets[name]["attribution"] = to_jsonable(attribution)
        datasets[name]["diagnosis"] = _safe_diagnosis(
            diagnose, name, ran_checks, ctx, datasets[name].get("attribution")
        )
        # A report-only section that scores every row: never for the terminal summary.
        wanted = getattr(session, "report_requested", True)
        preview = _filter_preview(ctx, datasets[name]["diagnosis"]) if wanted else None
        if preview is not None:
            datasets[name]["filter"] = preview
    return {"lvmqa_version": __version__, "datasets": datasets}


_FILTERABLE_CAUSES = {"low_coherence_dilution", "ordering_or_boundary", "duplicates"}


def _filter_preview(ctx: Any, diagnosis: dict[str, Any]) -> dict[str, Any] | None:
    """What `lvmqa filter` would do, when the diagnosis points at filterable rows.

    A preview only (nothing is written); any failure leaves the results without it.
    """
    codes = {c.get("code") for c in diagnosis.get("root_causes", [])}
    if not codes & _FILTERABLE_CAUSES or ctx.dataset.kind != "sequences":
        return None
    try:
        from lvmqa.filtering import filter_preview

        return filter_preview(ctx.dataset, source=ctx.source_bank())
    except Exception:  # the preview is a courtesy; the checks' results must still be written
        return None


# Attribution re-measures the data under each remedy; it runs only when a check that
# a remedy could explain failed (a clean dataset costs nothing more).
_ATTRIBUTED_CHECKS = (
    "coherence",
    "coherence_drift",
    "sequence_integrity",
    "duplicates",
    "text_quality",
    "split_leakage",
)


def _safe_attribution(ctx: Any, ran: dict[str, CheckResult]) -> dict[str, Any] | None:
    """The counterfactual attribution; a failure there leaves the results without it."""
    if not any(ran[c].status == "failed" for c in _ATTRIBUTED_CHECKS if c in ran):
        return None
    if ctx.dataset.kind != "sequences":
        return None
    try:
        from lvmqa.attribution import attribute

        return attribute(ctx, ran)
    except Exception as exc:  # the checks' results must still be written
        if getattr(ctx.options, "debug", False):
            raise
        return {"error": f"{type(exc).__name__}: {exc}"}


def _safe_diagnosis(
    diagnose: Callable[..., dict[str, Any]],
    name: str,
    ran: dict[str, CheckResult],
    ctx: Any = None,
    attribution: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A bug in the rules must not cost the user the JSON and the report of every check."""
    try:
        from lvmqa.diagnosis import facts_from_context

        return diagnose(
            name, ran, facts_from_context(ctx) if ctx is not None else None, attribution
        )
    except Exception as exc:
        return {
            "verdict": "error",
            "headline": f"the diagnosis rules failed ({type(exc).__name__}: {exc}); "
            "the check results below are complete",
            "root_causes": [],
            "rules_out": [],
            "actions": [],
        }


def write_json(results: dict[str, Any], path: Path) -> None:
    write_text_atomic(path, json.dumps(results, indent=2, sort_keys=False, allow_nan=False) + "\n")


def load_results(path: Path) -> dict[str, Any]:
    from lvmqa.errors import LvmqaError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LvmqaError("results file not found", path=path) from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise LvmqaError("not a JSON results file", path=path) from None
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict):
        raise LvmqaError(
            "not an lvmqa results file",
            path=path,
            key="datasets",
            expected="an object with 'datasets'",
        )
    return data


# ================================================================================ blocks


@dataclass(frozen=True)
class Cell:
    """A table cell; ``cls`` is one of ok / bad / warn / num / code / text."""

    text: str
    cls: str = ""


CellLike = str | Cell


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    anchor: str = ""


@dataclass(frozen=True)
class Para:
    text: str
    label: str = ""
    cls: str = ""


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[CellLike]]
    caption: str = ""


@dataclass(frozen=True)
class Code:
    text: str
    lang: str = "bash"


@dataclass(frozen=True)
class Item:
    text: str
    label: str = ""
    cls: str = ""
    children: tuple[Block, ...] = ()


@dataclass(frozen=True)
class Items:
    items: Sequence[Item]
    ordered: bool = False


@dataclass(frozen=True)
class Plot:
    """A lazily drawn image: Markdown never draws it, HTML draws it once."""

    alt: str
    make: Callable[[], str | None]


@dataclass(frozen=True)
class Fold:
    """A ``<details>`` element. ``markdown``: "fold" keeps it, "flat" shows the content
    without the fold, "hide" leaves it out of the Markdown (e.g. raw metric dumps)."""

    summary: str
    blocks: Sequence[Block]
    open: bool = False
    markdown: str = "fold"


@dataclass(frozen=True)
class Box:
    """A visually framed group (one check, the executive summary)."""

    blocks: Sequence[Block]
    cls: str = ""
    anchor: str = ""


Block = Heading | Para | Table | Code | Items | Plot | Fold | Box

# ====================================================================== formatting helpers

STATUS_MARK = {"passed": "✅", "failed": "❌", "skipped": "⏭️", "error": "⚠️"}
STATUS_WORD = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIPPED", "error": "ERROR"}
STATUS_CLASS = {"passed": "ok", "failed": "bad", "skipped": "muted", "error": "warn"}
DASH = "—"
PHASE_TITLES = {
    "P0": "P0: Space alignment",
    "P1": "P1: Data triage",
    "P2": "P2: Smoke training",
}
# A bin of the distribution table is marked only when its share moved by at least this
# much; smaller moves are shown unmarked (they are within the noise of a 12-bin histogram
# of a few thousand autocorrelated pairs, and the drift verdict has its own test).
BIN_MARK_PP = 2.0
MAX_TABLE_ROWS = 12
MAX_TEXT_CHARS = 220
LOWEST_ARTICLES_SHOWN = 5


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def _f(value: Any, digits: int = 4) -> str:
    """A float with fixed decimals, an int with separators, anything else as text."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    number = _num(value)
    if number is None:
        return DASH if isinstance(value, float) else _clip(str(value))
    if number != 0 and abs(number) < 10 ** (-digits):
        return f"{number:.2e}"
    return f"{number:.{digits}f}"


def _pct(share: Any, digits: int = 2) -> str:
    number = _num(share)
    return DASH if number is None else f"{100 * number:.{digits}f}%"


def _pp(value: Any) -> str:
    number = _num(value)
    return DASH if number is None else f"{number:+.2f}pp"


def _signed_pct(value: Any) -> str:
    number = _num(value)
    return DASH if number is None else f"{number:+.1f}%"


def _ci(pair: Any, fmt: Callable[[Any], str]) -> str:
    if isinstance(pair, (list, tuple)) and len(pair) == 2:
        return f"{fmt(pair[0])} … {fmt(pair[1])}"
    return DASH


def _clip(text: Any, limit: int = MAX_TEXT_CHARS) -> str:
    value = " ".join(str(text).split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _metric_value(key: str, value: Any) -> str:
    """Format a metric for the all-metrics table: shares also as percentages."""
    if isinstance(value, list):
        shown = ", ".join(_f(v) for v in value[:12])
        return f"[{shown}{', …' if len(value) > 12 else ''}]"
    if isinstance(value, dict):
        return _clip(json.dumps(value, default=str), 200)
    if key.endswith("_share") and _num(value) is not None:
        return f"{_f(value)} ({_pct(value)})"
    return _f(value)


def _mark(ok: bool | None) -> str:
    return "" if ok is None else ("✅" if ok else "❌")


def _cell_mark(text: str, ok: bool | None) -> Cell:
    if ok is None:
        return Cell(text)
    return Cell(f"{text} {_mark(ok)}", "ok" if ok else "bad")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _pretty(code: str) -> str:
    return code.replace("_", " ").strip().capitalize()


def _anchor(*parts: str) -> str:
    return "lvmqa-" + "-".join(re.sub(r"[^A-Za-z0-9_-]+", "_", p) for p in parts)


# ========================================================================== dataset view


@dataclass
class View:
    """One dataset's results plus the whole results dict (for the baseline's entry)."""

    name: str
    data: Mapping[str, Any]
    results: Mapping[str, Any] = field(default_factory=dict)

    @property
    def checks(self) -> dict[str, Any]:
        return _dict(self.data.get("checks"))

    def check(self, check_id: str) -> dict[str, Any] | None:
        found = self.checks.get(check_id)
        return found if isinstance(found, dict) else None

    def metrics(self, check_id: str) -> dict[str, Any]:
        return _dict((self.check(check_id) or {}).get("metrics"))

    def details(self, check_id: str) -> dict[str, Any]:
        return _dict((self.check(check_id) or {}).get("details"))

    @property
    def baseline_name(self) -> str | None:
        name = self.data.get("baseline") or self.metrics("coherence_drift").get("baseline")
        return str(name) if name else None

    def related(self, name: str | None) -> View | None:
        datasets = _dict(self.results.get("datasets"))
        if name and isinstance(datasets.get(name), dict):
            return View(name, datasets[name], self.results)
        return None


def _check_titles() -> dict[str, tuple[str, str]]:
    """check id -> (phase, title), from the check registry."""
    try:
        from lvmqa.checks import CHECKS
    except Exception:  # rendering a JSON file must not depend on the check modules
        return {}
    return {cid: (phase, title) for cid, (phase, _func, title) in CHECKS.items()}


# ====================================================================== executive summary


def _status_counts(view: View) -> dict[str, int]:
    counts: dict[str, int] = {}
    for check in view.checks.values():
        status = str(_dict(check).get("status", "error"))
        counts[status] = counts.get(status, 0) + 1
    return counts


def _counts_text(counts: Mapping[str, int]) -> str:
    total = sum(counts.values())
    parts = [f"{counts[s]} {s}" for s in ("passed", "failed", "error", "skipped") if counts.get(s)]
    return f"{total} checks: " + ", ".join(parts) if total else "no checks ran"


def _verdict_class(verdict: str) -> str:
    return {"healthy": "ok", "failed": "bad"}.get(verdict, "warn")


def _problem_text(
    view: View, diag: Mapping[str, Any], titles: Mapping[str, tuple[str, str]]
) -> str:
    headline = diag.get("headline")
    if headline:
        return str(headline)
    failing = [cid for cid, c in view.checks.items() if _dict(c).get("status") == "failed"]
    broken = [cid for cid, c in view.checks.items() if _dict(c).get("status") == "error"]
    if not failing and not broken:
        return "no check failed"
    parts = []
    if failing:
        parts.append("failed: " + ", ".join(titles.get(c, ("", c))[1] for c in failing))
    if broken:
        parts.append("could not run: " + ", ".join(titles.get(c, ("", c))[1] for c in broken))
    return "; ".join(parts)


def _root_cause_items(diag: Mapping[str, Any]) -> list[Item]:
    causes = [c for c in _list(diag.get("root_causes")) if isinstance(c, dict)]
    causes.sort(key=lambda c: -(_num(c.get("confidence")) or 0.0))
    items = []
    for cause in causes:
        code = str(cause.get("code", "unknown"))
        title = str(cause.get("title") or _pretty(code))
        confidence = _num(cause.get("confidence"))
        head = f"{title} ({code})"
        if confidence is not None:
            head += f" — confidence {confidence:.0%}"
        evidence = [Item(str(e)) for e in _list(cause.get("evidence"))]
        children: tuple[Block, ...] = (Items(evidence, ordered=True),) if evidence else ()
        items.append(Item(head, cls="bad" if code != "healthy" else "ok", children=children))
    return items


_COMMAND_START = re.compile(r"^(\$ |lvmqa |pytest |python|\./|\.venv/|pip |git |uv )")


def _action_blocks(diag: Mapping[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    for number, action in enumerate(_list(diag.get("actions")), start=1):
        if isinstance(action, dict):
            title = action.get("title") or action.get("summary") or f"Action {number}"
            blocks.append(Para(str(title), label=f"{number}."))
            for key in ("why", "detail", "description"):
                if action.get(key):
                    blocks.append(Para(str(action[key]), cls="note"))
            command = action.get("command")
            if isinstance(command, list):
                command = "\n".join(str(c) for c in command)
            if command:
                blocks.append(Code(str(command)))
        elif isinstance(action, str):
            if _COMMAND_START.match(action):
                blocks.append(Code(action.removeprefix("$ ")))
            else:
                blocks.append(Para(action, label=f"{number}."))
    return blocks


def executive_summary(view: View, titles: Mapping[str, tuple[str, str]]) -> list[Block]:
    diag = _dict(view.data.get("diagnosis"))
    verdict = str(diag.get("verdict", "unknown"))
    counts = _status_counts(view)
    blocks: list[Block] = [
        Heading(3, "Executive summary", _anchor(view.name, "summary")),
        Para(
            _problem_text(view, diag, titles),
            label="Problem",
            cls=f"headline {_verdict_class(verdict)}",
        ),
        Para(_counts_text(counts), label="Checks"),
    ]
    numbers = _key_numbers(view)
    if numbers:
        blocks.append(Items(numbers))
    causes = _root_cause_items(diag)
    if causes:
        label = "Root cause" if len(causes) == 1 else "Root causes, most likely first"
        blocks += [Heading(4, label), Items(causes, ordered=True)]
    blocks += attribution_blocks(view)
    actions = _action_blocks(diag)
    if actions:
        blocks += [Heading(4, "Solution: recommended actions"), *actions]
    rules_out = [Item(str(r)) for r in _list(diag.get("rules_out"))]
    if rules_out:
        blocks += [Heading(4, "What the checks rule out"), Items(rules_out)]
    return [Box(blocks, cls=f"summary {_verdict_class(verdict)}")]


def attribution_blocks(view: View) -> list[Block]:
    """What each remedy, applied virtually, recovers of the coherence drop (the
    measurement that ranks the causes; docs/diagnosis.md)."""
    gap = _dict(_dict(view.data.get("attribution")).get("coherence"))
    remedies = [_dict(r) for r in _list(gap.get("remedies"))]
    if not gap.get("gap_significant") or not remedies:
        return []
    rows: list[list[CellLike]] = []
    for r in remedies:
        lo, hi = ([*_list(r.get("recovered_share_ci")), None, None])[:2]
        share = _num(r.get("recovered_share"))
        cls = "bad" if share is not None and share >= 0.5 else ""
        rows.append(
            [
                str(r.get("remedy", r.get("code", "")))
                + (" (estimate)" if r.get("estimate") else ""),
                Cell(_pct(share, 0), cls or "num"),
                Cell(f"{_pct(_num(lo), 0)} – {_pct(_num(hi), 0)}", "num"),
                Cell(_pct(_num(r.get("recovered_share_alone")), 0), "num"),
                "yes" if r.get("candidate") else "no (its check passed)",
            ]
        )
    statistic = str(gap.get("statistic", "file_order")).replace("_", "-")
    against = "the baseline" if gap.get("reference") == "baseline" else "all remedies together"
    caption = (
        f"{statistic} coherence {_f(gap.get('current_mean'))} vs {_f(gap.get('reference_mean'))}"
        f" for {against}; shares are Shapley values over the candidate remedies, 95 % "
        "cluster-bootstrap intervals"
        + ("; measured on held-out pairs" if any(r.get("held_out") for r in remedies) else "")
    )
    return [
        Heading(4, "What each remedy recovers of the coherence drop"),
        Table(["remedy", "share", "95 % CI", "alone", "candidate"], rows, caption),
    ]


def _key_numbers(view: View) -> list[Item]:
    """The seed's headline numbers, where the checks produced them: training outcome
    against the trivial predictor and the baseline dataset, and coherence against the
    baseline (file order as the origin measured it, and true article order)."""
    items: list[Item] = []
    smoke = view.metrics("smoke_train")
    if _num(smoke.get("val_cosine_best")) is not None:
        text = f"smoke val_cosine {_f(smoke['val_cosine_best'])}"
        if _num(smoke.get("baseline_mean_context_cosine")) is not None:
            text += f" vs {_f(smoke['baseline_mean_context_cosine'])} for the mean-of-context "
            text += "predictor"
        if _num(smoke.get("baseline_dataset_val_cosine_best")) is not None:
            text += (
                f"; {_f(smoke['baseline_dataset_val_cosine_best'])} on the baseline dataset"
                f" ({_signed_pct(smoke.get('val_cosine_drift_pct_vs_baseline'))})"
            )
        items.append(Item(text, label="In-distribution"))
    ood = view.metrics("ood_eval")
    if _num(ood.get("ood_cosine")) is not None:
        text = f"cosine {_f(ood['ood_cosine'])}"
        if _num(ood.get("ood_baseline_mean_context_cosine")) is not None:
            text += f" vs {_f(ood['ood_baseline_mean_context_cosine'])} for the mean-of-context "
            text += "predictor"
        items.append(Item(text, label="OOD"))
    drift = view.metrics("coherence_drift")
    for name, label in (
        ("file_order", "File-order coherence"),
        ("article_order", "Article-order coherence"),
    ):
        if _num(drift.get(f"{name}_current_mean")) is None:
            continue
        items.append(
            Item(
                f"{_f(drift[f'{name}_current_mean'])} vs {_f(drift.get(f'{name}_baseline_mean'))} "
                f"on the baseline ({_signed_pct(drift.get(f'{name}_mean_drift_pct'))}); low share "
                f"{_pct(drift.get(f'{name}_current_low_share'), 1)} vs "
                f"{_pct(drift.get(f'{name}_baseline_low_share'), 1)} — "
                f"{drift.get(f'{name}_drift_verdict', DASH)} drift",
                label=label,
            )
        )
    return items


def _overview_table(view: View, titles: Mapping[str, tuple[str, str]]) -> Table:
    rows: list[list[CellLike]] = []
    for cid in _ordered_check_ids(view, titles):
        check = _dict(view.checks.get(cid))
        status = str(check.get("status", "error"))
        phase, title = titles.get(cid, ("", cid))
        rows.append(
            [
                phase,
                Cell(title),
                Cell(f"{STATUS_MARK.get(status, '?')} {status}", STATUS_CLASS.get(status, "")),
                Cell(_clip(check.get("message", ""), 180), "text"),
            ]
        )
    return Table(["phase", "check", "status", "interpretation"], rows)


def _ordered_check_ids(view: View, titles: Mapping[str, tuple[str, str]]) -> list[str]:
    known = [cid for cid in titles if cid in view.checks]
    return known + [cid for cid in view.checks if cid not in titles]


# ========================================================================= check sections


def _gates_table(check: Mapping[str, Any]) -> Table | None:
    rows: list[list[CellLike]] = []
    for gate in _list(check.get("gates")):
        if not isinstance(gate, dict):
            continue
        passed = gate.get("passed")
        rows.append(
            [
                str(gate.get("name", "")),
                Cell(str(gate.get("metric", "")), "code"),
                Cell(_f(gate.get("value")), "num"),
                f"{gate.get('op', '')} {_f(gate.get('threshold'))}",
                str(gate.get("kind", "")),
                _cell_mark("pass" if passed else "fail", bool(passed)),
            ]
        )
    if not rows:
        return None
    return Table(["gate", "metric", "value", "threshold", "kind", "result"], rows)


def _metrics_table(metrics: Mapping[str, Any]) -> Table | None:
    rows: list[list[CellLike]] = [
        [Cell(key, "code"), Cell(_metric_value(key, value), "num")]
        for key, value in metrics.items()
    ]
    return Table(["key", "value"], rows) if rows else None


def _records_table(records: Sequence[Any], caption: str = "") -> Table | None:
    """A list of flat dicts as a table (union of keys, nested values as JSON)."""
    dicts = [r for r in records if isinstance(r, dict)][:MAX_TABLE_ROWS]
    if not dicts:
        return None
    keys: list[str] = []
    for record in dicts:
        keys += [k for k in record if k not in keys]
    rows = [
        [
            Cell(
                _metric_value(k, r.get(k)) if not isinstance(r.get(k), str) else _clip(r[k]), "text"
            )
            for k in keys
        ]
        for r in dicts
    ]
    return Table(keys, rows, caption)


def _capped(table: Table, visible: int = 8) -> list[Block]:
    """The first rows of a long table; the rest folded (and left out of Markdown)."""
    if len(table.rows) <= visible + 2:
        return [table]
    rest = Table(table.headers, table.rows[visible:])
    return [
        Table(table.headers, table.rows[:visible], table.caption),
        Fold(f"{len(table.rows) - visible} more rows", [rest], markdown="hide"),
    ]


def _generic_details(details: Mapping[str, Any], used: Iterable[str] = ()) -> list[Block]:
    """Details that no specific section consumed: tables of records, or key/value rows."""
    skip = set(used)
    blocks: list[Block] = []
    scalars: list[list[CellLike]] = []
    for key, value in details.items():
        if key in skip:
            continue
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            table = _records_table(value, caption=key)
            if table:
                blocks.append(table)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value) and value:
            blocks.append(
                Items(
                    [
                        Item(_clip(v), label=key if i == 0 else "")
                        for i, v in enumerate(value[:MAX_TABLE_ROWS])
                    ]
                )
            )
        else:
            scalars.append([Cell(key, "code"), Cell(_metric_value(key, value), "text")])
    if scalars:
        blocks.insert(0, Table(["detail", "value"], scalars))
    return blocks


SectionBuilder = Callable[[Mapping[str, Any], View], list[Block]]


def check_section(
    check_id: str, check: Mapping[str, Any], view: View, titles: Mapping[str, tuple[str, str]]
) -> Box:
    """One check: status line, its one-line interpretation, specific tables and plots,
    gates, and (folded) every metric."""
    status = str(check.get("status", "error"))
    title = titles.get(check_id, ("", _pretty(check_id)))[1]
    mark = STATUS_MARK.get(status, "?")
    blocks: list[Block] = [
        Heading(4, f"{mark} CHECK: {title} ({check_id}) — {STATUS_WORD.get(status, status)}"),
    ]
    message = str(check.get("message") or "")
    if message:
        label = {"skipped": "Skipped", "error": "Could not run"}.get(status, "Interpretation")
        blocks.append(Para(message, label=label, cls=STATUS_CLASS.get(status, "")))
    metrics = _dict(check.get("metrics"))
    details = _dict(check.get("details"))
    builder = SECTION_BUILDERS.get(check_id)
    if builder is not None and (metrics or details):
        try:
            blocks += builder(check, view)
        except Exception as exc:  # data of an unexpected shape must not break the report
            blocks.append(
                Para(
                    f"this section could not be laid out ({type(exc).__name__}: "
                    f"{exc}); the raw metrics follow",
                    cls="warn",
                )
            )
    gates = _gates_table(check)
    if gates:
        passed = sum(1 for g in _list(check.get("gates")) if _dict(g).get("passed"))
        total = len(gates.rows)
        # Failing gates are the evidence: show them; a wall of passing gates is noise.
        all_pass = passed == total
        blocks.append(
            Fold(
                f"Gates: {passed} of {total} passed",
                [gates],
                open=not all_pass,
                markdown="hide" if all_pass else "flat",
            )
        )
    raw: list[Block] = []
    table = _metrics_table(metrics)
    if table:
        raw.append(table)
    raw += _generic_details(details)
    if raw:
        blocks.append(Fold(f"All metrics and details of {check_id}", raw, markdown="hide"))
    return Box(blocks, cls=f"check {status}", anchor=_anchor(view.name, check_id))


# -------------------------------------------------------------------------------- P0


def _fingerprint(check: Mapping[str, Any], view: View) -> list[Block]:
    m, d = _dict(check.get("metrics")), _dict(check.get("details"))
    rows: list[list[CellLike]] = []
    if m.get("encoder") is not None:
        rows.append(["encoder", Cell(str(m["encoder"]), "code")])
    if "dim" in m:
        same = m.get("dataset_dim") is None or m.get("dim") == m.get("dataset_dim")
        rows.append(
            [
                "dimension",
                _cell_mark(f"{_f(m.get('dim'))} (dataset {_f(m.get('dataset_dim'))})", same),
            ]
        )
    if "norm_min" in m or "norm_max" in m:
        rows.append(["canary norms", f"{_f(m.get('norm_min'), 6)} – {_f(m.get('norm_max'), 6)}"])
    if m.get("fingerprint"):
        rows.append(["fingerprint", Cell(str(m["fingerprint"]), "code")])
    pinned = m.get("pinned_fingerprint")
    if pinned:
        ok = bool(m.get("fingerprint_matches"))
        rows.append(
            [
                "pinned",
                _cell_mark(
                    "matches the pinned value" if ok else f"differs from pinned {pinned}", ok
                ),
            ]
        )
    elif "fingerprint" in m:
        name = m.get("encoder") or "ENCODER"
        rows.append(
            [
                "pinned",
                Cell(
                    f"not pinned — run `lvmqa fingerprint {name}` and set "
                    f"fingerprint in [encoders.{name}]",
                    "warn",
                ),
            ]
        )
    if d.get("scheme"):
        rows.append(["scheme", str(d["scheme"])])
    if m.get("ambiguous_values"):
        rows.append(["values near a rounding edge", _f(m["ambiguous_values"])])
    blocks: list[Block] = [Table(["property", "value"], rows)] if rows else []
    modules = _list(d.get("modules"))
    if modules:
        blocks.append(Para("encoder pipeline modules:", cls="note"))
        blocks.append(Code("\n".join(str(x) for x in modules), lang="text"))
    return blocks


def _norms(check: Mapping[str, Any], view: View) -> list[Block]:
    m = _dict(check.get("metrics"))
    rows: list[list[CellLike]] = []
    for part in ("target", "context"):
        if f"{part}_norm_mean" not in m:
            continue
        bad = [_num(m.get(f"{part}_{b}_count")) for b in ("nan", "inf", "zero")]
        rows.append(
            [
                f"{part}s",
                Cell(_f(m.get(f"{part}_norm_mean"), 6), "num"),
                Cell(_f(m.get(f"{part}_norm_std"), 6), "num"),
                Cell(_f(m.get(f"{part}_norm_min"), 6), "num"),
                Cell(_f(m.get(f"{part}_norm_max"), 6), "num"),
                *[
                    _cell_mark(_f(m.get(f"{part}_{b}_count")), (v or 0) == 0)
                    for b, v in zip(("nan", "inf", "zero"), bad, strict=True)
                ],
            ]
        )
    blocks: list[Block] = []
    if rows:
        blocks.append(
            Table(["vectors", "mean norm", "std", "min", "max", "NaN", "Inf", "zero"], rows)
        )
    flagged = _list(_dict(check.get("details")).get("flagged_rows"))
    if flagged:
        blocks.append(
            Para(", ".join(str(r) for r in flagged[:20]), label="first flagged rows", cls="note")
        )
    return blocks


_ALIGNMENT_VERDICTS = {
    "aligned": ("texts and vectors are aligned", True),
    "shift": ("texts are shifted against their vectors", False),
    "wrong_encoder": ("vectors come from another encoder (same texts, different space)", False),
    "misaligned": ("texts are paired with the wrong rows", False),
    "partial": ("partly misaligned", False),
}


def _alignment(check: Mapping[str, Any], view: View) -> list[Block]:
    m, d = _dict(check.get("metrics")), _dict(check.get("details"))
    diagnosis = str(m.get("diagnosis", ""))
    text, ok = _ALIGNMENT_VERDICTS.get(diagnosis, (diagnosis or DASH, None))
    if diagnosis == "shift" and _num(m.get("best_shift")) is not None:
        text = (
            f"texts shifted by {int(m['best_shift']):+d} rows "
            f"({_pct(m.get('shift_explained_share'), 0)} of sampled rows)"
        )
    rows: list[list[CellLike]] = [
        ["verdict", _cell_mark(text, ok)],
        ["texts re-encoded", _f(m.get("sample_size"))],
        [
            "cosine to own vector: mean / p5 / min",
            f"{_f(m.get('cosine_mean'))} / {_f(m.get('cosine_p5'))} / {_f(m.get('cosine_min'))}",
        ],
        [
            "cosine to random rows (null): mean / p99",
            f"{_f(m.get('null_cosine_mean'))} / {_f(m.get('null_cosine_p99'))}",
        ],
        [
            "rows aligned / shifted / found elsewhere / unmatched",
            " / ".join(
                _pct(m.get(k), 1)
                for k in ("aligned_share", "shifted_share", "displaced_share", "unmatched_share")
            ),
        ],
    ]
    if m.get("geometry_correlation") is not None:
        rows.append(
            [
                "geometry agreement (Mantel r, p)",
                f"{_f(m.get('geometry_correlation'), 3)} (p = {_f(m.get('geometry_p_value'), 3)})",
            ]
        )
    blocks: list[Block] = [Table(["alignment", "value"], rows)]
    segments = [s for s in _list(d.get("segments")) if isinstance(s, dict)]
    if len(segments) > 1 or (segments and str(segments[0].get("offset")) != "0"):
        blocks.append(
            Table(
                ["matched offset", "first row", "last row", "sampled rows"],
                [
                    [
                        str(s.get("offset")),
                        _f(s.get("first_row")),
                        _f(s.get("last_row")),
                        _f(s.get("rows")),
                    ]
                    for s in segments[:MAX_TABLE_ROWS]
                ],
                caption="runs of sampled rows by the offset at which their text matches a vector",
            )
        )
    worst = [w for w in _list(d.get("worst_rows")) if isinstance(w, dict)]
    if worst and diagnosis != "aligned":
        blocks.append(
            Table(
                ["row", "cosine", "matched offset", "text"],
                [
                    [
                        _f(w.get("row")),
                        Cell(_f(w.get("cosine")), "num"),
                        str(w.get("matched_offset")),
                        Cell(_clip(w.get("text", "")), "text"),
                    ]
                    for w in worst[:6]
                ],
                caption="rows whose text is furthest from its stored vector",
            )
        )
    return blocks


_RECALL_KEY = re.compile(r"^(exact_dup_aware_|exact_|dup_aware_|)recall_at_(\d+)$")


def _oracle_recall(check: Mapping[str, Any], view: View) -> list[Block]:
    m = _dict(check.get("metrics"))
    table: dict[int, dict[str, Any]] = {}
    for key, value in m.items():
        found = _RECALL_KEY.match(key)
        if found:
            table.setdefault(int(found.group(2)), {})[found.group(1)] = value
    gates = {g.get("metric"): g for g in _list(check.get("gates")) if isinstance(g, dict)}
    variants = [("", "strict"), ("dup_aware_", "duplicate-aware")]
    if any("exact_" in row for row in table.values()):
        variants += [("exact_", "exact search"), ("exact_dup_aware_", "exact, duplicate-aware")]
    rows: list[list[CellLike]] = []
    for k in sorted(table):
        row: list[CellLike] = [f"recall@{k}"]
        for prefix, _name in variants:
            value = table[k].get(prefix)
            gate = gates.get(f"{prefix}recall_at_{k}")
            ok = bool(gate.get("passed")) if gate else None
            row.append(_cell_mark(_f(value), ok))
        rows.append(row)
    blocks: list[Block] = []
    if rows:
        caption = (
            f"{_f(m.get('n_queries'))} self-queries against {_f(m.get('n_rows'))} "
            f"targets; index {m.get('index_factory', 'Flat')} "
            f"({m.get('index_kind', 'exact')}"
            + (f", nprobe {m['nprobe']}" if m.get("nprobe") is not None else "")
            + ")"
        )
        blocks.append(Table(["k", *[name for _p, name in variants]], rows, caption=caption))
    strict, aware = _num(m.get("recall_at_1")), _num(m.get("dup_aware_recall_at_1"))
    if strict is not None and aware is not None and aware - strict > 1e-9:
        blocks.append(
            Para(
                f"strict recall@1 is {strict:.4f}, not 1, only through ties: "
                f"{_pct(m.get('exact_duplicate_share'))} of targets repeat another row's vector "
                f"exactly ({_pct(m.get('query_in_duplicate_group_share'))} of the queries sit in "
                "such a group), and an exact search may return any copy first. Counting any "
                f"identical vector as a hit gives {aware:.4f}. This measures duplicates, not "
                "quantisation or a space mismatch.",
                label="Why recall@1 < 1",
                cls="note",
            )
        )
    if m.get("index_note"):
        blocks.append(Para(str(m["index_note"]), cls="note"))
    return blocks


def _duplicates(check: Mapping[str, Any], view: View) -> list[Block]:
    m, d = _dict(check.get("metrics")), _dict(check.get("details"))
    rows: list[list[CellLike]] = []
    if "exact_duplicate_share" in m:
        rows.append(
            [
                "exact duplicate targets",
                Cell(_pct(m["exact_duplicate_share"]), "num"),
                f"{_f(m.get('exact_duplicate_rows'))} redundant rows in "
                f"{_f(m.get('exact_duplicate_groups'))} groups, largest "
                f"{_f(m.get('largest_exact_group'))}",
            ]
        )
    if "near_duplicate_share" in m:
        how = (
            "all rows searched"
            if m.get("near_duplicate_exhaustive")
            else f"{_f(m.get('near_duplicate_queries'))} sampled rows, 95% CI "
            f"{_pct(m.get('near_duplicate_share_ci_low'))} … "
            f"{_pct(m.get('near_duplicate_share_ci_high'))}"
        )
        rows.append(
            [
                f"near duplicates (cosine ≥ {_f(m.get('near_duplicate_threshold'), 3)})",
                Cell(_pct(m["near_duplicate_share"]), "num"),
                how,
            ]
        )
    if "duplicate_text_share" in m:
        rows.append(
            [
                "repeated texts",
                Cell(_pct(m["duplicate_text_share"]), "num"),
                f"{_f(m.get('duplicate_text_groups'))} groups",
            ]
        )
    if "duplicate_text_vector_mismatch_share" in m:
        share = _num(m["duplicate_text_vector_mismatch_share"]) or 0.0
        rows.append(
            [
                "same text, different vector",
                _cell_mark(_pct(share), share == 0),
                "a pairing smell: texts and vectors may be misaligned" if share else "",
            ]
        )
    blocks: list[Block] = [Table(["duplicates", "share", "detail"], rows)] if rows else []
    groups = [g for g in _list(d.get("exact_groups")) if isinstance(g, dict)]
    if groups:
        blocks += _capped(
            Table(
                ["group size", "rows", "texts"],
                [
                    [
                        _f(g.get("size")),
                        ", ".join(str(r) for r in _list(g.get("rows"))[:6]),
                        Cell(" ‖ ".join(_clip(t, 90) for t in _list(g.get("texts")) if t), "text"),
                    ]
                    for g in groups[:10]
                ],
                caption="largest groups of identical target vectors",
            ),
            visible=4,
        )
    pairs = [p for p in _list(d.get("near_pairs")) if isinstance(p, dict)]
    if pairs:
        blocks.append(
            Table(
                ["rows", "cosine", "texts"],
                [
                    [
                        ", ".join(str(r) for r in _list(p.get("rows"))),
                        Cell(_f(p.get("cosine")), "num"),
                        Cell(" ‖ ".join(_clip(t, 90) for t in _list(p.get("texts")) if t), "text"),
                    ]
                    for p in pairs[:6]
                ],
                caption="closest near-duplicate pairs",
            )
        )
    texts = [t for t in _list(d.get("text_groups")) if isinstance(t, dict)]
    if texts:
        blocks += _capped(
            Table(
                ["copies", "first row", "text"],
                [
                    [
                        _f(t.get("size")),
                        _f(t.get("first_row")),
                        Cell(_clip(t.get("text", "")), "text"),
                    ]
                    for t in texts[:10]
                ],
                caption="most repeated texts",
            ),
            visible=4,
        )
    return blocks


# -------------------------------------------------------------------------------- P1

DEFINITIONS = ("file_order", "within_window", "last_context_to_target", "article_order")
DEFINITION_TITLES = {
    "file_order": "file order",
    "within_window": "within window",
    "last_context_to_target": "last context → target",
    "article_order": "article order",
}
_STAT_ROWS = (
    ("mean", "mean"),
    ("std", "std"),
    ("p10", "p10"),
    ("p25", "p25"),
    ("p50", "median (p50)"),
    ("p75", "p75"),
    ("p90", "p90"),
)


def _present_definitions(m: Mapping[str, Any]) -> list[str]:
    return [name for name in DEFINITIONS if _num(m.get(f"{name}_mean")) is not None]


def _low_threshold(view: View, m: Mapping[str, Any] | None = None) -> float:
    for source in (m or {}, view.metrics("coherence")):
        value = _num(source.get("low_threshold"))
        if value is not None:
            return value
    return 0.30


def _bin_bounds(label: str) -> tuple[float, float] | None:
    found = re.findall(r"-?\d+(?:\.\d+)?", label)
    if len(found) < 2:
        return None
    return float(found[0]), float(found[1])


def _threshold_bin(labels: Sequence[str], threshold: float) -> int | None:
    for i, label in enumerate(labels):
        bounds = _bin_bounds(str(label))
        if bounds and abs(bounds[0] - threshold) < 1e-9:
            return i
    return None


def _histogram_pct(counts: Any) -> list[float] | None:
    values = [_num(c) for c in _list(counts)]
    if not values or any(v is None for v in values):
        return None
    total = sum(v for v in values if v is not None)
    return [100.0 * (v or 0.0) / total for v in values] if total else None


def _coherence(check: Mapping[str, Any], view: View) -> list[Block]:
    m, d = _dict(check.get("metrics")), _dict(check.get("details"))
    low = _low_threshold(view, m)
    names = _present_definitions(m)
    blocks: list[Block] = []
    if names:
        rows: list[list[CellLike]] = []
        for key, label in _STAT_ROWS:
            rows.append([label, *[Cell(_f(m.get(f"{n}_{key}")), "num") for n in names]])
        rows.append(
            [f"low share (< {low:g})", *[Cell(_pct(m.get(f"{n}_low_share")), "num") for n in names]]
        )
        rows.append(["pairs", *[Cell(_f(m.get(f"{n}_n")), "num") for n in names]])
        blocks.append(
            Table(
                ["statistic", *[DEFINITION_TITLES[n] for n in names]],
                rows,
                caption="adjacency cosine: consecutive rows of the file (the "
                "origin's definition), consecutive context vectors inside "
                "each window, last context to target, and consecutive "
                "chunks of each article (when article ids are known)",
            )
        )
    notes = [str(d[k]) for k in ("article_order_note",) if d.get(k)]
    if _num(m.get("random_pair_mean")) is not None:
        notes.append(
            f"random pairs of rows average {_f(m['random_pair_mean'])}: the floor any "
            "adjacency mean should be well above"
        )
    blocks += [Para(n, cls="note") for n in notes]
    labels = [str(x) for x in _list(d.get("histogram_labels"))]
    series = [
        (DEFINITION_TITLES[n], pct)
        for n in ("file_order", "article_order", "within_window")
        if n in names and (pct := _histogram_pct(m.get(f"{n}_histogram"))) is not None
    ]
    if labels and series:
        shown = series[:2]
        blocks.append(
            Plot(
                "adjacency cosine histogram by definition",
                lambda: _plots().histogram_bars(
                    labels,
                    shown,
                    low_threshold_index=_threshold_bin(labels, low),
                    title="Adjacency cosine: " + " vs ".join(s[0] for s in shown),
                ),
            )
        )
    if view.metrics("sequence_integrity").get("position_profile") is None:
        blocks += _profile_blocks(m.get("position_profile"), view)
    blocks += _lowest_articles(_dict(d.get("lowest_articles")))
    return blocks


def _profile_blocks(profile: Any, view: View, test: Mapping[str, Any] | None = None) -> list[Block]:
    values = [_num(v) for v in _list(profile)]
    if not values or all(v is None for v in values):
        return []
    base_view = view.related(view.baseline_name)
    base_profile = (
        _list(base_view.metrics("coherence").get("position_profile")) if base_view else []
    )
    header = [
        "",
        *[f"j={j}" + (" (last)" if j == len(values) - 1 else "") for j in range(len(values))],
    ]
    rows: list[list[CellLike]] = [[view.name, *[Cell(_f(v), "num") for v in values]]]
    if len(base_profile) == len(values):
        rows.insert(
            0,
            [
                f"{base_view.name} (baseline)" if base_view else "baseline",
                *[Cell(_f(v), "num") for v in base_profile],
            ],
        )
    first, last = values[0], values[-1]
    blocks: list[Block] = [
        Heading(5, "Context-position profile"),
        Table(header, rows, caption="mean cos(context position j, target)"),
    ]
    test = test or {}
    if first is not None and last is not None:
        # The check's own statistical verdict wins over a plain last-vs-first comparison.
        verdict = test.get("position_profile_rises")
        rises = bool(verdict) if isinstance(verdict, bool) else last > first
        ci = test.get("position_profile_rise_ci")
        spread = f" (95% CI of the rise {_ci(ci, _f)})" if ci else ""
        blocks.append(
            Para(
                f"{_mark(rises)} cos with the target goes from {first:.4f} (oldest context) to "
                f"{last:.4f} (last context), a rise of {last - first:+.4f}{spread}: "
                + (
                    "it rises toward the target"
                    if rises
                    else "it does not rise toward the target — the context order carries no "
                    "information about the next chunk (windows crossing articles or shuffled)"
                ),
                cls="ok" if rises else "bad",
            )
        )
    base_name = base_view.name if base_view else "baseline"
    blocks.append(
        Plot(
            "context-position profile",
            lambda: _plots().position_profile(
                values,
                base_profile if len(base_profile) == len(values) else None,
                current_name=view.name,
                baseline_name=base_name,
            ),
        )
    )
    return blocks


def _lowest_articles(table: Mapping[str, Any]) -> list[Block]:
    records = [r for r in _list(table.get("rows")) if isinstance(r, dict)]
    if not records:
        return [Para(str(table["note"]), cls="note")] if table.get("note") else []
    rows: list[list[CellLike]] = []
    split = 0
    for number, record in enumerate(records[:10]):
        if number == LOWEST_ARTICLES_SHOWN:
            split = len(rows)
        examples = [e for e in _list(record.get("examples")) if isinstance(e, dict)] or [{}]
        for i, example in enumerate(examples[:2]):
            head: list[CellLike] = (
                [
                    _f(record.get("article")),
                    Cell(_clip(record.get("title") or DASH, 60), "text"),
                    Cell(_f(record.get("n")), "num"),
                    Cell(_f(record.get("mean")), "num"),
                ]
                if i == 0
                else ["", "", "", ""]
            )
            rows.append(
                [
                    *head,
                    Cell(_f(example.get("cosine")), "num"),
                    Cell(_clip(example.get("first") or DASH, 150), "text"),
                    Cell(_clip(example.get("second") or DASH, 150), "text"),
                ]
            )
    caption = "lowest-coherence articles, with their least coherent adjacent pairs" + (
        f" — {table['basis']}" if table.get("basis") else ""
    )
    headers = ["article", "title", "pairs", "mean cos", "pair cos", "text", "next text"]
    blocks: list[Block] = [
        Heading(5, "Lowest-coherence articles"),
        Table(headers, rows[: split or len(rows)], caption=caption),
    ]
    if split:
        blocks.append(
            Fold(
                f"{len(records[:10]) - LOWEST_ARTICLES_SHOWN} more articles",
                [Table(headers, rows[split:])],
                markdown="hide",
            )
        )
    return blocks


def _bin_mark(label: str, change: float | None, low: float) -> bool | None:
    """❌ for a low bin that grew or a coherent bin that shrank; ✅ for a coherent bin
    that grew; no mark for small moves or a shrinking low bin.

    A low bin can shrink because its mass fell into even lower bins, so its shrinking says
    nothing on its own (the low-share row of the summary says it all at once).
    """
    bounds = _bin_bounds(label)
    if change is None or bounds is None or abs(change) < BIN_MARK_PP:
        return None
    if bounds[1] <= low + 1e-9:
        return False if change > 0 else None
    return change > 0


def _drift(check: Mapping[str, Any], view: View) -> list[Block]:
    m, d = _dict(check.get("metrics")), _dict(check.get("details"))
    low = _low_threshold(view)
    base_name = str(m.get("baseline") or view.baseline_name or "baseline")
    compared = [str(n) for n in _list(m.get("compared"))] or [
        n for n in DEFINITIONS if f"{n}_mean_drift" in m
    ]
    tables = _dict(d.get("tables"))
    blocks: list[Block] = []
    if d.get("warning"):
        blocks.append(Para(str(d["warning"]), label="Warning", cls="warn"))
    for name in compared:
        p = f"{name}_"
        title = DEFINITION_TITLES.get(name, _pretty(name))
        verdict = str(m.get(f"{p}drift_verdict", DASH))
        bad = verdict == "significant"
        blocks.append(Heading(5, f"Drift of {title} coherence vs '{base_name}'"))
        blocks.append(
            Table(
                ["", f"{base_name} (baseline)", f"{view.name} (current)", "change"],
                [
                    [
                        "mean adjacency cosine",
                        Cell(_f(m.get(f"{p}baseline_mean")), "num"),
                        Cell(_f(m.get(f"{p}current_mean")), "num"),
                        _cell_mark(
                            f"{_f(m.get(f'{p}mean_drift'))} "
                            f"({_signed_pct(m.get(f'{p}mean_drift_pct'))})",
                            _not_worse(m.get(f"{p}mean_drift_ci"), lower_is_worse=True),
                        ),
                    ],
                    [
                        f"low coherence (< {low:g})",
                        Cell(_pct(m.get(f"{p}baseline_low_share")), "num"),
                        Cell(_pct(m.get(f"{p}current_low_share")), "num"),
                        _cell_mark(
                            _pp(m.get(f"{p}low_share_change_pp")),
                            _not_worse(m.get(f"{p}low_share_change_ci_pp"), lower_is_worse=False),
                        ),
                    ],
                    [
                        "median (p50)",
                        Cell(_f(m.get(f"{p}baseline_p50")), "num"),
                        Cell(_f(m.get(f"{p}current_p50")), "num"),
                        "",
                    ],
                    [
                        "p90",
                        Cell(_f(m.get(f"{p}baseline_p90")), "num"),
                        Cell(_f(m.get(f"{p}current_p90")), "num"),
                        "",
                    ],
                ],
            )
        )
        blocks.append(
            Para(
                f"{verdict.upper()} — mean drift "
                f"{_signed_pct(m.get(f'{p}mean_drift_pct'))} (95% CI "
                f"{_ci(m.get(f'{p}mean_drift_pct_ci'), _signed_pct)}), low-coherence share "
                f"{_pp(m.get(f'{p}low_share_change_pp'))} (95% CI "
                f"{_ci(m.get(f'{p}low_share_change_ci_pp'), _pp)}); block-bootstrap test",
                label=f"{_mark(not bad) if verdict != DASH else ''} Verdict".strip(),
                cls="bad" if bad else ("warn" if verdict == "moderate" else "ok"),
            )
        )
        reasons = [Item(str(r)) for r in _list(_dict(d.get("reasons")).get(name))]
        if reasons:
            blocks.append(Items(reasons))
        bins = [b for b in _list(tables.get(name)) if isinstance(b, dict)]
        if bins:
            distribution = _distribution_blocks(name, bins, base_name, view.name, low)
            # The origin's definition and the true article order tell the story; the other
            # definitions mostly repeat them, so their tables stay folded.
            if name in ("file_order", "article_order"):
                blocks += distribution
            else:
                blocks.append(
                    Fold(f"distribution comparison, {title}", distribution, markdown="hide")
                )
    not_compared = _dict(d.get("not_compared"))
    if not_compared:
        blocks.append(
            Items(
                [Item(str(v), label=DEFINITION_TITLES.get(k, k)) for k, v in not_compared.items()]
            )
        )
    return blocks


def _not_worse(ci: Any, *, lower_is_worse: bool) -> bool | None:
    """False when the change's 95 % CI lies entirely on the worse side of zero."""
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2):
        return None
    lo, hi = _num(ci[0]), _num(ci[1])
    if lo is None or hi is None:
        return None
    return not (hi < 0 if lower_is_worse else lo > 0)


def _distribution_blocks(
    name: str, bins: list[dict[str, Any]], base_name: str, cur_name: str, low: float
) -> list[Block]:
    rows: list[list[CellLike]] = []
    for b in bins:
        label = str(b.get("range", ""))
        change = _num(b.get("change_pp"))
        ok = _bin_mark(label, change, low)
        rows.append(
            [
                Cell(label, "code"),
                Cell(_pct((_num(b.get("baseline_pct")) or 0) / 100, 1), "num"),
                Cell(_pct((_num(b.get("current_pct")) or 0) / 100, 1), "num"),
                _cell_mark(_pp(change).replace("+0.00pp", "0.00pp"), ok),
            ]
        )
    title = DEFINITION_TITLES.get(name, name)
    blocks: list[Block] = [
        Table(
            ["range", f"{base_name}", f"{cur_name}", "change"],
            rows,
            caption=f"distribution comparison, {title} (❌ = share moved toward low "
            f"coherence by ≥ {BIN_MARK_PP:g} pp: a low bin grew or a coherent bin shrank; "
            "✅ = a coherent bin grew)",
        )
    ]
    if name in ("file_order", "article_order"):
        labels = [str(b.get("range", "")) for b in bins]
        series = [
            (f"{base_name} (baseline)", [b.get("baseline_pct") for b in bins]),
            (f"{cur_name} (current)", [b.get("current_pct") for b in bins]),
        ]
        blocks.append(
            Plot(
                f"histogram of {title} coherence, current vs baseline",
                lambda: _plots().histogram_bars(
                    labels,
                    series,
                    low_threshold_index=_threshold_bin(labels, low),
                    title=f"{title.capitalize()} coherence: current vs baseline",
                ),
            )
        )
    return blocks


def _integrity(check: Mapping[str, Any], view: View) -> list[Block]:
    m, d = _dict(check.get("metrics")), _dict(check.get("details"))
    blocks: list[Block] = []
    rows: list[list[CellLike]] = []
    checked = _num(m.get("windows_checked"))
    if checked:
        rows.append(
            [
                "windows checked with ids",
                f"{_f(m.get('windows_checked'))} (ids from {m.get('ids_source') or DASH}; "
                f"{_f(m.get('windows_unchecked'))} unchecked)",
            ]
        )
        for key, label in (
            ("crossing_share", "windows crossing an article boundary"),
            ("non_consecutive_share", "windows skipping chunks"),
            ("wrong_order_share", "windows going backwards in chunk order"),
        ):
            if m.get(key) is not None:
                count = (
                    f" ({_f(m['crossing_count'])})"
                    if key == "crossing_share" and m.get("crossing_count") is not None
                    else ""
                )
                rows.append([label, _cell_mark(_pct(m[key]) + count, (_num(m[key]) or 0) == 0)])
        if m.get("file_order_crossing_share") is not None:
            rows.append(
                [
                    "adjacent file rows from different articles",
                    _pct(m["file_order_crossing_share"], 1),
                ]
            )
    elif d.get("ids_note"):
        blocks.append(Para(str(d["ids_note"]), cls="note"))
    if rows:
        blocks.append(Table(["sequence integrity", "value"], rows))
    blocks += _pair_classes(m)
    blocks += _ordering_test(m, d)
    if m.get("position_profile") is not None:
        blocks += _profile_blocks(m.get("position_profile"), view, m)
    examples = [e for e in _list(d.get("crossing_examples")) if isinstance(e, dict)]
    if examples:
        blocks += _capped(
            Table(
                ["row", "article", "title", "target text"],
                [
                    [
                        _f(e.get("row")),
                        _f(e.get("article")),
                        Cell(_clip(e.get("title") or DASH, 50), "text"),
                        Cell(_clip(e.get("target") or DASH, 160), "text"),
                    ]
                    for e in examples[:10]
                ],
                caption="first windows that cross an article boundary",
            ),
            visible=4,
        )
    if d.get("context_inference"):
        blocks.append(Para(str(d["context_inference"]), cls="note"))
    return blocks


def _pair_classes(m: Mapping[str, Any]) -> list[Block]:
    """Where the low coherence comes from: pairs inside one article vs across articles."""
    if m.get("within_article_mean") is None and m.get("across_article_mean") is None:
        return []
    low = _num(m.get("low_threshold")) or 0.30
    rows: list[list[CellLike]] = [
        [
            "same article",
            Cell(_f(m.get("within_article_mean")), "num"),
            Cell(_pct(m.get("within_article_low_share"), 1), "num"),
        ],
        [
            "different articles",
            Cell(_f(m.get("across_article_mean")), "num"),
            Cell(_pct(m.get("across_article_low_share"), 1), "num"),
        ],
    ]
    if m.get("article_order_mean") is not None:
        rows.append(
            [
                "rows sorted by (article, chunk)",
                Cell(_f(m["article_order_mean"]), "num"),
                Cell(
                    f"gain {_f(m.get('article_order_gain'))}"
                    if m.get("article_order_gain") is not None
                    else DASH,
                    "num",
                ),
            ]
        )
    blocks: list[Block] = [
        Table(
            ["adjacent file rows", "mean cosine", f"share < {low:g}"],
            rows,
            caption="adjacency cosine of consecutive file rows, split by "
            "whether both rows come from the same article",
        )
    ]
    if m.get("low_pairs_crossing_share") is not None:
        blocks.append(
            Para(
                f"{_pct(m['low_pairs_crossing_share'], 1)} of the low-coherence "
                "file-order pairs straddle an article boundary",
                cls="note",
            )
        )
    return blocks


def _ordering_test(m: Mapping[str, Any], d: Mapping[str, Any]) -> list[Block]:
    """The statistical ordering test (decay with distance) and the runs test."""
    profile = [_num(v) for v in _list(m.get("decay_profile"))]
    rows: list[list[CellLike]] = []
    if m.get("ordering_verdict") is not None:
        verdict = str(m["ordering_verdict"])
        ok = {"ordered": True, "broken": False}.get(verdict)
        rows.append(["ordering verdict", _cell_mark(verdict, ok)])
    if profile:
        rows.append(
            [
                "cosine of rows k apart, k = 1…" + str(len(profile)),
                " → ".join(_f(v, 3) for v in profile),
            ]
        )
    if m.get("decay") is not None:
        rows.append(
            [
                "decay from k=1 to k=" + str(len(profile) or "K"),
                f"{_f(m['decay'])} (95% CI {_ci(m.get('decay_ci'), _f)}; ratio "
                f"{_f(m.get('decay_ratio'), 3)})",
            ]
        )
    if m.get("random_pair_mean") is not None:
        rows.append(["random pairs of rows", _f(m["random_pair_mean"])])
    if m.get("runs_z") is not None:
        rows.append(
            [
                "runs test on low pairs",
                f"z = {_f(m['runs_z'], 2)}; {_f(m.get('low_pairs'))} low pairs, mean run "
                f"{_f(m.get('low_run_mean_length'), 2)} "
                f"(×{_f(m.get('low_run_length_ratio'), 2)} the independent expectation): "
                f"{m.get('low_pairs_pattern', DASH)}",
            ]
        )
    if not rows:
        return []
    blocks: list[Block] = [Table(["statistical ordering test", "value"], rows)]
    if d.get("ordering_reason"):
        blocks.append(Para(str(d["ordering_reason"]), cls="note"))
    return blocks


def _text_quality(check: Mapping[str, Any], view: View) -> list[Block]:
    m, d = _dict(check.get("metrics")), _dict(check.get("details"))
    rows: list[list[CellLike]] = []
    if "blocklist_share" in m:
        pattern = d.get("blocklist_pattern")
        rows.append(
            [
                f"blocklisted pages ({pattern})" if pattern else "blocklisted pages",
                Cell(_pct(m.get("blocklist_share")), "num"),
                f"{_f(m.get('blocklist_count'))} rows in {_f(m.get('blocklist_articles'))} "
                "articles",
            ]
        )
    for name, label in (
        ("empty", "empty texts"),
        ("too_short", "too short"),
        ("too_long", "too long"),
        ("non_string", "not a string"),
    ):
        if f"{name}_count" in m:
            rows.append(
                [
                    label,
                    Cell(_pct(m.get(f"{name}_share")), "num"),
                    f"{_f(m.get(f'{name}_count'))} rows",
                ]
            )
    for key, label in (
        ("duplicate_key_count", "duplicate (article, chunk) keys"),
        ("duplicate_text_in_article_count", "repeated text inside an article"),
    ):
        if key in m:
            rows.append([label, Cell(_f(m.get(key)), "num"), ""])
    blocks: list[Block] = [Table(["text quality", "share", "detail"], rows)] if rows else []
    articles = [a for a in _list(d.get("blocklist_articles")) if isinstance(a, dict)]
    if articles:
        blocks += _capped(
            Table(
                ["title", "article", "rows", "matched on"],
                [
                    [
                        Cell(_clip(a.get("title") or DASH, 80), "text"),
                        _f(a.get("article")),
                        Cell(_f(a.get("rows")), "num"),
                        "title" if a.get("by_title") else "text",
                    ]
                    for a in articles[:30]
                ],
                caption="blocklisted articles, most rows first",
            ),
            visible=6,
        )
    for key, caption in (
        ("blocklist_examples", "blocklisted texts"),
        ("too_short_examples", "too-short texts"),
    ):
        examples = [e for e in _list(d.get(key)) if isinstance(e, dict)]
        if examples:
            blocks.append(
                Table(
                    ["row", "text"],
                    [
                        [_f(e.get("row")), Cell(_clip(e.get("text", "")), "text")]
                        for e in examples[:5]
                    ],
                    caption=caption,
                )
            )
    return blocks


def _split_leakage(check: Mapping[str, Any], view: View) -> list[Block]:
    m, d = _dict(check.get("metrics")), _dict(check.get("details"))
    roles = [str(r) for r in _list(m.get("splits"))]
    rows: list[list[CellLike]] = []
    for role in roles:
        p = f"{role}_"
        shared = _num(m.get(f"{p}article_overlap_count"))
        exact = _num(m.get(f"{p}shared_exact_duplicate_count"))
        near = _num(m.get(f"{p}shared_near_duplicate_count"))
        rows.append(
            [
                role,
                Cell(str(d.get(f"{p}name", DASH)), "code"),
                Cell(_f(m.get(f"{p}article_count")), "num"),
                _cell_mark(
                    f"{_f(m.get(f'{p}article_overlap_count'))} "
                    f"({_pct(m.get(f'{p}article_overlap_share'), 1)})",
                    None if shared is None else shared == 0,
                ),
                Cell(_pct(m.get(f"{p}row_overlap_share"), 1), "num"),
                _cell_mark(
                    _f(m.get(f"{p}shared_exact_duplicate_count")),
                    None if exact is None else exact == 0,
                ),
                _cell_mark(
                    f"{_f(m.get(f'{p}shared_near_duplicate_count'))} / "
                    f"{_f(m.get(f'{p}near_duplicate_sampled_rows'))}",
                    None if near is None else near == 0,
                ),
                Cell(_f(m.get(f"{p}nearest_cosine_p50")), "num"),
            ]
        )
    blocks: list[Block] = []
    if rows:
        blocks.append(
            Table(
                [
                    "split",
                    "dataset",
                    "articles",
                    "shared articles",
                    "rows in shared articles",
                    "exact duplicate targets",
                    "near duplicates (sampled)",
                    "median nearest cos",
                ],
                rows,
                caption=f"near duplicate: cosine ≥ {_f(m.get('near_threshold'), 3)}",
            )
        )
    for role in roles:
        examples = _list(d.get(f"{role}_shared_articles"))
        if examples:
            shown = ", ".join(
                _clip(e, 40)
                if not isinstance(e, dict)
                else _clip(e.get("title") or e.get("article"), 40)
                for e in examples[:10]
            )
            blocks.append(Para(shown, label=f"{role}: shared articles", cls="note"))
    return blocks


# -------------------------------------------------------------------------------- P2


def _fault_banner(m: Mapping[str, Any], check: Mapping[str, Any]) -> list[Block]:
    if not m.get("evaluation_fault"):
        return []
    return [
        Para(
            "the model scores far below every trivial predictor, which real data cannot "
            "cause: suspect the evaluation (wrong model class loaded, checkpoint/forward "
            f"mismatch), not the data. {check.get('message', '')}",
            label="⚠️ Evaluation-fault guard fired",
            cls="banner",
        )
    ]


def _smoke_train(check: Mapping[str, Any], view: View) -> list[Block]:
    m, d = _dict(check.get("metrics")), _dict(check.get("details"))
    curves = _dict(d.get("training_curves"))
    val = _list(curves.get("val_cosine")) or _list(m.get("val_cosine_per_epoch"))
    epochs = _list(curves.get("epoch")) or list(range(1, len(val) + 1))
    loss = _list(curves.get("train_loss")) or _list(m.get("train_loss_per_epoch"))
    mse = _list(curves.get("val_mse")) or _list(m.get("val_mse_per_epoch"))
    lr = _list(curves.get("lr")) or _list(m.get("lr_per_epoch"))
    baselines = _dict(curves.get("baselines")) or {
        key[len("baseline_") : -len("_cosine")]: value
        for key, value in m.items()
        if key.startswith("baseline_") and key.endswith("_cosine")
    }
    blocks: list[Block] = _fault_banner(m, check)
    if val:

        def at(seq: list[Any], i: int) -> Any:
            return seq[i] if i < len(seq) else None

        best = _num(m.get("best_epoch"))
        rows: list[list[CellLike]] = [
            [
                str(epochs[i]) + (" (best)" if best is not None and epochs[i] == best else ""),
                Cell(_f(at(loss, i)), "num"),
                Cell(_f(at(mse, i), 6), "num"),
                Cell(_f(val[i]), "num"),
                Cell(_f(at(lr, i), 6), "num"),
            ]
            for i in range(len(val))
        ]
        blocks.append(Table(["epoch", "train loss", "val MSE", "val_cosine", "lr"], rows))
    final = _num(m.get("val_cosine_final")) or (_num(val[-1]) if val else None)
    if baselines:
        rows = []
        for name, value in baselines.items():
            gain = None if final is None or _num(value) is None else final - (_num(value) or 0)
            rows.append(
                [
                    _pretty(str(name)),
                    Cell(_f(value), "num"),
                    _cell_mark(
                        _f(gain) if gain is None else f"{gain:+.4f}",
                        None if gain is None else gain > 0,
                    ),
                ]
            )
        blocks.append(
            Table(
                ["trivial predictor", "val_cosine", "smoke model − predictor"],
                rows,
                caption="the model must beat predicting the mean of the context",
            )
        )
    if val:
        blocks.append(
            Plot("training curve", lambda: _plots().training_curve(epochs, val, baselines))
        )
    facts = []
    for key, label in (
        ("split_kind", "split"),
        ("n_train", "train sequences"),
        ("n_val", "val sequences"),
        ("n_train_groups", "train articles/blocks"),
        ("n_val_groups", "val articles/blocks"),
        ("device", "device"),
        ("train_seconds", "seconds"),
        ("n_parameters", "parameters"),
    ):
        if m.get(key) is not None:
            facts.append(f"{label}: {_f(m[key], 1) if key == 'train_seconds' else _f(m[key])}")
    if m.get("baseline_dataset_val_cosine_best") is not None:
        worse = _num(m.get("val_cosine_drift_pct_upper_vs_baseline"))
        blocks.append(
            Para(
                f"best val_cosine {_f(m.get('val_cosine_best'))} vs "
                f"{_f(m['baseline_dataset_val_cosine_best'])} for the same training on "
                f"'{m.get('baseline_dataset', 'baseline')}' "
                f"({_signed_pct(m.get('val_cosine_drift_pct_vs_baseline'))}, z = "
                f"{_f(m.get('val_cosine_drift_z_vs_baseline'), 2)})"
                + (
                    ""
                    if m.get("baseline_dataset_comparable", True)
                    else " — not comparable (different encoder or split)"
                ),
                label="vs the baseline dataset",
                cls="" if worse is None else ("bad" if worse < 0 else "ok"),
            )
        )
    if facts:
        blocks.append(Para("; ".join(facts), cls="note"))
    if m.get("split_warning"):
        blocks.append(Para(str(m["split_warning"]), label="Split warning", cls="warn"))
    return blocks


def _ood_eval(check: Mapping[str, Any], view: View) -> list[Block]:
    m = _dict(check.get("metrics"))
    blocks: list[Block] = _fault_banner(m, check)
    ood = _num(m.get("ood_cosine"))
    rows: list[list[CellLike]] = [
        [f"smoke model on OOD '{m.get('ood_dataset', 'ood')}'", Cell(_f(ood), "num"), ""],
        ["smoke model on val (best epoch)", Cell(_f(m.get("val_cosine_best")), "num"), ""],
    ]
    for key, value in m.items():
        found = re.match(r"^ood_baseline_(.+)_cosine$", key)
        if found:
            gain = None if ood is None or _num(value) is None else ood - (_num(value) or 0)
            rows.append(
                [
                    f"{_pretty(found.group(1))} predictor on OOD",
                    Cell(_f(value), "num"),
                    _cell_mark(
                        "" if gain is None else f"model {gain:+.4f}",
                        None if gain is None else gain > 0,
                    ),
                ]
            )
    blocks.append(
        Table(
            ["OOD evaluation", "cosine", "vs model"],
            rows,
            caption=f"{_f(m.get('n_ood'))} OOD sequences; OOD articles also in "
            f"train: {_f(m.get('ood_articles_in_train'))}",
        )
    )
    if m.get("ood_gain_shift_vs_val") is not None:
        blocks.append(
            Para(
                f"gain over the mean-of-context predictor: OOD "
                f"{_f(m.get('ood_cosine_gain_over_mean_context'))} vs val "
                f"{_f(m.get('val_cosine_best_gain_over_mean_context'))} (shift "
                f"{_f(m['ood_gain_shift_vs_val'])}, z = {_f(m.get('ood_gain_shift_z'), 2)})",
                label="OOD vs val",
                cls="note",
            )
        )
    return blocks


SECTION_BUILDERS: dict[str, SectionBuilder] = {
    "fingerprint": _fingerprint,
    "norms": _norms,
    "alignment": _alignment,
    "oracle_recall": _oracle_recall,
    "duplicates": _duplicates,
    "coherence": _coherence,
    "coherence_drift": _drift,
    "sequence_integrity": _integrity,
    "text_quality": _text_quality,
    "split_leakage": _split_leakage,
    "smoke_train": _smoke_train,
    "ood_eval": _ood_eval,
}


# ================================================================ filter and statistics


def _stat(section: Mapping[str, Any], *path: str) -> Any:
    node: Any = section
    for key in path:
        node = _dict(node).get(key)
    return node


def filter_section(view: View) -> list[Block]:
    manifest = _dict(view.data.get("filter"))
    if not manifest:
        return []
    counts = _dict(manifest.get("counts"))
    params = _dict(manifest.get("parameters"))
    n_in, kept = _num(counts.get("input")), _num(counts.get("kept"))
    blocks: list[Block] = [Heading(3, "Filter results", _anchor(view.name, "filter"))]
    rows: list[list[CellLike]] = [
        ["original", Cell(_f(counts.get("input")), "num"), ""],
        [
            "kept",
            Cell(_f(counts.get("kept")), "num"),
            _pct(kept / n_in, 1) if n_in and kept is not None else DASH,
        ],
        [
            "dropped",
            Cell(_f(counts.get("dropped")), "num"),
            _pct((n_in - kept) / n_in, 1) if n_in and kept is not None else DASH,
        ],
    ]
    blocks.append(Table(["sequences", "count", "share"], rows))
    settings = [f"{k}: {v}" for k, v in params.items() if k not in ("seed",) and v is not None]
    if settings:
        blocks.append(Para("; ".join(settings), label="Filter configuration", cls="note"))
    reasons = _dict(manifest.get("reasons"))
    primary = _dict(manifest.get("dropped_by_primary_reason"))
    if reasons:
        blocks.append(
            Table(
                ["reason", "rows flagged", "dropped for this reason first"],
                [
                    [_pretty(k), Cell(_f(v), "num"), Cell(_f(primary.get(k)), "num")]
                    for k, v in reasons.items()
                ],
            )
        )
    coherence = _dict(manifest.get("coherence"))
    measures = [
        ("adjacency_score", "selection score (what the filter thresholds)"),
        ("within_window_context_coherence", "within-window context coherence"),
        ("file_order_adjacency", "file-order adjacency (what `coherence` will report)"),
    ]
    rows = []
    for key, label in measures:
        before = _dict(_stat(coherence, "input", key))
        after = _dict(_stat(coherence, "output", key))
        if before or after:
            rows.append(
                [
                    label,
                    Cell(_f(before.get("mean")), "num"),
                    Cell(_f(after.get("mean")), "num"),
                    Cell(_f(before.get("p50")), "num"),
                    Cell(_f(after.get("p50")), "num"),
                ]
            )
    if rows:
        blocks.append(
            Table(
                ["coherence measure", "mean before", "mean after", "p50 before", "p50 after"], rows
            )
        )
    blocks.append(
        Para(
            "the rise in coherence after filtering is circular: rows were kept because they scored "
            "high on this very measure, so the filtered file scores higher by construction. It is "
            "not evidence that the data got better. The unbiased test is smoke training on the "
            "filtered file against the unfiltered one (P2), on an article-disjoint split.",
            label="Circularity",
            cls="warn",
        )
    )
    if coherence.get("note"):
        blocks.append(Para(str(coherence["note"]), cls="note"))
    if manifest.get("windows_note"):
        blocks.append(
            Para(
                str(manifest["windows_note"]),
                label="✅ Windows" if manifest.get("windows_contiguous") else "❌ Windows",
                cls="note",
            )
        )
    output = _dict(manifest.get("output"))
    if output.get("dataset"):
        blocks.append(Para("check the filtered file with the same suite:", cls="note"))
        blocks.append(
            Code(
                f"pytest quality_tests --dataset={output['dataset']}"
                + (f" --baseline={view.baseline_name}" if view.baseline_name else "")
            )
        )
    examples = _dict(manifest.get("examples"))
    for reason, items in examples.items():
        table = _records_table(_list(items), caption=f"examples dropped: {_pretty(reason)}")
        if table:
            blocks.append(Fold(f"examples dropped for {reason}", [table], markdown="hide"))
    return blocks


def _dataset_column(view: View) -> dict[str, Any]:
    m = view.metrics("coherence")
    return {
        "sequences": view.data.get("n_sequences"),
        "mean": m.get("file_order_mean"),
        "low": m.get("file_order_low_share"),
        "p50": m.get("file_order_p50"),
        "p90": m.get("file_order_p90"),
        "val": view.metrics("smoke_train").get("val_cosine_best"),
        "ood": view.metrics("ood_eval").get("ood_cosine"),
    }


def statistics_section(view: View) -> list[Block]:
    """The seed's dataset statistics table: baseline, current and filtered side by side."""
    drift = view.metrics("coherence_drift")
    base_view = view.related(view.baseline_name)
    columns: list[tuple[str, dict[str, Any]]] = []
    if base_view is not None:
        columns.append((f"{base_view.name} (baseline)", _dataset_column(base_view)))
    elif any(k.startswith("file_order_baseline_") for k in drift):
        columns.append(
            (
                f"{view.baseline_name or 'baseline'} (baseline)",
                {
                    "mean": drift.get("file_order_baseline_mean"),
                    "low": drift.get("file_order_baseline_low_share"),
                    "p50": drift.get("file_order_baseline_p50"),
                    "p90": drift.get("file_order_baseline_p90"),
                    "val": view.metrics("smoke_train").get("baseline_dataset_val_cosine_best"),
                },
            )
        )
    columns.append((f"{view.name} (current)", _dataset_column(view)))
    manifest = _dict(view.data.get("filter"))
    if manifest:
        filtered_view = (
            view.related(str(manifest.get("dataset") or "")) if manifest.get("dataset") else None
        )
        if filtered_view is not None:
            column = _dataset_column(filtered_view)
        else:
            adjacency = _dict(_stat(manifest, "coherence", "output", "file_order_adjacency"))
            column = {
                "sequences": _stat(manifest, "counts", "kept"),
                "mean": adjacency.get("mean"),
                "p50": adjacency.get("p50"),
                "val": "TBD",
                "ood": "TBD",
            }
        columns.append(("filtered", column))
    if len(columns) < 2:
        return []
    low = _low_threshold(view)
    spec = [
        ("sequences", "sequences", _f),
        ("mean", "mean coherence (file order)", _f),
        ("low", f"low coherence (< {low:g})", _pct),
        ("p50", "median (p50)", _f),
        ("p90", "p90", _f),
        ("val", "smoke val_cosine (best)", _f),
        ("ood", "OOD cosine", _f),
    ]
    rows: list[list[CellLike]] = [
        [
            label,
            *[
                Cell(fmt(col.get(key)) if col.get(key) != "TBD" else "TBD", "num")
                for _name, col in columns
            ],
        ]
        for key, label, fmt in spec
    ]
    return [
        Heading(3, "Dataset statistics", _anchor(view.name, "statistics")),
        Table(
            ["metric", *[name for name, _col in columns]],
            rows,
            caption="TBD: run the suite on the filtered file to fill these in"
            if any(col.get("val") == "TBD" for _n, col in columns)
            else "",
        ),
    ]


# ========================================================================= the report


def _phase_conclusion(phase: str, statuses: Sequence[str]) -> Para | None:
    if not statuses:
        return None
    failed = statuses.count("failed")
    broken = statuses.count("error")
    ran = len(statuses) - statuses.count("skipped")
    if phase == "P0" and not failed and not broken and ran:
        return Para(
            "✅ the embedding space is consistent: no P0 check failed "
            f"({ran} ran, {statuses.count('skipped')} skipped)",
            label="P0 conclusion",
            cls="ok",
        )
    if failed or broken:
        return Para(
            f"❌ {failed} failed, {broken} could not run, of {len(statuses)} checks",
            label=f"{phase} conclusion",
            cls="bad",
        )
    return Para(
        f"✅ {ran} checks passed, {statuses.count('skipped')} skipped",
        label=f"{phase} conclusion",
        cls="ok",
    )


def unused_key_lines(data: Mapping[str, Any]) -> list[str]:
    """One line per file key lvmqa did not read: shape, dtype and how to map it."""
    lines = []
    for key, info in _dict(data.get("unused_keys")).items():
        info = _dict(info)
        shape = "×".join(str(v) for v in _list(info.get("shape"))) or "scalar"
        note = f" — {info['note']}" if info.get("note") else ""
        lines.append(f"{key} ({shape}, {info.get('dtype', '?')}){note}")
    return lines


def _unused_keys_blocks(view: View) -> list[Block]:
    lines = unused_key_lines(view.data)
    if not lines:
        return []
    return [
        Para(
            "Keys in the file that lvmqa did not use: "
            + "; ".join(lines)
            + '. Map one with [datasets.NAME.keys] in lvmqa.toml, e.g. article = "doc_ids".',
            cls="note",
        )
    ]


def dataset_blocks(view: View) -> list[Block]:
    titles = _check_titles()
    diag = _dict(view.data.get("diagnosis"))
    verdict = str(diag.get("verdict", "unknown"))
    facts = [
        f"{k}: {view.data[k]}" for k in ("path", "kind", "encoder", "baseline") if view.data.get(k)
    ]
    for key in ("n_sequences", "dim"):
        if view.data.get(key) is not None:
            facts.append(f"{key.replace('n_', '')}: {_f(view.data[key])}")
    if view.data.get("sha256"):
        facts.append(f"sha256: {str(view.data['sha256'])[:23]}…")
    id_keys = _dict(view.data.get("id_keys"))
    if id_keys:
        facts.append("ids read from " + ", ".join(f"{r} = {k}" for r, k in id_keys.items()))
    blocks: list[Block] = [
        Heading(2, f"Dataset {view.name}: {verdict.upper()}", _anchor(view.name)),
        Para(" · ".join(facts), cls="note"),
        *_unused_keys_blocks(view),
        *executive_summary(view, titles),
    ]
    if view.checks:
        blocks.append(
            Fold(
                "All checks at a glance",
                [_overview_table(view, titles)],
                open=True,
                markdown="flat",
            )
        )
    by_phase: dict[str, list[str]] = {}
    for cid in _ordered_check_ids(view, titles):
        by_phase.setdefault(titles.get(cid, ("other", ""))[0], []).append(cid)
    for phase in ("P0", "P1"):
        blocks += _phase_blocks(view, phase, by_phase.get(phase, []), titles)
    blocks += filter_section(view)
    blocks += statistics_section(view)
    blocks += _phase_blocks(view, "P2", by_phase.get("P2", []), titles)
    for phase, ids in by_phase.items():
        if phase not in PHASE_TITLES:
            blocks += _phase_blocks(view, phase, ids, titles)
    return blocks


def _phase_blocks(
    view: View, phase: str, ids: Sequence[str], titles: Mapping[str, tuple[str, str]]
) -> list[Block]:
    if not ids:
        return []
    title = PHASE_TITLES.get(phase, "Other checks")
    blocks: list[Block] = [Heading(3, title, _anchor(view.name, phase))]
    for cid in ids:
        blocks.append(check_section(cid, _dict(view.checks.get(cid)), view, titles))
    conclusion = _phase_conclusion(
        phase, [str(_dict(view.checks.get(c)).get("status")) for c in ids]
    )
    if conclusion:
        blocks.append(conclusion)
    return blocks


def report_blocks(results: Mapping[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    for name, data in _dict(results.get("datasets")).items():
        if isinstance(data, dict):
            blocks += dataset_blocks(View(str(name), data, results))
    if not blocks:
        blocks.append(Para("the results hold no datasets", cls="warn"))
    return blocks


# ================================================================================ HTML

CSS = """
.lvmqa{font:14px/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#1f2328;
 max-width:1180px}
.lvmqa h2{font-size:21px;color:#1f2328;border-bottom:2px solid #d0d7de;padding-bottom:4px;
 margin:26px 0 6px}
.lvmqa h3{font-size:18px;color:#1f2328;margin:24px 0 6px;border-bottom:1px solid #eaeef2}
.lvmqa h4{font-size:15px;color:#1f2328;margin:2px 0 6px}
.lvmqa h5{font-size:14px;color:#1f2328;margin:14px 0 4px}
.lvmqa p{color:#1f2328;margin:5px 0}
.lvmqa table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
.lvmqa p.caption{color:#57606a;font-size:12.5px;margin:10px 0 2px;font-style:italic}
.lvmqa th,.lvmqa td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;
 vertical-align:top;color:#1f2328}
#results-table .lvmqa th,#results-table .lvmqa td{border:1px solid #d0d7de;padding:3px 8px}
#results-table .lvmqa td.num{text-align:right}
.lvmqa th{background:#eef1f4;font-weight:600}
.lvmqa tbody tr:nth-child(even) td{background:#f6f8fa}
.lvmqa td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.lvmqa td.text{max-width:520px;font-size:12.5px;overflow-wrap:anywhere}
.lvmqa td.code,.lvmqa code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
 font-size:12px}
.lvmqa .ok,.lvmqa td.ok,.lvmqa p.ok>b{color:#1a7f37}
.lvmqa .bad,.lvmqa td.bad,.lvmqa p.bad>b{color:#cf222e}
.lvmqa .warn,.lvmqa td.warn,.lvmqa p.warn>b{color:#9a6700}
.lvmqa p.ok,.lvmqa p.bad,.lvmqa p.warn{color:#1f2328}
.lvmqa p.headline.bad{color:#cf222e}.lvmqa p.headline.ok{color:#1a7f37}
.lvmqa p.headline.warn{color:#9a6700}
.lvmqa .muted{color:#6e7781}
.lvmqa p.note,.lvmqa .note{color:#57606a;font-size:13px}
.lvmqa pre{background:#f6f8fa;border:1px solid #d0d7de;border-radius:4px;padding:8px 10px;
 margin:4px 0 10px;font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
 white-space:pre-wrap;color:#1f2328}
.lvmqa .box{border:1px solid #d0d7de;border-left-width:5px;border-radius:6px;
 padding:8px 14px;margin:10px 0;background:#fff}
.lvmqa .box.passed{border-left-color:#1a7f37}
.lvmqa .box.failed{border-left-color:#cf222e}
.lvmqa .box.error{border-left-color:#bf8700}
.lvmqa .box.skipped{border-left-color:#afb8c1;background:#fafbfc}
.lvmqa .box.summary{border-width:2px;border-left-width:6px}
.lvmqa .box.summary.bad{border-color:#cf222e;background:#fff8f8}
.lvmqa .box.summary.ok{border-color:#1a7f37;background:#f6fff8}
.lvmqa .box.summary.warn{border-color:#bf8700;background:#fffbea}
.lvmqa p.headline{font-weight:600;font-size:15px}
.lvmqa p.banner{background:#fff1e5;border:1px solid #d4a72c;padding:6px 10px;border-radius:4px}
.lvmqa ol,.lvmqa ul{margin:4px 0 8px;padding-left:24px}
.lvmqa li{margin:2px 0;color:#1f2328}
.lvmqa li.bad>b{color:#cf222e}
.lvmqa li ol li{font-weight:400}
.lvmqa img{max-width:100%;height:auto;border:1px solid #eaeef2;margin:4px 0 10px;
 display:block}
.lvmqa details{margin:6px 0}
.lvmqa details>summary{cursor:pointer;color:#57606a;font-size:13px}
"""


def _esc(text: Any) -> str:
    return html.escape(surrogate_safe(str(text)), quote=True)


def surrogate_safe(text: str) -> str:
    """``text`` writable as UTF-8: lone surrogates from a dataset's texts become U+FFFD
    (else writing the report raises, and pytest-html leaves a 0-byte file)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
    return text


def _html_cell(cell: CellLike, tag: str = "td") -> str:
    if isinstance(cell, Cell):
        cls = f" class='{_esc(cell.cls)}'" if cell.cls else ""
        return f"<{tag}{cls}>{_esc(cell.text)}</{tag}>"
    return f"<{tag}>{_esc(cell)}</{tag}>"


def _html(block: Block) -> str:
    if isinstance(block, Heading):
        level = min(max(block.level, 2), 6)
        anchor = f" id='{_esc(block.anchor)}'" if block.anchor else ""
        return f"<h{level}{anchor}>{_esc(block.text)}</h{level}>"
    if isinstance(block, Para):
        cls = f" class='{_esc(block.cls)}'" if block.cls else ""
        label = f"<b>{_esc(block.label)}</b> " if block.label else ""
        if block.label and not block.label.endswith((".", ":")):
            label = f"<b>{_esc(block.label)}:</b> "
        return f"<p{cls}>{label}{_esc(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(_html_cell(h, "th") for h in block.headers)
        body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in block.rows)
        # A paragraph above the table, not <caption>: a caption wraps to the table's width.
        caption = f"<p class='caption'>{_esc(block.caption)}</p>" if block.caption else ""
        return f"{caption}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Code):
        return f"<pre><code>{_esc(block.text)}</code></pre>"
    if isinstance(block, Items):
        tag = "ol" if block.ordered else "ul"
        parts = []
        for item in block.items:
            cls = f" class='{_esc(item.cls)}'" if item.cls else ""
            label = f"<b>{_esc(item.label)}:</b> " if item.label else ""
            text = f"<b>{_esc(item.text)}</b>" if item.children else _esc(item.text)
            children = "".join(_html(child) for child in item.children)
            parts.append(f"<li{cls}>{label}{text}{children}</li>")
        return f"<{tag}>{''.join(parts)}</{tag}>"
    if isinstance(block, Plot):
        uri = _draw(block)
        if not uri or not uri.startswith("data:image/png;base64,"):
            return ""
        return f"<img src='{_esc(uri)}' alt='{_esc(block.alt)}' width='600' height='300'>"
    if isinstance(block, Fold):
        opened = " open" if block.open else ""
        inner = "".join(_html(b) for b in block.blocks)
        return f"<details{opened}><summary>{_esc(block.summary)}</summary>{inner}</details>"
    if isinstance(block, Box):
        anchor = f" id='{_esc(block.anchor)}'" if block.anchor else ""
        inner = "".join(_html(b) for b in block.blocks)
        return f"<div class='box {_esc(block.cls)}'{anchor}>{inner}</div>"
    raise TypeError(f"unknown report block {type(block).__name__}")


def _draw(plot: Plot) -> str | None:
    try:
        return plot.make()
    except Exception:  # a plot is an illustration; its table is already in the report
        return None


def _plots() -> Any:
    from lvmqa import plots

    return plots


def blocks_html(blocks: Iterable[Block]) -> str:
    return f"<div class='lvmqa'><style>{CSS}</style>" + "".join(_html(b) for b in blocks) + "</div>"


def summary_html(results: Mapping[str, Any]) -> str:
    """The whole diagnosis as an HTML fragment (the pytest-html summary prefix)."""
    return blocks_html(report_blocks(results))


def render_html(results: Mapping[str, Any]) -> str:
    """A standalone, self-contained HTML page with the same content as the summary."""
    names = ", ".join(_dict(results.get("datasets")))
    title = f"lvmqa diagnosis: {names}" if names else "lvmqa diagnosis"
    version = results.get("lvmqa_version", __version__)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_esc(title)}</title>"
        "<style>body{margin:18px 28px;background:#fff}</style></head><body>"
        f"<div class='lvmqa'><h1 style='font-size:24px;margin:0'>{_esc(title)}</h1>"
        f"<p class='note' style='color:#57606a'>lvmqa {_esc(version)}</p></div>"
        f"{summary_html(results)}</body></html>\n"
    )


def check_extras(dataset: str, result: CheckResult, session: Any) -> list[Any]:
    """pytest-html extras for one test row: that check's section, plots inlined."""
    from pytest_html import extras

    data: dict[str, Any] = {"checks": {}}
    try:
        done = session.results.get(dataset, {})
        data["checks"] = {cid: r.to_json() for cid, r in done.items()}
        baseline = session.context(dataset).baseline()
        data["baseline"] = baseline.name if baseline else None
        results: dict[str, Any] = {
            "datasets": {
                name: {"checks": {cid: r.to_json() for cid, r in checks.items()}}
                for name, checks in session.results.items()
            }
        }
        results["datasets"][dataset] = data
    except Exception:  # the row's own result is enough to render its section
        results = {"datasets": {dataset: data}}
    data["checks"][result.check_id] = result.to_json()
    view = View(dataset, data, results)
    box = check_section(result.check_id, data["checks"][result.check_id], view, _check_titles())
    return [extras.html(blocks_html([box]))]


def metrics_table_html(result: CheckResult) -> str:
    """One check's section as HTML (kept for callers of the first report API)."""
    view = View("dataset", {"checks": {result.check_id: result.to_json()}})
    return blocks_html([check_section(result.check_id, result.to_json(), view, _check_titles())])


class HtmlReportHooks:
    """pytest-html hooks, registered only when pytest-html is active."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def pytest_html_results_summary(
        self, prefix: list[str], summary: list[str], postfix: list[str], session: Any
    ) -> None:
        from lvmqa.plugin import OUTCOME_KEY

        results = session.config.stash.get(OUTCOME_KEY, None)
        if results:
            prefix.append(summary_html(results))

    def pytest_html_report_title(self, report: Any) -> None:
        names = ", ".join(getattr(self.session, "requested", []) or [])
        report.title = f"lvmqa diagnosis: {names}" if names else "lvmqa data-quality diagnosis"


# ============================================================================ Markdown


def _md_text(text: Any) -> str:
    """Inline Markdown: HTML-escaped (GitHub renders raw HTML), one line, pipes escaped."""
    value = html.escape(surrogate_safe(" ".join(str(text).split())), quote=False)
    return value.replace("|", "\\|").replace("`", "\\`")


def _md_cell(cell: CellLike) -> str:
    text = cell.text if isinstance(cell, Cell) else cell
    if isinstance(cell, Cell) and cell.cls == "code" and text:
        return f"`{text.replace('`', '')}`".replace("|", "\\|")
    return _md_text(text) or " "


def _md(block: Block) -> str:
    if isinstance(block, Heading):
        return "#" * min(max(block.level, 1), 6) + " " + _md_text(block.text)
    if isinstance(block, Para):
        label = (
            block.label
            if block.label.endswith((".", ":")) or not block.label
            else block.label + ":"
        )
        return (f"**{_md_text(label)}** " if label else "") + _md_text(block.text)
    if isinstance(block, Table):
        width = len(block.headers)
        lines = [
            "| " + " | ".join(_md_text(h) or " " for h in block.headers) + " |",
            "|" + "---|" * width,
        ]
        for row in block.rows:
            cells = [_md_cell(c) for c in row][:width] + [" "] * (width - len(row))
            lines.append("| " + " | ".join(cells) + " |")
        if block.caption:
            lines.insert(0, f"*{_md_text(block.caption)}*\n")
        return "\n".join(lines)
    if isinstance(block, Code):
        fence = "`" * max(3, _longest_backtick_run(block.text) + 1)
        return f"{fence}{block.lang}\n{block.text}\n{fence}"
    if isinstance(block, Items):
        lines = []
        for number, item in enumerate(block.items, start=1):
            bullet = f"{number}." if block.ordered else "-"
            label = f"**{_md_text(item.label)}:** " if item.label else ""
            text = f"**{_md_text(item.text)}**" if item.children else _md_text(item.text)
            lines.append(f"{bullet} {label}{text}")
            for child in item.children:
                lines += ["   " + line if line else "" for line in _md(child).split("\n")]
        return "\n".join(lines)
    if isinstance(block, Plot):
        return ""
    if isinstance(block, Fold):
        if block.markdown == "hide":
            return ""
        inner = "\n\n".join(t for t in (_md(b) for b in block.blocks) if t)
        if block.markdown == "flat":
            return inner
        opened = " open" if block.open else ""
        return (
            f"<details{opened}><summary>{_md_text(block.summary)}</summary>\n\n{inner}\n\n"
            "</details>"
        )
    if isinstance(block, Box):
        return "\n\n".join(t for t in (_md(b) for b in block.blocks) if t)
    raise TypeError(f"unknown report block {type(block).__name__}")


def _longest_backtick_run(text: str) -> int:
    runs = re.findall(r"`+", text)
    return max((len(r) for r in runs), default=0)


# GitHub refuses comments over 65,536 characters; past this the per-check details go.
MARKDOWN_LIMIT = 60_000


def render_markdown(results: Mapping[str, Any]) -> str:
    """The diagnosis for a PR comment: GitHub-flavoured tables, no images; each phase's
    check details folded (open where something failed)."""
    text = _markdown(results, details=True)
    if len(text) > MARKDOWN_LIMIT:
        text = _markdown(results, details=False)
        text += (
            "\n_Per-check details left out to fit a comment; render them with "
            "`lvmqa report RESULTS.json --format html`._\n"
        )
    return text


def _markdown(results: Mapping[str, Any], *, details: bool) -> str:
    parts = [f"# lvmqa diagnosis ({_md_text(results.get('lvmqa_version', __version__))})"]
    for name, data in _dict(results.get("datasets")).items():
        if not isinstance(data, dict):
            continue
        view = View(str(name), data, results)
        blocks = _markdown_dataset(view)
        if not details:
            blocks = [b for b in blocks if not (isinstance(b, Fold) and b.markdown == "fold")]
        parts += [_md(b) for b in blocks]
    return "\n\n".join(p for p in parts if p) + "\n"


def _markdown_dataset(view: View) -> list[Block]:
    """The HTML report's blocks with each phase folded into one ``<details>``."""
    out: list[Block] = []
    phase: list[Block] | None = None
    phase_title = ""
    for block in dataset_blocks(view):
        if isinstance(block, Heading) and block.level <= 3:
            if phase is not None:
                out.append(_md_phase_fold(phase_title, phase))
            if block.level == 3 and block.text in (*PHASE_TITLES.values(), "Other checks"):
                phase, phase_title = [], block.text
                continue
            phase = None
        if phase is not None:
            phase.append(block)
        else:
            out.append(block)
    if phase is not None:
        out.append(_md_phase_fold(phase_title, phase))
    return out


def _md_phase_fold(title: str, blocks: list[Block]) -> Block:
    statuses = [b.cls.split()[-1] for b in blocks if isinstance(b, Box)]
    bad = sum(s in ("failed", "error") for s in statuses)
    summary = f"{title} — {len(statuses)} checks" + (
        f", {bad} failed or errored" if bad else ", none failed"
    )
    return Fold(summary, [Heading(3, title), *blocks], open=bool(bad))


# ============================================================================ terminal


def terminal_summary(results: Mapping[str, Any]) -> list[str]:
    lines = []
    for name, data in _dict(results.get("datasets")).items():
        view = View(str(name), _dict(data), results)
        diag = _dict(view.data.get("diagnosis"))
        verdict = str(diag.get("verdict", "unknown"))
        headline = f" — {diag['headline']}" if diag.get("headline") else ""
        lines.append(
            f"lvmqa {name}: {verdict.upper()}{headline} ({_counts_text(_status_counts(view))})"
        )
        causes = [c for c in _list(diag.get("root_causes")) if isinstance(c, dict)]
        causes.sort(key=lambda c: -(_num(c.get("confidence")) or 0.0))
        for cause in causes[:3]:
            confidence = _num(cause.get("confidence"))
            conf = f" (confidence {confidence:.2f})" if confidence is not None else ""
            lines.append(f"  root cause: {cause.get('code', 'unknown')}{conf}")
            evidence = _list(cause.get("evidence"))
            if evidence:
                lines.append(f"    evidence: {_clip(evidence[0], 150)}")
        unused = unused_key_lines(view.data)
        if unused:
            lines.append(
                f"  keys not used ({len(unused)}): {_clip('; '.join(unused), 200)} "
                "— map with [datasets.NAME.keys]"
            )
        for action in _list(diag.get("actions"))[:2]:
            command = action.get("command") if isinstance(action, dict) else action
            if isinstance(command, str) and command.strip():
                lines.append(f"  next: {_clip(command.strip().splitlines()[0], 150)}")
    return lines
