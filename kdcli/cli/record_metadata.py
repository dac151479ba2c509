"""`kd record-metadata`: add Lopes et al. activation statistics to an existing teacher run."""

from __future__ import annotations

from kdcli.cli import options as o
from kdcli.cli.common import handle_errors


@handle_errors
def record_metadata(
    teacher: o.Teacher = None,
    device: o.Device = None,
    data_dir: o.DataDir = None,
    json: o.Json = False,
) -> None:
    """Read the teacher's training split once (eval mode) and store per-class activation statistics
    (every block group and the logits, plus graph-spectral summaries) as RUN/metadata.safetensors.

    kd train-teacher does this itself; older runs need it for `kd distill-datafree --method lopes`.
    """
    from kdcli.errors import KDError
    from kdcli.metadata import record
    from kdcli.report import print_json, print_table

    if not teacher:
        raise KDError("record-metadata needs a teacher: pass --teacher RUN")
    listing = record(teacher, device=device or "auto", data_dir=data_dir)
    if json:
        print_json(listing)
        return
    print_table(
        f"kd record-metadata · {teacher}",
        ["file", "bytes", "units per layer", "train samples"],
        [[listing["file"], listing["bytes"], "-".join(map(str, listing["layers"])), listing["train_samples"]]],
    )
