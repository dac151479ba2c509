"""The baseline of every online table: the same K peers, the same loop and budget, no distillation term."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from kdcli.config import Range, positive
from kdcli.methods.base import Batch, MethodContext, Preset, register_method
from kdcli.methods.losses import stacked_cross_entropy
from kdcli.methods.online.common import (
    QUICK,
    PeerMethod,
    build_peers,
    peer_architectures,
)


@dataclass
class IndependentParams:
    """Attributes:
        peers: K, copies of ``--model`` (or ``--models a,b``, one peer each).
    """

    peers: int | None = None


@register_method("independent", command="distill-online",
                 help="baseline: the same K peers with no distillation term")
class Independent(PeerMethod):
    """K peers trained side by side on the same batches with cross-entropy only: ``Σ_i CE(y, z_i)``.

    Parts: ``ce`` (mean over peers), ``acc`` (mean over peers). Rows: ``peer0..``, ``ensemble``.

    It has no paper preset of its own: it is the baseline of every online paper, under the protocol of
    the method it is compared with. ``scripts/reproduce_online.py`` gives it, flag by flag, the resolved
    budget of each method's ``--preset paper`` run (epochs, batch, optimiser, schedule, data, precision
    and as many peers as the method trains members), and ``kd distill-online --baseline RUN`` refuses a
    baseline whose budget differs (:mod:`kdcli.budget`).
    """

    Params = IndependentParams
    param_ranges: ClassVar[dict[str, Range]] = {"peers": positive()}
    presets: ClassVar[dict[str, Preset]] = {"quick": QUICK}

    @classmethod
    def resolve_params(cls, params: IndependentParams, ctx: MethodContext) -> IndependentParams:
        return replace(params, peers=len(peer_architectures(ctx, cls.name, params.peers, minimum=1)))

    def __init__(self, ctx: MethodContext, params: IndependentParams) -> None:
        super().__init__(ctx, params)
        self.peers = build_peers(ctx, peer_architectures(ctx, self.name, params.peers, minimum=1))

    def training_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits = self.peer_logits(images)
        ce = stacked_cross_entropy(logits, labels)
        acc = (logits.detach().argmax(dim=2) == labels).float().mean()  # mean peer accuracy
        return {"loss": ce.sum(), "ce": ce.detach().mean(), "acc": acc}

    def graphable_step(self) -> bool:
        return True
