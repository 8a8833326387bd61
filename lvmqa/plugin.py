"""The pytest plugin: options, the per-dataset parametrisation, fixtures and hooks.

No computation happens here. Checks run through ``lvmqa.checks.Session`` (once per
dataset and check); results go to JSON, to each test row's extras and to the
report's summary section.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from lvmqa.errors import LvmqaError

SESSION_KEY = pytest.StashKey[Any]()
CHECK_KEY = pytest.StashKey[tuple[str, str]]()
OUTCOME_KEY = pytest.StashKey[dict[str, Any]]()


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
        help="allow 'module:function' encoders from a registry given with "
        "--lvmqa-config or $LVMQA_CONFIG (never do this for untrusted PRs)",
    )
    group.addoption(
        "--no-trust-registry",
        dest="trust_registry",
        action="store_false",
        help="treat even the default lvmqa.toml as untrusted (CI gating of PRs)",
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
    datasets = config.getoption("dataset") or []
    json_path = config.getoption("lvmqa_json")
    if not datasets and not json_path:
        return
    from lvmqa.checks import RunOptions, Session
    from lvmqa.registry import find_config, load_registry

    explicit = config.getoption("lvmqa_config") or os.environ.get("LVMQA_CONFIG")
    trust_flag = config.getoption("trust_registry")
    try:
        path = find_config(
            config.getoption("lvmqa_config"), start=Path(config.invocation_params.dir)
        )
        # The repository's own lvmqa.toml is trusted by default; a file named on the
        # command line or in the environment is not, unless --trust-registry says so.
        trusted = (not explicit) if trust_flag is None else bool(trust_flag)
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
        if config.getoption("lvmqa_json") or getattr(config.option, "htmlpath", None):
            # Reports name each file by its sha256: a full extra read, done meanwhile
            # at the lowest CPU priority instead of after the checks.
            for name in session.requested:
                session.context(name).dataset.hash_in_background()
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
    if "lvmqa_dataset" not in metafunc.fixturenames:
        return
    session = metafunc.config.stash.get(SESSION_KEY, None)
    names = list(session.requested) if session else []
    if names:
        metafunc.parametrize("lvmqa_dataset", names, ids=names, scope="session")
    else:
        metafunc.parametrize(
            "lvmqa_dataset",
            [
                pytest.param(
                    None,
                    marks=pytest.mark.skip(reason="no --dataset given (e.g. --dataset=wiki-790k)"),
                )
            ],
            ids=["no-dataset"],
        )


@pytest.fixture
def lvmqa_session(request: pytest.FixtureRequest) -> Any:
    return request.config.stash[SESSION_KEY]


@pytest.fixture
def lvmqa_check(request: pytest.FixtureRequest, lvmqa_dataset: str) -> Any:
    """``lvmqa_check("norms")`` returns that check's result for this test's dataset.

    A skipped check skips the test with its reason; a check that could not run
    fails the test with its one-line error.
    """
    session = request.config.stash[SESSION_KEY]

    def run(check_id: str) -> Any:
        __tracebackhide__ = True
        request.node.stash[CHECK_KEY] = (lvmqa_dataset, check_id)
        result = session.run(lvmqa_dataset, check_id)
        if result.status == "skipped":
            pytest.skip(result.message)
        if result.status == "error":
            pytest.fail(f"{check_id} could not run: {result.message}", pytrace=False)
        return result

    return run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    key = item.stash.get(CHECK_KEY, None)
    if key is None or report.when != "call":
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
