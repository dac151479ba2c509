"""What the online methods share: building peer sets and branched nets, ensemble rows, presets, ramp-up.

Roles, the same in training and in ``kd evaluate``: ``peer0..`` (DML, independent, OKDDip's auxiliary
peers), ``branch0..`` (CL, ONE), ``leader`` (OKDDip) and ``ensemble`` (the log of the mean of the
peers' probabilities; for ONE, the gated network itself).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from kdcli.config import RunConfig
from kdcli.device import fuse_group
from kdcli.errors import KDError
from kdcli.methods.base import GENTLE_WITHOUT_BATCHNORM, Method, MethodContext, Preset
from kdcli.methods.losses import mean_probability_logits, rampup_weight
from kdcli.models import StagedNet, create_model
from kdcli.models.branched import BranchedNet, split_index
from kdcli.models.fused import FusedModels, NotFusable, fuse_models

# The papers' ramp-up: w reaches 1 at epoch 80 of 300 (ONE, OKDDip, the CL re-run). Without a value
# (the quick preset) a run keeps that ratio of its own epochs; a paper preset scales 80 with --epochs.
PAPER_RAMP_EPOCHS = 80.0
PAPER_EPOCHS = 300


def check_count(method: str, what: str, count: int, minimum: int = 2) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < minimum:
        raise KDError(f"{method} needs at least {minimum} {what} (got {count}); set --peers {max(minimum, 2)} or more")


def peer_architectures(ctx: MethodContext, method: str, peers: int | None, minimum: int = 2) -> list[str]:
    """The K peer architectures: ``--models a,b,...`` (heterogeneous) or ``--peers K`` copies of ``--model``."""
    models = list(ctx.config.models)
    if models:
        if peers is not None and peers != len(models):
            raise KDError(f"--peers {peers} disagrees with --models ({len(models)} names); give one or the other")
        check_count(method, "peers", len(models), minimum)
        return models
    count = 2 if peers is None else peers
    check_count(method, "peers", count, minimum)
    return [ctx.config.model] * count


def build_peers(ctx: MethodContext, archs: list[str], unfusable: str | None = None) -> nn.ModuleList | FusedModels:
    """The K peers, built one after another from the run's RNG exactly as unfused peers are (same seed ⇒ same
    K initial models), then run as one network when ``--fuse`` allows it (:func:`fuse_if_asked`).

    ``unfusable``: why this method cannot fuse its peers (None when it can)."""
    peers = [ctx.create_model(arch) for arch in archs]
    if len(set(archs)) > 1:
        unfusable = unfusable or f"--models gives peers of different architectures ({', '.join(archs)})"
    return fuse_if_asked(ctx, peers, "peers", unfusable)


def fuse_if_asked(ctx: MethodContext, models: list[nn.Module], what: str, unfusable: str | None = None,
                  probe: torch.Tensor | None = None) -> nn.ModuleList | FusedModels:
    """``models`` as one :class:`FusedModels` under ``--fuse auto`` (when they can be) or ``on`` (else a
    one-line error); as a plain ``ModuleList`` under ``off``, for a single model, or when they cannot.
    ``probe``: an input of the models' shape for the fusion check (default: from the models' spec)."""
    mode = ctx.config.train.fuse
    if mode == "off" or len(models) < 2:
        return nn.ModuleList(models)
    if unfusable is None and ctx.world.distributed:
        # codistillation spreads its copies over the ranks; data-parallel fusion is untested, so kept apart
        unfusable = "a torchrun job keeps its models separate"
    if unfusable is None:
        try:
            return fuse_models(models, probe=probe, group=fuse_group(ctx.device))
        except NotFusable as err:
            unfusable = str(err)
    if mode == "on":
        raise KDError(f"--fuse on: the {what} cannot run as one network: {unfusable}; use --fuse auto or off")
    return nn.ModuleList(models)


def stacked_logits(models: nn.ModuleList | FusedModels, images: torch.Tensor) -> torch.Tensor:
    """Every model's logits on ``images``: ``[K, B, C]`` (one fused pass, or one pass per model)."""
    if isinstance(models, FusedModels):
        return models(images)
    return torch.stack([model(images) for model in models])


