"""The one orchestrator: every command that trains, synthesises or records statistics goes through here.

* :func:`train`: ``kd train-teacher``, ``kd distill``, ``kd distill-online``, ``kd distill-datafree``;
* :func:`synthesize`: ``kd synthesize``;
* :func:`record_statistics`: ``kd record-metadata`` (and the end of every teacher run).

Each takes a resolved :class:`~kdcli.config.RunConfig` (:func:`kdcli.presets.resolve_config` makes one
from flags), checks that everything it names fits together before anything is written (:func:`build`),
seeds, builds the method through its contract (:mod:`kdcli.methods.base`), runs the engine and writes
the run directory. No method is named here: what differs between methods is asked of the method.

A run's life is decided here too: the directory is claimed (and locked) before any data is read; a run
that stops early leaves what :func:`_stopped` says: a resumable state with status ``interrupted`` after
Ctrl-C or SIGTERM, the last finite checkpoint with status ``diverged``, or, when nothing was saved yet,
nothing at all (and never a file kd did not write).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import safetensors
import torch
from torch import nn

from kdcli import __version__, checkpoint, distributed, progress
from kdcli import weights as weights_module
from kdcli.config import ResumeChanges, RunConfig, validate
from kdcli.data import get_dataset
from kdcli.data import synthetic as synthetic_sets
from kdcli.data.base import Dataset, DatasetInfo, ImageSet
from kdcli.data.loader import DeviceLoader, few_shot_indices, repeat_to, split_train_val, subset
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
from kdcli.engine import STOP_SIGNALS, FitResult, RunWriter, evaluate_models, fit, predict
from kdcli.errors import Aborted, Diverged, Interrupted, KDError
from kdcli.methods import METHODS, Method, MethodContext
from kdcli.methods.base import accuracy, agreement, check_needs
from kdcli.models import check_model_name, create_model, model_provides, multiply_accumulates, probe_model
from kdcli.pictures import plot_curves
from kdcli.presets import method_class, methods_of, resolve_resume

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
    #: ``--shots M``: ``{"per_class": M, "count": M × classes, "indices": [...]}``, the training images used
    #: (indices into the training split; recorded in run.json)
    shots: dict[str, Any] | None = None

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
    config.train.precision = method_cls.precision(config.train.precision)  # what "auto" means for this method
    device = select_device(config.train.device)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    setup_device(device, config.train.threads)

    teacher = teacher_meta = None
    if method_cls.needs_teacher:
        if not config.teacher:
            raise KDError(f"method {config.method!r} needs a teacher: pass --teacher RUN (a kd train-teacher run)")
        teacher, teacher_meta = checkpoint.load_run_model(config.teacher, device)
        check_teacher_model(config, teacher_meta)
        config.data.dataset = config.data.dataset or teacher_meta["dataset"].get("name", "")
        config.data.image_size = teacher_image_size(config.data.image_size, teacher_meta)
    for name in [config.model, *config.models]:
        if name:
            check_model_name(name, config.model_args)  # unknown model names fail before any data is read
    dataset = get_dataset(config.data.dataset, config.data.data_dir, config.data.image_size)
    info = dataset.info
    if teacher_meta is not None:
        check_compatible(teacher_meta, info)
    values = config.method_params if param_values is None else param_values
    raw_params = method_cls.make_params(values)
    check_method_needs(method_cls, raw_params, config, info, teacher, teacher_meta)

    train_set = val_set = shots = None
    if method_cls.needs_data:
        full_train = dataset.load("train")
        if config.data.shots:
            train_set, shots = few_shot_set(config, full_train, info)
        else:
            train_set, val_set = split_train_val(full_train, config.data.val_fraction, seed=config.train.seed)
        if len(train_set) < config.train.batch_size:
            raise KDError(
                f"--batch-size {config.train.batch_size} is larger than the training split ({len(train_set)} images)"
            )
    test_set = dataset.load("test")
    probe = MethodContext(config, info, device, 0, teacher, teacher_meta, world)
    params = method_cls.resolve_params(raw_params, probe)
    return Built(config, method_cls, params, dataset, info, device, teacher, teacher_meta, train_set, val_set, test_set,
                 world, shots)


def teacher_image_size(asked: int, teacher_meta: dict[str, Any]) -> int:
    """The image size of a run made from a teacher run: the teacher's own ``--image-size`` (0 when it used the
    dataset's size); ``asked`` (``--image-size``, 0 = not given) must be the size the teacher takes."""
    held = int(teacher_meta["spec"]["image_size"])
    if asked and asked != held:
        raise KDError(f"--image-size {asked} conflicts with the teacher run {teacher_meta['run']}, which takes "
                      f"{held}px images; drop --image-size (the teacher's size is used)")
    recorded = teacher_meta.get("run_info", {}).get("config", {}).get("data", {}).get("image_size", 0)
    return asked or int(recorded or 0)


