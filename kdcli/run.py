"""The one orchestrator: every command that trains, synthesises or records statistics goes through here.

* :func:`train`: ``kd train-teacher``, ``kd distill``, ``kd distill-online``, ``kd distill-datafree``;
* :func:`synthesize`: ``kd synthesize``;
* :func:`record_statistics`: ``kd record-metadata`` (and the end of every teacher run).

Each takes a resolved :class:`~kdcli.config.RunConfig` (:func:`kdcli.presets.resolve_config` makes one
from flags), checks that everything it names fits together before anything is written (:func:`build`),
seeds, builds the method through its contract (:mod:`kdcli.methods.base`), runs the engine and writes
the run directory. No method is named here: what differs between methods is asked of the method.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import safetensors
import torch
from torch import nn

from kdcli import __version__, checkpoint, distributed, progress
from kdcli.config import RunConfig, validate
from kdcli.data import get_dataset
from kdcli.data import synthetic as synthetic_sets
from kdcli.data.base import Dataset, DatasetInfo, ImageSet
from kdcli.data.loader import DeviceLoader, split_train_val
from kdcli.device import (
    ThreadChoice,
    Timer,
    apply_threads,
    busy_cpus,
    channels_last,
    choose_threads,
    device_name,
    resolve_precision,
    seed_everything,
    select_device,
    setup_device,
)
from kdcli.distributed import World
from kdcli.engine import FitResult, RunWriter, fit, predict
from kdcli.errors import Interrupted, KDError
from kdcli.methods import METHODS, Method, MethodContext
from kdcli.methods.base import accuracy, agreement
from kdcli.models import MODELS, multiply_accumulates
from kdcli.pictures import plot_curves
from kdcli.presets import method_class, methods_of

STATISTICS_KEY = "statistics"


@dataclass
class Built:
    """Everything a run needs, built and checked, nothing written yet."""

    config: RunConfig
    method_cls: type[Method]
    params: Any
    dataset: Dataset
    info: DatasetInfo
    device: torch.device
    teacher: nn.Module | None
    teacher_meta: dict[str, Any] | None
    train_set: ImageSet | None
    val_set: ImageSet | None
    test_set: ImageSet
    world: World = field(default_factory=World)

    def context(self, steps_per_epoch: int) -> MethodContext:
        return MethodContext(self.config, self.info, self.device, steps_per_epoch, self.teacher, self.teacher_meta,
                             self.world)


def versions() -> dict[str, str]:
    return {
        "kd": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "safetensors": safetensors.__version__,
        "cuda": torch.version.cuda or "none",
    }


def check_compatible(teacher_info: dict[str, Any], info: DatasetInfo, what: str = "teacher") -> None:
    """Refuse a teacher whose classes, channels or image size differ from the dataset's."""
    spec = teacher_info["spec"]
    mismatch = []
    if spec["num_classes"] != info.num_classes:
        mismatch.append(f"{spec['num_classes']} classes vs {info.num_classes}")
    if spec["in_channels"] != info.channels:
        mismatch.append(f"{spec['in_channels']} channels vs {info.channels}")
    if spec["image_size"] != info.image_size:
        mismatch.append(f"{spec['image_size']}px images vs {info.image_size}px")
    if mismatch:
        raise KDError(
            f"{what} {spec['arch']} (trained on {teacher_info['dataset'].get('name', '?')}) does not fit dataset "
            f"{info.name}: {', '.join(mismatch)}"
        )


