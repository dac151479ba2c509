"""kd from Python, with the CLI's vocabulary; every ``kd`` command is a thin layer over these functions.

::

    from kdcli import api

    teacher = api.train_teacher(dataset="digits", model="resnet20", epochs=5)
    student = api.distill(teacher=teacher, model="lenet5-half", epochs=10)
    rows = api.evaluate([teacher, student])      # one dict per model: top1, top5, params, agreement...
    net = api.load(student)                      # the trained nn.Module, in eval mode

Keyword options are the CLI's flags with underscores (``batch_size``, ``val_fraction``, ``model_args``,
``nesterov``...) plus the method's hyperparameters by name (``temperature``, ``peers``...) or in
``params={...}`` (``--param``). ``preset``, ``config`` (a TOML file), ``resume``, ``overwrite``, ``out``
and ``allow_modules`` (``--allow-module``) work as on the CLI, and settings resolve the same way
(defaults < preset < TOML < options), so the same call and the same seed give the numbers the CLI gives.

Where the CLI takes a name, Python may pass the object:

* ``model=`` / ``models=``: an ``nn.Module`` instance, class or factory function, recorded by its import
  path (``module:Name``): kd rebuilds it by calling the class or function with the dataset's geometry
  and ``model_args`` (so it must be importable, i.e. defined at module level), and a given instance's
  weights are the starting weights of the models built from it in that call;
* ``dataset=``: a ``torch.utils.data.Dataset`` of ``(image, label)`` pairs, or a ``(train, test)`` pair
  of them (see :mod:`kdcli.data.memory`);
* ``teacher=``, and runs anywhere: a :class:`Run` or a run directory (``"RUN"`` or ``"RUN:role"``).

Progress bars are off by default where rich sees no terminal (a notebook, a log); ``quiet=False`` turns
them back on. Results are plain: a :class:`Run` (its path and its ``run.json`` content), lists of
dicts, ``nn.Module`` objects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from torch import nn

from kdcli import budget, checkpoint, progress
from kdcli import evaluate as scoring
from kdcli import run as orchestrator
from kdcli.config import DataConfig, OptimConfig, ResumeChanges, RunConfig, TrainConfig, apply_overrides
from kdcli.data import memory
from kdcli.errors import KDError, did_you_mean
from kdcli.models import external
from kdcli.presets import method_class, methods_of, resolve_config, synthesizers

__all__ = [
    "Run",
    "churn",
    "config",
    "distill",
    "distill_datafree",
    "distill_online",
    "evaluate",
    "import_teacher",
    "load",
    "record_metadata",
    "synthesize",
    "train_teacher",
]

#: Config keys an option may set (``RunConfig`` and its sections, flat); the rest are the method's.
CONFIG_KEYS = (
    {f.name for f in dataclasses.fields(RunConfig)} - {"data", "optim", "train", "method_params", "adjusted",
                                                       "command", "method", "preset"}
) | {f.name for cls in (DataConfig, OptimConfig, TrainConfig) for f in dataclasses.fields(cls)}


#: Samples ``synthesize`` makes when neither ``n`` nor the preset says.
DEFAULT_SYNTHESIS_COUNT = 1000


@dataclass(frozen=True)
class Run:
    """A finished run: its directory and its ``run.json`` content (``info``). Usable wherever a run path is."""

    path: Path
    info: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        """``{"test": {role: {"top1", "top5"}}, "val": ..., "agreement": ...}`` as ``run.json`` holds them."""
        return self.info.get("metrics", {})

    @property
    def top1(self) -> dict[str, float]:
        """Test top-1 accuracy of each role, in [0, 1]."""
        return {role: scores["top1"] for role, scores in self.metrics.get("test", {}).items()}

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


def _ref(run: Run | str | os.PathLike[str]) -> str:
    return str(run.path if isinstance(run, Run) else os.fspath(run))


def _quiet(quiet: bool | None) -> bool:
    """``None``: quiet where rich sees no terminal (a notebook, a captured stream), so no bar floods a cell."""
    return not progress.console.is_terminal if quiet is None else quiet


def _record(function: str, options: dict[str, Any]) -> list[str]:
    """What ``run.json`` keeps as ``argv`` for a Python call."""
    shown = [f"{k}={v!r}" if isinstance(v, (str, int, float, bool, list, dict, type(None))) else
             f"{k}=<{type(v).__name__}>" for k, v in options.items()]
    return [f"kdcli.api.{function}", *shown]


# ---------------------------------------------------------------------------------------------
# Python objects where the CLI takes names


def model_name(model: Any) -> str:
    """The import path that names ``model`` (a name stays a name; a class, function or instance its path)."""
    if isinstance(model, str):
        return model
    target = type(model) if isinstance(model, nn.Module) else model
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    if not callable(target) or not module or not qualname:
        raise KDError(f"model must be a name, an nn.Module, a class or a factory function (got {type(model).__name__})")
    if "<locals>" in qualname or "<lambda>" in qualname:
        raise KDError(f"{qualname} is defined inside a function or is a lambda: kd records a model by import path, so "
                      "define its class or factory at module level")
    return f"{module}:{qualname}"


@contextlib.contextmanager
def _python_objects(options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``options`` with models and datasets given as objects turned into names, and, while the block runs, a
    given ``nn.Module`` instance's weights as the starting weights of the models built from it."""
    options = dict(options)
    weights: list[tuple[str, nn.Module]] = []
    for key in ("model", "teacher_model"):
        if key in options and options[key] is not None and not isinstance(options[key], str):
            if isinstance(options[key], nn.Module):
                weights.append((model_name(options[key]), options[key]))
            options[key] = model_name(options[key])
    if options.get("models") is not None:
        names = []
        for item in options["models"]:
            if isinstance(item, nn.Module):
                weights.append((model_name(item), item))
            names.append(model_name(item))
        options["models"] = names
    if options.get("dataset") is not None and not isinstance(options["dataset"], str):
        options["dataset"] = memory.register(options["dataset"])
    if options.get("teacher") is not None:
        options["teacher"] = _ref(options["teacher"])
    external.allow_models([options.get("model"), *(options.get("models") or []), options.get("teacher_model")])
    args = dict(options.get("model_args") or {})
    if len({name for name, _ in weights}) < len({id(module) for _, module in weights}):
        raise KDError("two nn.Module instances of one class would start every model of that class from one of "
                      "them; pass the class (kd initialises each model) or one instance")
    with contextlib.ExitStack() as stack:
        for name, module in weights:
            state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            stack.enter_context(external.starting_weights(name, args, state))
        yield options


