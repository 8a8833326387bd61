"""Progress lines for long passes, shown only on an interactive terminal and never in CI.

The pytest plugin and the CLI decide where progress goes (``set_sink``); library code
only reports ``task(label, total)`` updates, so it stays silent by default.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
Sink = Callable[[str], None]

_sink: Sink | None = None
_MIN_INTERVAL_S = 0.5


def interactive(stream: object) -> bool:
    """A terminal, and not CI (CI sets ``CI``; progress there is noise in the log)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("CI")


def set_sink(sink: Sink | None) -> None:
    global _sink
    _sink = sink


def stderr_sink() -> Sink | None:
    if not interactive(sys.stderr):
        return None

    def write(text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    return write


class Task:
    """``update(done)`` redraws one line at most twice a second; ``close()`` ends it."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, max(total, 1)
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, done: int) -> None:
        if _sink is None:
            return
        now = time.monotonic()
        if now - self._last < _MIN_INTERVAL_S and done < self.total:
            return
        self._last = now
        elapsed = now - self.started
        share = min(done / self.total, 1.0)
        eta = elapsed / share - elapsed if share > 0 else 0.0
        _sink(f"\r  {self.label}: {100 * share:5.1f} %  ({elapsed:.0f} s, ~{eta:.0f} s left)  ")

    def close(self) -> None:
        if _sink is not None:
            _sink(
                f"\r  {self.label}: done in {time.monotonic() - self.started:.1f} s"
                + " " * 20
                + "\n"
            )


def track(items: Iterable[T], label: str, total: int) -> Iterator[T]:
    """Iterate ``items`` while reporting progress by item count."""
    task = Task(label, total)
    for done, item in enumerate(items, start=1):
        yield item
        task.update(done)
    task.close()
