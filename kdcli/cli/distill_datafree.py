"""`kd distill-datafree`: a student from a teacher run alone; the training data is never read."""

from __future__ import annotations

from kdcli.cli import datafree_options as d
from kdcli.cli import options as o
from kdcli.cli.common import argv, handle_errors, report_run

METHODS = ("dafl", "zskt", "zskd", "lopes", "deepinversion", "noise")


@handle_errors
def distill_datafree(
    teacher: o.Teacher = None,
    method: d.Method = None,
    student: d.Student = None,
    preset: d.Preset = "quick",
    n: d.Count = None,
    synthetic: d.Synthetic = None,
    objective: d.Objective = None,
    iterations: d.Iterations = None,
    lr_input: d.LrInput = None,
    lr_generator: d.LrGenerator = None,
    latent_dim: d.LatentDim = None,
    beta: d.Beta = None,
    temperature: d.Temperature = None,
    synth_batch: d.SynthBatch = None,
    epochs: o.Epochs = None,
    batch_size: o.BatchSize = None,
    lr: o.Lr = None,
    seed: o.Seed = None,
    device: o.Device = None,
    out: o.Out = None,
    data_dir: o.DataDir = None,
    config: o.Config = None,
    optimizer: o.Optimizer = None,
    schedule: o.Schedule = None,
    milestones: o.Milestones = None,
    weight_decay: o.WeightDecay = None,
    momentum: o.Momentum = None,
    precision: o.Precision = None,
    augment: o.Augment = None,
    resume: o.Resume = None,
    overwrite: o.Overwrite = False,
    json: o.Json = False,
    quiet: o.Quiet = False,
) -> None:
    """Distil a teacher run into a student without its training data.

    dafl and zskt train a generator together with the student; zskd, lopes and deepinversion first
    synthesise a transfer set on the device (kept in the run as synthetic/, previewed in samples.png)
    or take one from --synthetic; noise is the baseline every method must beat. Only the test split
    is read, to score the student.
    """
    from kdcli import synthetic as synthetic_sets
    from kdcli.config import RunConfig
    from kdcli.run import train

    synthetic_sets.set_quiet(quiet or json)
    if resume:
        result = train(RunConfig(), resume=resume, quiet=quiet or json, argv=argv())
        report_run(result, json)
        return
    flags = o.common_values(
        dataset=None,
        model=student,
        teacher=teacher,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        out=out,
        data_dir=data_dir,
        val_fraction=None,
        optimizer=optimizer,
        schedule=schedule,
        milestones=milestones,
        weight_decay=weight_decay,
        momentum=momentum,
        precision=precision,
        augment=augment,
        cuda_graphs=None,
    )
    knobs = d.method_knobs(
        n=n,
        synthetic=synthetic,
        objective=objective,
        iterations=iterations,
        lr_input=lr_input,
        lr_generator=lr_generator,
        latent_dim=latent_dim,
        beta=beta,
        temperature=temperature,
        synth_batch=synth_batch,
    )
    cfg = d.resolve("distill-datafree", method, teacher, preset, config, flags, knobs, METHODS)
    result = train(cfg, overwrite=overwrite, quiet=quiet or json, argv=argv())
    report_run(result, json)
