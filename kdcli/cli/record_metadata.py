"""`kd record-metadata`: add the statistics data-free methods need (Lopes et al.) to an existing teacher run."""

from __future__ import annotations

from kdcli.cli.common import handle_errors
from kdcli.cli.options import Options, command
from kdcli.errors import KDError


@handle_errors
@command("teacher", "device", "data_dir", "json", "allow_module")
def record_metadata(options: Options) -> None:
    """Add the statistics data-free methods need (Lopes et al.) to an older teacher run.

    Reads the teacher's training split once (eval mode) and stores per-class activation statistics
    (every block group and the logits, plus graph-spectral summaries) as RUN/metadata.safetensors.

    kd train-teacher does this itself; older runs need it for `kd distill-datafree --method lopes`.

    Example:

    kd record-metadata --teacher runs/old-teacher
    """
    from kdcli import api  # noqa: PLC0415 - imports torch; `kd --help` must not
    from kdcli.report import print_json, print_table  # noqa: PLC0415

    teacher = options["teacher"]
    if not teacher:
        raise KDError("record-metadata needs a teacher: pass --teacher RUN")
    recorded = api.record_metadata(teacher, device=options["device"] or "auto", data_dir=options["data_dir"],
                                   allow_modules=list(options["allow_module"] or []))
    if "metadata" not in recorded:
        raise KDError(f"{teacher}: no method records statistics for this teacher (Lopes et al. need a model split "
                      "into stages)")
    listing = recorded["metadata"]
    if options["json"]:
        print_json(listing)
        return
    print_table(
        f"kd record-metadata · {teacher}",
        ["file", "bytes", "units per layer", "train samples"],
        [[listing["file"], listing["bytes"], "-".join(map(str, listing["layers"])), listing["train_samples"]]],
    )
