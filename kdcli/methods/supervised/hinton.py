"""Hinton, Vinyals, Dean (2015), "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531).

With ``attention``: the "KD+AT" few-shot baseline of Micaelli & Storkey (2019), "Zero-shot Knowledge
Transfer via Adversarial Belief Matching" (NeurIPS; arXiv:1905.09768), Section 4.1 and Table 1: Hinton KD
plus β·Σ_groups attention transfer (Zagoruyko & Komodakis, ICLR 2017) over the block groups, β = 250, the
same term (:func:`kdcli.methods.losses.at_loss`) ZSKT's student minimises. Few-shot (M real images per
class) is ``--shots M``, a data option (:func:`kdcli.run.few_shot_set`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdcli.config import Range, at_least, between, positive
from kdcli.errors import KDError
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
from kdcli.methods.losses import at_loss, kd_loss
from kdcli.models import probe_model


@dataclass
class KDParams:
    """Hinton KD hyperparameters.

    Attributes:
        temperature: softmax temperature T of both teacher and student for the soft term.
        alpha: weight of the soft term; the hard (label) cross-entropy gets ``1 − alpha``.
        attention: add ``beta ·`` attention transfer over block groups (ZSKT's KD+AT baseline); both the
            teacher and the student must have block groups (``forward_features``).
        beta: weight β of attention transfer (250, as in ZSKT); used only with ``attention``.
    """

    temperature: float = 4.0
    alpha: float = 0.9
    attention: bool = False
    beta: float = 250.0


@register_method("kd", command="distill", help="Hinton et al. 2015 soft targets at T (kd distill)")
class HintonKD(Method):
    """``loss = α · T²·KL(σ(t/T) ‖ σ(s/T)) + (1 − α) · CE(y, s)`` (``+ β · Σ_g AT(s_g, t_g)`` with ``attention``).
    Parts: ``soft``, ``hard``, ``acc``, ``agree`` (and ``at`` with ``attention``)."""

    Params = KDParams
    param_ranges: ClassVar[dict[str, Range]] = {"temperature": positive(), "alpha": between(0.0, 1.0),
                                                   "beta": at_least(0.0)}
    needs_teacher = True
    primary = "student"
    presets: ClassVar[dict[str, Preset]] = {
        # the dataset is the teacher's; a LeNet-5-half student on digits in seconds on a CPU
        "quick": {"*": {"model": "lenet5-half", "epochs": 30, "lr": 0.01, "batch_size": 64,
                        "no_batchnorm": GENTLE_WITHOUT_BATCHNORM}},
    }

    @classmethod
    def needs(cls, params: KDParams) -> dict[str, frozenset[str]]:
        """Attention transfer reads the block groups of both models (``forward_features``)."""
        groups = frozenset({"groups"}) if params.attention else frozenset()
        return {"model": cls.model_needs | groups, "teacher": cls.teacher_needs | groups}

    @classmethod
    def resolve_params(cls, params: KDParams, ctx: MethodContext) -> KDParams:
        """With ``attention``: the teacher and every student must give at least one spatial (4-d) block-group
        output, else attention transfer would be a silent zero (an MLP's groups are vectors)."""
        if params.attention:
            info, config = ctx.info, ctx.config
            student = probe_model(config.model, info.channels, info.image_size, info.num_classes, **config.model_args)
            teacher_name = ctx.teacher_meta["spec"]["arch"] if ctx.teacher_meta else "teacher"
            probe = torch.zeros(2, info.channels, info.image_size, info.image_size, device=ctx.device)
            for role, name, model in (("teacher", teacher_name, ctx.teacher), ("student", config.model, student)):
                if model is None:
                    continue
                with torch.no_grad():
                    _, features = model.to(ctx.device).eval().forward_features(probe)
                if not any(group.dim() == 4 for group in features.groups):
                    raise KDError(f"kd --attention needs spatial block-group outputs (attention maps); the {role} "
                                  f"{name} has none (its groups are vectors)")
        return params

    def __init__(self, ctx: MethodContext, params: KDParams) -> None:
        super().__init__(ctx, params)
        self.student = ctx.create_model()

    def training_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        images, labels = batch
        p = self.params
        parts: dict[str, torch.Tensor] = {}
        if p.attention:
            with torch.no_grad():
                teacher_logits, teacher_features = self.teacher.forward_features(images)
            student_logits, student_features = self.student.forward_features(images)
            attention = at_loss(student_features.groups, teacher_features.groups)
            parts["at"] = attention.detach()
        else:
            with torch.no_grad():
                teacher_logits = self.teacher(images)
            student_logits = self.student(images)
        soft = kd_loss(student_logits, teacher_logits, p.temperature)
        hard = F.cross_entropy(student_logits, labels)
        loss = p.alpha * soft + (1.0 - p.alpha) * hard
        if p.attention:
            loss = loss + p.beta * attention
        detached = student_logits.detach()
        return {
            "loss": loss,
            "soft": soft.detach(),
            "hard": hard.detach(),
            **parts,
            "acc": accuracy(detached, labels),
            "agree": agreement(detached, teacher_logits),
        }

    def graphable_step(self) -> bool:
        return not self.params.attention  # the graphed callables are the models' forward, not forward_features

    def eval_models(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def graphable_models(self) -> dict[str, nn.Module]:
        return {"student": self.student}
