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

#: The LeNet-5 teacher of the data-free papers' MNIST rows, as the official DAFL code trains it
#: (DAFL/teacher-train.py: Adam 1e-3, batch 256, 9 epochs, all training images); fp32 as the papers ran.
PAPER_LENET5: dict[str, Any] = {
    "model": "lenet5", "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant",
    "batch_size": 256, "epochs": 9, "val_fraction": 0.0, "augment": "none", "precision": "fp32",
}


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
        # the teachers of the data-free papers (see preset_notes)
        "paper": {
            "mnist": {**PAPER_LENET5, "image_size": 32},
            "cifar10": {"model": "alexnet", "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
                        "schedule": "constant", "batch_size": 64, "epochs": 500, "val_fraction": 0.0,
                        "augment": "none", "precision": "fp32"},
            "*": PAPER_LENET5,
        },
    }
    preset_notes: ClassVar[dict[str, str]] = {
        "paper": "The data-free papers' teachers. mnist: DAFL paper (Chen et al., ICCV 2019) Table 1, LeNet-5 "
                 "teacher 98.91 % (also the teacher of the ZSKD and Lopes et al. MNIST rows, PAPERS.md); recipe "
                 "from the official DAFL code (huawei-noah, DAFL/teacher-train.py, checked): LeNet-5, Adam lr 1e-3, "
                 "no weight decay, constant rate, batch 256, `for e in range(1, 10)` = 9 epochs, all 60k training "
                 "images (no validation split; the last epoch is reported, where the official script prints each "
                 "epoch's test accuracy), MNIST resized to 32×32 (transforms.Resize) and normalised with "
                 "0.1307/0.3081, no augmentation; fp32. cifar10: ZSKD (Nayak et al., ICML 2019) AlexNet teacher, "
                 "83.03 % (unverified); recipe from the official ZSKD code (vcl-iisc/ZSKD, model_training/train.py "
                 "--network teacher --dataset cifar10, checked): cross-entropy, Adam lr 1e-3, batch 64, 500 epochs "
                 "(its default), no weight decay, no augmentation (its --data_augmentation is off by default). "
                 "Differs: the official code keeps the checkpoint of the best test accuracy (its shipped one is "
                 "from step 27257, about epoch 35) where kd reports the last epoch, and its AlexNet has local "
                 "response normalisation where kd's has BatchNorm. Other datasets: the MNIST recipe at the "
                 "dataset's own size.",
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
