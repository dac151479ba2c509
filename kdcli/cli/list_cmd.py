"""`kd list [models|datasets|methods]`: what can be named on the command line."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from kdcli.cli import options as o
from kdcli.cli.common import handle_errors
from kdcli.errors import KDError

WHAT = ("models", "datasets", "methods")


@handle_errors
def list_(
    what: Annotated[Optional[str], typer.Argument(help="models | datasets | methods (default: all).")] = None,
    data_dir: o.DataDir = None,
    json: o.Json = False,
) -> None:
    """List the models, datasets and methods kd knows."""
    from kdcli.report import print_json, print_table

    if what is not None and what not in WHAT:
        import difflib

        close = difflib.get_close_matches(what, WHAT, n=1)
        raise KDError(f"unknown list {what!r}.{' Did you mean ' + close[0] + '?' if close else ''} Valid: {', '.join(WHAT)}.")
    sections = [what] if what else list(WHAT)
    out = {}
    for section in sections:
        out[section] = {"models": _models, "datasets": lambda: _datasets(data_dir), "methods": _methods}[section]()
    if json:
        print_json(out)
        return
    for section, rows in out.items():
        if not rows:
            continue
        columns = list(rows[0])
        print_table(f"kd {section}", columns, [[r[c] for c in columns] for r in rows])


def _models() -> list[dict]:
    from kdcli.models import MODELS, count_parameters, create_model

    rows = []
    for entry in MODELS:
        example = entry.examples[0]
        try:
            params = count_parameters(create_model(example, 3, 32, 10))
        except Exception:  # noqa: BLE001 - a family whose example needs other shapes
            params = None
        rows.append({"name": entry.name, "example": example, "params (3×32×32, 10 classes)": params, "about": entry.help})
    return rows


def _datasets(data_dir: str | None) -> list[dict]:
    from kdcli.data import DATASETS, available_offline

    rows = []
    for entry in DATASETS:
        info = entry.info.get("static_info")
        rows.append({
            "name": entry.name,
            "shape": f"{info.channels}×{info.image_size}×{info.image_size}" if info else "from files",
            "classes": info.num_classes if info else None,
            "train/test": f"{info.train_size}/{info.test_size}" if info and info.train_size else "—",
            "offline here": "yes" if available_offline(entry.examples[0], data_dir) else "no",
            "about": entry.help,
        })
    return rows


def _methods() -> list[dict]:
    from kdcli.methods import METHODS

    return [{"name": e.name, "command": e.info.get("command", ""), "about": e.help} for e in METHODS]
