"""Results JSON, per-check extras and the report summary.

``build_results`` is the single source for the JSON file, the HTML summary and the
Markdown rendering, so the three always agree.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from lvmqa import __version__
from lvmqa.atomic import write_text_atomic
from lvmqa.results import CheckResult


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
            "sha256": ds.sha256(),
            "n_sequences": ds.n,
            "dim": ds.dim,
            "kind": ds.kind,
            "encoder": ctx.encoder_name(),
            "baseline": (ctx.baseline().name if ctx.baseline() else None),
            "checks": checks,
            "diagnosis": diagnose(name, {cid: ran[cid] for cid in checks}),
        }
    return {"lvmqa_version": __version__, "datasets": datasets}


def write_json(results: dict[str, Any], path: Path) -> None:
    write_text_atomic(path, json.dumps(results, indent=2, sort_keys=False, allow_nan=False) + "\n")


def load_results(path: Path) -> dict[str, Any]:
    from lvmqa.errors import LvmqaError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LvmqaError("results file not found", path=path) from None
    except (ValueError, UnicodeDecodeError):
        raise LvmqaError("not a JSON results file", path=path) from None
    if not isinstance(data, dict) or "datasets" not in data:
        raise LvmqaError("not an lvmqa results file", path=path, key="datasets",
                         expected="an object with 'datasets'")
    return data


def metrics_table_html(result: CheckResult) -> str:
    rows = []
    for key, value in result.metrics.items():
        if isinstance(value, (dict, list)):
            continue
        rows.append(f"<tr><td>{html.escape(key)}</td><td>{html.escape(_fmt(value))}</td></tr>")
    gates = "".join(
        f"<li class='{'ok' if g.passed else 'bad'}'>{html.escape(g.describe())}</li>"
        for g in result.gates)
    return (f"<div class='lvmqa-check'><p>{html.escape(result.message)}</p>"
            f"<ul>{gates}</ul><table>{''.join(rows)}</table></div>")


def check_extras(dataset: str, result: CheckResult, session: Any) -> list[dict[str, Any]]:
    from pytest_html import extras

    return [extras.html(metrics_table_html(result))]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


def summary_html(results: dict[str, Any]) -> str:
    parts = []
    for name, data in results["datasets"].items():
        diag = data["diagnosis"]
        causes = "".join(
            f"<li><b>{html.escape(c['code'])}</b> (confidence {c['confidence']:.2f}): "
            + "; ".join(html.escape(e) for e in c["evidence"]) + "</li>"
            for c in diag["root_causes"])
        parts.append(f"<section><h2>{html.escape(name)}: {html.escape(diag['verdict'])}</h2>"
                     f"<ul>{causes}</ul></section>")
    return "".join(parts)


class HtmlReportHooks:
    """pytest-html hooks, registered only when pytest-html is active."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def pytest_html_results_summary(self, prefix: list[str], summary: list[str],
                                    postfix: list[str], session: Any) -> None:
        from lvmqa.plugin import OUTCOME_KEY

        results = session.config.stash.get(OUTCOME_KEY, None)
        if results:
            prefix.append(summary_html(results))

    def pytest_html_report_title(self, report: Any) -> None:
        report.title = "lvmqa data-quality diagnosis"


def terminal_summary(results: dict[str, Any]) -> list[str]:
    lines = []
    for name, data in results["datasets"].items():
        diag = data["diagnosis"]
        lines.append(f"lvmqa {name}: {diag['verdict']}")
        for cause in diag["root_causes"][:3]:
            lines.append(f"  {cause['code']} (confidence {cause['confidence']:.2f})")
    return lines
