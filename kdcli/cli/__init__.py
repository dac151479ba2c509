"""The `kd` command: one small module per command, composed into one Typer app."""

from __future__ import annotations

import typer

from kdcli.cli.distill import distill
from kdcli.cli.distill_datafree import distill_datafree
from kdcli.cli.distill_online import distill_online
from kdcli.cli.evaluate import evaluate
from kdcli.cli.list_cmd import list_
from kdcli.cli.record_metadata import record_metadata
from kdcli.cli.synthesize import synthesize
from kdcli.cli.train_teacher import train_teacher

app = typer.Typer(
    name="kd",
    help="Knowledge distillation for image classifiers: teachers, students, online peers, data-free.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.command("train-teacher")(train_teacher)
app.command("distill")(distill)
app.command("distill-online")(distill_online)
app.command("distill-datafree")(distill_datafree)
app.command("synthesize")(synthesize)
app.command("record-metadata")(record_metadata)
app.command("evaluate")(evaluate)
app.command("list")(list_)


def main() -> None:
    app()
