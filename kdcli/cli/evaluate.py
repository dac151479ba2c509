"""`kd evaluate RUN...`: one table comparing every model of every run on a test split."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from kdcli.cli.common import handle_errors
from kdcli.cli.options import Options, command
from kdcli.errors import KDError


@handle_errors
@command("dataset", "data_dir", "device", "json", "allow_module")
def evaluate(
    options: Options,
    runs: Annotated[list[str], typer.Argument(help="Run directories (RUN or RUN:role).")],
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Evaluation batch size.")] = 1024,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="Measure CPU latency per image.")] = True,
    churn: Annotated[bool, typer.Option(
        "--churn", help="Also report prediction churn: the share of test images two models label differently "
        "(every pair of the runs given, or of one run's copies).")] = False,
    baseline: Annotated[Optional[str], typer.Option(
        "--baseline", help="A run to compare every RUN with (its rows come first): refused unless each RUN trained "
        "under its budget (data, schedule, optimiser, precision, model, members).")] = None,
) -> None:
    """Score runs on the test split: top-1/top-5, params, size, CPU latency, agreement with the teacher.

    Rebuilds every model from the run directory alone. With --dataset, evaluates on another dataset,
    refused unless its classes, channels and image size match. --json prints {"models": [...],
    "churn": [...]} (churn empty without --churn).

    Examples:

    kd evaluate runs/teacher runs/student runs/student-alone

    kd evaluate runs/dml --churn --json

    kd evaluate runs/dml --baseline runs/independent
    """
    from kdcli import api  # noqa: PLC0415 - imports torch; `kd --help` must not
    from kdcli.report import print_json, print_table  # noqa: PLC0415

    dataset, data_dir, device = options["dataset"], options["data_dir"], options["device"] or "auto"
    if baseline:
        _check_budgets(baseline, runs)
        runs = [baseline, *runs]
    allowed = list(options["allow_module"] or [])
    rows = api.evaluate(runs, dataset=dataset, data_dir=data_dir, device=device, batch_size=batch_size,
                        latency=latency, allow_modules=allowed)
    churn_rows = api.churn(runs, dataset=dataset, data_dir=data_dir, device=device, batch_size=batch_size,
                           allow_modules=allowed) if churn else None
    if options["json"]:
        print_json({"models": rows, "churn": churn_rows or []})
        return
    datasets = sorted({r["dataset"] for r in rows})
    one_dataset = len(datasets) == 1  # then the dataset goes in the title, keeping the table narrow
    columns = ["run", "role", "model", *([] if one_dataset else ["dataset"]), "top-1 %", "top-5 %", "params", "size",
               "CPU ms/img", "agree w/ teacher %"]
    print_table(
        f"kd evaluate · {datasets[0]} test split" if one_dataset else "kd evaluate · test splits",
        columns,
        [[r["run"], r["role"], r["model"], *([] if one_dataset else [r["dataset"]]), r["top1"] * 100, r["top5"] * 100,
          r["params"], _size(r["size_bytes"]), r["cpu_latency_ms"],
          None if r["agreement"] is None else r["agreement"] * 100]
         for r in rows],
    )
    if churn_rows is not None:
        print_table(
            "prediction churn (test images labelled differently)",
            ["model A", "model B", "dataset", "churn %", "images"],
            [[r["a"], r["b"], r["dataset"], r["churn"] * 100, r["images"]] for r in churn_rows],
        )


def _size(n: int | None) -> str | None:
    if n is None:
        return None
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return None


def _check_budgets(baseline: str, runs: list[str]) -> None:
    """Refuse (one line, before any model is loaded) a run whose training budget differs from the baseline's."""
    from kdcli import budget, checkpoint  # noqa: PLC0415 - imports torch; `kd --help` must not

    theirs = budget.run_budget(checkpoint.resolve_role(baseline)[2])
    for run in runs:
        diff = budget.differences(budget.run_budget(checkpoint.resolve_role(run)[2]), theirs)
        if diff:
            raise KDError(f"{run} and --baseline {baseline} trained under different budgets ({'; '.join(diff)})")