def few_shot_set(config: RunConfig, full_train: ImageSet, info: DatasetInfo) -> tuple[ImageSet, dict[str, Any]]:
    """``--shots M``: M images of each class of the training split, drawn with the run's seed
    (:func:`~kdcli.data.loader.few_shot_indices`), and no validation split (no other real image is read;
    :func:`kdcli.config.validate` requires ``val_fraction`` 0, which the resolution sets unless the user set it).

    An epoch still shows the model as many images as an epoch of the whole split (the M × classes images
    repeated, reshuffled every epoch), so ``--epochs`` keeps its meaning; a batch larger than M × classes
    is capped to it. Both changes go to ``config.adjusted`` (``config`` is the build's own copy)."""
    m = config.data.shots
    indices = few_shot_indices(full_train.labels, m, info.num_classes, config.train.seed)
    chosen = subset(full_train, indices)
    if config.train.batch_size > len(chosen):
        config.adjusted["batch_size"] = (f"{config.train.batch_size} → {len(chosen)}: --shots {m} gives "
                                         f"{len(chosen)} images")
        config.train.batch_size = len(chosen)
    length = len(full_train) // config.train.batch_size * config.train.batch_size
    return repeat_to(chosen, length), {"per_class": m, "count": len(chosen), "indices": indices.tolist()}


def check_teacher_model(config: RunConfig, teacher_meta: dict[str, Any]) -> None:
    """``--teacher-model`` names the teacher run's model: refuse a run that holds another one."""
    held = teacher_meta["spec"]["arch"]
    if config.teacher_model and config.teacher_model != held:
        raise KDError(f"--teacher-model {config.teacher_model} does not match the teacher run {teacher_meta['run']}, "
                      f"whose model is {held}")


def check_method_needs(method_cls: type[Method], params: Any, config: RunConfig, info: DatasetInfo,
                       teacher: nn.Module | None, teacher_meta: dict[str, Any] | None) -> None:
    """What the method needs from its models (:meth:`~kdcli.methods.base.Method.needs`), checked on the teacher
    and on a probe of every model it will build: one line naming what is missing, before any data is read."""
    needs = method_cls.needs(params)
    if teacher is not None and teacher_meta is not None and needs.get("teacher"):
        check_needs(method_cls.name, needs["teacher"], "teacher", teacher_meta["spec"]["arch"], teacher)
    if needs.get("model"):
        for name in dict.fromkeys(config.models or [config.model]):
            model = probe_model(name, info.channels, info.image_size, info.num_classes, **config.model_args)
            check_needs(method_cls.name, needs["model"], "model", name, model)


def default_run_name(config: RunConfig) -> str:
    """``runs/<name>``: role or command, the method when the command runs several, model, dataset, seed."""
    role = {"train-teacher": "teacher", "import-teacher": "imported"}.get(config.command, config.command)
    method = f"-{config.method}" if len(methods_of(config.command)) > 1 else ""
    model = config.model if not config.models else "+".join(config.models)
    return f"{role}{method}-{_safe(model)}-{_safe(config.data.dataset)}-s{config.train.seed}"