def build(config: RunConfig, world: World | None = None, param_values: dict[str, Any] | None = None) -> Built:
    """Resolve names, load data and teacher, resolve the method's hyperparameters; check they fit. Writes nothing.

    Works on a copy of ``config``: a dataset left empty becomes the teacher's. ``param_values`` (a
    resumed run's recorded hyperparameters) replaces ``config.method_params``.
    """
    validate(config)
    config = copy.deepcopy(config)
    world = world or World()
    method_cls = method_class(config.method)
    device = select_device(config.train.device)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    setup_device(device, config.train.threads)

    teacher = teacher_meta = None
    if method_cls.needs_teacher:
        if not config.teacher:
            raise KDError(f"method {config.method!r} needs a teacher: pass --teacher RUN (a kd train-teacher run)")
        teacher, teacher_meta = checkpoint.load_run_model(config.teacher, device)
        config.data.dataset = config.data.dataset or teacher_meta["dataset"].get("name", "")
    for name in [config.model, *config.models]:
        if name:
            MODELS.resolve(name)  # unknown model names fail before any data is read
    dataset = get_dataset(config.data.dataset, config.data.data_dir)
    info = dataset.info
    if teacher_meta is not None:
        check_compatible(teacher_meta, info)

    train_set = val_set = None
    if method_cls.needs_data:
        full_train = dataset.load("train")
        train_set, val_set = split_train_val(full_train, config.data.val_fraction, seed=config.train.seed)
        if len(train_set) < config.train.batch_size:
            raise KDError(
                f"--batch-size {config.train.batch_size} is larger than the training split ({len(train_set)} images)"
            )
    test_set = dataset.load("test")
    values = config.method_params if param_values is None else param_values
    probe = MethodContext(config, info, device, 0, teacher, teacher_meta, world)
    params = method_cls.resolve_params(method_cls.make_params(values), probe)
    return Built(config, method_cls, params, dataset, info, device, teacher, teacher_meta, train_set, val_set, test_set,
                 world)


def default_run_name(config: RunConfig) -> str:
    """``runs/<name>``: role or command, the method when the command runs several, model, dataset, seed."""
    role = {"train-teacher": "teacher"}.get(config.command, config.command)
    method = f"-{config.method}" if len(methods_of(config.command)) > 1 else ""
    model = config.model if not config.models else "+".join(config.models)
    return f"{role}{method}-{model}-{config.data.dataset.replace(':', '_').replace('/', '_')}-s{config.train.seed}"


def augment_mode(config: RunConfig, info: DatasetInfo) -> str:
    return info.augment if config.data.augment == "auto" else config.data.augment


def _train_loader(built: Built) -> DeviceLoader | None:
    if built.train_set is None:
        return None
    config = built.config
    shard = built.method_cls.data_shard(built.params, config, built.world)
    return DeviceLoader(
        built.train_set,
        shard.batch_size,
        mean=built.info.mean,
        std=built.info.std,
        device=built.device,
        shuffle=True,
        drop_last=True,
        augment=augment_mode(config, built.info),
        seed=config.train.seed,
        channels_last=channels_last(built.device),
        rank=shard.index,
        world_size=shard.count,
        partitions=shard.partitions,
    )


def _teacher_description(built: Built) -> dict[str, Any] | None:
    if built.teacher_meta is None:
        return None
    meta = built.teacher_meta
    return {"run": str(Path(meta["run"]).resolve()), "role": meta["role"], "spec": meta["spec"]}


def train(
    config: RunConfig | None,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    argv: list[str] | None = None,
    world: World | None = None,
    after_step: Callable[[Method, int], None] | None = None,
) -> dict[str, Any]:
    """Build, train, evaluate and write the run directory. Returns the final ``run.json`` content.

    With ``resume``, the config and the method's hyperparameters are the run's own (``config`` is ignored
    and may be None).
    """
    resume_state = None
    param_values = None
    if resume:
        info_json = checkpoint.read_run(resume)
        if info_json.get("status") == "complete":
            raise KDError(f"run {resume} is already complete; nothing to resume")
        state_path = Path(resume) / checkpoint.STATE_FILE
        if not state_path.is_file():
            raise KDError(f"run {resume} has no resumable state ({checkpoint.STATE_FILE} missing)")
        config = RunConfig.from_dict(info_json["config"])
        if config.train.threads == 0 and info_json.get("threads", {}).get("source") == "auto":
            # the count was chosen from the work and the machine's load then: keep it, so the resumed run
            # sums in the same order and ends bit-exactly where an uninterrupted one would
            config.train.threads = int(info_json["threads"]["threads"])
        param_values = info_json.get("params", {})
        resume_state = checkpoint.load_state(state_path)
    if config is None:
        raise KDError("nothing to train: give a config or --resume RUN")
    joined = world is None and distributed.launched()  # started by torchrun: this process is one rank
    world = world or distributed.init_from_env(config.train.device)
    with progress.silenced(quiet or not world.is_main):  # one progress display and one table per job
        built = build(config, world, param_values)
        final = _train_built(built, resume, resume_state, overwrite, argv, after_step)
    if joined:
        distributed.shutdown()
    return final


