"""build(config) → dataset, teacher, method; train(config) → engine.fit → run directory.

Everything that can be wrong with the user's input (names, data, teacher, numbers) is checked
while building, before the run directory exists, so bad input never leaves files behind.
"""

from __future__ import annotations

import datetime as dt
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcli import __version__, checkpoint, distributed
from kdcli.config import RunConfig, validate
from kdcli.data import DATASETS, get_dataset
from kdcli.data.base import Dataset, DatasetInfo, ImageSet
from kdcli.data.loader import DeviceLoader, split_train_val
from kdcli.engine import FitResult, RunWriter, fit, predict, resolve_precision, select_device, setup_device
from kdcli.errors import Interrupted, KDError
from kdcli.methods import METHODS, Method, MethodContext, World, make_params


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


def versions() -> dict[str, str]:
    import safetensors

    return {
        "kd": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "safetensors": safetensors.__version__,
        "cuda": torch.version.cuda or "none",
    }


def check_compatible(teacher_info: dict[str, Any], info: DatasetInfo, what: str = "teacher") -> None:
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


def build(config: RunConfig, world: World | None = None) -> Built:
    """Resolve names, load data and teacher, and check they fit together. Writes nothing."""
    validate(config)
    world = world or World()
    method_entry, _ = METHODS.resolve(config.method)
    method_cls: type[Method] = method_entry.builder
    params = make_params(method_cls.Params, config.method_params, config.method)
    device = select_device(config.train.device)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    setup_device(device)

    teacher = teacher_meta = None
    if method_cls.needs_teacher:
        if not config.teacher:
            raise KDError(f"method {config.method!r} needs a teacher: pass --teacher RUN (a kd train-teacher run)")
        teacher, teacher_meta = checkpoint.load_run_model(config.teacher, device)
        if not config.data.dataset:
            config.data.dataset = teacher_meta["dataset"].get("name", "")
    from kdcli.models import MODELS

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
    return Built(config, method_cls, params, dataset, info, device, teacher, teacher_meta, train_set, val_set, test_set, world)


def default_run_name(config: RunConfig) -> str:
    role = {"train-teacher": "teacher"}.get(config.command, config.command)
    method = "" if config.method in ("supervised", "kd") else f"-{config.method}"
    model = config.model if not config.models else "+".join(config.models)
    return f"{role}{method}-{model}-{config.data.dataset.replace(':', '_').replace('/', '_')}-s{config.train.seed}"


def augment_mode(config: RunConfig, info: DatasetInfo) -> str:
    return info.augment if config.data.augment == "auto" else config.data.augment