def member_models(models: nn.ModuleList | FusedModels) -> list[nn.Module]:
    """The models one by one: the live modules, or plain copies of the fused ones (for evaluation and export)."""
    return models.members() if isinstance(models, FusedModels) else list(models)


def describe_fusion(models: nn.ModuleList | FusedModels, arch: str) -> str | None:
    """``"4 × resnet32"`` (``"4 × lenet5 in networks of 2, 2"`` when grouped) when ``models`` run fused, else
    None (for :meth:`~kdcli.methods.base.Method.fusion`)."""
    if not isinstance(models, FusedModels):
        return None
    grouped = f" in networks of {', '.join(map(str, models.sizes))}" if len(models.sizes) > 1 else ""
    return f"{len(models)} × {arch}{grouped}"


def resolve_split(ctx: MethodContext, method: str, split_at: str) -> str:
    """``--split-at`` as the stage it names (``""`` = the last stage of ``--model``), checked against the model."""
    if ctx.config.models:
        raise KDError(f"{method} builds its branches from one --model; --models is for dml and independent")
    with torch.random.fork_rng(devices=[]):  # a probe: resolving must not move the run's random state
        stages = len(ctx.create_model().stages)
    return f"stage{split_index(ctx.config.model, stages, split_at) + 1}"


def build_branched(ctx: MethodContext, branches: int, split_at: str, gate: bool) -> BranchedNet:
    """The method's multi-branch net on ``--model``, split at the resolved stage ``split_at``; its branch
    bodies run as one network when ``--fuse`` allows it."""
    info = ctx.info
    net: BranchedNet = create_model("branched", info.channels, info.image_size, info.num_classes,  # type: ignore[assignment]
                                    base=ctx.config.model, split_at=split_at, branches=branches, gate=gate,
                                    **({"base_args": dict(ctx.config.model_args)} if ctx.config.model_args else {}))
    probe = net.trunk_probe() if ctx.config.train.fuse != "off" else None
    bodies = fuse_if_asked(ctx, list(net.branch_stack.bodies), "branches", probe=probe)
    if isinstance(bodies, FusedModels):
        net.branch_stack.use_fused(bodies)
    return net


def resolve_ramp(ramp_epochs: float | None, epochs: int) -> float:
    """``None`` → the paper's 80-of-300 ratio applied to this run's epochs (80 exactly at 300 epochs)."""
    if ramp_epochs is None:
        return PAPER_RAMP_EPOCHS * epochs / PAPER_EPOCHS
    if ramp_epochs < 0:
        raise KDError(f"--ramp-epochs must be ≥ 0 (got {ramp_epochs})")
    return float(ramp_epochs)


