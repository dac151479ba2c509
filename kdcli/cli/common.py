"""What every command shares: one-line errors, the usage-error face, help with effective defaults, result tables.

Nothing here imports torch: ``kd --help`` and the help of every command stay fast. Where a command
needs torch it imports :mod:`kdcli.run` (or its like) inside its function body; those imports are the
only function-level imports of the package besides :func:`kdcli.catalog.build`.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, Sequence, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from kdcli.errors import Aborted, KDError

try:  # typer ≥ 0.17 vendors click; older releases use the click package
    from typer import _click as click
except ImportError:  # pragma: no cover - depends on the installed typer
    import click  # type: ignore[no-redef]

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True)


def error_line(message: str) -> None:
    """One line on stderr: ``error: <message>``."""
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def handle_errors(func: F) -> F:
    """Known errors become one line on stderr and their exit code; tracebacks only with KD_DEBUG=1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KDError as err:
            if os.environ.get("KD_DEBUG"):
                raise
            error_line(str(err))
            raise typer.Exit(err.exit_code) from None
        except Aborted as err:  # Ctrl-C or SIGTERM where nothing was saved
            error_line("interrupted")
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            error_line("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - the one place unknown failures are turned into a line
            if os.environ.get("KD_DEBUG"):
                raise
            if isinstance(err, OSError) and err.filename:  # a path that cannot be read or written: which, and why
                error_line(f"cannot access {err.filename}: {err.strerror or type(err).__name__}")
                raise typer.Exit(2) from None
            first = str(err).splitlines()[0] if str(err) else ""
            error_line(f"internal error {type(err).__name__}: {first} (set KD_DEBUG=1 for the traceback)")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


class KdGroup(TyperGroup):
    """The ``kd`` group: a usage error (a wrong type, a missing argument, an unknown option) is one line
    plus a hint to ``--help``, exit code 2, instead of a boxed usage page."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            code = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                                **extra)
        except click.exceptions.UsageError as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # bare `kd`: the help page is the answer
                typer.echo(err.ctx.get_help() if err.ctx is not None else "")
                code = 0
            else:
                where = err.ctx.command_path if err.ctx is not None else "kd"
                error_line(f"{err.format_message()} (see {where} --help)")
                code = err.exit_code
        except click.exceptions.ClickException as err:
            error_line(err.format_message())
            code = err.exit_code
        except typer.Abort:  # the vendored click has no Abort of its own: typer's is the one raised
            error_line("aborted")
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def report_run(result: dict[str, Any], as_json: bool) -> None:
    """The table printed after a training command (or the run.json content with ``--json``)."""
    from kdcli.report import print_json, print_table  # noqa: PLC0415 - keeps `kd --help` fast

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
        rows.append(["teacher", result["teacher"]["spec"]["arch"], metrics["teacher_test"]["top1"] * 100, None, None,
                     None])
    print_table(
        f"{result['command']} · {result['dataset']['name']} · {result['run_dir']} · {result['wall_time_s']:.1f}s",
        ["role", "model", "test top-1 %", "top-5 %", "params", "agree w/ teacher %"],
        rows,
    )


def argv() -> list[str]:
    return ["kd", *sys.argv[1:]]
