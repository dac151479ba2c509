"""What a person sees while a long phase runs: a rich bar on a terminal, plain lines in a log file.

When stderr is a terminal, a transient rich progress bar. When it is not (a cluster job's log, ``2> log``),
one plain line at a steady pace, so a log never stays silent for a long phase: a line whenever
:data:`LINE_EVERY_S` seconds have passed or another :data:`LINE_EVERY_FRACTION` of the phase is done (but
not more often than every :data:`MIN_GAP_S` seconds), and one at the end::

    train epoch 3/20: 1200/4800 (25%) loss 0.412 1534 img/s, 0:41 elapsed, ETA 2:03

Every phase (training, synthesis, sampling, statistics) reports through :func:`track`; :func:`silenced`
turns them all off (``--quiet``, ``--json``, and every rank but 0 under torchrun).
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, log_path=False)

LINE_EVERY_S = 30.0
LINE_EVERY_FRACTION = 0.05
MIN_GAP_S = 2.0

_quiet = False


@contextlib.contextmanager
def silenced(quiet: bool = True) -> Iterator[None]:
    """Within the block, :func:`track` shows nothing when ``quiet`` (and :func:`log` neither)."""
    global _quiet
    previous, _quiet = _quiet, quiet or _quiet
    try:
        yield
    finally:
        _quiet = previous


def is_quiet() -> bool:
    return _quiet


def log(message: str) -> None:
    """One line on stderr (a finished epoch, a warning), unless silenced."""
    if not _quiet:
        console.log(message)


def _clock(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Tracker:
    """Progress of one phase of ``total`` units; :meth:`update` / :meth:`advance` report it."""

    def __init__(self, description: str, total: int, bar: Progress | None, lines: bool) -> None:
        self.description = description
        self.total = max(1, int(total))
        self.completed = 0
        self.stats = ""
        self._bar = bar
        self._task = bar.add_task(description, total=self.total, stats="") if bar is not None else None
        self._lines = lines
        self._start = time.monotonic()
        self._last_line_time = self._start
        self._last_line_done = 0

    def update(self, completed: int | None = None, *, description: str | None = None, stats: str | None = None) -> None:
        """Set the units done so far (and optionally the description and a short stats text)."""
        if completed is not None:
            self.completed = min(int(completed), self.total)
        if description is not None:
            self.description = description
        if stats is not None:
            self.stats = stats
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, description=self.description, stats=self.stats)
        elif self._lines:
            self._maybe_line()

    def advance(self, units: int = 1) -> None:
        self.update(self.completed + units)

    def line(self) -> str:
        """The plain progress line (what a log shows)."""
        elapsed = time.monotonic() - self._start
        eta = elapsed / self.completed * (self.total - self.completed) if self.completed else None
        stats = f" {self.stats}" if self.stats else ""
        tail = f", ETA {_clock(eta)}" if eta is not None and self.completed < self.total else ""
        percent = 100 * self.completed / self.total
        return (f"{self.description}: {self.completed}/{self.total} ({percent:.0f}%){stats}, "
                f"{_clock(elapsed)} elapsed{tail}")

    def _maybe_line(self, final: bool = False) -> None:
        now = time.monotonic()
        since = now - self._last_line_time
        done = (self.completed - self._last_line_done) / self.total
        due = since >= LINE_EVERY_S or (done >= LINE_EVERY_FRACTION and since >= MIN_GAP_S)
        if final or due:
            console.print(self.line(), highlight=False, soft_wrap=True, markup=False)
            self._last_line_time, self._last_line_done = now, self.completed

    def close(self) -> None:
        if self._lines and self._bar is None and self.completed > self._last_line_done:
            self._maybe_line(final=True)


@contextlib.contextmanager
def track(description: str, total: int) -> Iterator[Tracker]:
    """Report a phase of ``total`` units: a rich bar on a terminal, plain lines otherwise, nothing when silenced."""
    if _quiet:
        yield Tracker(description, total, None, lines=False)
        return
    if console.is_terminal:
        bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
        )
        with bar:
            yield Tracker(description, total, bar, lines=False)
        return
    tracker = Tracker(description, total, None, lines=True)
    try:
        yield tracker
    finally:
        tracker.close()