def _split(command: str, method: str, options: dict[str, Any], params: dict[str, Any] | None
           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Options into config flags and the method's hyperparameters; an unknown key is a one-line error."""
    cls = method_class(method)
    fields = {f.name for f in dataclasses.fields(cls.Params)} if dataclasses.is_dataclass(cls.Params) else set()
    flags: dict[str, Any] = {}
    method_flags: dict[str, Any] = dict(params or {})
    for key, value in options.items():
        if isinstance(value, (os.PathLike, Run)) and key in ("out", "data_dir", "teacher", "synthetic"):
            value = _ref(value)  # a path given as a Path (or a Run) is the string the config holds
        if key in CONFIG_KEYS:
            flags[key] = value
        elif key in fields:
            method_flags[key] = value
        else:
            known = sorted(CONFIG_KEYS | fields)
            raise KDError(f"{command} --method {method} has no option {key!r}.{did_you_mean(key, known)}")
    return flags, method_flags


def _train(command: str, method: str | None, function: str, *, preset: str | None, config: str | Path | None,
           resume: str | os.PathLike[str] | Run | None, overwrite: bool, quiet: bool | None,
           allow_modules: Sequence[str], params: dict[str, Any] | None, argv: list[str] | None,
           options: dict[str, Any], check: Callable[[RunConfig], None] | None = None) -> Run:
    external.allow_modules(allow_modules)
    param_text = options.pop("param_text", None)  # the CLI's --param KEY=VALUE pairs, typed by the method
    given_method = method
    method = method or methods_of(command)[0]
    record = argv or _record(function, {"method": method, "preset": preset, **options})
    with _python_objects(options) as named:
        run_config = None
        changes = None
        if resume is None:
            flags, method_flags = _split(command, method, named, params)
            run_config = resolve_config(command, method, preset=preset, config_file=config, flags=flags,
                                        method_flags=method_flags, param_text=param_text)
            if check is not None:
                check(run_config)  # before anything is trained or written
        else:
            # what this call asks of the resumed run: checked against its stored config (kdcli.presets.resolve_resume)
            flags, method_flags = _split(command, method, {k: v for k, v in named.items() if v is not None}, params)
            changes = ResumeChanges(command, method=given_method, preset=preset,
                                    config_file=None if config is None else str(config), flags=flags,
                                    method_flags=method_flags, param_text=dict(param_text or {}))
        result = orchestrator.train(run_config, resume=None if resume is None else _ref(resume), changes=changes,
                                    overwrite=overwrite, quiet=_quiet(quiet), argv=record)
    return Run(Path(result["run_dir"]), result)


def config(command: str, method: str | None = None, *, preset: str | None = None, config: str | Path | None = None,
           allow_modules: Sequence[str] = (), params: dict[str, Any] | None = None, **options: Any) -> RunConfig:
    """The config ``kd <command>`` would run with these options, resolved as a training call resolves it
    (defaults < preset < ``config`` TOML < options) without training or writing anything: a dry run."""
    external.allow_modules(allow_modules)
    param_text = options.pop("param_text", None)
    method = method or methods_of(command)[0]
    with _python_objects(options) as named:
        flags, method_flags = _split(command, method, named, params)
        return resolve_config(command, method, preset=preset, config_file=config, flags=flags,
                              method_flags=method_flags, param_text=param_text)


# ---------------------------------------------------------------------------------------------
# The commands


def train_teacher(dataset: Any = None, model: Any = None, *, preset: str | None = None, config: str | Path | None = None,
                  resume: Any = None, overwrite: bool = False, quiet: bool | None = None,
                  allow_modules: Sequence[str] = (), params: dict[str, Any] | None = None,
                  argv: list[str] | None = None, **options: Any) -> Run:
    """``kd train-teacher``: supervised training of one model. Returns the finished :class:`Run`."""
    return _train("train-teacher", None, "train_teacher", preset=preset, config=config, resume=resume,
                  overwrite=overwrite, quiet=quiet, allow_modules=allow_modules, params=params, argv=argv,
                  options={"dataset": dataset, "model": model, **options})


def distill(teacher: Any = None, model: Any = None, *, preset: str | None = None, config: str | Path | None = None,
            resume: Any = None, overwrite: bool = False, quiet: bool | None = None, allow_modules: Sequence[str] = (),
            params: dict[str, Any] | None = None, argv: list[str] | None = None, **options: Any) -> Run:
    """``kd distill``: Hinton KD from ``teacher`` (a run) into ``model`` on the real training data."""
    return _train("distill", None, "distill", preset=preset, config=config, resume=resume, overwrite=overwrite,
                  quiet=quiet, allow_modules=allow_modules, params=params, argv=argv,
                  options={"teacher": teacher, "model": model, **options})


def distill_online(method: str | None = None, model: Any = None, *, models: Sequence[Any] | None = None,
                   preset: str | None = None, config: str | Path | None = None, resume: Any = None,
                   overwrite: bool = False, quiet: bool | None = None, allow_modules: Sequence[str] = (),
                   params: dict[str, Any] | None = None, argv: list[str] | None = None, baseline: Any = None,
                   **options: Any) -> Run:
    """``kd distill-online --method dml|cl|one|okddip|codistill|independent``: peers trained together.

    ``baseline`` (a run, e.g. ``independent`` under the same protocol) is refused unless it is complete and
    trained under the same budget (:mod:`kdcli.budget`): checked before training, and again afterwards
    with the run's resolved hyperparameters (a resumed run's, peers under torchrun)."""
    check = None
    if baseline is not None:
        reference = _ref(baseline)
        theirs = budget.run_budget(budget.complete_baseline(reference))

        def check(run_config: RunConfig) -> None:
            budget.refuse_other_budget(reference, budget.budget_of(run_config), theirs)

    run = _train("distill-online", method, "distill_online", preset=preset, config=config, resume=resume,
                 overwrite=overwrite, quiet=quiet, allow_modules=allow_modules, params=params, argv=argv,
                 options={"model": model, "models": None if models is None else list(models), **options},
                 check=check)
    if baseline is not None:
        budget.refuse_other_budget(reference, budget.run_budget(run.info), theirs,
                                   f"; this run itself is complete: {run.path}")
    return run


def distill_datafree(teacher: Any = None, method: str | None = None, model: Any = None, *,
                     preset: str | None = None, config: str | Path | None = None, resume: Any = None,
                     overwrite: bool = False, quiet: bool | None = None, allow_modules: Sequence[str] = (),
                     params: dict[str, Any] | None = None, argv: list[str] | None = None, **options: Any) -> Run:
    """``kd distill-datafree --method dafl|zskt|zskd|lopes|deepinversion|noise``: a student without the data."""
    return _train("distill-datafree", method, "distill_datafree", preset=preset, config=config, resume=resume,
                  overwrite=overwrite, quiet=quiet, allow_modules=allow_modules, params=params, argv=argv,
                  options={"teacher": teacher, "model": model, **options})


def synthesize(teacher: Any = None, method: str | None = None, n: int | None = None, out: str | Path | None = None, *,
               dtype: str | None = None, preset: str | None = None, config: str | Path | None = None,
               overwrite: bool = False, quiet: bool | None = None, allow_modules: Sequence[str] = (),
               params: dict[str, Any] | None = None, argv: list[str] | None = None,
               **options: Any) -> dict[str, Any]:
    """``kd synthesize``: a transfer set of ``n`` samples (default: the preset's, else 1000) from ``teacher``,
    written to ``out``. Returns the set's description (``out``, ``count``, ``teacher_agreement``...)."""
    external.allow_modules(allow_modules)
    param_text = options.pop("param_text", None)  # the CLI's --param KEY=VALUE pairs, typed by the method
    method = method or synthesizers()[0]
    record = argv or _record("synthesize", {"method": method, "n": n, **options})
    with _python_objects({"teacher": teacher, **options}) as named:
        flags, method_flags = _split("synthesize", method, named, params)
        run_config = resolve_config("synthesize", method, preset=preset, config_file=config, flags=flags,
                                    method_flags=method_flags, choices=synthesizers(), param_text=param_text)
        count = n if n is not None else int(run_config.method_params.get("n", DEFAULT_SYNTHESIS_COUNT))
        target = out or f"runs/synthetic-{run_config.method}-s{run_config.train.seed}"
        return orchestrator.synthesize(run_config, count, target, dtype=dtype, overwrite=overwrite, quiet=_quiet(quiet),
                                       argv=record)


def import_teacher(model: Any, weights: str | Path, dataset: Any = None, *, allow_pickle: bool = False,
                   overwrite: bool = False, quiet: bool | None = None, allow_modules: Sequence[str] = (),
                   argv: list[str] | None = None, **options: Any) -> Run:
    """``kd import-teacher``: wrap an external checkpoint of ``model`` into a teacher run (see
    :func:`kdcli.run.import_teacher`). Options: ``dataset``, ``data_dir``, ``image_size``, ``model_args``, ``out``,
    ``device``, ``precision``, ``seed``, ``eval_batch_size``."""
    external.allow_modules(allow_modules)
    record = argv or _record("import_teacher", {"model": model, "weights": str(weights), **options})
    with _python_objects({"model": model, "dataset": dataset, **options}) as named:
        unknown_keys = sorted(set(named) - CONFIG_KEYS)
        if unknown_keys:
            raise KDError(f"import-teacher has no option {unknown_keys[0]!r}")
        run_config = RunConfig(command="import-teacher", method="import", preset="")
        apply_overrides(run_config, named, "options")
        result = orchestrator.import_teacher(run_config, weights, allow_pickle=allow_pickle, overwrite=overwrite,
                                             quiet=_quiet(quiet), argv=record)
    return Run(Path(result["run_dir"]), result)


def record_metadata(teacher: Any, *, device: str = "auto", data_dir: str | None = None,
                    allow_modules: Sequence[str] = (), statistics: str = "") -> dict[str, Any]:
    """``kd record-metadata``: add the statistics data-free methods need to a teacher run; returns the
    entries added to its ``run.json``. ``statistics``: Lopes et al.'s ``pooled`` (default) or ``full``."""
    external.allow_modules(allow_modules)
    return orchestrator.record_statistics(_ref(teacher), device=device, data_dir=data_dir, variant=statistics)


def evaluate(runs: Sequence[Any] | Any, *, dataset: Any = None, data_dir: str | None = None, device: str = "auto",
             batch_size: int = 1024, latency: bool = False, allow_modules: Sequence[str] = ()) -> list[dict[str, Any]]:
    """``kd evaluate``: one dict per model of every run (``run``, ``role``, ``model``, ``top1``, ``top5``,
    ``params``, ``size_bytes``, ``cpu_latency_ms`` with ``latency=True``, ``agreement`` with the teacher)."""
    external.allow_modules(allow_modules)
    refs = [_ref(r) for r in (runs if isinstance(runs, (list, tuple)) else [runs])]
    name = _dataset_name(dataset)
    return scoring.evaluate_runs(refs, dataset=name, data_dir=data_dir, device=device, batch_size=batch_size,
                                 measure_latency=latency)


def churn(runs: Sequence[Any] | Any, *, dataset: Any = None, data_dir: str | None = None, device: str = "auto",
          batch_size: int = 1024, allow_modules: Sequence[str] = ()) -> list[dict[str, Any]]:
    """``kd evaluate --churn``: the share of test images each pair of models labels differently."""
    external.allow_modules(allow_modules)
    refs = [_ref(r) for r in (runs if isinstance(runs, (list, tuple)) else [runs])]
    return scoring.churn(refs, dataset=_dataset_name(dataset), data_dir=data_dir, device=device, batch_size=batch_size)


def load(run: Any, role: str | None = None, device: str = "cpu", allow_modules: Sequence[str] = ()) -> nn.Module:
    """The trained model ``role`` of ``run`` (default: its primary model), rebuilt from the run alone, in eval mode."""
    external.allow_modules(allow_modules)
    ref = _ref(run)
    model, _ = checkpoint.load_run_model(f"{ref}:{role}" if role else ref, device)
    return model


def _dataset_name(dataset: Any) -> str | None:
    if dataset is None or isinstance(dataset, str):
        return dataset
    return memory.register(dataset)
