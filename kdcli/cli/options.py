"""Shared ``Annotated`` option aliases: one vocabulary across every command.

Every option defaults to ``None`` so that "not given" can be told apart from a value: the run's
config is resolved as defaults < command preset < ``--config`` TOML < flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Dataset = Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset name (see `kd list datasets`); default digits.")]
Model = Annotated[Optional[str], typer.Option("--model", "-m", help="Model name (see `kd list models`).")]
Teacher = Annotated[Optional[str], typer.Option("--teacher", "-t", help="Teacher run directory (RUN or RUN:role).")]
Epochs = Annotated[Optional[int], typer.Option("--epochs", "-e", help="Training epochs.")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Batch size.")]
Lr = Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed (same seed + same device ⇒ same numbers).")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda | mps.")]
Out = Annotated[Optional[str], typer.Option("--out", "-o", help="Run directory to write (default runs/<name>).")]
DataDir = Annotated[Optional[str], typer.Option("--data-dir", help="Folder holding dataset files (else $KD_DATA_DIR).")]
Config = Annotated[Optional[Path], typer.Option("--config", help="TOML file of defaults; flags win.")]
ValFraction = Annotated[Optional[float], typer.Option("--val-fraction", help="Share of train held out for validation.")]
Optimizer = Annotated[Optional[str], typer.Option("--optimizer", help="sgd | adam.")]
Schedule = Annotated[Optional[str], typer.Option("--schedule", help="cosine | step | constant.")]
Milestones = Annotated[Optional[str], typer.Option("--milestones", help="Epochs where a step schedule decays, e.g. 60,120,180.")]
WeightDecay = Annotated[Optional[float], typer.Option("--weight-decay", help="Weight decay.")]
Momentum = Annotated[Optional[float], typer.Option("--momentum", help="SGD momentum.")]
Precision = Annotated[Optional[str], typer.Option("--precision", help="auto (bf16 on CUDA) | fp32 | bf16.")]
Augment = Annotated[Optional[str], typer.Option("--augment", help="auto | none | crop | crop_flip.")]
Warmup = Annotated[Optional[float], typer.Option("--warmup-epochs", help="Linear learning-rate warm-up, in epochs.")]
CudaGraphs = Annotated[Optional[str], typer.Option("--cuda-graphs", help="auto | on | off (CUDA only).")]
Resume = Annotated[Optional[str], typer.Option("--resume", help="Continue an interrupted run directory.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out directory.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or per-epoch log.")]


def parse_int_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    from kdcli.errors import KDError

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise KDError(f"expected comma-separated integers, got {text!r}") from None


def common_values(
    *, dataset, model, teacher, epochs, batch_size, lr, seed, device, out, data_dir, val_fraction, optimizer, schedule,
    milestones, weight_decay, momentum, precision, augment, cuda_graphs, warmup_epochs=None,
) -> dict:
    """Flags as a flat mapping for :func:`kdcli.config.apply_overrides` (``None`` = not given)."""
    return {
        "dataset": dataset, "model": model, "teacher": teacher, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "seed": seed, "device": device, "out": out, "data_dir": data_dir, "val_fraction": val_fraction,
        "optimizer": optimizer, "schedule": schedule, "milestones": parse_int_list(milestones),
        "weight_decay": weight_decay, "momentum": momentum, "precision": precision, "augment": augment,
        "cuda_graphs": cuda_graphs, "warmup_epochs": warmup_epochs,
    }
