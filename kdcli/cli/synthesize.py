"""`kd synthesize`: a synthetic transfer set from a teacher run, written to disk with a preview grid."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from kdcli.cli.common import argv, handle_errors
from kdcli.cli.distill_datafree import DATAFREE_KNOBS
from kdcli.cli.options import Options, command

COMMAND = "synthesize"
DEFAULT_COUNT = 1000  # kdcli.api.DEFAULT_SYNTHESIS_COUNT (not imported: it imports torch)

Method = Annotated[Optional[str], typer.Option("--method", help="zskd | lopes | deepinversion | dafl | zskt.",
                                               rich_help_panel="Method")]
Count = Annotated[Optional[int], typer.Option("-n", "--n", help=f"Samples to synthesise (default {DEFAULT_COUNT}, or "
                                              "the preset's transfer-set size).", rich_help_panel="Method")]
Dtype = Annotated[Optional[str], typer.Option("--dtype", help="uint8 (pixels) | float16 (unclipped).",
                                              rich_help_panel="Run")]


@handle_errors
@command("teacher", "teacher_model", "student", "model_arg", *DATAFREE_KNOBS, "param", "epochs", "batch_size", "lr",
         "seed", "device", "precision", "threads", "data_dir", "image_size", "preset", "config", "out", "overwrite",
         "json", "quiet", "allow_module")
def synthesize(options: Options, method: Method = None, n: Count = None, dtype: Dtype = None) -> None:
    """Synthesise a transfer set from a teacher run, without its training data.

    Writes safetensors shards (images, teacher soft targets, aimed class), samples.png (one labelled
    row per class) and synthetic.json.

    zskd, lopes and deepinversion optimise inputs against the teacher; dafl and zskt train their
    generator (with a student, via the engine) and sample from it, saving the generator too. The
    training data is never read.

    Examples:

    kd synthesize --teacher runs/teacher --method zskd -n 2000 --out runs/impressions

    kd synthesize --teacher runs/teacher --method dafl -n 5000 --epochs 20 --out runs/dafl-samples
    """
    from kdcli import api  # noqa: PLC0415 - imports torch; `kd --help` must not
    from kdcli.report import print_json, print_table  # noqa: PLC0415

    kwargs = options.api_kwargs()
    del kwargs["resume"]  # a transfer set is made in one go
    result = api.synthesize(method=method, n=n, dtype=dtype, **kwargs, argv=argv())
    if options["json"]:
        print_json(result)
        return
    print_table(
        f"kd synthesize · {result['method']} · {result['out']}",
        ["samples", "dtype", "teacher agrees with aim %", "seconds", "samples/s", "device"],
        [[result["count"], result.get("dtype", "-"), result["teacher_agreement"] * 100, result["synthesis_s"],
          result["samples_per_s"], result["device"]]],
    )
