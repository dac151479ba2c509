"""`kd train-teacher`: supervised training of one model."""

from __future__ import annotations

from kdcli.cli import options as o
from kdcli.cli.common import argv, handle_errors, report_run, resolve_config

PRESET = {"model": "resnet20", "epochs": 30, "lr": 0.1, "batch_size": 64}


@handle_errors
def train_teacher(
    dataset: o.Dataset = None, model: o.Model = None, epochs: o.Epochs = None, batch_size: o.BatchSize = None,
    lr: o.Lr = None, seed: o.Seed = None, device: o.Device = None, out: o.Out = None, data_dir: o.DataDir = None,
    config: o.Config = None, val_fraction: o.ValFraction = None, optimizer: o.Optimizer = None,
    schedule: o.Schedule = None, milestones: o.Milestones = None, weight_decay: o.WeightDecay = None,
    momentum: o.Momentum = None, precision: o.Precision = None, augment: o.Augment = None,
    cuda_graphs: o.CudaGraphs = None, warmup_epochs: o.Warmup = None, resume: o.Resume = None, overwrite: o.Overwrite = False,
    json: o.Json = False, quiet: o.Quiet = False,
) -> None:
    """Train a model on labelled data (a teacher, or a from-scratch baseline)."""
    from kdcli.run import train

    flags = o.common_values(
        dataset=dataset, model=model, teacher=None, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        device=device, out=out, data_dir=data_dir, val_fraction=val_fraction, optimizer=optimizer, schedule=schedule,
        milestones=milestones, weight_decay=weight_decay, momentum=momentum, precision=precision, augment=augment,
        cuda_graphs=cuda_graphs, warmup_epochs=warmup_epochs,
    )
    cfg = resolve_config("train-teacher", "supervised", PRESET, config, flags)
    result = train(cfg, resume=resume, overwrite=overwrite, quiet=quiet or json, argv=argv())
    from kdcli.metadata import record_after_training

    result["metadata"] = record_after_training(result, cfg)  # Lopes et al.: statistics while the data is at hand
    report_run(result, json)