def _safe(name: str) -> str:
    """A name as part of a folder name (``folder:PATH``, ``my_pkg.nets:make``, ``tv:resnet18``)."""
    return name.replace(":", "_").replace("/", "_")


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


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Ctrl-C and SIGTERM outside the training loop stop the command at once (:class:`~kdcli.errors.Aborted`),
    so the orchestrator can say where the last saved state is; inside the loop the engine's
    :class:`~kdcli.engine.StopFlag` makes the first one finish the step and save."""

    def abort(signum: int, frame: Any) -> None:
        raise Aborted(signum)

    previous: dict[int, Any] = {}
    try:
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, abort)
    except ValueError:  # not the main thread: signals stay as they were
        previous = {}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def train(
    config: RunConfig | None,
    *,
    resume: str | None = None,
    changes: ResumeChanges | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    argv: list[str] | None = None,
    world: World | None = None,
    after_step: Callable[[Method, int], None] | None = None,
) -> dict[str, Any]:
    """Build, train, evaluate and write the run directory. Returns the final ``run.json`` content.

    The run directory is claimed before any data is read (created exclusively, or locked: see
    :func:`kdcli.checkpoint.claim_run_dir`) and its lock removed whatever happens. With ``resume``, the
    config and the method's hyperparameters are the run's own (``config`` is ignored and may be None);
    ``changes`` (what a ``--resume`` invocation asked for) is checked against them by
    :func:`kdcli.presets.resolve_resume`: another command's run or a change of the config is refused.

    Raises (one line each): :class:`KDError` for bad input; :class:`Interrupted` after Ctrl-C or SIGTERM
    (state saved, run.json status ``interrupted``, the resume command in the message);
    :class:`Diverged` when the loss stops being finite (status ``diverged``, the last finite checkpoint kept).
    """
    info_json: dict[str, Any] | None = None
    param_values: dict[str, Any] | None = None
    changed: dict[str, list[Any]] = {}
    if resume:
        if overwrite:
            raise KDError("--overwrite and --resume contradict each other: --resume continues a run, --overwrite "
                          "replaces one")
        info_json = checkpoint.read_resumable(resume)
        config, param_values, changed = resolve_resume(resume, info_json, changes)
        if config.train.threads == 0 and info_json.get("threads", {}).get("source") == "auto":
            # the count was chosen from the work and the machine's load then: keep it, so the resumed run
            # sums in the same order and ends bit-exactly where an uninterrupted one would
            config.train.threads = int(info_json["threads"]["threads"])
    if config is None:
        raise KDError("nothing to train: give a config or --resume RUN")
    validate(config)
    joined = world is None and distributed.launched()  # started by torchrun: this process is one rank
    world = world or distributed.init_from_env(config.train.device)
    with progress.silenced(quiet or not world.is_main), stop_signals():  # one display and one table per job
        claim, run_dir = _claim(config, resume, overwrite, world)
        try:
            resume_state = _resume_state(run_dir, config, tidy=claim is not None) if resume else None
            built = build(config, world, param_values)
            if claim is not None:
                claim.clear()  # --overwrite: the previous run goes only now, once this one is known to start
            final = _train_built(built, run_dir, resume_state, info_json, changed, argv, after_step)
        except BaseException as err:
            _stopped(err, claim, run_dir, config, world)
            raise
        finally:
            if claim is not None:
                claim.release()
    if joined:
        distributed.shutdown()
    return final


def _claim(config: RunConfig, resume: str | None, overwrite: bool, world: World) -> tuple[
        checkpoint.Claim | None, Path]:
    """Rank 0 claims the run directory (new or resumed); the other ranks learn its name, or the problem."""
    claim: checkpoint.Claim | None = None
    problem: str | None = None
    if world.is_main:
        try:
            if resume:
                claim = checkpoint.claim_for_resume(Path(resume))
            else:
                claim = checkpoint.claim_run_dir(config.out, default_run_name(config), overwrite=overwrite)
        except KDError as err:
            problem = str(err)
    chosen = str(claim.path) if claim is not None else None
    if world.distributed:
        chosen, problem = distributed.broadcast_object((chosen, problem))
    if problem is not None:
        raise KDError(problem)
    return claim, Path(chosen)


def _resume_state(run_dir: Path, config: RunConfig, tidy: bool) -> dict[str, Any]:
    """The saved state to continue ``run_dir`` from (read once rank 0 holds its lock, which alone ``tidy``s)."""
    info = checkpoint.read_run(run_dir)
    state_path = run_dir / checkpoint.STATE_FILE
    status = info.get("status")
    if status == "complete":
        if tidy:
            state_path.unlink(missing_ok=True)  # a kill between the final run.json and this file's removal
        raise KDError(f"run {run_dir} is already complete; nothing to resume")
    if not state_path.is_file():
        if status == "diverged":
            raise KDError(f"run {run_dir} diverged before its first checkpoint: nothing to resume; start a new run "
                          f"with a lower --lr (--out {run_dir} --overwrite)")
        raise KDError(f"run {run_dir} stopped before its first checkpoint ({checkpoint.STATE_FILE} missing): "
                      f"nothing to resume; start it again with --out {run_dir} --overwrite")
    state = checkpoint.load_state(state_path)
    if config.train.epochs < int(state["epoch"]):
        raise KDError(f"--epochs {config.train.epochs} is fewer than the {state['epoch']} epochs run {run_dir} "
                      "has done")
    return state


def _resume_command(config: RunConfig, run_dir: Path) -> str:
    return f"kd {config.command} --resume {run_dir}"


def _mark(run_dir: Path, status: str, **extra: Any) -> dict[str, Any]:
    """Set ``run.json``'s status (and ``extra``) after a run stopped; returns the run.json (empty if unreadable)."""
    try:
        info = checkpoint.read_run(run_dir)
        info.update(status=status, **extra)
        checkpoint.write_json(run_dir / checkpoint.RUN_FILE, info)
    except KDError:
        return {}
    return info


