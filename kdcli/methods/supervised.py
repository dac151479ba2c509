"""Supervised training of one model: what `kd train-teacher` runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdcli.methods.base import Batch, Method, MethodContext, NoParams, accuracy
from kdcli.models import create_model


class Supervised(Method):
    """Cross-entropy on the labels. Loss parts: ``loss`` (= ``ce``), ``acc``."""

    name = "supervised"
    Params = NoParams
    primary = "teacher"

    def __init__(self, ctx: MethodContext, params: NoParams, role: str = "teacher") -> None:
        super().__init__(ctx, params)
        info = ctx.info
        self.role = role
        self.model = create_model(ctx.config.model, info.channels, info.image_size, info.num_classes)

    def training_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "acc": accuracy(logits.detach(), labels)}

    def eval_models(self) -> dict[str, nn.Module]:
        return {self.role: self.model}

    def graphable_models(self) -> dict[str, nn.Module]:
        return {self.role: self.model}
