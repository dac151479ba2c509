"""Hinton, Vinyals, Dean (2015), "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdcli.config import Range, between, positive
from kdcli.methods.base import (
    GENTLE_WITHOUT_BATCHNORM,
    Batch,
    Method,
    MethodContext,
    Preset,
    accuracy,
    agreement,
    register_method,
)
from kdcli.methods.losses import kd_loss


@dataclass
class KDParams:
    """Hinton KD hyperparameters.

    Attributes:
        temperature: softmax temperature T of both teacher and student for the soft term.
        alpha: weight of the soft term; the hard (label) cross-entropy gets ``1 − alpha``.
    """

    temperature: float = 4.0
    alpha: float = 0.9


@register_method("kd", command="distill", help="Hinton et al. 2015 soft targets at T (kd distill)")
class HintonKD(Method):
    """``loss = α · T²·KL(σ(t/T) ‖ σ(s/T)) + (1 − α) · CE(y, s)``. Parts: ``soft``, ``hard``, ``acc``, ``agree``."""

    Params = KDParams
    param_ranges: ClassVar[dict[str, Range]] = {"temperature": positive(), "alpha": between(0.0, 1.0)}
    needs_teacher = True
    primary = "student"
    presets: ClassVar[dict[str, Preset]] = {
        # the dataset is the teacher's; a LeNet-5-half student on digits in seconds on a CPU
        "quick": {"*": {"model": "lenet5-half", "epochs": 30, "lr": 0.01, "batch_size": 64,
                        "no_batchnorm": GENTLE_WITHOUT_BATCHNORM}},
    }

    def __init__(self, ctx: MethodContext, params: KDParams) -> None:
        super().__init__(ctx, params)
        self.student = ctx.create_model()

    def training_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        images, labels = batch
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        student_logits = self.student(images)
        soft = kd_loss(student_logits, teacher_logits, self.params.temperature)
        hard = F.cross_entropy(student_logits, labels)
        loss = self.params.alpha * soft + (1.0 - self.params.alpha) * hard
        detached = student_logits.detach()
        return {
            "loss": loss,
            "soft": soft.detach(),
            "hard": hard.detach(),
            "acc": accuracy(detached, labels),
            "agree": agreement(detached, teacher_logits),
        }

    def graphable_step(self) -> bool:
        return True

    def eval_models(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def graphable_models(self) -> dict[str, nn.Module]:
        return {"student": self.student}