def _saved_position(run_dir: Path) -> str:
    """`` (epoch E step S)`` of the resume state on disk (run.json may lag it by one write)."""
    try:
        state = checkpoint.load_state(run_dir / checkpoint.STATE_FILE)
        return f" (epoch {int(state['epoch'])} step {int(state['step'])})"
    except (KDError, KeyError, ValueError):
        return ""


def _stopped(err: BaseException, claim: checkpoint.Claim | None, run_dir: Path, config: RunConfig,
             world: World) -> None:
    """What a run that ends early leaves on disk, and the one line that says so (raised in place of ``err``)."""
    if not world.is_main or claim is None:
        if isinstance(err, Interrupted):  # rank 0 saved the job's state and says where
            raise Interrupted(f"interrupted; rank 0 saved the run. Resume with: {_resume_command(config, run_dir)}",
                              err.exit_code) from None
        return
    if isinstance(err, Interrupted):  # the first Ctrl-C or SIGTERM: the engine saved the state
        raise Interrupted(f"{err}. Resume with: {_resume_command(config, run_dir)}", err.exit_code) from None
    if isinstance(err, Aborted):  # a second signal, or one outside the loop
        name = signal.Signals(err.signum).name
        if claim.complete():  # it came after the run was written whole
            raise Interrupted(f"{name} after the run was complete; it is in {run_dir}", err.exit_code) from None
        if claim.resumable():
            where = _saved_position(run_dir)
            _mark(run_dir, "interrupted")
            raise Interrupted(f"aborted by {name}; the last saved state{where} is in {run_dir}. Resume with: "
                              f"{_resume_command(config, run_dir)}", err.exit_code) from None
        claim.abandon()
        raise Interrupted(f"aborted by {name} before the first checkpoint; nothing was kept", err.exit_code) from None
    if isinstance(err, Diverged):
        _mark(run_dir, "diverged", diverged=str(err))
        if claim.resumable():
            raise Diverged(f"{err}. The last finite checkpoint{_saved_position(run_dir)} is kept: resume it "
                           f"with a lower rate: {_resume_command(config, run_dir)} --lr "
                           f"{config.optim.lr / 10:g}") from None
        raise Diverged(f"{err}, before the first checkpoint. Start again with a lower --lr (below "
                       f"{config.optim.lr:g}; --out {run_dir} --overwrite)") from None
    if isinstance(err, distributed.RankFailure):
        if claim.resumable():
            raise distributed.RankFailure(f"{err}; the last checkpoint is intact: {_resume_command(config, run_dir)}"
                                          ) from None
        claim.abandon()
        return
    claim.abandon()  # bad input found late, a crash: keeps a run that saved resumable state


