"""Chen, Wang, Xu, Yang, Liu, Shi, Xu, Xu, Tian (2019), "DAFL: Data-Free Learning of Student Networks"
(ICCV; arXiv:1904.01186).

The teacher acts as a fixed discriminator for a generator ``G``. Per step, with ``x = G(z)``::

    L_G = α_oh·CE(t(x), argmax t(x)) − α_a·mean|f_t(x)| + α_ie·Σ_k p̄_k log₁₀ p̄_k
    L_S = KL(σ(t(x)) ‖ σ(s(x.detach())))                   (T = 1)

``f_t`` is the teacher's declared feature vector (``Features.feature``): the layer the official DAFL
code returns with ``out_feature=True``, which is LeNet-5's 120-d conv3 output (kd's ``lenet5`` declares
it as its ``feature_stage``) and a ResNet's pooled penultimate vector. A model that declares no
feature (your own :class:`~kdcli.models.StagedNet` included) gives its penultimate embedding. ``p̄`` is
the batch-mean softmax (so the last term is minus the entropy of the mean prediction: it asks for a
class-balanced batch; log base 10 as in the official code, for which the α values were tuned).
``L_G + L_S`` is back-propagated once and both optimizers step, as in the official code. Loss parts:
``loss``, ``generator``, ``onehot``, ``activation``, ``entropy``, ``kd``, ``agree``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kdcli.config import Range, at_least, positive
from kdcli.methods.base import Batch, MethodContext, Preset, adam, agreement, build_optimizer, register_method
from kdcli.methods.datafree.transfer import GeneratorDistill, student_for, with_student
from kdcli.methods.losses import dafl_generator_loss, kd_loss
from kdcli.models.generator import create_generator


@dataclass
class DAFLParams:
    """DAFL hyperparameters (paper defaults for MNIST; CIFAR values in the ``paper`` preset).

    Attributes:
        latent_dim: size of ``z`` (MNIST 100, CIFAR 1000).
        lr_generator: Adam learning rate of the generator (MNIST 0.2, CIFAR 0.02); not scheduled.
        alpha_oh: weight of the one-hot loss (MNIST 1, CIFAR-10 0.05, CIFAR-100 0.5).
        alpha_a: weight of the activation loss (MNIST 0.1, CIFAR-10 0.01, CIFAR-100 0.1).
        alpha_ie: weight of the information-entropy loss (5; CIFAR-100 20).
        iterations: steps per epoch (120).
        temperature: T of the student's KL (1).
        activation_layer: what the activation term reads: ``"declared"`` (the model's declared feature, the
            official code's layer; the default) or ``"embedding"`` (the penultimate embedding, what kd read
            before issue 11: LeNet-5's 84-d fc2 output), kept so the two can be compared at one budget.
    """

    latent_dim: int = 100
    lr_generator: float = 0.2
    alpha_oh: float = 1.0
    alpha_a: float = 0.1
    alpha_ie: float = 5.0
    iterations: int = 120
    temperature: float = 1.0
    activation_layer: str = "declared"


ACTIVATION_LAYERS = ("declared", "embedding")


@register_method("dafl", command="distill-datafree",
                 help="Chen et al. 2019: generator vs fixed teacher (one-hot, activation, entropy)")
class DAFL(GeneratorDistill):
    """Generator trained against the fixed teacher (one-hot, activation, information entropy);
    the student learns by KD on its samples."""

    Params = DAFLParams
    teacher_needs: ClassVar[frozenset[str]] = frozenset({"features"})  # the activation loss reads the feature vector
    param_ranges: ClassVar[dict[str, Range]] = {"latent_dim": positive(), "lr_generator": positive(), "alpha_oh": at_least(0.0),
                                                   "alpha_a": at_least(0.0), "alpha_ie": at_least(0.0),
                                                   "iterations": positive(), "temperature": positive()}
    param_choices: ClassVar[dict[str, tuple[str, ...]]] = {"activation_layer": ACTIVATION_LAYERS}
    presets: ClassVar[dict[str, Preset]] = with_student({
        "quick": {  # the generator dominates the cost: ~1 s per batch of 64 MNIST images on one CPU core
            "*": {
                "epochs": 20,
                "batch_size": 256,
                "optimizer": "adam",
                "lr": 2e-3,
                "weight_decay": 0.0,
                "schedule": "constant",
                "method": {"iterations": 50},
            },
            "mnist": {
                "epochs": 20,
                "batch_size": 64,
                "optimizer": "adam",
                "lr": 2e-3,
                "weight_decay": 0.0,
                "schedule": "constant",
                "method": {"iterations": 20},
            },
            # digits (8×8) from the default ResNet-20 teacher: sized to ~20 s on one CPU thread (90 steps of
            # 128); a faster student rate and T = 8 learn most from so few generator batches, and a gentler
            # generator rate (0.05, not 0.2) keeps every seed from collapsing (measured there)
            "digits": {
                "epochs": 6,
                "batch_size": 128,
                "optimizer": "adam",
                "lr": 1e-2,
                "weight_decay": 0.0,
                "schedule": "constant",
                "method": {"iterations": 15, "temperature": 8.0, "lr_generator": 0.05},
            },
        },
        "paper": {
            "*": {
                "epochs": 200,
                "batch_size": 512,
                "optimizer": "adam",
                "lr": 2e-3,
                "weight_decay": 0.0,
                "schedule": "constant",
                "method": {"iterations": 120},
            },
            "cifar10": {
                "epochs": 2000,
                "batch_size": 1024,
                "optimizer": "sgd",
                "lr": 0.1,
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "schedule": "step",
                "milestones": [800, 1600],
                "gamma": 0.1,
                "method": {
                    "latent_dim": 1000,
                    "lr_generator": 0.02,
                    "alpha_oh": 0.05,
                    "alpha_a": 0.01,
                    "alpha_ie": 5.0,
                },
            },
            "cifar100": {
                "epochs": 2000,
                "batch_size": 1024,
                "optimizer": "sgd",
                "lr": 0.1,
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "schedule": "step",
                "milestones": [800, 1600],
                "gamma": 0.1,
                "method": {"latent_dim": 1000, "lr_generator": 0.02, "alpha_oh": 0.5, "alpha_a": 0.1, "alpha_ie": 20.0},
            },
        },
    })

    preset_notes: ClassVar[dict[str, str]] = {
        "paper": "DAFL paper, MNIST LeNet-5 (98.91) → LeNet-5-half: 98.20 % (the PAPERS.md anchor); CIFAR-10 "
                 "ResNet-34 → ResNet-18 92.22, CIFAR-100 74.47. Official code (huawei-noah DAFL-train.py, checked): "
                 "MNIST 200 epochs × 120 steps at batch 512 on 32 px images, Adam lr_S 2e-3 and lr_G 0.2 (both "
                 "constant), z 100, α_oh 1, α_ie 5 (log10), α_a 0.1 on the teacher's declared feature (LeNet-5's "
                 "120-d conv3 output); CIFAR 2000 epochs at batch 1024, z 1000, student SGD 0.1 ×0.1 at 800/1600, "
                 "wd 5e-4, generator Adam 0.02. fp32 (--precision auto means fp32 here). Its teacher is trained "
                 "with Adam lr 1e-3 and no weight decay: a weight-decayed teacher has smaller activations, which "
                 "weakens the activation term.",
    }

    def __init__(self, ctx: MethodContext, params: DAFLParams) -> None:
        super().__init__(ctx, params)
        info = ctx.info
        self.student = student_for(ctx)
        self.generator = create_generator(
            "generator-dafl", info.channels, info.image_size, info.num_classes, params.latent_dim
        )

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        generator_opt = adam(list(self.generator.parameters()), self.params.lr_generator)
        return [generator_opt, build_optimizer(self.ctx.config.optim, list(self.student.parameters()))]

    def graphable_step(self) -> bool:
        # noise, generator, teacher, student and both optimizer steps are device work with fixed
        # hyperparameters: on CUDA the whole step is one graph
        return True

    def scheduled_optimizers(self) -> list[torch.optim.Optimizer]:
        """Only the student's: the official code keeps the generator's learning rate fixed."""
        return self.optimizers()[1:]

    def training_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        generator_opt, student_opt = self.optimizers()
        p = self.params
        images = self.generator(self.latent())
        teacher_logits, features = self.teacher.forward_features(images)
        activations = features.feature if p.activation_layer == "declared" else features.embedding
        g = dafl_generator_loss(teacher_logits, activations, p.alpha_oh, p.alpha_a, p.alpha_ie)
        student_logits = self.student(images.detach())
        kd = kd_loss(student_logits, teacher_logits.detach(), p.temperature)
        generator_opt.zero_grad(set_to_none=True)
        student_opt.zero_grad(set_to_none=True)
        (g["loss"] + kd).backward()
        generator_opt.step()
        student_opt.step()
        agree = agreement(student_logits, teacher_logits)
        return {
            "loss": g["loss"].detach() + kd.detach(),
            "generator": g["loss"].detach(),
            "onehot": g["onehot"].detach(),
            "activation": g["activation"].detach(),
            "entropy": g["entropy"].detach(),
            "kd": kd.detach(),
            "agree": agree,
        }
