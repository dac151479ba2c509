"""`kd distill-online`: peers (or branches) trained together, no pre-trained teacher."""

from __future__ import annotations

import os
from typing import Annotated, Any, Optional

import typer

from kdcli.cli.common import argv, handle_errors
from kdcli.cli.options import TRAINING_COMMAND, Options, command, to_config
from kdcli.errors import KDError

COMMAND = "distill-online"

Method = Annotated[Optional[str], typer.Option("--method", help="dml | cl | one | okddip | codistill | independent "
                                               "(`kd list methods`).", rich_help_panel="Method")]
Baseline = Annotated[Optional[str], typer.Option("--baseline", help="An `independent` run to show beside this one "
                                                 "in the final table.", rich_help_panel="Run")]


@handle_errors
@command("model", "models", "peers", "update", "split_at", "ramp_epochs", "temperature", "exchange_every", "burn_in",
         "distill_weight", "shard", "param", "fuse", *TRAINING_COMMAND)
def distill_online(options: Options, method: Method = None, baseline: Baseline = None) -> None:
    """Train peers or branches together: DML, CL-ILR, ONE, OKDDip, codistillation, or independent.

    The final table has a row per peer or branch, the ensemble (mean of peer probabilities; gated for
    ONE) and, for OKDDip, the leader. --preset paper loads the method's paper protocol.

    Examples:

    kd distill-online --method dml --peers 2 --model resnet20

    kd distill-online --method one --model resnet32 --split-at stage3 --preset paper --dataset cifar100

    kd distill-online --method independent --peers 2 --model resnet20 --out runs/base; kd distill-online --method dml --baseline runs/base
    """
    from kdcli.run import train  # noqa: PLC0415 - imports torch; `kd --help` must not

    baseline_info = _check_baseline(baseline) if baseline else None
    config = None if options["resume"] else to_config(COMMAND, options, method)
    result = train(config, resume=options["resume"], overwrite=options["overwrite"],
                   quiet=options["quiet"] or options["json"], argv=argv())
    baseline_rows = _baseline_rows(baseline, baseline_info, result) if baseline else []
    report_online(result, baseline_rows, options["json"])


def _check_baseline(baseline: str) -> dict[str, Any]:
    """Refuse a baseline that is not a complete run before anything is trained or written."""
    from kdcli import checkpoint  # noqa: PLC0415 - imports torch; `kd --help` must not

    info = checkpoint.read_run(baseline)
    if info.get("status") != "complete":
        raise KDError(f"--baseline {baseline} is not a complete run")
    return info


def _baseline_rows(baseline: str, info: dict[str, Any], result: dict[str, Any]) -> list[list[Any]]:
    from kdcli.evaluate import evaluate_runs  # noqa: PLC0415 - imports torch; `kd --help` must not

    if info["dataset"]["name"] != result["dataset"]["name"]:
        raise KDError(f"--baseline {baseline} was trained on {info['dataset']['name']}, "
                      f"this run on {result['dataset']['name']}")
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