def _train_built(
    built: Built, run_dir: Path, resume_state: dict[str, Any] | None, info_json: dict[str, Any] | None,
    changed: dict[str, list[Any]], argv: list[str] | None, after_step: Callable[[Method, int], None] | None,
) -> dict[str, Any]:
    config, world, cls = built.config, built.world, built.method_cls
    seed_everything(config.train.seed, built.device)
    train_loader = _train_loader(built)
    method = cls(built.context(len(train_loader) if train_loader is not None else 0), built.params)
    sync_bn = world.distributed and cls.data_parallel and distributed.sync_batchnorm_requested()
    if sync_bn:
        distributed.convert_sync_batchnorm(method, built.device)
    # before prepare(), which may synthesise for minutes: a data-free method's steps are known only after it
    progress.log(start_line(built, len(train_loader) if train_loader is not None else None,
                            str(run_dir) if resume_state is not None else None))
    method.prepare()

    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    started = info_json.get("started", now) if info_json else now
    resumes = list(info_json.get("resumes", [])) if info_json else []
    if resume_state is not None:
        resumes.append({"at": now, "epoch": int(resume_state["epoch"]), "step": int(resume_state["step"]),
                        **({"changed": changed} if changed else {})})
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
            **({"resumes": resumes} if resumes else {}),
            **({"shots": built.shots} if built.shots is not None else {}),
        }

    writer = RunWriter(run_dir if world.is_main else None, describe)
    position = resume_state or {"epoch": 0, "step": 0}
    # run.json from the start: a run killed before its first checkpoint still says what it was
    writer.run_json({"status": "running", "epoch": int(position["epoch"]), "step": int(position["step"])})
    result = fit(method, config, train_loader, built.val_set, built.test_set, built.info, built.device, writer,
                 resume=resume_state, after_step=after_step, allow_graphs=not sync_bn)
    return _finish_run(method, built, result, writer, run_dir)


def start_line(built: Built, steps: int | None, resume: str | None = None) -> str:
    """What this run will do, as resolved, in one line: models, data and splits, schedule, and what resolution
    changed beyond the layers the user gave (``config.adjusted``)."""
    config, info = built.config, built.info
    optim, train_cfg = config.optim, config.train
    models = "+".join(config.models) if config.models else config.model
    if config.model_args:
        models += "(" + ", ".join(f"{k}={v}" for k, v in config.model_args.items()) + ")"
    teacher = f" from teacher {built.teacher_meta['run']} ({built.teacher_meta['spec']['arch']})" \
        if built.teacher_meta else ""
    if optim.optimizer == "sgd":
        nesterov = "Nesterov " if optim.nesterov and optim.momentum > 0 else ""
        rule = f"sgd lr {optim.lr:g} ({nesterov}momentum {optim.momentum:g}, weight decay {optim.weight_decay:g})"
    else:
        rule = f"{optim.optimizer} lr {optim.lr:g} (weight decay {optim.weight_decay:g})"
    if optim.schedule == "step":
        schedule = f"×{optim.gamma:g} at epochs {','.join(f'{m:g}' for m in optim.milestones) or 'none'}"
    else:
        schedule = f"{optim.schedule} schedule"
    warmup = f"{optim.warmup_epochs:g}-epoch warm-up" if optim.warmup_epochs > 0 else "no warm-up"
    if built.train_set is None:
        split = "no training data read (data-free)"
    elif built.shots is not None:
        split = (f"--shots {built.shots['per_class']}: {built.shots['count']} training images (seeded), no validation "
                 "split, the last epoch is reported")
    elif built.val_set is None:
        split = (f"no validation split (--val-fraction 0): {len(built.train_set)} train images, nothing selected, "
                 "the last epoch is reported")
    else:
        split = (f"validation {config.data.val_fraction:g} of train ({len(built.val_set)} images, "
                 f"{len(built.train_set)} left to train)")
    adjusted = "; adjusted: " + "; ".join(f"{k} {v}" for k, v in config.adjusted.items()) if config.adjusted else ""
    head = f"resuming {resume}: " if resume else ""
    return (f"{head}{config.command} {config.method} (preset {config.preset}): {models} on {info.name}{teacher} · "
            f"{train_cfg.epochs} epochs{f' × {steps} steps' if steps else ''}, batch {train_cfg.batch_size} · {rule}, "
            f"{schedule}, "
            f"{warmup} · {split}{adjusted}")


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
    """Write the finished run. ``run.json`` says ``complete`` only once everything else is on disk, and the
    resume state goes last: a kill at any point before leaves a run ``--resume`` finishes the same way."""
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
        plot_curves(result.history, run_dir / checkpoint.CURVES_FILE)
        if built.method_cls.produces_teacher:
            primary = writer.describe()["primary"]
            final.update(_record_after_training(run_dir, primary, method.export_models()[primary], built.dataset,
                                                built.device))
        writer.run_json(final)
        (run_dir / checkpoint.STATE_FILE).unlink(missing_ok=True)
    return {**writer.describe(), **final, "run_dir": str(run_dir)}


