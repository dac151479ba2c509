"""Options and config resolution shared by `kd synthesize` and `kd distill-datafree`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from kdcli.errors import KDError

Method = Annotated[
    Optional[str], typer.Option("--method", help="dafl | zskt | zskd | lopes | deepinversion (| noise).")
]
Student = Annotated[
    Optional[str], typer.Option("--student", "--model", "-m", help="Student model (default lenet5-half).")
]
Preset = Annotated[str, typer.Option("--preset", help="quick (minutes on a CPU) | paper (the paper's protocol).")]
Count = Annotated[Optional[int], typer.Option("-n", "--n", help="Transfer-set size (images to synthesise).")]
Objective = Annotated[
    Optional[str],
    typer.Option("--objective", help="lopes: top_layer | all_layers | spectral_all_layers | spectral_layer_pairs."),
]
Synthetic = Annotated[Optional[str], typer.Option("--synthetic", help="Distil from this `kd synthesize` folder.")]
Iterations = Annotated[
    Optional[int],
    typer.Option(
        "--iterations",
        help="Optimisation steps per impression (zskd, lopes, deepinversion) or steps per epoch (dafl, zskt, noise).",
    ),
]
LrInput = Annotated[Optional[float], typer.Option("--lr-input", help="Adam learning rate on synthesised inputs.")]
LrGenerator = Annotated[Optional[float], typer.Option("--lr-generator", help="Generator learning rate (dafl, zskt).")]
LatentDim = Annotated[Optional[int], typer.Option("--latent-dim", help="Generator latent size (dafl, zskt).")]
Beta = Annotated[Optional[float], typer.Option("--beta", help="zskt: attention-transfer weight β (250).")]
Temperature = Annotated[Optional[float], typer.Option("--temperature", "-T", help="Distillation temperature T.")]
SynthBatch = Annotated[
    Optional[int], typer.Option("--synth-batch", help="Impressions optimised at once on the device.")
]

DEFAULT_STUDENT = "lenet5-half"


def method_knobs(**values: Any) -> dict[str, Any]:
    """Method hyperparameters given as flags (``None`` = not given)."""
    return {k: v for k, v in values.items() if v is not None}


def resolve(
    command: str,
    method: str | None,
    teacher: str | None,
    preset: str,
    config_file: Path | None,
    flags: dict[str, Any],
    knobs: dict[str, Any],
    allowed: tuple[str, ...],
):
    """defaults < the method's preset for the teacher's dataset < ``--config`` TOML < flags.

    Unlike the supervised commands, no learning-rate heuristic is applied: the presets carry the
    papers' optimisers.
    """
    from kdcli import checkpoint
    from kdcli.config import RunConfig, apply_overrides, load_toml
    from kdcli.methods.datafree_registry import preset_values

    method = method or allowed[0]
    if method not in allowed:
        import difflib

        close = difflib.get_close_matches(method, allowed, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise KDError(f"unknown --method {method!r}.{hint} Valid: {', '.join(allowed)}.")
    if not teacher:
        raise KDError(f"{command} needs a teacher: pass --teacher RUN (a kd train-teacher run)")
    _, _, run_info = checkpoint.resolve_role(teacher)
    dataset = run_info["dataset"]["name"]
    config = RunConfig(command=command, method=method, model=DEFAULT_STUDENT)
    config.data.dataset = ""  # the teacher's (resolved when the teacher is loaded)
    apply_overrides(config, preset_values(method, preset, dataset), f"preset {preset}")
    if config_file is not None:
        apply_overrides(config, load_toml(config_file), str(config_file))
    apply_overrides(config, flags, "flags")
    config.method_params.update(knobs)
    return config