def train(
    config: RunConfig,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    argv: list[str] | None = None,
    world: World | None = None,
    after_step: Any = None,
) -> dict[str, Any]:
    """Build, train, evaluate and write the run directory. Returns the final ``run.json`` content."""
    resume_state = None
    if resume:
        info_json = checkpoint.read_run(resume)
        if info_json.get("status") == "complete":
            raise KDError(f"run {resume} is already complete; nothing to resume")
        state_path = Path(resume) / checkpoint.STATE_FILE
        if not state_path.is_file():
            raise KDError(f"run {resume} has no resumable state ({checkpoint.STATE_FILE} missing)")
        config = RunConfig.from_dict(info_json["config"])
        resume_state = checkpoint.load_state(state_path)
    joined = world is None and distributed.launched()  # started by torchrun: this process is one rank
    world = world or distributed.init_from_env(config.train.device)
    quiet = quiet or not world.is_main  # one progress bar and one table per job
    built = build(config, world)
    world = built.world
    torch.manual_seed(config.train.seed)
    if built.device.type == "cuda":
        torch.cuda.manual_seed_all(config.train.seed)

    train_loader = None
    if built.train_set is not None:
        layout = getattr(built.method_cls, "data_shard", None)  # a method whose ranks read different data
        shard = (layout(built.params, config, world) if layout is not None
                 else distributed.data_parallel_shard(config.train.batch_size, world))
        train_loader = DeviceLoader(
            built.train_set,
            shard.batch_size,
            mean=built.info.mean,
            std=built.info.std,
            device=built.device,
            shuffle=True,
            drop_last=True,
            augment=augment_mode(config, built.info),
            seed=config.train.seed,
            channels_last=built.device.type == "cuda",
            rank=shard.index,
            world_size=shard.count,
            partitions=shard.partitions,
        )
    steps = len(train_loader) if train_loader is not None else 0
    ctx = MethodContext(config, built.info, built.device, steps, built.teacher, built.teacher_meta, world)
    method = built.method_cls(ctx, built.params)
    sync_bn = world.distributed and distributed.maybe_sync_batchnorm(method, built.device)
    if sync_bn:
        config.train.cuda_graphs = "off"  # SyncBatchNorm's collectives are not captured into CUDA graphs
    if train_loader is None:
        steps = method.steps_per_epoch() or 0
        ctx.steps_per_epoch = steps

    run_dir = Path(resume) if resume else _choose_run_dir(config, overwrite, world)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    export = method.export_models()
    roles = {
        role: {"file": f"{role}.safetensors", "arch": m.spec.arch, "spec": m.spec.to_dict(),
               "params": sum(p.numel() for p in m.parameters())}
        for role, m in export.items()
    }
    teacher_desc = None
    if built.teacher_meta is not None:
        teacher_desc = {"run": str(Path(built.teacher_meta["run"]).resolve()), "role": built.teacher_meta["role"],
                        "spec": built.teacher_meta["spec"]}

    def describe() -> dict[str, Any]:
        return {
            "kd_version": __version__,
            "command": config.command,
            "argv": argv or sys.argv,
            "method": config.method,
            "params": vars(built.params) if hasattr(built.params, "__dict__") else {},
            "primary": built.method_cls.primary if built.method_cls.primary in roles else next(iter(roles), ""),
            "dataset": built.info.to_dict(),
            "config": config.to_dict(),
            "seed": config.train.seed,
            "device": str(built.device),
            "device_name": torch.cuda.get_device_name(built.device) if built.device.type == "cuda" else platform.processor() or platform.machine(),
            "world_size": world.world_size,
            **({"distributed": {"backend": distributed.backend_for(config.train.device), "sync_bn": sync_bn}}
               if world.distributed else {}),
            "versions": versions(),
            "roles": roles,
            "teacher": teacher_desc,
            "started": started,
        }

    writer = RunWriter(run_dir if world.is_main else None, describe)
    try:
        result = fit(method, config, train_loader, built.val_set, built.test_set, built.info, built.device, writer,
                     resume=resume_state, quiet=quiet, after_step=after_step)
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

    final = finish_run(method, built, result, writer, run_dir)
    if joined:
        distributed.shutdown()
    return final


def _choose_run_dir(config: RunConfig, overwrite: bool, world: World) -> Path:
    """Rank 0 picks (and, with --overwrite, clears) the run directory; the other ranks learn its name."""
    chosen: str | None = None
    problem: str | None = None
    if world.is_main:
        try:
            path = checkpoint.new_run_dir(config.out, default_run_name(config), overwrite=overwrite)
            if overwrite and path.exists():
                import shutil

                shutil.rmtree(path)
            chosen = str(path)
        except KDError as err:
            problem = str(err)
    if world.distributed:
        chosen, problem = distributed.broadcast_object((chosen, problem))
    if problem is not None:
        raise KDError(problem)
    return Path(chosen)


def finish_run(method: Method, built: Built, result: FitResult, writer: RunWriter, run_dir: Path) -> dict[str, Any]:
    metrics: dict[str, Any] = {"test": result.test, "val": result.val}
    if built.teacher is not None:
        dtype = resolve_precision(built.config.train.precision, built.device)
        teacher_logits = predict(built.teacher, built.test_set, built.info, built.device, built.config.train.eval_batch_size, dtype)
        metrics["teacher_test"] = {"top1": (teacher_logits.argmax(1) == built.test_set.labels).float().mean().item()}
        agreement = {}
        for role, model in method.eval_models().items():
            logits = predict(model, built.test_set, built.info, built.device, built.config.train.eval_batch_size, dtype)
            agreement[role] = (logits.argmax(1) == teacher_logits.argmax(1)).float().mean().item()
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
        write_artifacts = getattr(method, "write_artifacts", None)  # data-free: generator, synthetic set, samples.png
        if write_artifacts is not None:
            final["artifacts"] = write_artifacts(run_dir)
        from kdcli.report import plot_curves

        plot_curves(result.history, run_dir / "curves.png")
        writer.run_json(final)
        (run_dir / checkpoint.STATE_FILE).unlink(missing_ok=True)
    return {**writer.describe(), **final, "run_dir": str(run_dir)}
