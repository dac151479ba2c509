"""`kd distill-datafree`: a student from a teacher run alone; the training data is never read."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from kdcli.cli.common import argv, handle_errors, report_run
from kdcli.cli.options import DEVICE_OPTIONS, RUN_OPTIONS, SCHEDULE, Options, command

COMMAND = "distill-datafree"
#: the method hyperparameters the data-free commands share as flags
DATAFREE_KNOBS = ("objective", "statistics", "iterations", "lr_input", "lr_generator", "latent_dim", "beta", "synth_batch")

Method = Annotated[Optional[str], typer.Option("--method", help="dafl | zskt | zskd | lopes | deepinversion | noise "
                                               "(`kd list methods`).", rich_help_panel="Method")]


@handle_errors
@command("teacher", "teacher_model", "student", "model_arg", "n", "synthetic", *DATAFREE_KNOBS, "temperature", "param", "data_dir",
         "image_size", "augment", *SCHEDULE, *DEVICE_OPTIONS, *RUN_OPTIONS)
def distill_datafree(options: Options, method: Method = None) -> None:
    """Distil a teacher run into a student without its training data.

    dafl and zskt train a generator together with the student; zskd, lopes and deepinversion first
    synthesise a transfer set on the device (kept in the run as synthetic/, previewed in samples.png)
    or take one from --synthetic; noise is the baseline every method must beat. Only the test split
    is read, to score the student.

    Examples:

    kd distill-datafree --teacher runs/teacher --method dafl

    kd distill-datafree --teacher runs/mnist-lenet5 --method zskd --preset paper --dataset mnist

    kd distill-datafree --teacher runs/teacher --method zskd --synthetic runs/impressions --epochs 40
    """
    from kdcli import api  # noqa: PLC0415 - imports torch; `kd --help` must not

    run = api.distill_datafree(method=method, **options.api_kwargs(), argv=argv())
    report_run({**run.info, "run_dir": str(run.path)}, options["json"])
