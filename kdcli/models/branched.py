"""The multi-branch builder: any registered model split at a named stage into a shared trunk and m branches.

``branched`` (registered in ``MODELS``) takes a base architecture, a split stage and a branch count:
``stem + stages[:k]`` of the base are shared, and each branch is its own copy of ``stages[k:] + pool +
classifier``. CL, ONE and OKDDip train it; it rebuilds from its ``spec`` like every other model.

It stays a plain :class:`StagedNet` (``stem → stages → pool → classifier``) so everything that
walks stages keeps working: the last stage is a :class:`BranchStack` that runs every branch and
returns ``φ = [g_1·e_1, …, g_m·e_m, g_1, …, g_m]`` (``e_i`` branch i's pooled embedding, ``g`` the
branch weights), and the classifier is the m branch classifiers stacked into one bias-free Linear
whose columns are ``[W_1 … W_m | b_1 … b_m]``. Then ``classifier(φ) = Σ_i g_i (W_i e_i + b_i)``
exactly: with ONE's gate the model's output is ONE's gated ensemble; without a gate ``g_i = 1/m``
(the mean of the branch logits). Per-branch logits come from :meth:`BranchedNet.branch_outputs`.

A branch is, weight for weight, the base model: :meth:`BranchedNet.export_branch` returns it as a
base-architecture model (the shared trunk's weights copied in), usable anywhere a model is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdcli.errors import KDError
from kdcli.models import MODELS, StagedNet, create_model, external
from kdcli.models.base import ModelSpec
from kdcli.models.fused import FusedModels


def pooled(h: torch.Tensor) -> torch.Tensor:
    """A stage output as a vector per image: global average over space for maps, as is for vectors."""
    return h.mean(dim=(2, 3)) if h.dim() == 4 else h.flatten(1)


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; the gradient flowing back through ``x`` is multiplied by ``scale``.

    CL-ILR's backprop rescaling (Song & Chai 2018): at the trunk's output with ``scale = 1/H`` the
    shared layers receive the mean, not the sum, of the H heads' gradients.
    """
    if scale == 1.0:
        return x
    return _ScaleGradient.apply(x, scale)


def split_index(base: str, stages: int, split_at: str) -> int:
    """``stageK`` → K−1, the index of the first per-branch stage; ``""`` → the last stage. Checks the range."""
    if not split_at:
        return stages - 1
    match = re.fullmatch(r"stage(\d+)", split_at)
    if match is None:
        raise KDError(f"--split-at must name a stage like stage{stages} (got {split_at!r})")
    k = int(match[1])
    if not 1 <= k <= stages:
        raise KDError(
            f"--split-at {split_at} is beyond {base}'s depth: it has {stages} stages, so use stage1..stage{stages}"
        )
    return k - 1


class Gate(nn.Module):
    """ONE's gate (Lan, Zhu, Gong; NeurIPS 2018): pooled trunk feature → Linear(C→m) → BN1d → ReLU → softmax.

    ``[B, C, H, W]`` (or ``[B, C]``) → ``[B, m]`` whose rows sum to 1.
    """

    def __init__(self, channels: int, branches: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, branches)
        self.norm = nn.BatchNorm1d(branches)

    def forward(self, trunk_features: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.linear(pooled(trunk_features)))).softmax(dim=1)


@dataclass
class BranchOutputs:
    """One forward pass of every branch: ``logits [m, B, C]``, ``embeddings [m, B, D]``, ``gate [B, m]`` or None."""

    logits: torch.Tensor
    embeddings: torch.Tensor
    gate: torch.Tensor | None


