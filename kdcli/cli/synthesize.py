"""`kd synthesize`: a synthetic transfer set from a teacher run, written to disk with a preview grid."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from kdcli.cli import datafree_options as d
from kdcli.cli import options as o
from kdcli.cli.common import argv, handle_errors

METHODS = ("zskd", "lopes", "deepinversion", "dafl", "zskt")
DEFAULT_COUNT = 1000


@handle_errors
def synthesize(
    teacher: o.Teacher = None,
    method: d.Method = None,
    n: d.Count = None,
    out: o.Out = None,
    preset: d.Preset = "quick",
    objective: d.Objective = None,
    iterations: d.Iterations = None,
    lr_input: d.LrInput = None,
    lr_generator: d.LrGenerator = None,
    latent_dim: d.LatentDim = None,
    beta: d.Beta = None,
    synth_batch: d.SynthBatch = None,
    student: d.Student = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="uint8 (pixels) | float16 (unclipped).")] = None,
    epochs: o.Epochs = None,
    batch_size: o.BatchSize = None,
    lr: o.Lr = None,
    seed: o.Seed = None,
    device: o.Device = None,
    data_dir: o.DataDir = None,
    config: o.Config = None,
    precision: o.Precision = None,
    overwrite: o.Overwrite = False,
    json: o.Json = False,
    quiet: o.Quiet = False,
) -> None:
    """Synthesise a transfer set: safetensors shards (images, teacher soft targets, aimed class),
    samples.png (one row per class) and synthetic.json.

    zskd, lopes and deepinversion optimise inputs against the teacher; dafl and zskt train their
    generator (with a student, via the engine) and sample from it, saving the generator too. The
    training data is never read.
    """
    from kdcli import synthetic
    from kdcli.report import print_json, print_table

    synthetic.set_quiet(quiet or json)
    flags = o.common_values(
        dataset=None,
        model=student,
        teacher=teacher,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        out=None,
        data_dir=data_dir,
        val_fraction=None,
        optimizer=None,
        schedule=None,
        milestones=None,
        weight_decay=None,
        momentum=None,
        precision=precision,
        augment=None,
        cuda_graphs=None,
    )
    knobs = d.method_knobs(
        objective=objective,
        iterations=iterations,
        lr_input=lr_input,
        lr_generator=lr_generator,
        latent_dim=latent_dim,
        beta=beta,
        synth_batch=synth_batch,
    )
    cfg = d.resolve("synthesize", method, teacher, preset, config, flags, knobs, METHODS)
    count = n if n is not None else int(cfg.method_params.get("n", DEFAULT_COUNT))
    target = out or f"runs/synthetic-{cfg.method}-s{cfg.train.seed}"
    result = synthetic.synthesize(cfg, count, target, dtype=dtype, overwrite=overwrite, argv=argv())
    if json:
        print_json(result)
        return
    print_table(
        f"kd synthesize · {result['method']} · {result['out']}",
        ["samples", "dtype", "teacher agrees with aim %", "seconds", "samples/s", "device"],
        [
            [
                result["count"],
                result.get("dtype", "-"),
                result["teacher_agreement"] * 100,
                result["synthesis_s"],
                result["samples_per_s"],
                result["device"],
            ]
        ],
    )
