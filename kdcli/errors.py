"""Errors a user can cause and fix: shown as one line, exit code 2 (a traceback only with KD_DEBUG=1)."""

from __future__ import annotations

import difflib
from typing import Sequence


class KDError(Exception):
    """A known, user-facing failure. The message is one line that says what to do."""

    exit_code: int = 2


class Interrupted(KDError):
    """Training was stopped by the user (Ctrl-C); a resumable checkpoint was saved."""

    exit_code = 130


def did_you_mean(value: str, choices: Sequence[str], n: int = 3, cutoff: float = 0.5) -> str:
    """``" Did you mean a, b?"`` for the choices close to ``value`` (``""`` when none is close)."""
    close = difflib.get_close_matches(value, list(choices), n=n, cutoff=cutoff)
    return f" Did you mean {', '.join(close)}?" if close else ""


def unknown(what: str, value: str, choices: Sequence[str], shown: Sequence[str] | None = None) -> KDError:
    """The one-line error for a name that is not among ``choices``: suggestions, then the valid names."""
    listed = ", ".join(shown if shown is not None else choices) or "none"
    return KDError(f"unknown {what} {value!r}.{did_you_mean(value, choices)} Valid: {listed}.")