class BranchStack(nn.Module):
    """The per-branch part: m bodies (``stages[k:] + pool`` of the base, each its own copy) and an optional gate.

    The bodies are a ``ModuleList``, or (after :meth:`use_fused`) one :class:`FusedModels` running all m
    as one network; the state-dict keys are the same either way (``bodies.0.…``, ``bodies.1.…``).
    """

    def __init__(self, bodies: list[nn.Module], gate: Gate | None) -> None:
        super().__init__()
        self.bodies: nn.ModuleList | FusedModels = nn.ModuleList(bodies)
        self.gate = gate

    @property
    def fused(self) -> bool:
        return isinstance(self.bodies, FusedModels)

    def use_fused(self, bodies: FusedModels) -> None:
        """Run the bodies as ``bodies`` (a :func:`~kdcli.models.fused.fuse_models` of these bodies)."""
        if len(bodies) != len(self.bodies):
            raise ValueError(f"{len(bodies)} fused bodies for {len(self.bodies)} branches")
        self.bodies = bodies

    def body(self, index: int) -> nn.Module:
        """Branch ``index``'s body as a module of its own (a copy when the bodies run fused)."""
        return self.bodies.member(index) if isinstance(self.bodies, FusedModels) else self.bodies[index]

    def embeddings(self, trunk_features: torch.Tensor) -> torch.Tensor:
        if isinstance(self.bodies, FusedModels):
            return self.bodies(trunk_features)
        return torch.stack([body(trunk_features) for body in self.bodies])

    def weights(self, trunk_features: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.gate(trunk_features)
        m = len(self.bodies)
        return trunk_features.new_full((trunk_features.shape[0], m), 1.0 / m)

    def forward(self, trunk_features: torch.Tensor) -> torch.Tensor:
        e = self.embeddings(trunk_features)  # [m, B, D]
        g = self.weights(trunk_features).to(e.dtype)  # [B, m]
        weighted = (e * g.t().unsqueeze(-1)).permute(1, 0, 2).flatten(1)  # [B, m·D]
        return torch.cat([weighted, g], dim=1)


class BranchedNet(StagedNet):
    """A base model with its stages from ``split`` on copied into ``m`` branches on a shared trunk."""

    def __init__(self, base: str, split: int, instances: list[StagedNet], gate: bool,
                 base_args: dict[str, Any] | None = None) -> None:
        first = instances[0]
        m = len(instances)
        bodies = [nn.Sequential(*inst.stages[split:], inst.pool) for inst in instances]
        embed = first.classifier.in_features
        classes = first.classifier.out_features
        gate_module = Gate(_trunk_width(first, split), m) if gate else None
        classifier = nn.Linear(m * (embed + 1), classes, bias=False)
        with torch.no_grad():
            classifier.weight[:, : m * embed] = torch.cat([inst.classifier.weight for inst in instances], dim=1)
            classifier.weight[:, m * embed :] = torch.stack([inst.classifier.bias for inst in instances], dim=1)
        super().__init__(first.stem, [*first.stages[:split], BranchStack(bodies, gate_module)], nn.Identity(), classifier)
        self.base = base
        self.base_args = dict(base_args or {})
        self.split = split
        self.num_branches = m
        self.embed_dim = embed

    @property
    def branch_stack(self) -> BranchStack:
        return self.stages[-1]  # type: ignore[return-value]

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for stage in self.stages[:-1]:
            h = stage(h)
        return h

    def _split_classifier(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W [m, C, D], b [m, C])`` of the m branch classifiers, as views of the stacked weight."""
        m, d = self.num_branches, self.embed_dim
        w = self.classifier.weight
        return w[:, : m * d].view(w.shape[0], m, d).transpose(0, 1), w[:, m * d :].t()

    def branch_outputs(self, x: torch.Tensor, trunk_grad_scale: float = 1.0) -> BranchOutputs:
        """Every branch's logits and pooled embedding from one trunk pass (and the gate, if any).

        ``trunk_grad_scale`` multiplies the gradient that flows from the branches (and gate) into the
        trunk: CL-ILR passes ``1/m``.
        """
        h = scale_gradient(self.trunk(x), trunk_grad_scale)
        stack = self.branch_stack
        e = stack.embeddings(h)
        w, b = self._split_classifier()
        logits = torch.einsum("mbd,mcd->mbc", e, w.to(e.dtype)) + b.to(e.dtype).unsqueeze(1)
        gate = stack.gate(h) if stack.gate is not None else None
        return BranchOutputs(logits, e, gate)

    @torch.no_grad()
    def trunk_probe(self) -> torch.Tensor:
        """The trunk's output on 2 random images (eval mode, off the global RNG): an input of the bodies' shape."""
        spec = self.spec
        was_training = self.training
        self.eval()
        with torch.random.fork_rng(devices=[]):
            images = torch.randn(2, spec.in_channels, spec.image_size, spec.image_size,
                                 generator=torch.Generator().manual_seed(0))
            features = self.trunk(images.to(self.classifier.weight.device))
        self.train(was_training)
        return features

    def branch_logits(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Logits of branch ``index`` alone (trunk + that branch): what the exported branch computes."""
        e = self.branch_stack.body(index)(self.trunk(x))
        w, b = self._split_classifier()
        return nn.functional.linear(e, w[index].to(e.dtype), b[index].to(e.dtype))

    @torch.no_grad()
    def export_branch(self, index: int) -> StagedNet:
        """Branch ``index`` as a standalone base-architecture model (a copy: trunk + branch weights)."""
        spec = self.spec
        with torch.random.fork_rng(devices=[]):  # building the copy must not move the training RNG
            model = create_model(self.base, spec.in_channels, spec.image_size, spec.num_classes, **self.base_args)
        model.stem.load_state_dict(self.stem.state_dict())
        for j in range(self.split):
            model.stages[j].load_state_dict(self.stages[j].state_dict())
        body = self.branch_stack.body(index)
        for j in range(self.split, len(model.stages)):
            model.stages[j].load_state_dict(body[j - self.split].state_dict())
        model.pool.load_state_dict(body[-1].state_dict())
        w, b = self._split_classifier()
        model.classifier.weight.copy_(w[index])
        model.classifier.bias.copy_(b[index])
        return model.eval()


def _trunk_width(model: StagedNet, split: int) -> int:
    """Features per image at the trunk's output (what the gate reads), found by one tiny forward pass."""
    spec: ModelSpec = model.spec
    was_training = model.training
    model.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        h = model.stem(torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size))
        for stage in model.stages[:split]:
            h = stage(h)
    model.train(was_training)
    return pooled(h).shape[1]


