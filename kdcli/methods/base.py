"""The method contract: the only place a paper's math lives. The engine owns the loop, the orchestrator the run.

A method is an ``nn.Module`` holding the models it trains (student, peers, branches, generator)
and, when it has one, a frozen teacher (always in eval mode, never trained, never saved in the
run's state). It is registered where it is defined, with :data:`METHODS`::

    @METHODS.register("dml", command="distill-online", help="Deep Mutual Learning, Zhang et al. 2018")
    class DML(Method): ...

Every hook the engine (:mod:`kdcli.engine`) or the orchestrator (:mod:`kdcli.run`) calls is declared
on :class:`Method` below with its default; nothing is looked up by name and nothing is written into a
method from outside. The order of calls in a run::

    params  = cls.resolve_params(cls.make_params(values), ctx)   # once; the method never changes them
    method  = cls(ctx, params); method.to(device); method.prepare()
    opts    = method.optimizers()                 # built once by configure_optimizers()
    method.prepare_distributed(opts)              # under torchrun only
    per epoch: method.on_epoch_start(epoch); per step: parts = method.training_step(batch, step)
               (then backward + step of every optimizer, unless manual_optimization)
    method.consolidate()                          # under torchrun, before evaluation and checkpoints
    method.eval_models(), method.export_models(), method.write_artifacts(run_dir)

``kd synthesize`` calls :meth:`Method.synthesize` (after training on the engine when ``synthesis``
is ``"generator"``); ``kd train-teacher`` and ``kd record-metadata`` call every method's
:meth:`Method.record_teacher_statistics` once the teacher exists.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, TypeVar

import torch
from torch import nn

from kdcli import distributed
from kdcli.config import OptimConfig, Range, RunConfig, WrongType, check_range, check_type
from kdcli.data.base import DatasetInfo, ImageSet
from kdcli.distributed import Shard, World
from kdcli.errors import KDError, did_you_mean
from kdcli.models import create_model, model_provides
from kdcli.registry import Registry

if TYPE_CHECKING:  # type only: the synthetic-set format is data code, imported by the methods that synthesise
    from kdcli.data.synthetic import SyntheticSet

#: Every method, by name; each method's file registers itself with ``@METHODS.register(...)``.
#: Entry extras: ``command`` (the CLI command that runs it).
METHODS: Registry = Registry("method")

M = TypeVar("M", bound=type)


def register_method(name: str, *, command: str, help: str) -> Callable[[M], M]:
    """Class decorator: register a :class:`Method` under ``name`` for the CLI ``command`` (sets ``cls.name``)."""

    def wrap(cls: M) -> M:
        cls.name = name  # type: ignore[attr-defined]
        return METHODS.register(name, help=help, command=command)(cls)

    return wrap


#: The preset a command uses when ``--preset`` is not given.
DEFAULT_PRESET = "quick"

#: A preset: per dataset name (or ``"*"`` for any other), the config overrides it applies (see :mod:`kdcli.presets`).
Preset = dict[str, dict[str, Any]]

#: The ``no_batchnorm`` rule of the supervised and online presets: networks without BatchNorm (LeNet,
#: MLP) diverge at the ResNet learning rate of 0.1 on MNIST, so unless the user chose a rate they get
#: at most 0.02 with a one-epoch warm-up.
GENTLE_WITHOUT_BATCHNORM: dict[str, float] = {"lr": 0.02, "warmup_epochs": 1.0}


#: What a method may need from a model beyond logits (:attr:`Method.model_needs`, :attr:`Method.teacher_needs`),
#: as :func:`kdcli.models.model_provides` names it: how the need reads, and how its absence does.
MODEL_NEEDS: dict[str, tuple[str, str]] = {
    "stages": ("a model split into stages (a kdcli.models.StagedNet: stem → stages → pool → classifier)",
               "is not one"),
    "groups": ("attention-map groups (the stage outputs of a kdcli.models.StagedNet's forward_features)",
               "has none"),
    "features": ("penultimate features (a kdcli.models.StagedNet's forward_features: its declared feature vector, "
                 "else its embedding)", "has none"),
    "batchnorm": ("BatchNorm layers (their running statistics are matched)", "has no BatchNorm layer"),
    "classifier": ("a final nn.Linear layer giving the logits (its weights give the class similarity)", "has none"),
}


def check_needs(method: str, needs: frozenset[str], role: str, name: str, model: nn.Module) -> None:
    """One line naming what ``method`` needs from ``model`` (called ``name``, the run's ``role``) and it lacks."""
    missing = [need for need in sorted(needs) if need not in model_provides(model)]
    if missing:
        wanted, lacking = MODEL_NEEDS[missing[0]]
        raise KDError(f"{method} needs {wanted}; the {role} {name} {lacking}")


@dataclass(frozen=True)
class MethodContext:
    """What a method may know when it is built.

    Attributes:
        steps_per_epoch: batches of training data per epoch (0 for a method that reads none: it
            says its own with :meth:`Method.steps_per_epoch`).
        teacher_meta: the teacher run's description (``run``, ``role``, ``spec``, ``run_info``).
    """

    config: RunConfig
    info: DatasetInfo
    device: torch.device
    steps_per_epoch: int
    teacher: nn.Module | None = None
    teacher_meta: dict[str, Any] | None = None
    world: World = field(default_factory=World)

    @property
    def epochs(self) -> int:
        return self.config.train.epochs

    def create_model(self, name: str | None = None) -> nn.Module:
        """A fresh model ``name`` (default ``--model``) for this dataset, with the run's ``--model-arg`` values."""
        info = self.info
        return create_model(name or self.config.model, info.channels, info.image_size, info.num_classes,
                            **self.config.model_args)


@dataclass
class NoParams:
    """This method has no hyperparameters of its own."""


Batch = tuple[torch.Tensor, torch.Tensor] | None


class Method(nn.Module):
    """Base class for every training method (supervised, KD, online, data-free).

    Subclasses set ``name`` (by registering), ``Params`` (a dataclass of hyperparameters with paper
    defaults, documented in its docstring), ``presets`` and implement :meth:`training_step` and
    :meth:`eval_models`. Everything else has a default that fits a method training one model on
    the labelled training data.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    #: The range of each numeric hyperparameter (``positive()``, ``between(0, 1)``...), checked with its type
    #: whatever set it (preset, TOML, flag, ``--param``); a list is checked element by element.
    param_ranges: ClassVar[dict[str, Range]] = {}
    #: The values each text hyperparameter may take (``{"beta_mode": ("paper", "official")}``), checked with
    #: the ranges.
    param_choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: ``{preset name: {dataset name or "*": config overrides}}``; ``quick`` is the default preset.
    #: Overrides are flat config keys (``epochs``, ``lr``, ``model``...) plus ``method`` for the
    #: method's own hyperparameters. A ``paper`` preset's docstring names the table it reproduces.
    presets: ClassVar[dict[str, Preset]] = {}
    #: ``{preset name: text}`` for ``kd list methods NAME``: for each paper-like preset, the table and number it
    #: reproduces and which source (paper text or official code) each of its details follows.
    preset_notes: ClassVar[dict[str, str]] = {}
    #: False: ``training_step`` receives ``batch=None`` and the training split is never loaded (data-free).
    needs_data: ClassVar[bool] = True
    #: What the method needs, beyond logits, from the models it trains (``--model``, ``--models``) and from
    #: its teacher: names of :data:`MODEL_NEEDS`. Checked once, before anything is written (see :meth:`needs`).
    model_needs: ClassVar[frozenset[str]] = frozenset()
    teacher_needs: ClassVar[frozenset[str]] = frozenset()
    #: True: ``--teacher RUN`` is required and the teacher is frozen in ``self.teacher``.
    needs_teacher: ClassVar[bool] = False
    #: The role ``--teacher RUN`` and ``kd evaluate`` pick by default.
    primary: ClassVar[str] = "student"
    #: True: this method's run is a teacher (``kd train-teacher``): once it completes, the orchestrator
    #: calls every method's :meth:`record_teacher_statistics` while the training split is at hand.
    produces_teacher: ClassVar[bool] = False
    #: Under torchrun: True = the same models on every rank, each reading its slice of the batch,
    #: gradients averaged (the defaults of :meth:`prepare_distributed` and :meth:`consolidate`).
    #: False = ranks hold different models (codistillation) and the method overrides both hooks.
    data_parallel: ClassVar[bool] = True
    #: What ``kd synthesize`` can do with this method: ``"none"``; ``"inputs"``, it optimises inputs
    #: against the teacher (:meth:`synthesize` needs no training); ``"generator"``, it trains a
    #: generator on the engine first, then samples it.
    synthesis: ClassVar[str] = "none"
    #: Storage of a synthesised set: ``uint8`` pixels or ``float16`` (unclipped generator output).
    synthesis_dtype: ClassVar[str] = "uint8"
    #: What ``--precision auto`` means for this method: ``"auto"`` (bf16 autocast on CUDA, fp32 elsewhere) or
    #: ``"fp32"`` (fp32 everywhere: for a method whose result no measured row shows bf16 to leave unchanged).
    #: An explicit ``--precision fp32|bf16`` always wins; read it through :meth:`precision`.
    auto_precision: ClassVar[str] = "auto"

    def __init__(self, ctx: MethodContext, params: Any) -> None:
        super().__init__()
        self.ctx = ctx
        self.params = params
        self.teacher: nn.Module | None = None
        if ctx.teacher is not None:
            self.teacher = ctx.teacher
            self.teacher.eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self._optimizers: list[torch.optim.Optimizer] | None = None
        self.epoch = 0

    # -- hyperparameters ---------------------------------------------------------------------------
    @classmethod
    def make_params(cls, values: dict[str, Any]) -> Any:
        """The ``Params`` dataclass from typed values, checked against :attr:`param_ranges` (see :func:`make_params`)."""
        return make_params(cls.Params, values, cls.name, cls.param_ranges, cls.param_choices)

    @classmethod
    def resolve_params(cls, params: Any, ctx: MethodContext) -> Any:
        """Fill what depends on the run (peers from ``--models``, a ramp from ``--epochs``) and check
        ranges; called once, before the method is built, and recorded in ``run.json``. Default: as given."""
        return params

    @classmethod
    def budget_terms(cls, params: Any, config: RunConfig) -> dict[str, Any]:
        """This method's part of a run's training budget, beside the config's data, schedule, optimiser and
        precision (:mod:`kdcli.budget`): what a baseline must match to be compared with it. ``params`` may be
        unresolved (the user's values). Default: ``{"members": 1}``, one model trained."""
        return {"members": 1}

    @classmethod
    def precision(cls, requested: str) -> str:
        """The ``--precision`` a run of this method uses when ``requested`` was asked: ``auto`` becomes
        :attr:`auto_precision`, anything else stays. The orchestrator records the result in the run's config
        (:func:`kdcli.run.build`), so the engine, ``kd synthesize`` and the budget all read it."""
        return cls.auto_precision if requested == "auto" else requested

    @classmethod
    def needs(cls, params: Any) -> dict[str, frozenset[str]]:
        """What this run of the method needs from each model, by role: ``"model"`` (every model built from
        ``--model``/``--models``) and ``"teacher"``; checked by the orchestrator before anything is read or
        written (:func:`kdcli.run.check_method_needs`). Default: :attr:`model_needs` and :attr:`teacher_needs`
        (the class attribute alone decides whose :meth:`record_teacher_statistics` a new teacher gets)."""
        return {"model": cls.model_needs, "teacher": cls.teacher_needs}

    @classmethod
    def data_shard(cls, params: Any, config: RunConfig, world: World) -> Shard:
        """How this process reads the training data: by default every rank takes its slice of each global batch."""
        return distributed.data_parallel_shard(config.train.batch_size, world)

    # -- before training -----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Work done once, after the method is on its device and before the first step (a data-free
        method synthesises its transfer set here). Default: nothing."""

    def steps_per_epoch(self) -> int | None:
        """Steps per epoch of a method that reads no training data (``needs_data = False``)."""
        return None

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Build the optimizers (called once, by :meth:`optimizers`): by default one over every trainable parameter."""
        return [build_optimizer(self.ctx.config.optim, self.trainable_parameters())]

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """This method's optimizers, built on first use by :meth:`configure_optimizers`."""
        if self._optimizers is None:
            self._optimizers = self.configure_optimizers()
        return self._optimizers

    def scheduled_optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers whose learning rate follows the run's schedule (warm-up, cosine, steps). Default: all."""
        return self.optimizers()

    @property
    def manual_optimization(self) -> bool:
        """True: :meth:`training_step` zeroes, back-propagates and steps its own optimizers (adversarial or
        alternating schedules). False (default): the engine back-propagates ``"loss"`` and steps them all."""
        return False

    def prepare_distributed(self, optimizers: list[torch.optim.Optimizer]) -> None:
        """Under torchrun, before the first step. Default (data-parallel): rank 0's weights everywhere,
        gradients averaged over the ranks before every optimizer step."""
        distributed.broadcast_tensors([t for t in self.trained_state().values() if t.is_floating_point()], src=0)
        distributed.install_gradient_sync(optimizers)

    def consolidate(self) -> None:
        """Under torchrun, at an epoch end and before checkpoints: make rank 0 hold the job's whole state.
        Default (data-parallel): average the BatchNorm statistics (each rank saw its own slice)."""
        distributed.average_buffers(self)

    # -- training ------------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of every epoch (also the first epoch of a resumed run)."""
        self.epoch = epoch

    def training_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """One step on ``batch`` (``None`` when ``needs_data`` is False); ``step`` counts from 0 over the run.

        Returns ``"loss"`` (what the engine back-propagates) plus named 0-d parts to log.
        """
        raise NotImplementedError

    def graphable_models(self) -> dict[str, nn.Module]:
        """Trained models called exactly once per step on the batch images (CUDA-graph candidates)."""
        return {}

    def graphable_step(self) -> bool:
        """True: :meth:`training_step` computes only from the batch and the tensors the method holds (no
        Python value that changes between steps, no host sync, every logged part a device tensor), so on
        CUDA the engine may capture the whole step (batch gather and augmentation, forward, loss,
        backward, optimizer) as one CUDA graph and replay it. Default False: only
        :meth:`graphable_models` are graphed."""
        return False

    def fusion(self) -> dict[str, str]:
        """What runs fused under ``--fuse`` (models of one architecture as one network), for ``run.json``:
        ``{group: description}`` such as ``{"peers": "4 × resnet32"}``. Default: nothing."""
        return {}

    def train(self, mode: bool = True) -> "Method":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # a teacher's BatchNorm statistics never move
        return self

    # -- results ----------------------------------------------------------------------------------------
    def eval_models(self) -> dict[str, nn.Module]:
        """Models to score each epoch and at the end, by role (``student``, ``peer0``, ``ensemble``...)."""
        raise NotImplementedError

    def export_models(self) -> dict[str, nn.Module]:
        """Models written to the run as ``<role>.safetensors``: by default every eval model with a ``spec``."""
        return {role: m for role, m in self.eval_models().items() if hasattr(m, "spec")}

    @classmethod
    def assemble_eval(cls, models: dict[str, nn.Module], params: Any) -> dict[str, nn.Module]:
        """``kd evaluate``: rebuild the evaluation rows from the saved models (add ensembles and the like)."""
        return models

    def write_artifacts(self, run_dir: Path) -> dict[str, Any]:
        """Write by-products into the finished run (a generator, a transfer set, ``samples.png``);
        returns what ``run.json`` lists under ``artifacts``. Default: nothing."""
        return {}

    # -- kd synthesize -------------------------------------------------------------------------------------
    def synthesize(self, n: int) -> SyntheticSet:
        """``n`` synthetic samples for ``kd synthesize`` (see ``synthesis``)."""
        raise KDError(f"method {self.name!r} does not synthesise data")

    def synthesis_files(self, folder: Path) -> dict[str, str]:
        """Extra files a synthesised set keeps (a generator), written into ``folder``; returns ``{name: file}``."""
        return {}

    # -- teachers ------------------------------------------------------------------------------------------
    @classmethod
    def record_teacher_statistics(
        cls, run_dir: Path, role: str, teacher: nn.Module, train_set: ImageSet, info: DatasetInfo,
        device: torch.device, variant: str = "",
    ) -> dict[str, Any]:
        """Called once a teacher run exists and its training split is at hand (``kd train-teacher``,
        ``kd record-metadata``): record what this method will later need from the data (Lopes et al.'s
        activation statistics). ``variant`` names which statistics to record (``kd record-metadata
        --statistics``; empty = the method's default). Returns entries to add to the teacher's
        ``run.json``; an entry replaces only the key of the same name. Default: none."""
        return {}

    # -- state -----------------------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        teacher_ids = {id(p) for p in self.teacher.parameters()} if self.teacher is not None else set()
        return [p for p in self.parameters() if p.requires_grad and id(p) not in teacher_ids]

    def trained_state(self) -> dict[str, torch.Tensor]:
        """State dict without the frozen teacher (it lives in its own run)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise KDError(f"resume state does not match this method (missing {missing[:3]}, unexpected {unexpected[:3]})")


def build_optimizer(cfg: OptimConfig, params: list[nn.Parameter], lr: float | None = None) -> torch.optim.Optimizer:
    """The run's optimiser (SGD with momentum/Nesterov, or Adam) over ``params``, one step for all tensors.

    On CUDA it is torch's fused implementation (one kernel for all the tensors; with fused peers,
    for every peer) with its learning rate a device tensor, set in place by the engine
    (:func:`kdcli.engine.set_lr`) so a captured step reads the current rate, and Adam capturable:
    the whole training step can be one CUDA graph. On the CPU it is the multi-tensor (``foreach``)
    implementation: bit-for-bit the numbers of the per-tensor loop, and unlike the CPU fused kernel
    independent of the thread count.
    """
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer == "adam":
        return adam(params, lr, cfg.weight_decay)
    return torch.optim.SGD(
        params, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay, **_step_options(params, lr),
    )


def adam(params: list[nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam over ``params`` (a generator's, or the run's), implemented as :func:`build_optimizer` says."""
    options = _step_options(params, lr)
    if options.get("fused"):
        options["capturable"] = True
    return torch.optim.Adam(params, weight_decay=weight_decay, **options)