def _train_built(
    built: Built, resume: str | None, resume_state: dict[str, Any] | None, overwrite: bool, argv: list[str] | None,
    after_step: Callable[[Method, int], None] | None,
) -> dict[str, Any]:
    config, world, cls = built.config, built.world, built.method_cls
    seed_everything(config.train.seed, built.device)
    train_loader = _train_loader(built)
    method = cls(built.context(len(train_loader) if train_loader is not None else 0), built.params)
    sync_bn = world.distributed and cls.data_parallel and distributed.sync_batchnorm_requested()
    if sync_bn:
        distributed.convert_sync_batchnorm(method, built.device)
    method.prepare()

    run_dir = Path(resume) if resume else _choose_run_dir(config, overwrite, world)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    exports = method.export_models()
    roles = {
        role: {"file": f"{role}.safetensors", "arch": m.spec.arch, "spec": m.spec.to_dict(),
               "params": sum(p.numel() for p in m.parameters())}
        for role, m in exports.items()
    }
    threads = _choose_threads(built, [*exports.values(), *([built.teacher] if built.teacher is not None else [])])

    def describe() -> dict[str, Any]:
        return {
            "kd_version": __version__,
            "command": config.command,
            "argv": argv or sys.argv,
            "method": config.method,
            "params": dataclasses.asdict(built.params) if dataclasses.is_dataclass(built.params) else {},
            "primary": cls.primary if cls.primary in roles else next(iter(roles), ""),
            "dataset": built.info.to_dict(),
            "config": config.to_dict(),
            "seed": config.train.seed,
            "device": str(built.device),
            "device_name": device_name(built.device),
            "world_size": world.world_size,
            "fused": method.fusion(),
            **({"threads": threads.to_dict()} if threads is not None else {}),
            **({"distributed": {"backend": distributed.backend_for(config.train.device), "sync_bn": sync_bn}}
               if world.distributed else {}),
            "versions": versions(),
            "roles": roles,
            "teacher": _teacher_description(built),
            "started": started,
        }

    writer = RunWriter(run_dir if world.is_main else None, describe)
    try:
        result = fit(method, config, train_loader, built.val_set, built.test_set, built.info, built.device, writer,
                     resume=resume_state, after_step=after_step, allow_graphs=not sync_bn)
    except Interrupted:
        if not world.is_main:  # rank 0 saved the job's state and said where
            raise Interrupted(f"interrupted; rank 0 saved the run. Resume with --resume {run_dir}") from None
        raise
    except distributed.RankFailure as err:
        if (run_dir / checkpoint.STATE_FILE).is_file():
            raise distributed.RankFailure(f"{err}; the last checkpoint is intact: --resume {run_dir}") from None
        raise
    except BaseException:
        if world.is_main:
            checkpoint.remove_incomplete(run_dir)  # keeps a run that saved resumable state (Ctrl-C)
        raise

    final = _finish_run(method, built, result, writer, run_dir)
    if cls.produces_teacher and world.is_main:
        final.update(_record_after_training(run_dir, final["primary"], method.export_models()[final["primary"]],
                                            built))
    return final


