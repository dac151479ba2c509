"""`kd list [models|datasets|methods] [NAME]`: what can be named on the command line.

Answers from the catalogue (:mod:`kdcli.catalog`) without importing torch, except where it must look
at something live: whether a dataset's files are on this machine (`kd list datasets`) and a model's
parameter count (`kd list models NAME`).
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from kdcli import catalog
from kdcli.cli.common import handle_errors
from kdcli.cli.options import Options, command
from kdcli.errors import KDError, unknown

WHAT = ("models", "datasets", "methods")


@handle_errors
@command("data_dir", "json")
def list_(
    options: Options,
    what: Annotated[Optional[str], typer.Argument(help="models | datasets | methods (default: all).")] = None,
    name: Annotated[Optional[str], typer.Argument(help="One model or method: its details.")] = None,
) -> None:
    """List the models, datasets and methods kd knows.

    `kd list methods NAME` shows a method's hyperparameters with their defaults and every value of
    its presets; `kd list models NAME` a model's parameter counts.

    Examples:

    kd list

    kd list methods dml

    kd list datasets   (also says which datasets are on this machine)
    """
    from kdcli.report import print_json, print_table  # noqa: PLC0415 - rich tables; no torch

    if what is not None and what not in WHAT:
        raise unknown("list", what, WHAT)
    if name is not None:
        if what not in ("models", "methods"):
            raise KDError("details are listed for one model or one method: kd list models NAME, kd list methods NAME")
        detail = _model_detail(name) if what == "models" else _method_detail(name)
        if options["json"]:
            print_json(detail)
            return
        for title, columns, rows in detail["tables"]:
            print_table(title, columns, rows, text_columns=len(columns))
        return
    sections = [what] if what else list(WHAT)
    out = {section: _section(section, options["data_dir"], live=what == "datasets") for section in sections}
    if options["json"]:
        print_json(out)
        return
    for section, rows in out.items():
        if rows:
            columns = list(rows[0])
            print_table(f"kd {section}", columns, [[r[c] for c in columns] for r in rows], text_columns=len(columns))


def _section(section: str, data_dir: str | None, live: bool) -> list[dict[str, Any]]:
    listing = catalog.catalog()
    if section == "models":
        return [{"name": m["name"], "example": m["example"], "about": m["about"]} for m in listing["models"]]
    if section == "methods":
        return [{"name": m["name"], "command": m["command"], "presets": ", ".join(m["presets"]), "about": m["about"]}
                for m in listing["methods"]]
    rows = [dict(d) for d in listing["datasets"]]
    if live:  # whether the files are here: the data code must look (it imports torch)
        from kdcli.data import available_offline  # noqa: PLC0415

        for row in rows:
            row["offline here"] = "yes" if available_offline(row["name"], data_dir) else "no"
    return rows


def _model_detail(name: str) -> dict[str, Any]:
    from kdcli.models import count_parameters, create_model, external  # noqa: PLC0415 - builds the one model asked

    external.allow_models([name])  # named on this command line
    shapes = [(1, 28, 10), (3, 32, 10), (3, 32, 100)]
    rows = []
    for channels, size, classes in shapes:
        try:
            model = create_model(name, channels, size, classes)
        except KDError as err:
            if not rows and "unknown model" in str(err):
                raise
            continue
        stages = getattr(model, "stages", None)
        rows.append([f"{channels}×{size}×{size}", classes, count_parameters(model),
                     len(stages) if stages is not None else "—"])
    return {"name": name, "shapes": [dict(zip(["input", "classes", "params", "stages"], r)) for r in rows],
            "tables": [(f"kd model {name}", ["input", "classes", "params", "stages"], rows)]}


def _value(value: Any) -> str:
    """A preset or default value as it is typed on the command line (``2e-3`` stays ``0.002``, lists comma-joined)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(_value(v) for v in value)
    return "—" if value is None else str(value)


def _method_detail(name: str) -> dict[str, Any]:
    method = catalog.method(name)
    if method is None:
        raise unknown("method", name, [m["name"] for m in catalog.catalog()["methods"]])
    params = [[p["name"], _value(p["default"]), p["about"]] for p in method["params"]]
    columns = [(preset, dataset) for preset, table in method["presets"].items() for dataset in table]
    keys: list[str] = []
    for preset, dataset in columns:
        for key, value in method["presets"][preset][dataset].items():
            flat = [f"{key}.{k}" for k in value] if isinstance(value, dict) else [key]
            keys += [k for k in flat if k not in keys]

    def cell(preset: str, dataset: str, key: str) -> str:
        values = method["presets"][preset][dataset]
        head, _, sub = key.partition(".")
        value = values.get(head, {}).get(sub) if sub else values.get(head)
        return "" if value is None and (head not in values or sub) else _value(value)

    presets = [[key, *[cell(p, d, key) for p, d in columns]] for key in keys]
    notes = method.get("preset_notes", {})
    tables = [
        (f"kd {method['command']} --method {name}: {method['doc']}", ["hyperparameter", "default", "about"],
         params or [["—", "—", "no hyperparameters of its own"]]),
        (f"{name} presets (defaults < preset < --config TOML < flags; an entry per dataset, * = any other)",
         ["key", *[f"{p} ({d})" for p, d in columns]], presets),
    ]
    if notes:
        tables.append((f"what {name}'s presets reproduce, and the source of each detail", ["preset", "reproduces"],
                       [[preset, text] for preset, text in notes.items()]))
    return {
        **{k: method[k] for k in ("name", "command", "about", "doc", "presets", "params")},
        "preset_notes": notes,
        "tables": tables,
    }
