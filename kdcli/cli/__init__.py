"""The `kd` command: one small module per command, composed into one Typer app.

Importing the CLI does not import torch (each command imports what it needs when it runs), so
`kd --help`, `kd COMMAND --help` and `kd list` answer at once.
"""

from __future__ import annotations

from typing import Annotated

import typer

from kdcli import __version__
from kdcli.cli.common import KdGroup
from kdcli.cli.distill import distill
from kdcli.cli.distill_datafree import distill_datafree
from kdcli.cli.distill_online import distill_online
from kdcli.cli.evaluate import evaluate
from kdcli.cli.import_teacher import import_teacher
from kdcli.cli.list_cmd import list_
from kdcli.cli.options import KdCommand
from kdcli.cli.record_metadata import record_metadata
from kdcli.cli.synthesize import synthesize
from kdcli.cli.train_teacher import train_teacher

app = typer.Typer(
    name="kd",
    help="Knowledge distillation for image classifiers: teachers, students, online peers, data-free.",
    cls=KdGroup,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
for name, function in [
    ("train-teacher", train_teacher),
    ("distill", distill),
    ("distill-online", distill_online),
    ("distill-datafree", distill_datafree),
    ("import-teacher", import_teacher),
    ("synthesize", synthesize),
    ("record-metadata", record_metadata),
    ("evaluate", evaluate),
    ("list", list_),
]:
    app.command(name, cls=KdCommand)(function)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kd {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print kd's version and exit.", callback=_version,
                                          is_eager=True)] = False,
) -> None:
    """Knowledge distillation for image classifiers: teachers, students, online peers, data-free.

    Shell completion: kd --install-completion (bash, zsh, fish, PowerShell).
    """


def main() -> None:
    app()