@MODELS.register(
    "branched",
    help="multi-branch net of the online methods: options base (a model), split_at (stageK), branches, gate",
)
def branched(
    in_channels: int,
    image_size: int,
    num_classes: int,
    base: str = "resnet20",
    split_at: str = "",
    branches: int = 3,
    gate: bool = True,
    base_args: dict[str, Any] | None = None,
) -> BranchedNet:
    """Shared trunk (``stem + stages[:K−1]`` of ``base``) and ``branches`` copies of the rest.

    Song & Chai (CL, NeurIPS 2018), Lan et al. (ONE, NeurIPS 2018) and Chen et al. (OKDDip, AAAI
    2020) all share the low layers of a CIFAR ResNet and copy the last stage; this builder does it
    for any registered model. ``split_at="stageK"`` makes stage K the first per-branch stage (""
    = the last stage). Each branch starts from its own random init; the trunk from the first's.
    ``gate=True`` adds ONE's gate and makes the output the gated sum of branch logits. ``base_args`` are
    the base model's own arguments (``--model-arg``); the base may be an import path whose factory
    returns a :class:`StagedNet`.
    """
    if base == "branched" or (not external.is_external(base) and MODELS.resolve(base)[0].builder is branched):
        raise KDError("a branched model's base must be a plain model, not another branched model")
    if isinstance(branches, bool) or not isinstance(branches, int) or branches < 1:
        raise KDError(f"branches must be a positive integer (got {branches!r})")
    instances = [create_model(base, in_channels, image_size, num_classes, **(base_args or {})) for _ in range(branches)]
    if not isinstance(instances[0], StagedNet):
        raise KDError(f"a branched model needs a base split into stages (a kdcli.models.StagedNet); {base} is not one")
    split = split_index(base, len(instances[0].stages), split_at)
    return BranchedNet(base, split, instances, gate, base_args)
