"""`kd distill-online`: peers (or branches) trained together, no pre-trained teacher."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from kdcli.cli import options as o
from kdcli.cli.common import argv, handle_errors, resolve_config
from kdcli.errors import KDError

COMMAND = "distill-online"

Method = Annotated[str, typer.Option("--method", help="dml | cl | one | okddip | independent | ... (`kd list methods`).")]
Peers = Annotated[Optional[int], typer.Option("--peers", "-k", help="Peers (dml, independent), heads (cl), branches (one), auxiliary peers (okddip).")]
Models = Annotated[Optional[str], typer.Option("--models", help="Heterogeneous peers, e.g. resnet32,wrn-16-2 (dml, independent).")]
Update = Annotated[Optional[str], typer.Option("--update", help="dml: simultaneous (default) | alternating (the paper's Algorithm 1; --preset paper).")]
SplitAt = Annotated[Optional[str], typer.Option("--split-at", help="cl/one/okddip: first per-branch stage, e.g. stage3 (default: the last).")]
Preset = Annotated[str, typer.Option("--preset", help="quick (short default) | paper (the method's paper protocol).")]
RampEpochs = Annotated[Optional[float], typer.Option("--ramp-epochs", help="one/okddip: ramp-up length R in epochs (default 80/300 of --epochs).")]
Temperature = Annotated[Optional[float], typer.Option("--temperature", "-T", help="Softmax temperature of the distillation term.")]
ExchangeEvery = Annotated[Optional[int], typer.Option("--exchange-every", help="codistill: steps between weight exchanges.")]
BurnIn = Annotated[Optional[int], typer.Option("--burn-in", help="codistill: steps before the distillation term starts.")]
DistillWeight = Annotated[Optional[float], typer.Option("--distill-weight", help="codistill: weight of the distillation term.")]
Shard = Annotated[Optional[str], typer.Option("--shard", help="codistill: disjoint | shared data.")]
Param = Annotated[Optional[list[str]], typer.Option("--param", help="Any method hyperparameter as KEY=VALUE (repeatable), e.g. ilr=false.")]
Baseline = Annotated[Optional[str], typer.Option("--baseline", help="An `independent` run to show beside this one in the final table.")]


def online_methods() -> list[str]:
    from kdcli.methods import METHODS

    return [entry.name for entry in METHODS if entry.info.get("command") == COMMAND]


def resolve_method(name: str) -> Any:
    """The method class for ``name``, refusing methods of other commands with the list of online ones."""
    from kdcli.methods import METHODS

    choices = online_methods()
    if name not in choices:
        if name in METHODS:
            raise KDError(f"method {name!r} is not an online method; kd distill-online takes: {', '.join(choices)}")
        import difflib

        close = difflib.get_close_matches(name, choices, n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KDError(f"unknown method {name!r}.{hint} Valid: {', '.join(choices)}.")
    return METHODS.resolve(name)[0].builder


def parse_params(pairs: list[str] | None) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise KDError(f"--param takes KEY=VALUE (got {pair!r})")
        values[key.strip().replace("-", "_")] = value.strip()
    return values


@handle_errors
def distill_online(
    method: Method = "dml", peers: Peers = None, models: Models = None, update: Update = None,
    split_at: SplitAt = None, preset: Preset = "quick", ramp_epochs: RampEpochs = None,
    temperature: Temperature = None, param: Param = None, baseline: Baseline = None,
    exchange_every: ExchangeEvery = None, burn_in: BurnIn = None, distill_weight: DistillWeight = None,
    shard: Shard = None,
    dataset: o.Dataset = None, model: o.Model = None, epochs: o.Epochs = None, batch_size: o.BatchSize = None,
    lr: o.Lr = None, seed: o.Seed = None, device: o.Device = None, out: o.Out = None, data_dir: o.DataDir = None,
    config: o.Config = None, val_fraction: o.ValFraction = None, optimizer: o.Optimizer = None,
    schedule: o.Schedule = None, milestones: o.Milestones = None, weight_decay: o.WeightDecay = None,
    momentum: o.Momentum = None, precision: o.Precision = None, augment: o.Augment = None,
    cuda_graphs: o.CudaGraphs = None, warmup_epochs: o.Warmup = None, resume: o.Resume = None,
    overwrite: o.Overwrite = False, json: o.Json = False, quiet: o.Quiet = False,
) -> None:
    """Train peers or branches together with an online method (DML, CL-ILR, ONE, OKDDip) or the independent baseline.

    `--preset paper` loads the method's paper protocol (epochs, optimiser, milestones); the default
    `quick` preset finishes in seconds on digits. The final table has a row per peer or branch,
    the ensemble (mean of peer probabilities; gated for ONE) and, for OKDDip, the leader.
    """
    from kdcli.methods.online import preset_for
    from kdcli.run import train

    method_cls = resolve_method(method)
    baseline_info = _check_baseline(baseline) if baseline else None
    flags = o.common_values(
        dataset=dataset, model=model, teacher=None, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        device=device, out=out, data_dir=data_dir, val_fraction=val_fraction, optimizer=optimizer, schedule=schedule,
        milestones=milestones, weight_decay=weight_decay, momentum=momentum, precision=precision, augment=augment,
        cuda_graphs=cuda_graphs, warmup_epochs=warmup_epochs,
    )
    if models is not None:
        flags["models"] = [name.strip() for name in models.split(",") if name.strip()]
    method_flags = {
        **parse_params(param),
        "peers": peers, "update": update, "split_at": split_at, "ramp_epochs": ramp_epochs,
        "temperature": temperature, "exchange_every": exchange_every, "burn_in": burn_in,
        "distill_weight": distill_weight, "shard": shard,
    }
    cfg = resolve_config(COMMAND, method, preset_for(method_cls, preset), config, flags, method_flags)
    result = train(cfg, resume=resume, overwrite=overwrite, quiet=quiet or json, argv=argv())
    baseline_rows = _baseline_rows(baseline, baseline_info, result) if baseline else []
    report_online(result, baseline_rows, json)


def _check_baseline(baseline: str) -> dict[str, Any]:
    """Refuse a baseline that is not a complete run before anything is trained or written."""
    from kdcli import checkpoint

    info = checkpoint.read_run(baseline)
    if info.get("status") != "complete":
        raise KDError(f"--baseline {baseline} is not a complete run")
    return info


def _baseline_rows(baseline: str, info: dict[str, Any], result: dict[str, Any]) -> list[list[Any]]:
    from kdcli.evaluate import evaluate_runs

    if info["dataset"]["name"] != result["dataset"]["name"]:
        raise KDError(f"--baseline {baseline} was trained on {info['dataset']['name']}, this run on {result['dataset']['name']}")
    rows = evaluate_runs([baseline], device=result["config"]["train"]["device"], measure_latency=False)
    return [[f"{baseline}:{r['role']}", r["model"], r["top1"] * 100, r["top5"] * 100, r["params"]] for r in rows]


def report_online(result: dict[str, Any], baseline_rows: list[list[Any]], as_json: bool) -> None:
    """The run's rows (peers or branches, leader, ensemble), the mean over peers, then the baseline's rows."""
    import os

    from kdcli.report import print_json, print_table

    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports the job
        return
    if as_json:
        print_json({**result, "baseline": [dict(zip(["role", "model", "top1", "top5", "params"], row)) for row in baseline_rows]})
        return
    test = result["metrics"]["test"]
    roles = result["roles"]
    rows = [[role, roles.get(role, {}).get("arch", "—"), s["top1"] * 100, s["top5"] * 100, roles.get(role, {}).get("params")]
            for role, s in test.items()]
    members = [s["top1"] for role, s in test.items() if role.startswith(("peer", "branch"))]
    if len(members) > 1:
        rows.append(["mean of peers", "—", 100 * sum(members) / len(members), None, None])
    rows.extend(baseline_rows)
    print_table(
        f"{result['command']} {result['method']} · {result['dataset']['name']} · {result['run_dir']} · {result['wall_time_s']:.1f}s",
        ["role", "model", "test top-1 %", "top-5 %", "params"],
        rows,
    )
