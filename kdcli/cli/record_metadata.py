"""`kd record-metadata`: add the statistics data-free methods need (Lopes et al.) to an existing teacher run."""

from __future__ import annotations

from kdcli.cli.common import handle_errors
from kdcli.cli.options import Options, command
from kdcli.errors import KDError


@handle_errors
@command("teacher", "statistics", "device", "data_dir", "json", "allow_module")
def record_metadata(options: Options) -> None:
    """Add the statistics data-free methods need (Lopes et al.) to an older teacher run.

    Reads the teacher's training split once (eval mode) and stores per-class activation statistics.
    --statistics pooled (default): every block group pooled to at most 4x4 cells and the logits, plus
    graph-spectral summaries (kd's own construction), as RUN/metadata.safetensors. --statistics full:
    the official code's full pre-ReLU map of every conv/linear layer and the logits, with each class's
    covariance (for correlated targets), as RUN/metadata-full.safetensors; small networks only (a layer
    may have at most 6144 units).

    kd train-teacher records pooled statistics itself; older runs need this for `kd distill-datafree
    --method lopes`. Each variant has its own file and run.json entry: recording one keeps the other
    and everything else in the run.

    Examples:

    kd record-metadata --teacher runs/old-teacher

    kd record-metadata --teacher runs/mnist-lenet5 --statistics full
    """
    from kdcli import api  # noqa: PLC0415 - imports torch; `kd --help` must not
    from kdcli.report import print_json, print_table  # noqa: PLC0415

    teacher = options["teacher"]
    if not teacher:
        raise KDError("record-metadata needs a teacher: pass --teacher RUN")
    recorded = api.record_metadata(teacher, device=options["device"] or "auto", data_dir=options["data_dir"],
                                   allow_modules=list(options["allow_module"] or []),
                                   statistics=options["statistics"] or "")
    listings = [v for v in recorded.values() if isinstance(v, dict) and "statistics" in v]
    if not listings:
        raise KDError(f"{teacher}: no method records statistics for this teacher (Lopes et al. need a model split "
                      "into stages)")
    listing = listings[0]
    if options["json"]:
        print_json(listing)
        return
    print_table(
        f"kd record-metadata · {teacher}",
        ["statistics", "file", "bytes", "units per layer", "train samples"],
        [[listing["statistics"], listing["file"], listing["bytes"], "-".join(map(str, listing["layers"])),
          listing["train_samples"]]],
    )
