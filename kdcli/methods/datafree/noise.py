"""The floor every data-free method must beat: Hinton KD (2015) on Gaussian noise instead of images.

Each step draws a fresh batch ``x ~ N(0, 1)`` in the teacher's normalised input space and distils
the teacher's soft targets at T into the student. Nothing is learned about the data, so whatever
a data-free method scores above this baseline is what its synthesis contributed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from kdcli.config import Range, positive
from kdcli.methods.base import Batch, Method, MethodContext, Preset, register_method
from kdcli.methods.datafree.transfer import distill_step, student_for, with_student


@dataclass
class NoiseParams:
    """Noise-input KD.

    Attributes:
        temperature: softmax temperature T of the soft targets (T² scaling).
        iterations: student steps per epoch (one fresh noise batch each).
    """

    temperature: float = 20.0
    iterations: int = 100


@register_method("noise", command="distill-datafree",
                 help="baseline: KD on Gaussian noise inputs (what every data-free method must beat)")
class NoiseDistill(Method):
    """``loss = T²·KL(σ(t(x)/T) ‖ σ(s(x)/T))``, ``x ~ N(0, 1)``. Parts: ``loss``, ``agree``."""

    Params = NoiseParams
    param_ranges: ClassVar[dict[str, Range]] = {"temperature": positive(), "iterations": positive()}
    needs_data: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = True
    primary: ClassVar[str] = "student"
    presets: ClassVar[dict[str, Preset]] = with_student({
        "quick": {
            "*": {
                "epochs": 20,
                "batch_size": 256,
                "optimizer": "adam",
                "lr": 1e-3,
                "weight_decay": 0.0,
                "method": {"iterations": 100},
            },
            # digits (8×8): the same recipe sized to ~20 s on one CPU thread; batch 64 (not 256) so the
            # 20 s buy 800 student steps rather than 200 (a baseline sized for time, not weakened)
            "digits": {
                "epochs": 8,
                "batch_size": 64,
                "optimizer": "adam",
                "lr": 1e-3,
                "weight_decay": 0.0,
                "method": {"iterations": 100},
            },
        },  # 2000 student steps: a generous baseline
        "paper": {
            "*": {
                "epochs": 200,
                "batch_size": 512,
                "optimizer": "adam",
                "lr": 2e-3,
                "weight_decay": 0.0,
                "schedule": "constant",
                "method": {"iterations": 120},
            }
        },
    })

    def __init__(self, ctx: MethodContext, params: NoiseParams) -> None:
        super().__init__(ctx, params)
        self.student = student_for(ctx)

    def steps_per_epoch(self) -> int | None:
        return self.params.iterations

    def training_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        info = self.ctx.info
        images = torch.randn(
            self.ctx.config.train.batch_size, info.channels, info.image_size, info.image_size, device=self.ctx.device
        )
        return distill_step(self.student, self.teacher, images, self.params.temperature)

    def eval_models(self) -> dict[str, nn.Module]:
        return {"student": self.student}
