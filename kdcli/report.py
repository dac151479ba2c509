"""What a person reads in a terminal: rich tables and JSON. No torch here (``kd list`` stays fast);
pictures are in :mod:`kdcli.pictures`."""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], console: Console | None = None,
                text_columns: int = 2) -> None:
    """A rich table: the first ``text_columns`` columns left-aligned (names), the others right-aligned (numbers)."""
    table = Table(title=title, header_style="bold")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i < text_columns else "right")
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    # piped output (CI logs, `| less`) keeps the whole table instead of rich's 80-column default
    (console or Console(width=None if sys.stdout.isatty() else max(120, shutil.get_terminal_size().columns))).print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.2f}"
    return str(value)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))
