"""The pytest plugin: options, the per-dataset and per-gate parametrisation, fixtures, hooks.

Installed, it loads through the ``pytest11`` entry point ``lvmqa`` (in the repository
the root conftest loads it too). No computation happens here. Checks run through
``lvmqa.checks.Session`` (once per dataset and check); every declared gate of
:mod:`lvmqa.gates` becomes one test item per dataset, with its resolved threshold in
the id; results go to JSON, to each test row's extras and to the report's summary.

Fixtures: ``lvmqa_check(check_id) -> CheckResult``, ``lvmqa_dataset_obj -> Dataset``
(the opened file), ``lvmqa_dataset`` (its name), ``lvmqa_gate -> GateCase`` and
``lvmqa_session``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from lvmqa.errors import LvmqaError

if TYPE_CHECKING:
    from lvmqa.checks import Session
    from lvmqa.gates import Planned
    from lvmqa.io import Dataset
    from lvmqa.results import CheckResult, Gate

SESSION_KEY = pytest.StashKey[Any]()
CHECK_KEY = pytest.StashKey[tuple[str, str]]()
GATE_KEY = pytest.StashKey["GateCase"]()
OUTCOME_KEY = pytest.StashKey[dict[str, Any]]()

# Registered here so that --strict-markers works wherever the plugin loads.
MARKERS = (
    "p0: P0 space-alignment checks",
    "p1: P1 data-triage checks",
    "p2: P2 smoke-training checks",
    "smoke: trains a model (deselect with -m 'not smoke')",
    "lvmqa_gate: one declared lvmqa gate on one dataset",
)
NO_DATASET = "no --dataset given (e.g. --dataset=wiki-790k)"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lvmqa", "lvmqa data-quality checks")
    group.addoption(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME_OR_PATH",
        help="dataset to check: a name in lvmqa.toml or a path to a data file "
        "(repeatable; each test runs once per dataset)",
    )
    group.addoption(
        "--baseline",
        default=None,
        metavar="NAME",
        help="compare distributions against this dataset instead of the registry's",
    )
    group.addoption(
        "--encoder",
        default=None,
        metavar="NAME",
        help="encoder for fingerprint/alignment (registry name or model name)",
    )
    group.addoption(
        "--lvmqa-config",
        default=None,
        metavar="FILE",
        help="dataset registry (default: $LVMQA_CONFIG, else lvmqa.toml here or above)",
    )
    group.addoption(
        "--lvmqa-json",
        default=None,
        metavar="FILE",
        help="write the results and diagnosis as JSON to FILE",
    )
    group.addoption(
        "--trust-registry",
        action="store_true",
        default=None,
        help="allow 'module:function' encoders from the registry (also "
        "$LVMQA_TRUST_REGISTRY=1; never for a pull request's checkout)",
    )
    group.addoption(
        "--no-trust-registry",
        dest="trust_registry",
        action="store_false",
        help="treat the registry as untrusted even if $LVMQA_TRUST_REGISTRY is set "
        "(the default: trust is never inferred from where lvmqa.toml lies)",
    )
    group.addoption("--lvmqa-seed", type=int, default=0, help="seed for sampling and training")
    group.addoption(
        "--recall-sample",
        type=int,
        default=1000,
        help="self-queries for oracle_recall (0 = all targets)",
    )
    group.addoption(
        "--alignment-sample", type=int, default=256, help="texts re-encoded by the alignment check"
    )
    group.addoption(
        "--index-factory",
        default="Flat",
        help="FAISS index factory string for oracle_recall, e.g. 'IVF1024,Flat'",
    )
    group.addoption("--nprobe", type=int, default=None, help="nprobe for IVF indexes")
    group.addoption(
        "--smoke-max-sequences",
        type=int,
        default=None,
        help="cap on sequences used by smoke training (CPU runs)",
    )
    group.addoption("--smoke-epochs", type=int, default=5, help="epochs of smoke training")
    group.addoption(
        "--smoke-device",
        default=None,
        choices=["cpu", "cuda", "mps"],
        help="force the smoke-training device (default: cuda > mps > cpu)",
    )
    group.addoption(
        "--lvmqa-debug",
        action="store_true",
        default=False,
        help="let internal errors raise with their traceback",
    )


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    datasets = config.getoption("dataset") or []
    json_path = config.getoption("lvmqa_json")
    if not datasets and not json_path:
        return
    from lvmqa.checks import RunOptions, Session
    from lvmqa.registry import find_config, load_registry, trust_granted

    trust_flag = config.getoption("trust_registry")
    try:
        path = find_config(
            config.getoption("lvmqa_config"), start=Path(config.invocation_params.dir)
        )
        # Trust is opt-in (--trust-registry or $LVMQA_TRUST_REGISTRY=1), never inferred
        # from the file's location: a PR's checkout holds an lvmqa.toml of its choosing.
        trusted = trust_granted(trust_flag)
        registry = load_registry(path, trusted=trusted)
        options = RunOptions(
            seed=config.getoption("lvmqa_seed"),
            recall_sample=config.getoption("recall_sample"),
            alignment_sample=config.getoption("alignment_sample"),
            index_factory=config.getoption("index_factory"),
            nprobe=config.getoption("nprobe"),
            smoke_max_sequences=config.getoption("smoke_max_sequences"),
            smoke_epochs=config.getoption("smoke_epochs"),
            smoke_device=config.getoption("smoke_device"),
            trust_registry=trusted,
            baseline=config.getoption("baseline"),
            encoder=config.getoption("encoder"),
            debug=config.getoption("lvmqa_debug"),
        )
        session = Session(registry, options)
        for name in datasets:
            session.add(name)
        if options.baseline:
            session.context(options.baseline)
        for name in session.requested:  # bad files fail now, before any test runs
            session.context(name).dataset  # noqa: B018 - opening validates the file
        from lvmqa.outputs import refuse_overwrite_of_inputs, refuse_unwritable

        reports = [json_path, getattr(config.option, "htmlpath", None)]
        refuse_unwritable(reports, option="report")
        inputs = [session.context(name).dataset.path for name in session.contexts]
        refuse_overwrite_of_inputs(reports, inputs, option="report")
        if config.getoption("lvmqa_json") or getattr(config.option, "htmlpath", None):
            # Reports name each file by its sha256: a full extra read, done meanwhile
            # at the lowest CPU priority instead of after the checks.
            for name in session.requested:
                session.context(name).dataset.hash_in_background()
            session.report_requested = True
    except LvmqaError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[SESSION_KEY] = session
    if config.pluginmanager.hasplugin("html"):
        from lvmqa.report import HtmlReportHooks

        config.pluginmanager.register(HtmlReportHooks(session), "lvmqa-html")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Progress goes to pytest's terminal writer on a real terminal, never in CI."""
    config = session.config
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if SESSION_KEY not in config.stash or reporter is None:
        return
    from lvmqa import progress

    if config.option.verbose < 0 or not progress.interactive(reporter._tw._file):
        return
    # pytest captures fd 1 and 2 while tests run, so progress goes to the terminal itself.
    try:
        tty = open("/dev/tty", "w", encoding="utf-8")  # noqa: SIM115 - lives for the session
    except OSError:
        return
    config.add_cleanup(tty.close)
    config.add_cleanup(lambda: progress.set_sink(None))

    def sink(text: str) -> None:
        tty.write(text)
        tty.flush()

    progress.set_sink(sink)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    session = metafunc.config.stash.get(SESSION_KEY, None)
    names = list(session.requested) if session else []
    if "lvmqa_gate" in metafunc.fixturenames:
        _parametrize_gates(metafunc, session, names)
        return
    if "lvmqa_dataset" not in metafunc.fixturenames:
        return
    if names:
        metafunc.parametrize("lvmqa_dataset", names, ids=names, scope="session")
    else:
        metafunc.parametrize(
            "lvmqa_dataset",
            [pytest.param(None, marks=pytest.mark.skip(reason=NO_DATASET))],
            ids=["no-dataset"],
        )


