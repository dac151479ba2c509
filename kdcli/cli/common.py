"""What every command shares: error handling, config resolution and the result table."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console

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
            err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
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
    if config_file is not None:
        apply_overrides(config, load_toml(config_file), str(config_file))
    apply_overrides(config, flags, "flags")
    if method_flags:
        config.method_params.update({k: v for k, v in method_flags.items() if v is not None})
    return config


def report_run(result: dict[str, Any], as_json: bool) -> None:
    """The table printed after a training command (or the run.json content with ``--json``)."""
    from kdcli.report import print_json, print_table

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
