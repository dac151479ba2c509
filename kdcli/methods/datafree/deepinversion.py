"""Yin, Molchanov, Li, Alvarez, Mallya, Hoiem, Jha, Kautz (2020), "Dreaming to Distill: Data-free Knowledge
Transfer via DeepInversion" (CVPR; arXiv:1912.08795).

A batch of inputs (Gaussian noise in the teacher's normalised space) is optimised with Adam so that
at every BatchNorm layer of the teacher the batch's per-channel mean and variance match the
running statistics the teacher stored, plus cross-entropy to the aimed classes and image priors::

    loss = CE(t(x̃), y) + w_bn·Σ_BN (‖σ²_bn − σ²‖₂ + ‖μ_bn − μ‖₂) + w_tv·TV_ℓ2(x̃) + w_l2·‖x̃‖₂

with ``x̃`` the batch randomly rolled by up to ``jitter`` pixels each step; the lowest-loss iterate
is kept. Pixels are clipped to the valid range every step (the ImageNet code does; stored as uint8).
Defaults are the CIFAR-10 "paper parameters" of the official code. The BN statistics couple the
images of a batch, so ``synth_batch`` is part of the objective here, not only speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdcli import progress
from kdcli.config import Range, at_least, positive
from kdcli.data import synthetic
from kdcli.data.synthetic import SyntheticSet, class_order
from kdcli.device import autocast, resolve_precision
from kdcli.methods.base import Preset, register_method
from kdcli.methods.datafree.transfer import DIGITS_STUDENT, TransferSetDistill, finish_set, with_student
from kdcli.methods.losses import bn_stat_loss, input_l2, total_variation_l2


@dataclass
class DeepInversionParams:
    """DeepInversion hyperparameters (official CIFAR-10 paper parameters).

    Attributes:
        n: images to synthesise.
        synthetic: a ``kd synthesize`` folder to distil from instead of synthesising.
        temperature: distillation temperature T (not fixed by the paper here; 3 as in its Adaptive DI term).
        iterations: Adam steps per batch (2000).
        lr_input: Adam learning rate on the normalised inputs (0.05).
        synth_batch: images optimised together; their joint statistics are matched (256).
        bn_weight: weight of the BatchNorm statistics term (10).
        tv_weight: weight of the ℓ2 total-variation prior (2.5e-5).
        l2_weight: weight of the ℓ2 norm of the inputs (0).
        jitter: maximal random roll in pixels per step (2).
    """

    n: int = 24000
    synthetic: str = ""
    temperature: float = 3.0
    iterations: int = 2000
    lr_input: float = 0.05
    synth_batch: int = 256
    bn_weight: float = 10.0
    tv_weight: float = 2.5e-5
    l2_weight: float = 0.0
    jitter: int = 2


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


class BNStatHooks:
    """Forward hooks that compute each BatchNorm input's batch statistics loss during one teacher pass."""

    def __init__(self, layers: list[nn.Module]) -> None:
        self.losses: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in layers]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0].float()
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        self.losses.append(bn_stat_loss(mean, var, module.running_mean, module.running_var))

    def take(self) -> torch.Tensor:
        total = torch.stack(self.losses).sum()
        self.losses = []
        return total

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@register_method("deepinversion", command="distill-datafree",
                 help="Yin et al. 2020: BatchNorm-statistics inversion + TV/L2 priors")
