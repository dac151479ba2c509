"""`kd distill`: Hinton KD from a teacher run into a student, with the real training data."""

from __future__ import annotations

from kdcli.cli.common import argv, handle_errors, report_run
from kdcli.cli.options import TRAINING_COMMAND, Options, command, resume_changes, to_config

COMMAND = "distill"


@handle_errors
@command("teacher", "model", "temperature", "alpha", "param", *TRAINING_COMMAND)
def distill(options: Options) -> None:
    """Distil a teacher run into a student with Hinton KD, on the real training data.

    Soft targets at T with T² scaling, α between the soft and the hard loss. The dataset defaults to
    the teacher's.

    Examples:

    kd distill --teacher runs/teacher   (a LeNet-5-half student, seconds on a CPU)

    kd distill --teacher runs/fm-teacher --model lenet5-half --temperature 4 --alpha 0.9 --out runs/fm-student

    kd distill --teacher runs/c10-resnet56 --model resnet20 --epochs 240 --lr 0.05 --schedule step --milestones 150,180,210
    """
    from kdcli.run import train  # noqa: PLC0415 - imports torch; `kd --help` must not

    config = None if options["resume"] else to_config(COMMAND, options)
    result = train(config, resume=options["resume"], changes=resume_changes(COMMAND, options),
                   overwrite=options["overwrite"],
                   quiet=options["quiet"] or options["json"], argv=argv())
    report_run(result, options["json"])