def _choose_threads(built: Built, models: list[nn.Module]) -> ThreadChoice | None:
    """On a CPU: the run's threads, from the multiply-accumulates of one training step (forward and backward
    of what the run trains, forward of its teacher; :func:`kdcli.device.choose_threads`)."""
    if built.device.type != "cpu":
        return None
    info, batch = built.info, built.config.train.batch_size
    per_image = sum(multiply_accumulates(m, info.channels, info.image_size) for m in models)
    choice = choose_threads(built.config.train.threads, 3 * per_image * batch / 1e6,
                            busy=busy_cpus() if built.config.train.threads == 0 else None)
    apply_threads(choice)
    return choice


def _choose_run_dir(config: RunConfig, overwrite: bool, world: World) -> Path:
    """Rank 0 picks (and, with --overwrite, clears) the run directory; the other ranks learn its name."""
    chosen: str | None = None
    problem: str | None = None
    if world.is_main:
        try:
            path = checkpoint.new_run_dir(config.out, default_run_name(config), overwrite=overwrite)
            if overwrite and path.exists():
                shutil.rmtree(path)
            chosen = str(path)
        except KDError as err:
            problem = str(err)
    if world.distributed:
        chosen, problem = distributed.broadcast_object((chosen, problem))
    if problem is not None:
        raise KDError(problem)
    return Path(chosen)


def agreement_with_teacher(built: Built, models: dict[str, nn.Module]) -> tuple[float, dict[str, float]]:
    """The teacher's test accuracy, and each model's agreement with the teacher's top-1 on the test split."""
    config, test = built.config, built.test_set
    dtype = resolve_precision(config.train.precision, built.device)
    teacher_logits = predict(built.teacher, test, built.info, built.device, config.train.eval_batch_size, dtype)
    agreements = {}
    for role, model in models.items():
        logits = predict(model, test, built.info, built.device, config.train.eval_batch_size, dtype)
        agreements[role] = agreement(logits, teacher_logits).item()
    return accuracy(teacher_logits, test.labels).item(), agreements


