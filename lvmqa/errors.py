"""One exception hierarchy for everything lvmqa refuses.

Every error carries structured fields (path, key, expected, found) so the CLI and
the pytest plugin can print exactly one line, and tests can assert on fields
instead of parsing prose.
"""

from __future__ import annotations

from pathlib import Path


class LvmqaError(Exception):
    """Base class: a problem the user can fix, reported as one line."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        key: str | None = None,
        expected: str | None = None,
        found: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.key = key
        self.expected = expected
        self.found = found
        self.reason = message
        super().__init__(self._format(message))

    def _format(self, message: str) -> str:
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if self.key is not None:
            parts.append(f"key '{self.key}'")
        head = ": ".join(parts)
        text = f"{head}: {message}" if head else message
        if self.expected is not None:
            text += f"; expected {self.expected}"
        if self.found is not None:
            text += f", found {self.found}"
        return " ".join(text.split())  # always one line


class DatasetFormatError(LvmqaError):
    """A data file that cannot be read as a bank or sequences file."""


class UnsafePickleError(DatasetFormatError):
    """An object array whose pickle would call a global outside the allowlist."""


class RegistryError(LvmqaError):
    """A bad lvmqa.toml: syntax, unknown names, missing files, cycles."""


class EncoderError(LvmqaError):
    """An encoder that cannot be resolved or loaded."""


class CheckSkipped(Exception):  # noqa: N818 - reads as a statement: "check skipped"
    """Raised inside a check when it cannot run on this dataset (with the reason)."""