def _step_options(params: list[nn.Parameter], lr: float) -> dict[str, Any]:
    """CUDA: fused, ``lr`` a tensor on the parameters' device. CPU: foreach. Elsewhere: torch's default."""
    device = params[0].device if params else torch.device("cpu")
    if device.type == "cuda":
        return {"lr": torch.tensor(float(lr), dtype=torch.float32, device=device), "fused": True}
    if device.type == "cpu":
        return {"lr": lr, "foreach": True}
    return {"lr": lr}


def make_params(cls: type, values: dict[str, Any], method: str, ranges: dict[str, Range] | None = None,
                choices: dict[str, tuple[str, ...]] | None = None) -> Any:
    """Build a method's hyperparameter dataclass from typed values; wrong types, ranges and unknown keys fail.

    Types are strict (:func:`kdcli.config.check_type`): a bool is not an int, a string is not a float,
    ``1.5`` is not a count. Text from ``--param KEY=VALUE`` is parsed first, by :func:`parse_param_text`.
    ``ranges`` (a method's :attr:`Method.param_ranges`) bounds numbers, defaults included; ``choices``
    (:attr:`Method.param_choices`) lists the values a text parameter may take.
    """
    if not dataclasses.is_dataclass(cls):
        if values := {k: v for k, v in values.items() if v is not None}:
            raise KDError(f"method {method!r} has no parameters (got {', '.join(values)})")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key not in fields:
            raise _no_such_param(method, key, list(fields))
        try:
            kwargs[key] = check_type(value, hints.get(key, Any))
        except WrongType as err:
            raise KDError(f"method {method!r}: {key} must be {err} (got {value!r})") from None
    params = cls(**kwargs)
    for key, rule in (ranges or {}).items():
        check_range(f"method {method!r}: {key}", getattr(params, key), rule)
    for key, allowed in (choices or {}).items():
        if getattr(params, key) not in allowed:
            raise KDError(f"method {method!r}: {key} must be one of {', '.join(allowed)} "
                          f"(got {getattr(params, key)!r})")
    return params


