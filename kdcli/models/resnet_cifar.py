"""CIFAR-style ResNets with basic blocks: ResNet-20/32/56/110 (16-32-64) and ResNet-18/34 (64-…-512)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kdcli.models import MODELS
from kdcli.models.base import GlobalAvgPool, StagedNet
from kdcli.models.layers import conv1x1, conv3x3, init_weights


class BasicBlock(nn.Module):
    """Post-activation basic block (He et al., CVPR 2016): two 3×3 conv-BN, identity or projection skip, ReLU.

    When width or resolution changes the shortcut is a 1×1 conv + BN projection (the paper's
    option B); it costs a few thousand parameters over option A's zero padding and keeps every
    block a plain module (no lambdas), so blocks deep-copy and script cleanly.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def cifar_resnet(
    in_channels: int,
    num_classes: int,
    stem_width: int,
    widths: Sequence[int],
    blocks: Sequence[int],
) -> StagedNet:
    """``conv3×3-BN-ReLU stem → one stage of basic blocks per width → global avg-pool → linear``.

    The first stage keeps the resolution, each later one halves it with a stride-2 first block.
    A 3×3 stride-2 convolution with padding 1 maps any size ≥ 1 to a size ≥ 1, so 8×8 inputs
    (sklearn digits) go 8 → 4 → 2 (→ 1) and never collapse.
    """
    stem = nn.Sequential(conv3x3(in_channels, stem_width), nn.BatchNorm2d(stem_width), nn.ReLU())
    stages: list[nn.Module] = []
    channels = stem_width
    for index, (width, count) in enumerate(zip(widths, blocks)):
        stride = 1 if index == 0 else 2
        layers = [BasicBlock(channels, width, stride)]
        layers += [BasicBlock(width, width) for _ in range(count - 1)]
        stages.append(nn.Sequential(*layers))
        channels = width
    model = StagedNet(stem, stages, GlobalAvgPool(), nn.Linear(channels, num_classes))
    init_weights(model)
    return model


def _register_thin_resnet(depth: int) -> None:
    blocks_per_stage = (depth - 2) // 6

    def build(in_channels: int, image_size: int, num_classes: int) -> StagedNet:
        return cifar_resnet(in_channels, num_classes, 16, (16, 32, 64), (blocks_per_stage,) * 3)

    build.__name__ = f"resnet{depth}"
    build.__doc__ = (
        f"ResNet-{depth} for CIFAR (He, Zhang, Ren, Sun, 'Deep Residual Learning for Image Recognition', "
        f"CVPR 2016, §4.2): depth 6n+2 with n={blocks_per_stage}, widths 16/32/64, 3 stages. "
        "The DML/ONE/OKDDip/CL papers' CIFAR-100 network is ResNet-32."
    )
    MODELS.register(f"resnet{depth}", help=f"CIFAR ResNet-{depth} (He et al. 2016), 16-32-64, 3 stages")(build)


for _depth in (20, 32, 56, 110):
    _register_thin_resnet(_depth)


@MODELS.register("resnet18", help="ResNet-18, CIFAR variant (3×3 stem, no max-pool), 64-512, 4 stages")
def resnet18(in_channels: int, image_size: int, num_classes: int) -> StagedNet:
    """ResNet-18 (He et al., CVPR 2016) in the CIFAR variant used as the student of DAFL (Chen et al.,
    ICCV 2019), ZSKT (Micaelli & Storkey, NeurIPS 2019) and DeepInversion (Yin et al., CVPR 2020):
    3×3 stride-1 stem without max-pool, basic blocks [2, 2, 2, 2] at widths 64/128/256/512.
    """
    return cifar_resnet(in_channels, num_classes, 64, (64, 128, 256, 512), (2, 2, 2, 2))


@MODELS.register("resnet34", help="ResNet-34, CIFAR variant (3×3 stem, no max-pool), 64-512, 4 stages")
def resnet34(in_channels: int, image_size: int, num_classes: int) -> StagedNet:
    """ResNet-34 (He et al., CVPR 2016) in the CIFAR variant used as the teacher of DAFL (Chen et al.,
    ICCV 2019), ZSKT (Micaelli & Storkey, NeurIPS 2019) and DeepInversion (Yin et al., CVPR 2020):
    3×3 stride-1 stem without max-pool, basic blocks [3, 4, 6, 3] at widths 64/128/256/512.
    """
    return cifar_resnet(in_channels, num_classes, 64, (64, 128, 256, 512), (3, 4, 6, 3))
