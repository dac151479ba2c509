"""CIFAR ResNets with bottleneck blocks: ``resnet-bottleneck-D`` and ``wrn-bottleneck-D-K``.

These are the "ResNet-110" networks of the ONE and OKDDip official code and OKDDip's "WRN-20-8".
Both codes build them the same way: a 3×3 conv(16)-BN-ReLU stem, three stages of post-activation
bottleneck blocks at resolutions 32/16/8 (on CIFAR), global average pooling and one linear layer.
A stage ``s`` (planes 16, 32, 64) has inner width ``planes · K`` (K = 1 for the plain ResNets) and
output width ``planes · 4``, so the embedding the classifier reads is 256-d in all of them.

Depth is counted as weighted layers, the way He et al. name bottleneck networks (ResNet-164 =
9·18 + 2): ``D = 9n + 2`` for n blocks per stage (three convolutions a block, plus stem and
classifier). The papers' labels do not all follow that count, so the names here differ from them:

=========================================  ====================  =================================
paper label (code)                         blocks per stage      kd name
=========================================  ====================  =================================
ONE "ResNet-110" (``--depth 110``)         18 bottleneck         ``resnet-bottleneck-164``
OKDDip "ResNet-110" (``resnet110``)        12 bottleneck         ``resnet-bottleneck-110``
OKDDip "WRN-20-8" (``wide_resnet20_8``)    2 bottleneck, K = 8   ``wrn-bottleneck-20-8``
=========================================  ====================  =================================

ONE's code (``models/cifar/resnet.py``, Lan1991Xu/ONE_NeurIPS2018) switches to bottleneck blocks
for ``depth >= 44`` but keeps the basic-block count ``n = (depth − 2) / 6``, so its ResNet-110 has
18 bottleneck blocks a stage (164 weighted layers, 1.7M parameters, about as many as the
basic-block ResNet-110). OKDDip's code (``models/model_cifar/resnet.py``, DefangChen/OKDDip-AAAI2020)
uses ``[12, 12, 12]`` bottleneck blocks (110 weighted layers, 1.15M parameters on CIFAR-10). kd's
``resnet110`` remains He et al.'s basic-block network (18 basic blocks a stage).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from kdcli.errors import KDError
from kdcli.models import MODELS
from kdcli.models.base import GlobalAvgPool, StagedNet
from kdcli.models.layers import conv1x1, conv3x3, init_weights

# Per-stage "planes" of both official codes; a block's output width is EXPANSION × planes.
PLANES = (16, 32, 64)
EXPANSION = 4
STEM_WIDTH = 16


class Bottleneck(nn.Module):
    """Post-activation bottleneck block: ``1×1 conv-BN-ReLU → 3×3 conv-BN-ReLU → 1×1 conv-BN`` + skip, ReLU.

    ``in_channels → width → width → out_channels``; a stride sits on the 3×3 convolution. When
    the width or resolution changes, the skip is a 1×1 conv + BN projection (with the stride),
    otherwise the identity. This is the ``Bottleneck`` of both ``models/cifar/resnet.py`` (ONE)
    and ``models/model_cifar/resnet.py`` (OKDDip), whose projection is applied in
    ``_make_layer`` for the first block of every stage.
    """

    def __init__(self, in_channels: int, width: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def bottleneck_resnet(in_channels: int, num_classes: int, blocks_per_stage: int, widen: int = 1) -> StagedNet:
    """``conv3×3(16)-BN-ReLU stem → 3 stages of bottleneck blocks → global avg-pool → linear(256)``.

    Stage ``s`` has ``blocks_per_stage`` blocks of inner width ``PLANES[s]·widen`` and output width
    ``PLANES[s]·4`` (64/128/256); the first block of stages 2 and 3 has stride 2. Initialisation is
    kd's standard (Kaiming-normal fan-out convs, BN γ=1 β=0, PyTorch-default linear), which is what
    both official codes do for convolutions and BatchNorm (neither zero-initialises the last BN).
    """
    stem = nn.Sequential(conv3x3(in_channels, STEM_WIDTH), nn.BatchNorm2d(STEM_WIDTH), nn.ReLU())
    stages: list[nn.Module] = []
    channels = STEM_WIDTH
    for index, planes in enumerate(PLANES):
        stride = 1 if index == 0 else 2
        width, out = planes * widen, planes * EXPANSION
        layers = [Bottleneck(channels, width, out, stride)]
        layers += [Bottleneck(out, width, out) for _ in range(blocks_per_stage - 1)]
        stages.append(nn.Sequential(*layers))
        channels = out
    model = StagedNet(stem, stages, GlobalAvgPool(), nn.Linear(channels, num_classes))
    init_weights(model)
    return model


def _blocks_per_stage(name: str, depth: int) -> int:
    if depth < 11 or (depth - 2) % 9 != 0:
        raise KDError(
            f"{name}: a bottleneck ResNet's depth counts 3 convolutions a block, so it must be 9n+2 with n >= 1 "
            f"(11, 20, 29, ..., 110, 164), got {depth}; ONE's 'ResNet-110' is resnet-bottleneck-164, "
            "OKDDip's is resnet-bottleneck-110."
        )
    return (depth - 2) // 9


def _parse_depth(match: re.Match[str]) -> dict[str, int]:
    return {"depth": int(match["depth"])}


def _parse_depth_widen(match: re.Match[str]) -> dict[str, int]:
    return {"depth": int(match["depth"]), "widen": int(match["widen"])}


@MODELS.register(
    "resnet-bottleneck-D",
    help="bottleneck CIFAR ResNet, depth D=9n+2, 16-32-64 ×4; ONE's ResNet-110 is D=164, OKDDip's D=110; 3 stages",
    pattern=r"resnet-bottleneck-(?P<depth>\d+)",
    parse=_parse_depth,
    examples=("resnet-bottleneck-110", "resnet-bottleneck-164"),
)
def resnet_bottleneck(in_channels: int, image_size: int, num_classes: int, depth: int) -> StagedNet:
    """Bottleneck CIFAR ResNet with n = (D−2)/9 blocks per stage, inner widths 16/32/64, outputs 64/128/256.

    Each detail and where it comes from:

    * Block: post-activation bottleneck (1×1, 3×3 with the stride, 1×1, expansion 4), 1×1 conv + BN
      projection when the shape changes: ``Bottleneck`` and ``_make_layer`` in ONE's
      ``models/cifar/resnet.py`` and in OKDDip's ``models/model_cifar/resnet.py`` (identical).
    * Blocks per stage: ONE's ``ResNet``/``ONE_ResNet`` use ``n = (depth−2)//6`` with ``Bottleneck`` when
      ``depth >= 44``; its scripts (``scripts/ONE_ResNet110.sh``) pass ``--depth 110``, so n = 18 →
      ``resnet-bottleneck-164``. OKDDip's ``resnet110()`` is ``ResNet(Bottleneck, [12, 12, 12])`` →
      ``resnet-bottleneck-110``.
    * Widths: stem 16, planes 16/32/64 (``_make_layer(block, 16|32|64, ...)``), classifier on
      ``64 * block.expansion`` = 256 features, in both files.
    * Pooling: ONE uses ``AvgPool2d(8)`` and OKDDip ``AdaptiveAvgPool2d(1)``; on 32×32 inputs both are
      the global average used here (which also serves smaller inputs).

    Parameters (3×32×32): resnet-bottleneck-164 1,704,154 (10 classes) / 1,727,284 (100 classes), the
    1.7M the ONE paper gives for its ResNet-110; resnet-bottleneck-110 1,147,738 / 1,170,868.
    """
    return bottleneck_resnet(in_channels, num_classes, _blocks_per_stage(f"resnet-bottleneck-{depth}", depth))


@MODELS.register(
    "wrn-bottleneck-D-K",
    help="wide bottleneck CIFAR ResNet, D=9n+2, inner 16K-32K-64K, out 64-256 (OKDDip's WRN-20-8); 3 stages",
    pattern=r"wrn-bottleneck-(?P<depth>\d+)-(?P<widen>\d+)",
    parse=_parse_depth_widen,
    examples=("wrn-bottleneck-20-8",),
)
def wrn_bottleneck(in_channels: int, image_size: int, num_classes: int, depth: int, widen: int) -> StagedNet:
    """Wide bottleneck CIFAR ResNet: n = (D−2)/9 blocks per stage whose 3×3 convolutions are K times wider.

    This is OKDDip's "WRN-20-8" (Chen et al., AAAI 2020), not a Zagoruyko-Komodakis WRN (``wrn-D-K``:
    pre-activation basic blocks, depth 6n+4, every width multiplied). Following OKDDip's
    ``models/model_cifar/resnet.py``, ``wide_resnet20_8()`` is ``ResNet(Bottleneck, [2, 2, 2],
    width_per_group=64*8)``, and its ``Bottleneck`` sets the inner width to
    ``int(planes * width_per_group / 64)`` = 8·planes while the block output stays ``planes * 4``:

    * blocks per stage: 2 → depth 9·2 + 2 = 20;
    * inner (1×1 → 3×3 → 1×1) widths 16K/32K/64K = 128/256/512 for K = 8;
    * outputs 64/128/256, stem 16, 256-d embedding (OKDDip's ``utils.lookup`` gives 256 for it);
    * the block, projection, stem and pooling are those of :func:`resnet_bottleneck`.

    ``wrn-bottleneck-D-1`` is ``resnet-bottleneck-D``. Parameters (3×32×32): wrn-bottleneck-20-8
    6,848,090 (10 classes) / 6,871,220 (100 classes).
    """
    name = f"wrn-bottleneck-{depth}-{widen}"
    if widen < 1:
        raise KDError(f"{name}: the widening factor K must be >= 1.")
    return bottleneck_resnet(in_channels, num_classes, _blocks_per_stage(name, depth), widen)
