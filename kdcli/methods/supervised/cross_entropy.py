"""Supervised training of one model on the labels: what `kd train-teacher` runs."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdcli.methods.base import (
    GENTLE_WITHOUT_BATCHNORM,
    Batch,
    Method,
    MethodContext,
    NoParams,
    Preset,
    accuracy,
    register_method,
)


@register_method("supervised", command="train-teacher", help="cross-entropy on labels (kd train-teacher)")
class Supervised(Method):
    """Cross-entropy on the labels. Loss parts: ``loss`` (= ``ce``), ``acc``."""

    Params = NoParams
    primary = "teacher"
    produces_teacher = True
    presets: ClassVar[dict[str, Preset]] = {
        # tuned on digits: a ResNet-20 reaches ~98 % in ~10 s on a laptop CPU
        "quick": {"*": {"model": "resnet20", "epochs": 30, "lr": 0.1, "batch_size": 64,
                        "no_batchnorm": GENTLE_WITHOUT_BATCHNORM}},
    }

    def __init__(self, ctx: MethodContext, params: Any, role: str = "teacher") -> None:
        super().__init__(ctx, params)
        self.role = role
        self.model = ctx.create_model()

    def training_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "acc": accuracy(logits.detach(), labels)}

    def graphable_step(self) -> bool:
        return True

    def eval_models(self) -> dict[str, nn.Module]:
        return {self.role: self.model}

    def graphable_models(self) -> dict[str, nn.Module]:
        return {self.role: self.model}
