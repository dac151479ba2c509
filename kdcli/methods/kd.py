"""Hinton, Vinyals, Dean (2015), "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdcli.methods.base import Batch, Method, MethodContext, accuracy
from kdcli.methods.losses import kd_loss
from kdcli.models import create_model


@dataclass
class KDParams:
    """Hinton KD hyperparameters.

    Attributes:
        temperature: softmax temperature T of both teacher and student for the soft term.
        alpha: weight of the soft term; the hard (label) cross-entropy gets ``1 − alpha``.
    """

    temperature: float = 4.0
    alpha: float = 0.9


class HintonKD(Method):
    """``loss = α · T²·KL(σ(t/T) ‖ σ(s/T)) + (1 − α) · CE(y, s)``. Parts: ``soft``, ``hard``, ``acc``, ``agree``."""

    name = "kd"
    Params = KDParams
    needs_teacher = True
    primary = "student"

    def __init__(self, ctx: MethodContext, params: KDParams) -> None:
        super().__init__(ctx, params)
        info = ctx.info
        self.student = create_model(ctx.config.model, info.channels, info.image_size, info.num_classes)

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
            "agree": (detached.argmax(1) == teacher_logits.argmax(1)).float().mean(),
        }

    def eval_models(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def graphable_models(self) -> dict[str, nn.Module]:
        return {"student": self.student}
