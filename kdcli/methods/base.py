"""The method contract: the only place a paper's math lives. The engine owns the loop.

A method is an ``nn.Module`` holding the models it trains (student, peers, branches, generator)
and, when it has one, a frozen teacher (always in eval mode, never trained, never saved in the
run's state). The engine calls, per step, ``training_step(batch, step)`` and gets back a dict with
``"loss"`` plus named parts to log. By default the engine back-propagates ``"loss"`` and steps every
optimizer; a method with an adversarial or alternating schedule sets ``manual_optimization`` and
steps its own optimizers (``self.optimizers``) inside ``training_step``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from kdcli.config import OptimConfig, RunConfig
from kdcli.data.base import DatasetInfo
from kdcli.errors import KDError


@dataclass
class World:
    """Where this process stands in a torch.distributed job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclass
class MethodContext:
    """What a method may know when it is built."""

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

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclass
class NoParams:
    """This method has no hyperparameters of its own."""


Batch = tuple[torch.Tensor, torch.Tensor] | None


class Method(nn.Module):
    """Base class for every training method (supervised, KD, online, data-free).

    Subclasses set ``name``, ``Params`` (a dataclass of hyperparameters with paper defaults) and
    implement ``training_step`` and ``eval_models``.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    needs_data: ClassVar[bool] = True  # False: training_step receives batch=None (data-free)
    needs_teacher: ClassVar[bool] = False
    manual_optimization: ClassVar[bool] = False
    primary: ClassVar[str] = "student"  # the role `--teacher RUN` and `kd evaluate` pick by default
    # Under torchrun (kdcli/distributed.py): True = the same models on every rank, gradients averaged.
    # A method whose ranks hold different models (codistillation) sets False, gathers its state on
    # rank 0 in ``consolidate()`` and may define a classmethod ``data_shard(params, config, world)``
    # that says which slice of the data each rank reads.
    data_parallel: ClassVar[bool] = True

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
        self.optimizers: list[torch.optim.Optimizer] = []
        self.epoch = 0

    # -- the contract ---------------------------------------------------------------------------
    def training_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def eval_models(self) -> dict[str, nn.Module]:
        """Models to score each epoch and at the end, by role (``student``, ``peer0``, ``ensemble``...)."""
        raise NotImplementedError

    def export_models(self) -> dict[str, nn.Module]:
        """Models written to the run as ``<role>.safetensors``: by default every eval model with a ``spec``."""
        return {role: m for role, m in self.eval_models().items() if hasattr(m, "spec")}

    @classmethod
    def assemble_eval(cls, models: dict[str, nn.Module], params: Any) -> dict[str, nn.Module]:
        """Rebuild the evaluation rows from saved models (``kd evaluate``): add ensembles and the like."""
        return models

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """One optimizer over every trainable parameter, from the run's optimiser config."""
        return [build_optimizer(self.ctx.config.optim, self.trainable_parameters())]

    def graphable_models(self) -> dict[str, nn.Module]:
        """Trained models called exactly once per step on the batch images (CUDA-graph candidates)."""
        return {}

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def steps_per_epoch(self) -> int | None:
        """Steps per epoch for methods that do not read data (``needs_data = False``)."""
        return None

    # -- helpers --------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        teacher_ids = {id(p) for p in self.teacher.parameters()} if self.teacher is not None else set()
        return [p for p in self.parameters() if p.requires_grad and id(p) not in teacher_ids]

    def train(self, mode: bool = True) -> "Method":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # a teacher's BatchNorm statistics never move
        return self

    def trained_state(self) -> dict[str, torch.Tensor]:
        """State dict without the frozen teacher (it lives in its own run)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise KDError(f"resume state does not match this method (missing {missing[:3]}, unexpected {unexpected[:3]})")


def build_optimizer(cfg: OptimConfig, params: list[nn.Parameter], lr: float | None = None) -> torch.optim.Optimizer:
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay
    )


def make_params(cls: type, values: dict[str, Any], method: str) -> Any:
    """Build a method's hyperparameter dataclass from user values, coercing types; unknown keys fail."""
    if not dataclasses.is_dataclass(cls):
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key not in fields:
            import difflib

            close = difflib.get_close_matches(key, list(fields), n=2)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise KDError(f"method {method!r} has no parameter {key!r}.{hint} Valid: {', '.join(fields) or 'none'}.")
        kwargs[key] = _coerce(value, hints.get(key), key, method)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str, method: str) -> Any:
    origin = typing.get_origin(hint)
    try:
        if hint is bool and isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if hint in (int, float, str, bool):
            return hint(value)
        if origin in (list, tuple) and isinstance(value, str):
            (item,) = set(typing.get_args(hint)) - {Ellipsis} or {str}
            return [item(v) for v in value.split(",") if v]
    except (TypeError, ValueError):
        raise KDError(f"method {method!r}: {key} must be {getattr(hint, '__name__', hint)} (got {value!r})") from None
    return value


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of a batch as a 0-d tensor (no host sync)."""
    return (logits.argmax(dim=1) == labels).float().mean()
