"""Song & Chai (2018), "Collaborative Learning for Deep Neural Networks", NeurIPS (arXiv:1805.11761)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kdcli.errors import KDError
from kdcli.methods.base import Batch, MethodContext, Preset, accuracy, register_method
from kdcli.methods.losses import consensus_of_others, peer_kl, stacked_cross_entropy
from kdcli.methods.online.common import (
    QUICK,
    BranchRunner,
    SharedTrunkMethod,
    build_branched,
    paper_preset,
    resolve_branch_params,
)
from kdcli.models.branched import BranchedNet


@dataclass
class CLParams:
    """CL / CL-ILR hyperparameters (the paper's values are marked unverified in PAPERS.md).

    Attributes:
        peers: H, the number of classifier heads on the shared trunk.
        split_at: first per-head stage of ``--model`` (``stageK``; "" = the last stage).
        temperature: T of the soft targets and of the heads' softmax in the soft term (paper: 2).
        beta: weight of the hard (label) term; the soft term gets ``1 − β`` (paper: 0.5).
        ilr: intermediate-level representation sharing with backprop rescaling: the gradient
            entering the trunk from the H heads is divided by H. Off = plain multi-head sum.
    """

    peers: int = 4
    split_at: str = ""
    temperature: float = 2.0
    beta: float = 0.5
    ilr: bool = True


@register_method("cl", command="distill-online",
                 help="Collaborative Learning (CL-ILR), Song & Chai 2018: heads on a shared trunk")
class CL(SharedTrunkMethod):
    """Head h: ``β·CE(y, z_h) + (1−β)·T²·KL(σ(ẑ_h/T) ‖ σ(z_h/T))``, summed over heads.

    ``ẑ_h`` is the mean of the *other* heads' logits, a constant (no gradient through the target).
    With ``ilr`` the trunk receives ``1/H`` of the heads' summed gradient. Parts: ``hard``, ``soft``
    (means over heads), ``acc`` (mean head accuracy). Rows: ``branch0..``, ``ensemble``.
    """

    Params = CLParams
    primary = "branch0"
    presets: ClassVar[dict[str, Preset]] = {
        "quick": QUICK,
        # The CL-ILR re-run of the OKDDip paper (PAPERS.md's anchor): 300 epochs, batch 128, SGD
        # Nesterov, lr 0.1 ÷10 at 150/225, wd 5e-4. The CL paper's own CIFAR schedule is unverified.
        "paper": paper_preset(300, 128, [150, 225], 5e-4, nesterov=True),
    }

    @classmethod
    def resolve_params(cls, params: CLParams, ctx: MethodContext) -> CLParams:
        if not 0.0 <= params.beta <= 1.0:
            raise KDError(f"cl: beta must be in [0, 1] (got {params.beta})")
        return resolve_branch_params(cls.name, params, ctx, "heads", ramp=False)

    def __init__(self, ctx: MethodContext, params: CLParams) -> None:
        super().__init__(ctx, params)
        net = build_branched(ctx, params.peers, params.split_at, gate=False)
        self.runner = BranchRunner(net, 1.0 / params.peers if params.ilr else 1.0)

    @property
    def net(self) -> BranchedNet:  # lives inside the runner: one registration, one set of state-dict keys
        return self.runner.net

    def training_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits = self.runner(images)[0]
        hard = stacked_cross_entropy(logits, labels)
        soft = peer_kl(logits, consensus_of_others(logits.detach()), self.params.temperature)
        beta = self.params.beta
        loss = (beta * hard + (1.0 - beta) * soft).sum()
        acc = torch.stack([accuracy(z, labels) for z in logits.detach()]).mean()
        return {"loss": loss, "hard": hard.detach().mean(), "soft": soft.detach().mean(), "acc": acc}

    def graphable_step(self) -> bool:
        return True
