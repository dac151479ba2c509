"""`kd distill-online`: peers (or branches) trained together, no pre-trained teacher."""

from __future__ import annotations

import os
from typing import Annotated, Any, Optional

import typer

from kdcli.cli.common import argv, handle_errors
from kdcli.cli.options import TRAINING_COMMAND, Options, command

COMMAND = "distill-online"

Method = Annotated[Optional[str], typer.Option("--method", help="dml | cl | one | okddip | codistill | independent "
                                               "(`kd list methods`).", rich_help_panel="Method")]
Baseline = Annotated[Optional[str], typer.Option("--baseline", help="An `independent` run to show beside this one "
                                                 "in the final table; refused unless it trained under the same "
                                                 "budget (data, schedule, precision, model, members).",
                                                 rich_help_panel="Run")]


@handle_errors
@command("model", "models", "model_arg", "peers", "update", "split_at", "ramp_epochs", "temperature", "exchange_every",
         "burn_in", "distill_weight", "shard", "param", "fuse", *TRAINING_COMMAND)
def distill_online(options: Options, method: Method = None, baseline: Baseline = None) -> None:
    """Train peers or branches together: DML, CL-ILR, ONE, OKDDip, codistillation, or independent.

    The final table has a row per peer or branch, the ensemble (mean of peer probabilities; gated for
    ONE) and, for OKDDip, the leader. --preset paper loads the protocol behind the paper's number, end
    to end (all training images, fp32); --epochs N scales its milestones and ramp-up by N / its epochs.
    --baseline RUN shows an `independent` run beside this one, refused unless it trained under the
    same budget.

    Examples:

    kd distill-online --method dml --peers 2 --model resnet20

    kd distill-online --method one --preset paper --dataset cifar100

    kd distill-online --method okddip --preset paper --epochs 30 --dataset cifar100

    kd distill-online --method independent --peers 2 --model resnet20 --out runs/base; kd distill-online --method dml --peers 2 --model resnet20 --baseline runs/base
    """
    from kdcli import api  # noqa: PLC0415 - imports torch; `kd --help` must not

    run = api.distill_online(method, **options.api_kwargs(), argv=argv(), baseline=baseline)
    result = {**run.info, "run_dir": str(run.path)}
    baseline_rows = _baseline_rows(baseline, result) if baseline else []
    report_online(result, baseline_rows, options["json"])


def _baseline_rows(baseline: str, result: dict[str, Any]) -> list[list[Any]]:
    from kdcli.evaluate import evaluate_runs  # noqa: PLC0415 - imports torch; `kd --help` must not

    rows = evaluate_runs([baseline], device=result["config"]["train"]["device"], measure_latency=False)
    return [[f"{baseline}:{r['role']}", r["model"], r["top1"] * 100, r["top5"] * 100, r["params"]] for r in rows]


def report_online(result: dict[str, Any], baseline_rows: list[list[Any]], as_json: bool) -> None:
    """The run's rows (peers or branches, leader, ensemble), the mean over peers, then the baseline's rows."""
    from kdcli.report import print_json, print_table  # noqa: PLC0415 - keeps `kd --help` fast

    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports the job
        return
    if as_json:
        print_json({**result, "baseline": [dict(zip(["role", "model", "top1", "top5", "params"], row))
                                           for row in baseline_rows]})
        return
    test = result["metrics"]["test"]
    roles = result["roles"]
    rows = [[role, roles.get(role, {}).get("arch", "—"), s["top1"] * 100, s["top5"] * 100,
             roles.get(role, {}).get("params")] for role, s in test.items()]
    members = [s["top1"] for role, s in test.items() if role.startswith(("peer", "branch"))]
    if len(members) > 1:
        rows.append(["mean of peers", "—", 100 * sum(members) / len(members), None, None])
    rows.extend(baseline_rows)
    print_table(
        f"{result['command']} {result['method']} · {result['dataset']['name']} · {result['run_dir']} · "
        f"{result['wall_time_s']:.1f}s",
        ["role", "model", "test top-1 %", "top-5 %", "params"],
        rows,
    )
