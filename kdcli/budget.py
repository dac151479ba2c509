"""When two runs may be set side by side: their training budget.

A baseline only says something about a method when it trained under the same budget: the same data
(dataset, the share held out for validation, augmentation, ``--image-size`` and ``--shots`` when set), the same schedule (epochs, batch, optimiser,
learning rate and its schedule, weight decay, warm-up), the same precision and the same models (the
architecture and how many are trained side by side; codistillation adds the share of the data each copy
sees). :func:`budget_of` lists those for a config about to run, :func:`run_budget` for a finished run
(from its ``run.json``), and :func:`differences` says, field by field, why two budgets are not the same.
``kd distill-online --baseline`` and ``scripts/reproduce_online.py`` refuse to pair runs that differ.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from kdcli import checkpoint
from kdcli.config import RunConfig
from kdcli.device import resolve_precision, select_device
from kdcli.errors import KDError
from kdcli.presets import method_class


def budget_of(config: RunConfig, params: Any = None, device_type: str | None = None) -> dict[str, Any]:
    """The training budget of ``config`` (a resolved run config).

    Args:
        config: the run's config.
        params: the method's hyperparameters (a ``Params`` dataclass); default: from ``config.method_params``.
        device_type: ``cpu`` / ``cuda`` / ``mps``, which decides what precision ``auto`` means; default:
            the device ``config`` would select here.
    """
    cls = method_class(config.method)
    params = cls.make_params(config.method_params) if params is None else params
    if device_type is None:
        device_type = select_device(config.train.device).type
    data, optim, train = config.data, config.optim, config.train
    budget: dict[str, Any] = {
        "dataset": data.dataset,
        "val_fraction": data.val_fraction,
        "augment": data.augment,
        "epochs": train.epochs,
        "batch_size": train.batch_size,
        "optimizer": optim.optimizer,
        "lr": optim.lr,
        "weight_decay": optim.weight_decay,
        "warmup_epochs": optim.warmup_epochs,
        "schedule": optim.schedule,
    }
    if data.image_size:  # --image-size and --shots, only when set: a run without them keeps its old budget
        budget["image_size"] = data.image_size
    if data.shots:
        budget["shots"] = data.shots
    if optim.optimizer == "sgd":
        budget["momentum"] = optim.momentum
        budget["nesterov"] = bool(optim.nesterov and optim.momentum > 0)
    if optim.schedule == "step":
        budget["milestones"] = list(optim.milestones)
        budget["gamma"] = optim.gamma
    dtype = resolve_precision(cls.precision(train.precision), torch.device(device_type))
    budget["precision"] = "fp32" if dtype is None else str(dtype).removeprefix("torch.").replace("bfloat16", "bf16")
    budget["model"] = "+".join(config.models) if config.models else config.model
    budget.update(cls.budget_terms(params, config))
    return budget


def run_budget(info: dict[str, Any]) -> dict[str, Any]:
    """The training budget of a run, from its ``run.json`` content (its config and resolved hyperparameters)."""
    config = RunConfig.from_dict(info["config"])
    cls = method_class(config.method)
    params = cls.make_params(info.get("params") or {})
    return budget_of(config, params, str(info.get("device", "cpu")).split(":")[0])


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _shown(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):
        return ",".join(f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """``["epochs 20 vs 200", ...]``: every budget field whose values differ (``—`` = absent), in ``a``'s order."""
    keys = list(a) + [k for k in b if k not in a]
    return [f"{k} {_shown(a.get(k))} vs {_shown(b.get(k))}" for k in keys if not _same(a.get(k), b.get(k))]


def refuse_other_budget(baseline: str, ours: dict[str, Any], theirs: dict[str, Any], done: str = "") -> None:
    """A one-line error when ``ours`` (the run) and ``theirs`` (its ``--baseline``) are different budgets."""
    diff = differences(ours, theirs)
    if diff:
        raise KDError(f"--baseline {baseline} trained under another budget (this run vs the baseline: "
                      f"{'; '.join(diff)}){done}")


def complete_baseline(baseline: str) -> dict[str, Any]:
    """The ``run.json`` of a ``--baseline`` run, refused unless it is complete."""
    info = checkpoint.read_run(baseline)
    if info.get("status") != "complete":
        raise KDError(f"--baseline {baseline} is not a complete run")
    return info
