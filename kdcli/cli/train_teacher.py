"""`kd train-teacher`: supervised training of one model."""

from __future__ import annotations

from kdcli.cli.common import argv, handle_errors, report_run
from kdcli.cli.options import TRAINING_COMMAND, Options, command, resume_changes, to_config

COMMAND = "train-teacher"


@handle_errors
@command("model", *TRAINING_COMMAND)
def train_teacher(options: Options) -> None:
    """Train a model on labelled data (a teacher, or a from-scratch baseline).

    Once the run completes, the per-class activation statistics data-free methods use are recorded
    with it while the training data is at hand.

    Examples:

    kd train-teacher   (ResNet-20 on the embedded digits, seconds on a CPU)

    kd train-teacher --dataset fashion-mnist --model lenet5 --out runs/fm-teacher

    kd train-teacher --dataset cifar10 --model resnet32 --epochs 200 --schedule step --milestones 100,150
    """
    from kdcli.run import train  # noqa: PLC0415 - imports torch; `kd --help` must not

    config = None if options["resume"] else to_config(COMMAND, options)
    result = train(config, resume=options["resume"], changes=resume_changes(COMMAND, options),
                   overwrite=options["overwrite"],
                   quiet=options["quiet"] or options["json"], argv=argv())
    report_run(result, options["json"])
