"""Errors a user can cause and fix: shown as one line, exit code 2 (a traceback only with KD_DEBUG=1)."""

from __future__ import annotations

import difflib
from typing import Sequence


class KDError(Exception):
    """A known, user-facing failure. The message is one line that says what to do."""

    exit_code: int = 2


class Interrupted(KDError):
    """Training was stopped by the user (Ctrl-C) or the system (SIGTERM); says where the resumable state is.

    The exit code is 128 + the signal's number, as a shell reports a process a signal ended
    (130 for Ctrl-C, 143 for SIGTERM), so a scheduler can tell a preempted job from a failed one.
    """

    exit_code = 130

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Diverged(KDError):
    """The training loss became NaN or infinite; the last finite checkpoint is kept (exit code 3)."""

    exit_code = 3


class Aborted(KeyboardInterrupt):
    """A second Ctrl-C or SIGTERM while a run was stopping (or one outside the training loop): stop at once."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def did_you_mean(value: str, choices: Sequence[str], n: int = 3, cutoff: float = 0.5) -> str:
    """``" Did you mean a, b?"`` for the choices close to ``value`` (``""`` when none is close)."""
    close = difflib.get_close_matches(value, list(choices), n=n, cutoff=cutoff)
    return f" Did you mean {', '.join(close)}?" if close else ""


def unknown(what: str, value: str, choices: Sequence[str], shown: Sequence[str] | None = None) -> KDError:
    """The one-line error for a name that is not among ``choices``: suggestions, then the valid names."""
    listed = ", ".join(shown if shown is not None else choices) or "none"
    return KDError(f"unknown {what} {value!r}.{did_you_mean(value, choices)} Valid: {listed}.")
