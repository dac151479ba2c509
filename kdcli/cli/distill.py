"""`kd distill`: Hinton KD from a teacher run into a student, with the real training data."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from kdcli.cli import options as o
from kdcli.cli.common import argv, handle_errors, report_run, resolve_config

PRESET = {"model": "lenet5-half", "epochs": 30, "lr": 0.01, "batch_size": 64, "dataset": ""}


@handle_errors
def distill(
    teacher: o.Teacher = None, dataset: o.Dataset = None, model: o.Model = None, epochs: o.Epochs = None,
    batch_size: o.BatchSize = None, lr: o.Lr = None, seed: o.Seed = None, device: o.Device = None, out: o.Out = None,
    data_dir: o.DataDir = None, config: o.Config = None, val_fraction: o.ValFraction = None,
    optimizer: o.Optimizer = None, schedule: o.Schedule = None, milestones: o.Milestones = None,
    weight_decay: o.WeightDecay = None, momentum: o.Momentum = None, precision: o.Precision = None,
    augment: o.Augment = None, cuda_graphs: o.CudaGraphs = None, warmup_epochs: o.Warmup = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", "-T", help="Softmax temperature T (default 4).")] = None,
    alpha: Annotated[Optional[float], typer.Option("--alpha", help="Weight of the soft loss; hard CE gets 1−α (default 0.9).")] = None,
    resume: o.Resume = None, overwrite: o.Overwrite = False, json: o.Json = False, quiet: o.Quiet = False,
) -> None:
    """Distil a teacher run into a student with Hinton KD (soft targets at T, T² scaling).

    The dataset defaults to the teacher's.
    """
    from kdcli.run import train

    flags = o.common_values(
        dataset=dataset, model=model, teacher=teacher, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        device=device, out=out, data_dir=data_dir, val_fraction=val_fraction, optimizer=optimizer, schedule=schedule,
        milestones=milestones, weight_decay=weight_decay, momentum=momentum, precision=precision, augment=augment,
        cuda_graphs=cuda_graphs, warmup_epochs=warmup_epochs,
    )
    cfg = resolve_config("distill", "kd", PRESET, config, flags, {"temperature": temperature, "alpha": alpha})
    result = train(cfg, resume=resume, overwrite=overwrite, quiet=quiet or json, argv=argv())
    report_run(result, json)