def _phase_marks(check_id: str) -> list[pytest.MarkDecorator]:
    from lvmqa.checks import CHECKS

    phase = CHECKS[check_id][0].lower()
    marks = [pytest.mark.lvmqa_gate]
    if phase in ("p0", "p1", "p2"):
        marks.append(getattr(pytest.mark, phase))
    if phase == "p2":  # the P2 checks train the smoke model
        marks.append(pytest.mark.smoke)
    return marks


def _parametrize_gates(
    metafunc: pytest.Metafunc, session: Session | None, names: list[str]
) -> None:
    """One item per dataset × declared gate, the resolved threshold in its id."""
    from lvmqa import gates
    from lvmqa.checks import CHECKS

    wanted = getattr(metafunc.module, "LVMQA_CHECKS", None) or list(CHECKS)
    params = []
    for name in names:
        assert session is not None
        for planned in gates.plan(session.context(name), wanted):
            marks = _phase_marks(planned.spec.check)
            if planned.threshold is None:
                marks.append(pytest.mark.skip(reason=planned.skip_reason))
            params.append(pytest.param(planned, marks=marks, id=planned.test_id))
    if not params:
        params = [pytest.param(None, marks=pytest.mark.skip(reason=NO_DATASET), id="no-dataset")]
    metafunc.parametrize("lvmqa_gate", params, indirect=True)


