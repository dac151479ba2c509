"""What every command shares: error handling, config resolution and the result table."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from kdcli.errors import KDError

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True)


def handle_errors(func: F) -> F:
    """Known errors become one line on stderr and their exit code; tracebacks only with KD_DEBUG=1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KDError as err:
            if os.environ.get("KD_DEBUG"):
                raise
            err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[red]error:[/red] interrupted", highlight=False)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - the one place unknown failures are turned into a line
            if os.environ.get("KD_DEBUG"):
                raise
            first = str(err).splitlines()[0] if str(err) else ""
            err_console.print(
                f"[red]error:[/red] internal error {type(err).__name__}: {first} (set KD_DEBUG=1 for the traceback)",
                highlight=False, soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def resolve_config(command: str, method: str, preset: dict[str, Any], config_file: Path | None,
                   flags: dict[str, Any], method_flags: dict[str, Any] | None = None):
    """defaults < preset < --config TOML < flags; method hyperparameters go to ``method_params``."""
    from kdcli.config import RunConfig, apply_overrides, load_toml

    config = RunConfig(command=command, method=method)
    apply_overrides(config, preset, "preset")
    explicit = {k for k, v in flags.items() if v is not None}
    if config_file is not None:
        from_file = load_toml(config_file)
        apply_overrides(config, from_file, str(config_file))
        explicit |= {k for k, v in from_file.items() if not isinstance(v, dict)}
        explicit |= {k for v in from_file.values() if isinstance(v, dict) for k in v}
    apply_overrides(config, flags, "flags")
    if method_flags:
        config.method_params.update({k: v for k, v in method_flags.items() if v is not None})
    _gentler_start_without_batchnorm(config, explicit)
    return config


def _gentler_start_without_batchnorm(config, explicit: set[str]) -> None:
    """Networks without BatchNorm (LeNet, MLP) diverge at the ResNet learning rate of 0.1 on MNIST:
    unless the user chose a rate, they get at most 0.02 with a one-epoch warm-up."""
    from kdcli.models import MODELS, create_model
    from torch import nn

    if "lr" in explicit or config.model not in MODELS:
        return
    probe = create_model(config.model, 1, 28, 10)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in probe.modules()):
        return
    config.optim.lr = min(config.optim.lr, 0.02)
    if "warmup_epochs" not in explicit:
        config.optim.warmup_epochs = max(config.optim.warmup_epochs, 1.0)


def report_run(result: dict[str, Any], as_json: bool) -> None:
    """The table printed after a training command (or the run.json content with ``--json``)."""
    from kdcli.report import print_json, print_table

    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports the job
        return
    if as_json:
        print_json(result)
        return
    metrics = result["metrics"]
    agreement = metrics.get("agreement", {})
    rows = []
    for role, scores in metrics["test"].items():
        arch = result["roles"].get(role, {}).get("arch", "—")
        params = result["roles"].get(role, {}).get("params")
        rows.append([role, arch, scores["top1"] * 100, scores["top5"] * 100, params,
                     agreement.get(role, None) and agreement[role] * 100])
    if "teacher_test" in metrics:
        rows.append(["teacher", result["teacher"]["spec"]["arch"], metrics["teacher_test"]["top1"] * 100, None, None, None])
    print_table(
        f"{result['command']} · {result['dataset']['name']} · {result['run_dir']} · {result['wall_time_s']:.1f}s",
        ["role", "model", "test top-1 %", "top-5 %", "params", "agree w/ teacher %"],
        rows,
    )


def argv() -> list[str]:
    return ["kd", *sys.argv[1:]]