# ---------------------------------------------------------------------------------------------
# What methods record from a teacher's training data


def _statistics_of(run_dir: Path, role: str, model: nn.Module, train_set: ImageSet, info: DatasetInfo,
                   device: torch.device, variant: str = "") -> dict[str, Any]:
    """Every method's :meth:`~kdcli.methods.base.Method.record_teacher_statistics`: the entries for ``run.json``;
    a method whose :attr:`~kdcli.methods.base.Method.teacher_needs` this model does not meet is skipped."""
    entries: dict[str, Any] = {}
    offers = model_provides(model)
    with torch.no_grad():
        for entry in METHODS:
            if not entry.builder.teacher_needs <= offers:
                continue  # e.g. Lopes et al.'s per-stage statistics of a model without stages
            entries.update(entry.builder.record_teacher_statistics(run_dir, role, model, train_set, info, device,
                                                                   variant))
    return entries


def _record_after_training(run_dir: Path, role: str, model: nn.Module, dataset: Dataset,
                           device: torch.device) -> dict[str, Any]:
    """A new teacher's statistics, while its training data is at hand. A failure never loses the teacher:
    it is a warning with the command that retries it."""
    try:
        full_train = dataset.load("train")
        return _statistics_of(run_dir, role, model.to(device).eval(), full_train, dataset.info, device)
    except KDError as err:
        progress.console.log(
            f"[yellow]teacher statistics not recorded ({err}); add them later with: kd record-metadata --teacher {run_dir}"
        )
        return {}


def record_statistics(run_ref: str, device: str = "auto", data_dir: str | None = None,
                      variant: str = "") -> dict[str, Any]:
    """``kd record-metadata``: read a finished teacher run's training split once and record what methods need
    (``variant``: which statistics, e.g. Lopes et al.'s ``pooled`` or ``full``; empty = each method's default).

    An older run is upgraded in place: the new entries are added to its ``run.json`` (replacing only the
    keys of the same name, e.g. ``metadata_full``); every other key and file is kept."""
    run_dir, role, info_json = checkpoint.resolve_role(run_ref)
    if info_json.get("status") != "complete":
        raise KDError(f"run {run_ref} is not complete; finish it (--resume) before recording metadata")
    dev = select_device(device)
    setup_device(dev)
    model, _ = checkpoint.load_run_model(run_ref, dev)
    stored = info_json.get("config", {}).get("data", {})
    dataset = get_dataset(info_json["dataset"]["name"], data_dir or stored.get("data_dir"),
                          stored.get("image_size", 0))  # the size the teacher was trained at
    claim = checkpoint.claim_for_resume(run_dir)  # no other writer while run.json is updated
    try:
        entries = _statistics_of(run_dir, role, model, dataset.load("train"), dataset.info, dev, variant)
        if entries:
            current = checkpoint.read_run(run_dir)
            current.update(entries)
            checkpoint.write_json(run_dir / checkpoint.RUN_FILE, current)
    finally:
        claim.release()
    return entries