def _no_such_param(method: str, key: str, fields: list[str]) -> KDError:
    hint = did_you_mean(key, fields, n=2, cutoff=0.6)
    return KDError(f"method {method!r} has no parameter {key!r}.{hint} Valid: {', '.join(fields) or 'none'}.")


def parse_param_text(cls: type, text: dict[str, str], method: str) -> dict[str, Any]:
    """``--param KEY=VALUE`` pairs as typed values of ``cls``'s fields (``"4"`` → 4.0 for a float field,
    ``"false"`` → False, ``"1,0.1"`` → [1.0, 0.1], ``"none"`` → None where allowed); bad text fails."""
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    hints = typing.get_type_hints(cls) if fields else {}
    values: dict[str, Any] = {}
    for key, raw in text.items():
        if key not in fields:
            raise _no_such_param(method, key, sorted(fields))
        values[key] = _parse_text(raw, hints.get(key, str), key, method)
    return values


def _parse_text(raw: str, hint: Any, key: str, method: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # ``float | None``: "none" is None, else the inner type
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if raw.lower() in ("none", "null", ""):
            return None
        return _parse_text(raw, inner[0], key, method) if len(inner) == 1 else raw
    try:
        if hint is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(raw)
            return value
        if origin in (list, tuple):
            (item,) = typing.get_args(hint)[:1] or (str,)
            return [_parse_text(v.strip(), item, key, method) for v in raw.split(",") if v.strip()]
    except (TypeError, ValueError):
        raise KDError(f"method {method!r}: {key} must be {getattr(hint, '__name__', hint)} (got {raw!r})") from None
    return raw


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of a batch as a 0-d tensor (no host sync)."""
    return (logits.argmax(dim=1) == labels).float().mean()


def agreement(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Share of a batch on which two models' top-1 classes agree, as a 0-d tensor (no gradient, no host sync)."""
    return accuracy(logits.detach(), teacher_logits.detach().argmax(dim=1))
