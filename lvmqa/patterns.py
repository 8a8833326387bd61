"""Regular expressions from registries and command lines, matched in linear time.

A blocklist comes from a pull request's ``lvmqa.toml`` as often as from a maintainer.
Python's ``re`` backtracks: ``^(a+)+$`` against forty 'a' and a 'b' runs for hours.
RE2 (``google-re2``) matches in time linear in the text, and refuses the constructs
that need backtracking (backreferences, lookaround) when the pattern is compiled, so
a bad pattern is a one-line error naming where it came from, before any data is read.
"""

from __future__ import annotations

from typing import Any

import re2

from lvmqa.errors import LvmqaError

MAX_PATTERN_CHARS = 4096  # a blocklist is a handful of alternatives, not a program
MAX_PROGRAM_BYTES = 8 << 20  # RE2's compiled-program budget (its default)


class SafePattern:
    """A compiled RE2 pattern with the ``search`` / ``pattern`` API lvmqa uses."""

    __slots__ = ("_regex", "pattern")

    def __init__(self, pattern: str, regex: Any) -> None:
        self.pattern = pattern
        self._regex = regex

    def search(self, text: str) -> Any:
        """The first match anywhere in ``text`` (an RE2 match object), or None."""
        try:
            return self._regex.search(text)
        except UnicodeEncodeError:  # lone surrogates are not UTF-8: match what is readable
            return self._regex.search(_readable(text))

    def match(self, text: str) -> Any:
        """A match at the start of ``text``, or None."""
        try:
            return self._regex.match(text)
        except UnicodeEncodeError:
            return self._regex.match(_readable(text))

    def __repr__(self) -> str:
        return f"SafePattern({self.pattern!r})"


def _readable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def compile_pattern(pattern: str, *, where: str, ignore_case: bool = True) -> SafePattern:
    """Compile ``pattern`` with RE2; ``where`` names its origin (a registry key, a flag).

    Raises a one-line ``LvmqaError`` for syntax RE2 does not support (backreferences,
    lookahead/lookbehind, possessive quantifiers), an overlong pattern, or a pattern
    whose compiled program would exceed RE2's memory budget.
    """
    if not isinstance(pattern, str):
        raise LvmqaError("pattern must be a string", key=where, found=type(pattern).__name__)
    if len(pattern) > MAX_PATTERN_CHARS:
        raise LvmqaError(
            "regular expression is too long",
            key=where,
            expected=f"at most {MAX_PATTERN_CHARS} characters",
            found=f"{len(pattern)} characters",
        )
    options = re2.Options()
    options.log_errors = False  # RE2 would print to stderr: the error below is the one line
    options.case_sensitive = not ignore_case
    options.max_mem = MAX_PROGRAM_BYTES
    try:
        regex = re2.compile(pattern, options)
    except (re2.error, ValueError, TypeError, UnicodeEncodeError) as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise LvmqaError(
            "unsupported regular expression",
            key=where,
            expected="RE2 syntax (no backreferences or lookaround)",
            found=f"{pattern[:80]!r} ({detail})",
        ) from None
    return SafePattern(pattern, regex)