def _finish_run(method: Method, built: Built, result: FitResult, writer: RunWriter, run_dir: Path) -> dict[str, Any]:
    metrics: dict[str, Any] = {"test": result.test, "val": result.val}
    if built.teacher is not None:
        teacher_top1, agreement = agreement_with_teacher(built, method.eval_models())
        metrics["teacher_test"] = {"top1": teacher_top1}
        metrics["agreement"] = agreement
    final = {
        "status": "complete",
        "metrics": metrics,
        "history": result.history,
        "wall_time_s": round(result.wall_time_s, 3),
        "train_images_per_s": round(result.images_per_s, 1),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if writer.active:
        for role, model in method.export_models().items():
            checkpoint.save_model(run_dir / f"{role}.safetensors", model, role, built.info.to_dict())
        artifacts = method.write_artifacts(run_dir)
        if artifacts:
            final["artifacts"] = artifacts
        plot_curves(result.history, run_dir / "curves.png")
        writer.run_json(final)
        (run_dir / checkpoint.STATE_FILE).unlink(missing_ok=True)
    return {**writer.describe(), **final, "run_dir": str(run_dir)}


# ---------------------------------------------------------------------------------------------
# What methods record from a teacher's training data


def _statistics_of(run_dir: Path, role: str, model: nn.Module, train_set: ImageSet, info: DatasetInfo,
                   device: torch.device) -> dict[str, Any]:
    """Every method's :meth:`~kdcli.methods.base.Method.record_teacher_statistics`, merged into ``run.json``."""
    entries: dict[str, Any] = {}
    with torch.no_grad():
        for entry in METHODS:
            entries.update(entry.builder.record_teacher_statistics(run_dir, role, model, train_set, info, device))
    if entries:
        info_json = checkpoint.read_run(run_dir)
        info_json.update(entries)
        checkpoint.write_json(run_dir / checkpoint.RUN_FILE, info_json)
    return entries


def _record_after_training(run_dir: Path, role: str, model: nn.Module, built: Built) -> dict[str, Any]:
    """A new teacher's statistics, while its training data is at hand. A failure never loses the teacher:
    it is a warning with the command that retries it."""
    try:
        full_train = built.dataset.load("train")
        return _statistics_of(run_dir, role, model.to(built.device).eval(), full_train, built.info, built.device)
    except KDError as err:
        progress.console.log(
            f"[yellow]teacher statistics not recorded ({err}); add them later with: kd record-metadata --teacher {run_dir}"
        )
        return {}


def record_statistics(run_ref: str, device: str = "auto", data_dir: str | None = None) -> dict[str, Any]:
    """``kd record-metadata``: read a finished teacher run's training split once and record what methods need."""
    run_dir, role, info_json = checkpoint.resolve_role(run_ref)
    if info_json.get("status") != "complete":
        raise KDError(f"run {run_ref} is not complete; finish it (--resume) before recording metadata")
    dev = select_device(device)
    setup_device(dev)
    model, _ = checkpoint.load_run_model(run_ref, dev)
    dataset = get_dataset(info_json["dataset"]["name"],
                          data_dir or info_json.get("config", {}).get("data", {}).get("data_dir"))
    return _statistics_of(run_dir, role, model, dataset.load("train"), dataset.info, dev)


# ---------------------------------------------------------------------------------------------
# kd synthesize


def synthesize(
    config: RunConfig,
    n: int,
    out: str | Path,
    *,
    dtype: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Make a transfer set of ``n`` samples with ``config.method`` from ``config.teacher`` and write it to ``out``.

    Methods that optimise inputs synthesise directly; methods with a generator first train it (and
    their student) on the engine, then sample from it. Only the teacher run and the test split are
    read: never the training data.
    """
    if n <= 0:
        raise KDError(f"-n must be positive (got {n})")
    out_path = synthetic_sets.check_out_dir(out, overwrite)
    cls = method_class(config.method)
    if cls.synthesis == "none":
        raise KDError(f"method {config.method!r} does not synthesise data; use one of the data-free methods")
    dtype = dtype or cls.synthesis_dtype
    if dtype not in synthetic_sets.DTYPES:
        raise KDError(f"--dtype must be one of {', '.join(synthetic_sets.DTYPES)} (got {dtype!r})")
    counted = {f.name for f in dataclasses.fields(cls.Params)} if dataclasses.is_dataclass(cls.Params) else set()
    values = {**config.method_params, **({"n": n} if "n" in counted else {})}  # what is made, not the preset's n
    with progress.silenced(quiet):
        built = build(config, World(), values)
        seed_everything(config.train.seed, built.device)
        method = cls(built.context(0), built.params)
        result: dict[str, Any] = {}
        if cls.synthesis == "generator":
            method.prepare()
            fitted = fit(method, built.config, None, None, built.test_set, built.info, built.device, RunWriter(None))
            result["student_test_top1"] = fitted.test[cls.primary]["top1"]
            result["train_wall_time_s"] = round(fitted.wall_time_s, 3)
        with Timer(built.device) as timer:
            data = method.synthesize(n)
    rate = len(data) / max(timer.seconds, 1e-9)
    description = {
        "method": config.method,
        "params": dataclasses.asdict(built.params) if dataclasses.is_dataclass(built.params) else {},
        "teacher": _teacher_description(built),
        "dataset": built.info.to_dict(),
        "config": built.config.to_dict(),
        "seed": config.train.seed,
        "device": str(built.device),
        "synthesis_s": round(timer.seconds, 3),
        "samples_per_s": round(rate, 2),
        "class_source": "aimed" if cls.synthesis == "inputs" else "teacher argmax",
        "argv": argv or [],
        "versions": versions(),
        **result,
    }
    synthetic_sets.write_set(out_path, data, description, built.info.num_classes, dtype, method.synthesis_files,
                             class_names=built.info.class_names)
    return {
        **description,
        "out": str(out_path),
        "count": len(data),
        "dtype": dtype,
        "teacher_agreement": accuracy(data.soft_targets, data.classes).item(),
    }