def ramp_at(step: int, steps_per_epoch: int, ramp_epochs: float) -> float:
    """w(t) with t the index of the epoch the step is in (0-based), constant within an epoch: both official
    codes (ONE's ``cifar_one.py``, OKDDip's ``train_GL.py`` and ``train_one.py``) set the weight once per epoch."""
    return rampup_weight(step // max(1, steps_per_epoch), ramp_epochs)


# ---------------------------------------------------------------------------------------------
# Evaluation rows


class MeanProbEnsemble(nn.Module):
    """Several classifiers as one: log of the mean of their probabilities (argmax = the averaged vote)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mean_probability_logits(torch.stack([m(x).float() for m in self.members]))


class BranchView(nn.Module):
    """Branch ``index`` of a branched net as a classifier (trunk + that branch only)."""

    def __init__(self, net: BranchedNet, index: int) -> None:
        super().__init__()
        self.net = net
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.branch_logits(x, self.index)


class BranchEnsemble(nn.Module):
    """Mean-probability ensemble of some branches of a branched net, from one trunk pass."""

    def __init__(self, net: BranchedNet, indices: list[int]) -> None:
        super().__init__()
        self.net = net
        self.indices = indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net.branch_outputs(x).logits
        return mean_probability_logits(logits[self.indices])


def assemble_ensemble(models: dict[str, nn.Module], prefix: str) -> dict[str, nn.Module]:
    """``kd evaluate``: add the ``ensemble`` row over the saved roles named ``<prefix>0``, ``<prefix>1``, ..."""
    members = [models[f"{prefix}{i}"] for i in range(len(models)) if f"{prefix}{i}" in models]
    if len(members) < 2 or "ensemble" in models:
        return models
    return {**models, "ensemble": MeanProbEnsemble(members)}


class BranchRunner(nn.Module):
    """Runs every branch at once for training: ``x → (logits [m,B,C], embeddings [m,B,D][, gate [B,m]])``.

    A module of its own (holding the net) so the engine can capture it as one CUDA graph; the
    trunk gradient scale (CL-ILR) is part of it.
    """

    def __init__(self, net: BranchedNet, trunk_grad_scale: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.trunk_grad_scale = trunk_grad_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net.branch_outputs(x, self.trunk_grad_scale)
        return (out.logits, out.embeddings) if out.gate is None else (out.logits, out.embeddings, out.gate)


def export_branches(net: BranchedNet, names: list[str]) -> dict[str, StagedNet]:
    """Each branch as a standalone base-architecture model, by role name."""
    return {name: net.export_branch(i) for i, name in enumerate(names)}


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Forward in training mode (batch statistics) without moving the running statistics."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum


# The short default of every `kd distill-online` method: seconds on digits on a CPU.
QUICK: Preset = {"*": {"model": "lenet5", "epochs": 20, "lr": 0.05, "batch_size": 64, "schedule": "cosine",
                       "no_batchnorm": GENTLE_WITHOUT_BATCHNORM}}


def paper_preset(epochs: int, batch_size: int, milestones: list[float], weight_decay: float, nesterov: bool,
                 scaled: tuple[str, ...] = ("ramp_epochs",), **method: Any) -> Preset:
    """The CIFAR protocol every online paper shares in shape, end to end: ResNet-32, every training image
    (no validation split: the papers train on all 50k), fp32 (no paper used mixed precision), SGD momentum
    0.9, lr 0.1 ÷10 at ``milestones``, no warm-up, and the method's ``method`` hyperparameters.

    The milestones and the method parameters named in ``scaled`` (by default the ramp-up length) are
    counted in the preset's ``epochs``: ``--epochs N`` scales them by N/epochs (:mod:`kdcli.presets`).
    """
    values: dict[str, Any] = {
        "model": "resnet32", "epochs": epochs, "batch_size": batch_size, "lr": 0.1, "optimizer": "sgd",
        "momentum": 0.9, "nesterov": nesterov, "weight_decay": weight_decay, "schedule": "step",
        "milestones": milestones, "gamma": 0.1, "warmup_epochs": 0.0, "val_fraction": 0.0, "precision": "fp32",
        "no_batchnorm": GENTLE_WITHOUT_BATCHNORM,
        "scale_with_epochs": ["milestones", *(f"method.{k}" for k in scaled if k in method)],
    }
    if method:
        values["method"] = method
    return {"*": values}


class PeerMethod(Method):
    """K separate peer models in ``self.peers`` (DML, independent, codistillation): a row per peer
    (``peer0..``) and, with two or more, their mean-probability ``ensemble``."""

    primary: ClassVar[str] = "peer0"
    #: the peers: a ModuleList, or one FusedModels (``--fuse``; the same state-dict keys either way)
    peers: nn.ModuleList | FusedModels

    def peer_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Every peer's logits on ``images``, ``[K, B, C]``."""
        return stacked_logits(self.peers, images)

    def eval_models(self) -> dict[str, nn.Module]:
        """``peer0..`` and ``ensemble``; fused peers are evaluated (and exported) as plain copies made now."""
        members = member_models(self.peers)
        rows: dict[str, nn.Module] = {f"peer{i}": peer for i, peer in enumerate(members)}
        if len(members) > 1:
            rows["ensemble"] = MeanProbEnsemble(members)
        return rows

    def graphable_models(self) -> dict[str, nn.Module]:
        if isinstance(self.peers, FusedModels):
            return {"peers": self.peers}
        return {f"peer{i}": peer for i, peer in enumerate(self.peers)}

    def fusion(self) -> dict[str, str]:
        described = describe_fusion(self.peers, self.ctx.config.model)
        return {"peers": described} if described else {}

    @classmethod
    def assemble_eval(cls, models: dict[str, nn.Module], params: Any) -> dict[str, nn.Module]:
        return assemble_ensemble(models, "peer")

    @classmethod
    def budget_terms(cls, params: Any, config: RunConfig) -> dict[str, Any]:
        """The peers: ``--models`` names them, else ``--peers`` copies of ``--model`` (2 when unset)."""
        return {"members": len(config.models) or params.peers or 2}


def check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise KDError(f"--temperature must be positive (got {temperature})")


def resolve_branch_params(name: str, params: Any, ctx: MethodContext, what: str, ramp: bool) -> Any:
    """The shared checks of a branched method's hyperparameters (count, T), its split resolved and, with
    ``ramp``, its ramp-up length (``ramp_epochs``) resolved against ``--epochs``."""
    check_count(name, what, params.peers)
    check_temperature(params.temperature)
    changes: dict[str, Any] = {"split_at": resolve_split(ctx, name, params.split_at)}
    if ramp:
        changes["ramp_epochs"] = resolve_ramp(params.ramp_epochs, ctx.epochs)
    return dataclasses.replace(params, **changes)


class SharedTrunkMethod(Method):
    """Branches on one shared trunk (CL, OKDDip): the rows, exports and CUDA graph they share.

    Subclasses set ``self.net`` (a :class:`BranchedNet`) and ``self.runner`` (its
    :class:`BranchRunner`). Each branch is a row and is exported as a plain base-architecture model;
    ``ensemble`` is the mean of the probabilities of the first ``ensemble_size()`` branches.
    """

    role_prefix: ClassVar[str] = "branch"
    model_needs: ClassVar[frozenset[str]] = frozenset({"stages"})  # a shared trunk and copies of the rest
    net: BranchedNet
    runner: nn.Module

    @classmethod
    def budget_terms(cls, params: Any, config: RunConfig) -> dict[str, Any]:
        """Every branch on the trunk is a member (OKDDip: its auxiliary peers and the leader)."""
        return {"members": cls.branch_count(params)}

    @classmethod
    def branch_count(cls, params: Any) -> int:
        return params.peers

    def _roles(self) -> list[str]:
        return [f"{self.role_prefix}{i}" for i in range(self.net.num_branches)]

    def ensemble_size(self) -> int:
        return self.net.num_branches

    def eval_models(self) -> dict[str, nn.Module]:
        rows: dict[str, nn.Module] = {role: BranchView(self.net, i) for i, role in enumerate(self._roles())}
        rows["ensemble"] = BranchEnsemble(self.net, list(range(self.ensemble_size())))
        return rows

    def export_models(self) -> dict[str, nn.Module]:
        return export_branches(self.net, self._roles())

    @classmethod
    def assemble_eval(cls, models: dict[str, nn.Module], params: Any) -> dict[str, nn.Module]:
        return assemble_ensemble(models, cls.role_prefix)

    def graphable_models(self) -> dict[str, nn.Module]:
        return {"branches": self.runner}

    def fusion(self) -> dict[str, str]:
        return branch_fusion(self.net)


def branch_fusion(net: BranchedNet) -> dict[str, str]:
    """``{"branches": "m × <base>'s stages k.."}`` when the branch bodies run fused."""
    bodies = net.branch_stack.bodies
    described = describe_fusion(bodies, f"{net.base}'s stages {net.split + 1}..") if net.branch_stack.fused else None
    return {"branches": described} if described else {}