@pytest.fixture
def lvmqa_session(request: pytest.FixtureRequest) -> Session:
    session: Session = request.config.stash[SESSION_KEY]
    return session


def _run_check(request: pytest.FixtureRequest, dataset: str, check_id: str) -> CheckResult:
    """A check's result for a test: skipped skips it, an error fails it in one line."""
    __tracebackhide__ = True
    session = request.config.stash[SESSION_KEY]
    result: CheckResult = session.run(dataset, check_id)
    if result.status == "skipped":
        pytest.skip(result.message)
    if result.status == "error":
        pytest.fail(f"{check_id} could not run: {result.message}", pytrace=False)
    return result


@pytest.fixture
def lvmqa_check(request: pytest.FixtureRequest, lvmqa_dataset: str) -> Callable[[str], CheckResult]:
    """``lvmqa_check("norms")`` returns that check's result for this test's dataset.

    A skipped check skips the test with its reason; a check that could not run
    fails the test with its one-line error.
    """

    def run(check_id: str) -> CheckResult:
        __tracebackhide__ = True
        request.node.stash[CHECK_KEY] = (lvmqa_dataset, check_id)
        return _run_check(request, lvmqa_dataset, check_id)

    return run


@pytest.fixture
def lvmqa_dataset_obj(request: pytest.FixtureRequest, lvmqa_dataset: str) -> Dataset:
    """The opened :class:`~lvmqa.io.Dataset` of this test's dataset."""
    dataset: Dataset = request.config.stash[SESSION_KEY].context(lvmqa_dataset).dataset
    return dataset


@dataclass(frozen=True)
class GateCase:
    """What a gate item asserts: one evaluated gate of one check on one dataset."""

    dataset: str
    check_id: str
    gate: Gate

    def __repr__(self) -> str:
        return f"GateCase({self.check_id}.{self.gate.id} on {self.dataset})"

    @property
    def value(self) -> Any:
        """The measured value, to the 6 significant digits the JSON results carry."""
        from lvmqa.results import to_jsonable

        return to_jsonable(self.gate.value)

    @property
    def threshold(self) -> Any:
        return self.gate.threshold

    @property
    def ci_bound(self) -> Any:
        """The CI bound on the worse side (see Gate.ci_bound), rounded like the value."""
        from lvmqa.results import to_jsonable

        return to_jsonable(self.gate.ci_bound)

    def table(self) -> str:
        from lvmqa.gates import evidence_table

        return evidence_table(self.gate, check_id=self.check_id, dataset=self.dataset)


