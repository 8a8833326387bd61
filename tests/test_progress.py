"""Progress lines appear only where a person is watching."""

from __future__ import annotations

import io

import pytest

from lvmqa import progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_quiet_in_ci_and_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert progress.interactive(FakeTerminal())
    assert not progress.interactive(io.StringIO())
    monkeypatch.setenv("CI", "true")
    assert not progress.interactive(FakeTerminal())


def test_task_reports_to_the_sink_and_closes_the_line() -> None:
    lines: list[str] = []
    progress.set_sink(lines.append)
    try:
        assert list(progress.track(range(3), "pass", total=3)) == [0, 1, 2]
    finally:
        progress.set_sink(None)
    assert any("100.0 %" in line for line in lines)
    assert lines[-1].endswith("\n") and "pass: done" in lines[-1]


def test_no_sink_means_no_output(capsys: pytest.CaptureFixture[str]) -> None:
    progress.set_sink(None)
    task = progress.Task("silent", 10)
    task.update(10)
    task.close()
    assert capsys.readouterr() == ("", "")
