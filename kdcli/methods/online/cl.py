"""Song & Chai (2018), "Collaborative Learning for Deep Neural Networks", NeurIPS (arXiv:1805.11761)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kdcli.config import Range, at_least, positive
from kdcli.errors import KDError
from kdcli.methods.base import Batch, MethodContext, Preset, accuracy, register_method
from kdcli.methods.losses import consensus_of_others, peer_kl, stacked_cross_entropy
from kdcli.methods.online.common import (
    QUICK,
    BranchRunner,
    SharedTrunkMethod,
    build_branched,
    paper_preset,
    ramp_at,
    resolve_branch_params,
)
from kdcli.models.branched import BranchedNet


@dataclass
class CLParams:
    """CL / CL-ILR hyperparameters; the defaults are the CL paper's loss (T = 2, β = 0.5, not re-checked
    against the PDF here), ``--preset paper`` the re-run the published comparison number comes from.

    Attributes:
        peers: H, the number of classifier heads on the shared trunk.
        split_at: first per-head stage of ``--model`` (``stageK``; "" = the last stage).
        temperature: T of the soft targets and of the heads' softmax in the soft term (CL paper: 2;
            the OKDDip re-run: 3).
        hard_weight: weight of each head's label term (the CL paper's β = 0.5; the re-run: 1).
        soft_weight: weight of each head's soft term (the CL paper's 1 − β = 0.5; the re-run: 1).
        ramp_epochs: R of the ramp-up ``w(t) = exp(−5(1 − t/R)²)`` on the soft term, t the epoch index
            (0 = none, the CL paper; the re-run: 80 of 300 epochs).
        detach_consensus: True: each head's target (the mean of the other heads' logits) is a constant
            (kd's reading of the CL paper). False: the target is live, so head h's soft term also sends
            gradient into the other heads (the re-run in the OKDDip code, ``train_one.py --avg``).
        ilr: intermediate-level representation sharing with backprop rescaling: the gradient
            entering the trunk from the H heads is divided by H. Off = plain multi-head sum.
    """

    peers: int = 4
    split_at: str = ""
    temperature: float = 2.0
    hard_weight: float = 0.5
    soft_weight: float = 0.5
    ramp_epochs: float = 0.0
    detach_consensus: bool = True
    ilr: bool = True


# The CIFAR schedule of the OKDDip code, in which the compared CL-ILR number was re-run: 300 epochs,
# batch 128, SGD Nesterov 0.9, lr 0.1 ÷10 at 150/225, weight decay 5e-4 (train_one.py's defaults).
_RERUN_SCHEDULE = (300, 128, [150, 225], 5e-4)


@register_method("cl", command="distill-online",
                 help="Collaborative Learning (CL-ILR), Song & Chai 2018: heads on a shared trunk")
class CL(SharedTrunkMethod):
    """Head h: ``a·CE(y, z_h) + w(t)·b·T²·KL(σ(ẑ_h/T) ‖ σ(z_h/T))``, summed over heads (a, b the hard and soft weights).

    ``ẑ_h`` is the mean of the *other* heads' logits: a constant by default, live with
    ``detach_consensus=False``. With ``ilr`` the trunk receives ``1/H`` of the heads' summed gradient.
    Parts: ``hard``, ``soft`` (means over heads), ``w``, ``acc`` (mean head accuracy). Rows: ``branch0..``,
    ``ensemble``.

    ``--preset paper`` is the protocol behind the number kd compares CL with: the CL-ILR re-run of the
    OKDDip paper (Chen et al., AAAI 2020; CIFAR-100 ResNet-32, error 25.40 %, ensemble 24.03 %), made with
    the OKDDip code (``train_one.py --avg --bpscale``, checked): 4 heads split after stage 2, T = 3, label
    and soft weights 1 and 1, the soft term ramped up over 80 epochs (per epoch), a live consensus (not
    detached), ILR, and its CIFAR schedule (300 epochs, batch 128, SGD Nesterov 0.9, lr 0.1 ÷10 at
    150/225, weight decay 5e-4, every training image, fp32). That is not the CL paper's own loss.
    ``--preset cl-paper-loss`` is the CL paper's loss (T = 2, β = 0.5 as hard and soft weights 0.5 and 0.5,
    no ramp, the consensus a constant) on that same schedule: the CL paper's own CIFAR schedule has not
    been checked here, so no published number belongs to this preset.
    """

    Params = CLParams
    param_ranges: ClassVar[dict[str, Range]] = {"peers": positive(), "temperature": positive(),
                                                   "hard_weight": at_least(0.0), "soft_weight": at_least(0.0),
                                                   "ramp_epochs": at_least(0.0)}
    primary = "branch0"
    presets: ClassVar[dict[str, Preset]] = {
        "quick": QUICK,
        "paper": paper_preset(*_RERUN_SCHEDULE, nesterov=True, peers=4, temperature=3.0, hard_weight=1.0,
                              soft_weight=1.0, ramp_epochs=80.0, detach_consensus=False, ilr=True),
        "cl-paper-loss": paper_preset(*_RERUN_SCHEDULE, nesterov=True, peers=4, temperature=2.0, hard_weight=0.5,
                                      soft_weight=0.5, ramp_epochs=0.0, detach_consensus=True, ilr=True),
    }
    preset_notes: ClassVar[dict[str, str]] = {
        "paper": "OKDDip paper's CL-ILR re-run, CIFAR-100 ResNet-32: error 25.40 (ensemble 24.03). OKDDip code "
                 "(train_one.py --avg --bpscale, checked): 4 heads, T 3, weights 1 and 1, 80-epoch ramp, live "
                 "consensus, ILR; 300 epochs, batch 128, SGD Nesterov, lr 0.1 ÷10 at 150/225, wd 5e-4; all "
                 "training images, fp32.",
        "cl-paper-loss": "The CL paper's loss (T 2, β 0.5, consensus a constant, no ramp; not re-checked against the PDF) "
                         "on the re-run's schedule: the CL paper's own CIFAR schedule is not checked, so no "
                         "published number belongs to this preset.",
    }

    @classmethod
    def resolve_params(cls, params: CLParams, ctx: MethodContext) -> CLParams:
        if params.hard_weight < 0 or params.soft_weight < 0:
            raise KDError(f"cl: hard_weight and soft_weight must be ≥ 0 (got {params.hard_weight}, "
                          f"{params.soft_weight})")
        if params.ramp_epochs < 0:
            raise KDError(f"--ramp-epochs must be ≥ 0 (got {params.ramp_epochs})")
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
        p = self.params
        hard = stacked_cross_entropy(logits, labels)
        consensus = consensus_of_others(logits.detach() if p.detach_consensus else logits)
        soft = peer_kl(logits, consensus, p.temperature)
        w = ramp_at(step, self.ctx.steps_per_epoch, p.ramp_epochs)
        loss = (p.hard_weight * hard + (w * p.soft_weight) * soft).sum()
        acc = torch.stack([accuracy(z, labels) for z in logits.detach()]).mean()
        return {"loss": loss, "hard": hard.detach().mean(), "soft": soft.detach().mean(), "w": torch.tensor(w),
                "acc": acc}

    def graphable_step(self) -> bool:
        return True