class DeepInversion(TransferSetDistill):
    """BatchNorm-statistics inversion of the teacher, then KD at T. Parts: ``loss``, ``agree``."""

    Params = DeepInversionParams
    teacher_needs: ClassVar[frozenset[str]] = frozenset({"batchnorm"})  # the statistics it inverts
    param_ranges: ClassVar[dict[str, Range]] = {"n": positive(), "temperature": positive(), "iterations": positive(),
                                                   "lr_input": positive(), "synth_batch": positive(),
                                                   "bn_weight": at_least(0.0), "tv_weight": at_least(0.0),
                                                   "l2_weight": at_least(0.0), "jitter": at_least(0)}
    presets: ClassVar[dict[str, Preset]] = with_student({
        "quick": {
            "*": {
                "epochs": 30,
                "batch_size": 128,
                "optimizer": "adam",
                "lr": 1e-3,
                "weight_decay": 0.0,
                "method": {"n": 2048, "iterations": 200, "lr_input": 0.1},
            },
            "mnist": {
                "epochs": 60,
                "batch_size": 128,
                "optimizer": "adam",
                "lr": 1e-3,
                "weight_decay": 0.0,
                "method": {"n": 1024, "iterations": 100, "lr_input": 0.1},
            },
            # digits (8×8) from the default ResNet-20 teacher: sized to ~20 s on one CPU thread (many images
            # with few fast input steps each — a diverse set beats a polished small one: 768 × 15 steps scored
            # +13 to +25 over noise on seeds 0-2 where 384 × 40 fell below it on one —, many cheap student
            # epochs; T = 8; measured there)
            "digits": {
                **DIGITS_STUDENT,
                "method": {"n": 768, "iterations": 15, "lr_input": 0.25, "temperature": 8.0},
            },
        },
        "paper": {
            "*": {
                "epochs": 200,
                "batch_size": 256,
                "optimizer": "adam",
                "lr": 1e-3,
                "weight_decay": 0.0,
                "method": {"n": 24064, "iterations": 2000, "lr_input": 0.05},
            },
            "cifar10": {
                "epochs": 200,
                "batch_size": 256,
                "optimizer": "sgd",
                "lr": 0.1,
                "augment": "crop_flip",
                "method": {"n": 50176, "iterations": 2000, "lr_input": 0.05},
            },
        },
    })

    def synthesize(self, n: int) -> SyntheticSet:
        ctx, params = self.ctx, self.params
        info, device, teacher = ctx.info, ctx.device, ctx.teacher
        dtype = resolve_precision(ctx.config.train.precision, device)
        classes = class_order(n, info.num_classes)
        low = synthetic.normalise(torch.zeros(1, info.channels, 1, 1), info.mean, info.std).to(device)
        high = synthetic.normalise(torch.ones(1, info.channels, 1, 1), info.mean, info.std).to(device)
        hooks = BNStatHooks(batchnorms(teacher))
        out = torch.empty(n, info.channels, info.image_size, info.image_size)
        try:
            with progress.track("deepinversion", n * params.iterations) as tracker:
                for start in range(0, n, params.synth_batch):
                    rows = slice(start, min(start + params.synth_batch, n))
                    size = rows.stop - rows.start
                    targets = classes[rows].to(device)
                    x = torch.randn(size, info.channels, info.image_size, info.image_size, device=device)
                    x = torch.max(torch.min(x, high), low).requires_grad_(True)
                    opt = torch.optim.Adam([x], lr=params.lr_input)
                    best = x.detach().clone()
                    best_loss = torch.full((), float("inf"), device=device)
                    for it in range(params.iterations):
                        dy, dx = torch.randint(-params.jitter, params.jitter + 1, (2,)).tolist()
                        jittered = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
                        with autocast(device, dtype):
                            logits = teacher(jittered).float()
                        loss = (
                            F.cross_entropy(logits, targets)
                            + params.bn_weight * hooks.take()
                            + params.tv_weight * total_variation_l2(jittered)
                            + params.l2_weight * input_l2(jittered)
                        )
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        # keep the lowest-loss iterate, compared on the device (no host sync per step)
                        better = loss.detach() < best_loss
                        best_loss = torch.where(better, loss.detach(), best_loss)
                        best = torch.where(better, x.detach(), best)
                        opt.step()
                        with torch.no_grad():
                            x.copy_(torch.max(torch.min(x, high), low))
                        if (it + 1) % 50 == 0 or it + 1 == params.iterations:
                            tracker.advance(size * (50 if (it + 1) % 50 == 0 else (it + 1) % 50))
                    out[rows] = synthetic.to_pixels(best, info.mean, info.std).cpu()
        finally:
            hooks.close()
        return finish_set(ctx, out, classes)
