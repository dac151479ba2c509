"""Errors a user can cause and fix: shown as one line, exit code 2 (a traceback only with KD_DEBUG=1)."""

from __future__ import annotations


class KDError(Exception):
    """A known, user-facing failure. The message is one line that says what to do."""

    exit_code: int = 2


class Interrupted(KDError):
    """Training was stopped by the user (Ctrl-C); a resumable checkpoint was saved."""

    exit_code = 130
