"""`kd import-teacher`: an external checkpoint wrapped into a kd teacher run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kdcli.cli.common import argv, handle_errors, report_run
from kdcli.cli.options import Options, command
from kdcli.errors import KDError

Weights = Annotated[Path, typer.Option("--weights", "-w", help="The state dict: a .safetensors file, or a .pt/.pth "
                                       "file with --allow-pickle.", rich_help_panel="Model")]
AllowPickle = Annotated[bool, typer.Option("--allow-pickle", help="Read a pickled .pt/.pth state dict (unpickling can "
                                           "run code: only for files you trust).", rich_help_panel="Model")]


@handle_errors
@command("model", "model_arg", "dataset", "data_dir", "image_size", "device", "precision", "seed", "out", "overwrite", "json",
         "quiet", "allow_module")
def import_teacher(options: Options, weights: Weights, allow_pickle: AllowPickle = False) -> None:
    """Wrap the weights of a model trained elsewhere into a teacher run.

    Builds --model for the dataset (your factory by import path, a torchvision name or a kd model,
    with --model-arg), loads --weights strictly, scores it on the test split, and writes a run
    (teacher.safetensors + run.json recording where the weights came from). The statistics
    data-free methods need are recorded when the training split is available. From then on the run
    is a teacher like any other: kd distill --teacher RUN, kd evaluate RUN.

    kd normalises images with the dataset's mean and std (kd list datasets); a model trained with
    another normalisation scores lower until it is fine-tuned.

    Examples:

    kd import-teacher --model tv:resnet18 --weights resnet18-cifar10.safetensors --dataset cifar10 --out runs/r18

    kd import-teacher --model my_pkg.nets:make_resnet --model-arg depth=32 --weights best.pth --allow-pickle --dataset cifar100
    """
    from kdcli import api  # noqa: PLC0415 - imports torch; `kd --help` must not

    flags = options.flags()
    if not flags.get("model"):
        raise KDError("import-teacher needs --model: the architecture the weights belong to")
    run = api.import_teacher(flags.pop("model"), weights, allow_pickle=allow_pickle,
                             overwrite=bool(options["overwrite"]), quiet=bool(options["quiet"] or options["json"]),
                             allow_modules=list(options["allow_module"] or []), argv=argv(), **flags)
    report_run({**run.info, "run_dir": str(run.path)}, options["json"])
