"""`kd distill`: Hinton KD from a teacher run into a student, with the real training data."""

from __future__ import annotations

from kdcli.cli.common import argv, handle_errors, report_run
from kdcli.cli.options import TRAINING_COMMAND, Options, command

COMMAND = "distill"


@handle_errors
@command("teacher", "teacher_model", "model", "model_arg", "temperature", "alpha", "shots", "attention", "beta", "param",
         *TRAINING_COMMAND)
def distill(options: Options) -> None:
    """Distil a teacher run into a student with Hinton KD, on the real training data.

    Soft targets at T with T² scaling, α between the soft and the hard loss. The dataset defaults to
    the teacher's.

    Examples:

    kd distill --teacher runs/teacher   (a LeNet-5-half student, seconds on a CPU)

    kd distill --teacher runs/fm-teacher --model lenet5-half --temperature 4 --alpha 0.9 --out runs/fm-student

    kd distill --teacher runs/mnist-teacher --shots 10 --attention   (ZSKT's few-shot KD+AT baseline)

    kd distill --teacher runs/c10-resnet56 --model resnet20 --epochs 240 --lr 0.05 --schedule step --milestones 150,180,210
    """
    from kdcli import api  # noqa: PLC0415 - imports torch; `kd --help` must not

    run = api.distill(**options.api_kwargs(), argv=argv())
    report_run({**run.info, "run_dir": str(run.path)}, options["json"])