def failed_gates(result: CheckResult) -> tuple[int, str]:
    """For a per-check summary test: how many gates failed, and their evidence table.

    A check with no gate for this data skips (it must not pass with nothing that
    could fail), with the reason and how to set a threshold.
    """
    from lvmqa import gates

    if not result.gates:
        reasons = [gates.not_applied_reason(s, result) for s in gates.for_check(result.check_id)]
        pytest.skip(f"{result.check_id}: no gate applies to this data ({'; '.join(reasons)})")
    failed = [g for g in result.gates if not g.passed]
    tables = [gates.evidence_table(g, check_id=result.check_id) for g in failed]
    text = f"{len(failed)} of {len(result.gates)} gates failed: {result.message}"
    return len(failed), "\n\n".join([text, *tables])


@pytest.fixture
def lvmqa_gate(request: pytest.FixtureRequest) -> GateCase:
    """The evaluated gate of this item (the check runs once per dataset and session).

    Skips, with the reason, when the check did not apply this gate to the data.
    """
    from lvmqa import gates

    planned: Planned = request.param
    declared = planned.spec
    result = _run_check(request, planned.dataset, declared.check)
    gate = gates.find(result.gates, declared)
    if gate is None:
        pytest.skip(gates.not_applied_reason(declared, result))
    case = GateCase(planned.dataset, declared.check, gate)
    request.node.stash[GATE_KEY] = case
    for name, value in (
        ("value", gate.value),
        ("op", gate.op),
        ("threshold", gate.threshold),
        ("source", gate.source),
        ("kind", gate.kind),
    ):
        request.node.user_properties.append((name, value))
    if gate.ci is not None:
        request.node.user_properties.append(("ci", f"{gate.ci[0]:.6g} .. {gate.ci[1]:.6g}"))
    return case


def _gate_extra(case: GateCase) -> Any:
    """The gate's row in the HTML report: value, operator, threshold, source, CI."""
    import html

    from pytest_html import extras

    from lvmqa.gates import format_number

    gate = case.gate
    rows = [
        ("value", f"{gate.metric} = {format_number(gate.value)}"),
        ("operator", gate.op),
        ("threshold", format_number(gate.threshold)),
        ("kind", gate.kind),
        ("source", gate.source),
    ]
    if gate.ci is not None:
        rows.append(("CI (95 %)", f"{format_number(gate.ci[0])} .. {format_number(gate.ci[1])}"))
    body = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    return extras.html(f'<table class="lvmqa-gate">{body}</table>')


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.when != "call":
        return
    case = item.stash.get(GATE_KEY, None)
    if case is not None and item.config.pluginmanager.hasplugin("html"):
        report.extras = [*getattr(report, "extras", []), _gate_extra(case)]
    key = item.stash.get(CHECK_KEY, None)
    if key is None:
        return
    session = item.config.stash[SESSION_KEY]
    result = session.results.get(key[0], {}).get(key[1])
    if result is None:
        return
    from lvmqa.report import check_extras

    report.extras = [*getattr(report, "extras", []), *check_extras(key[0], result, session)]


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    lvmqa_session = session.config.stash.get(SESSION_KEY, None)
    if lvmqa_session is None:
        return
    from lvmqa.report import build_results

    results = build_results(lvmqa_session)
    session.config.stash[OUTCOME_KEY] = results
    json_path = session.config.getoption("lvmqa_json")
    if json_path:
        from lvmqa.report import write_json

        write_json(results, Path(json_path))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    results = config.stash.get(OUTCOME_KEY, None)
    if not results:
        return
    from lvmqa.report import terminal_summary

    for line in terminal_summary(results):
        terminalreporter.write_line(line)