# ---------------------------------------------------------------------------------------------
# kd import-teacher

#: The role an imported model takes in its run (what ``--teacher RUN`` picks).
IMPORTED_ROLE = "teacher"


def import_teacher(
    config: RunConfig,
    weights: str | Path,
    *,
    allow_pickle: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Wrap an external checkpoint of ``config.model`` into a teacher run; returns its ``run.json`` content.

    The model is built for ``config.data.dataset`` (with ``config.model_args``), the weights loaded strictly
    (:mod:`kdcli.weights`: safetensors, or a pickled state dict only with ``allow_pickle``), scored on the
    test split, and written as ``teacher.safetensors`` with a ``run.json`` that records where the weights
    came from. The statistics data-free methods need are recorded when the training split is available.
    From then on the run is a teacher like any other (``--teacher RUN``, ``kd evaluate RUN``).
    """
    validate(config)
    with progress.silenced(quiet):
        device = select_device(config.train.device)
        setup_device(device)
        check_model_name(config.model, config.model_args)
        state, source = weights_module.read_state_dict(weights, allow_pickle)
        dataset = get_dataset(config.data.dataset, config.data.data_dir, config.data.image_size)
        info = dataset.info
        seed_everything(config.train.seed, device)
        model = create_model(config.model, info.channels, info.image_size, info.num_classes, **config.model_args)
        weights_module.load_into(model, state, weights, config.model)
        model.to(device).eval()
        test_set = dataset.load("test")
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        dtype = resolve_precision(config.train.precision, device)
        with Timer(device) as timer:
            test = evaluate_models({IMPORTED_ROLE: model}, test_set, info, device, config.train.eval_batch_size, dtype)
        progress.log(f"imported {config.model} from {weights} ({source['format']}): test top-1 "
                     f"{100 * test[IMPORTED_ROLE]['top1']:.2f}% on {info.name}")
        claim = checkpoint.claim_run_dir(config.out, default_run_name(config), overwrite=overwrite)
        run_dir, role = claim.path, IMPORTED_ROLE
        final = {
            "kd_version": __version__,
            "command": config.command,
            "argv": argv or sys.argv,
            "method": config.method,
            "params": {},
            "primary": role,
            "dataset": info.to_dict(),
            "config": config.to_dict(),
            "seed": config.train.seed,
            "device": str(device),
            "device_name": device_name(device),
            "world_size": 1,
            "versions": versions(),
            "roles": {role: {"file": f"{role}.safetensors", "arch": model.spec.arch, "spec": model.spec.to_dict(),
                             "params": sum(p.numel() for p in model.parameters())}},
            "teacher": None,
            "imported": source,
            "started": started,
            "status": "complete",
            "metrics": {"test": test, "val": {}},
            "history": [],
            "wall_time_s": round(timer.seconds, 3),
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            claim.clear()  # --overwrite: the previous run goes only now, once this one is known to start
            checkpoint.save_model(run_dir / f"{role}.safetensors", model, role, info.to_dict())
            checkpoint.write_json(run_dir / checkpoint.RUN_FILE, {**final, "status": "running"})
            final.update(_record_after_training(run_dir, role, model, dataset, device))
            checkpoint.write_json(run_dir / checkpoint.RUN_FILE, final)  # complete only once everything is there
        except BaseException:
            claim.abandon()
            raise
        finally:
            claim.release()
    return {**final, "run_dir": str(run_dir)}


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
    with progress.silenced(quiet), stop_signals():
        built = build(config, World(), values)
        seed_everything(config.train.seed, built.device)
        method = cls(built.context(0), built.params)
        result: dict[str, Any] = {}
        if cls.synthesis == "generator":
            method.prepare()
            try:
                fitted = fit(method, built.config, None, None, built.test_set, built.info, built.device,
                             RunWriter(None))
            except Interrupted as err:
                raise Interrupted(f"{err}: kd synthesize does not resume, and nothing was written to {out}",
                                  err.exit_code) from None
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
