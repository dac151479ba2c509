"""Micaelli & Storkey (2019), "Zero-shot Knowledge Transfer via Adversarial Belief Matching"
(NeurIPS; arXiv:1905.09768).

An adversarial game on generated pseudo-batches ``x = G(z)``. For each pseudo-batch:

* ``generator_steps`` generator steps *maximising* ``D = KL(σ(t(x)) ‖ σ(s(x)))`` (G seeks the
  inputs where student and teacher disagree most);
* then ``student_steps`` student steps on the same ``z`` minimising
  ``D + β·Σ_groups ‖at(s_g) − at(t_g)‖²`` (attention transfer over block groups).

``D`` is averaged over batch and classes, as ``F.kl_div``'s default in the official code, so β = 250
keeps its meaning. Both optimizers are Adam with cosine schedules and gradient-norm clipping at 5.
One engine step = one pseudo-batch. Loss parts: ``loss`` (student), ``generator`` (−D),
``kl``, ``at``, ``agree``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kdcli.config import Range, at_least, positive
from kdcli.methods.base import Batch, MethodContext, Preset, adam, agreement, build_optimizer, register_method
from kdcli.methods.datafree.transfer import GeneratorDistill, student_for, with_student
from kdcli.methods.losses import at_loss, zskt_divergence
from kdcli.models.generator import create_generator


@dataclass
class ZSKTParams:
    """ZSKT hyperparameters (paper defaults).

    Attributes:
        latent_dim: size of ``z`` (100).
        lr_generator: Adam learning rate of the generator (1e-3); cosine-annealed like the student's.
        generator_steps: n_G, generator steps per pseudo-batch (1).
        student_steps: n_S, student steps per pseudo-batch (10).
        beta: weight β of attention transfer (250).
        temperature: T of the KL (1).
        grad_clip: gradient-norm clip of both networks (5).
        iterations: pseudo-batches per epoch (paper: 80k in total).
    """

    latent_dim: int = 100
    lr_generator: float = 1e-3
    generator_steps: int = 1
    student_steps: int = 10
    beta: float = 250.0
    temperature: float = 1.0
    grad_clip: float = 5.0
    iterations: int = 100


@register_method("zskt", command="distill-datafree",
                 help="Micaelli & Storkey 2019: adversarial generator, KL + attention transfer")
class ZSKT(GeneratorDistill):
    """Adversarial generator vs student, with attention transfer on the student's side."""

    Params = ZSKTParams
    model_needs: ClassVar[frozenset[str]] = frozenset({"groups"})  # attention transfer, on both sides
    teacher_needs: ClassVar[frozenset[str]] = frozenset({"groups"})
    param_ranges: ClassVar[dict[str, Range]] = {"latent_dim": positive(), "lr_generator": positive(),
                                                   "generator_steps": positive(), "student_steps": positive(),
                                                   "beta": at_least(0.0), "temperature": positive(),
                                                   "grad_clip": positive(), "iterations": positive()}
    presets: ClassVar[dict[str, Preset]] = with_student({
        "quick": {
            "*": {
                "epochs": 20,
                "batch_size": 128,
                "optimizer": "adam",
                "lr": 2e-3,
                "weight_decay": 0.0,
                "schedule": "cosine",
                "method": {"iterations": 25, "student_steps": 5},
            },
            "mnist": {
                "epochs": 20,
                "batch_size": 64,
                "optimizer": "adam",
                "lr": 2e-3,
                "weight_decay": 0.0,
                "schedule": "cosine",
                "method": {"iterations": 10, "student_steps": 5},
            },
            # digits (8×8) from the default ResNet-20 teacher: sized to ~20 s on one CPU thread (80 generator
            # steps, 10 student steps each); a faster student rate, T = 8 and no attention term (β 0: on 8×8
            # inputs ResNet-20's attention maps are 8/4/2 px, and matching them held seed 0 level with noise
            # where the KL alone scores +19 over it; β 25 fell below noise + 10 on seed 1; measured there)
            "digits": {
                "epochs": 8,
                "batch_size": 64,
                "optimizer": "adam",
                "lr": 1e-2,
                "weight_decay": 0.0,
                "schedule": "cosine",
                "method": {"iterations": 10, "student_steps": 10, "temperature": 8.0, "beta": 0.0},
            },
        },
        "paper": {
            "*": {
                "epochs": 80,
                "batch_size": 128,
                "optimizer": "adam",
                "lr": 2e-3,
                "weight_decay": 0.0,
                "schedule": "cosine",
                "method": {"iterations": 1000},
            },
        },
    })

    preset_notes: ClassVar[dict[str, str]] = {
        "paper": "ZSKT paper, CIFAR-10 (PAPERS.md anchors, re-runs): WRN-40-2 → WRN-16-1 83.74 %, ResNet-34 → "
                 "ResNet-18 93.32 %. Official code (polo5/ZeroShotKnowledgeTransfer, scripts/ZeroShot): 80k "
                 "pseudo-batches (here 80 epochs × 1000) of 128, n_G 1, n_S 10, Adam student 2e-3 and generator "
                 "1e-3 with cosine schedules, gradient-norm clip 5, z 100, T 1, AT β 250; its generator "
                 "(models/generator.py: default BatchNorms, affine head). fp32 (--precision auto means fp32 here).",
    }

    def __init__(self, ctx: MethodContext, params: ZSKTParams) -> None:
        super().__init__(ctx, params)
        info = ctx.info
        self.student = student_for(ctx)
        self.generator = create_generator(
            "generator-zskt", info.channels, info.image_size, info.num_classes, params.latent_dim
        )

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            adam(list(self.generator.parameters()), self.params.lr_generator),
            build_optimizer(self.ctx.config.optim, list(self.student.parameters())),
        ]

    def training_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        generator_opt, student_opt = self.optimizers()
        p = self.params
        z = self.latent()
        for _ in range(p.generator_steps):
            images = self.generator(z)
            divergence = zskt_divergence(self.student(images), self.teacher(images), p.temperature)
            generator_opt.zero_grad(set_to_none=True)
            (-divergence).backward()
            torch.nn.utils.clip_grad_norm_(self.generator.parameters(), p.grad_clip)
            generator_opt.step()
        with torch.no_grad():
            images = self.generator(z)
            teacher_logits, teacher_features = self.teacher.forward_features(images)
        for _ in range(p.student_steps):
            student_logits, student_features = self.student.forward_features(images)
            kl = zskt_divergence(student_logits, teacher_logits, p.temperature)
            attention = at_loss(student_features.groups, teacher_features.groups)
            loss = kl + p.beta * attention
            student_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), p.grad_clip)
            student_opt.step()
        agree = agreement(student_logits, teacher_logits)
        return {
            "loss": loss.detach(),
            "generator": -divergence.detach(),
            "kl": kl.detach(),
            "at": attention.detach(),
            "agree": agree,
        }
