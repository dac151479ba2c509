"""Wide residual networks ``wrn-D-K`` (pre-activation, depth D = 6n+4, widening factor K)."""

from __future__ import annotations

import re

import torch
from torch import nn

from kdcli.errors import KDError
from kdcli.models import MODELS
from kdcli.models.base import GlobalAvgPool, StagedNet
from kdcli.models.layers import check_dropout, conv1x1, conv3x3, init_weights


class WideBlock(nn.Module):
    """Pre-activation basic block of a WRN: ``BN-ReLU-conv3×3 → BN-ReLU-[dropout]-conv3×3`` + skip.

    When the width or resolution changes, the skip is a 1×1 convolution of the pre-activated
    input, as in Zagoruyko & Komodakis' code; otherwise the raw input is added.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(out_channels, out_channels)
        self.relu = nn.ReLU()
        self.projection: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.projection = conv1x1(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu(self.bn1(x))
        out = self.conv1(activated)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        skip = x if self.projection is None else self.projection(activated)
        return out + skip


def _parse_wrn(match: re.Match[str]) -> dict[str, int]:
    return {"depth": int(match["depth"]), "widen": int(match["widen"])}


@MODELS.register(
    "wrn-D-K",
    help="Wide ResNet, depth D=6n+4, widen K (e.g. wrn-40-2, wrn-16-1); option dropout (default 0); 3 stages",
    pattern=r"wrn-(?P<depth>\d+)-(?P<widen>\d+)",
    parse=_parse_wrn,
    examples=("wrn-16-1", "wrn-16-2", "wrn-40-2"),
)
def wide_resnet(
    in_channels: int,
    image_size: int,
    num_classes: int,
    depth: int,
    widen: int,
    dropout: float = 0.0,
) -> StagedNet:
    """WRN-D-K (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

    ``conv3×3(16) stem → 3 stages of n = (D-4)/6 pre-activation blocks at widths 16K/32K/64K
    (strides 1, 2, 2) → BN-ReLU → global avg-pool → linear``. The final BN-ReLU closes the last
    stage, so every stage output is a sensible map for attention transfer. WRN-40-2 → WRN-16-1 is
    the CIFAR-10 pair of ZSKT (Micaelli & Storkey, NeurIPS 2019) and CMI (Fang et al., 2021).
    """
    if depth < 10 or (depth - 4) % 6 != 0:
        hint = ""
        if depth >= 11 and (depth - 2) % 9 == 0:  # e.g. OKDDip's WRN-20-8, a bottleneck network
            hint = f" A bottleneck WRN of depth 9n+2 (OKDDip's WRN-20-8) is wrn-bottleneck-{depth}-{widen}."
        raise KDError(
            f"wrn depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got wrn-{depth}-{widen}.{hint}"
        )
    if widen < 1:
        raise KDError(f"wrn widening factor must be >= 1, got wrn-{depth}-{widen}.")
    dropout = check_dropout(dropout)
    blocks_per_stage = (depth - 4) // 6
    stem = conv3x3(in_channels, 16)
    stages: list[nn.Module] = []
    channels = 16
    for index, width in enumerate((16 * widen, 32 * widen, 64 * widen)):
        stride = 1 if index == 0 else 2
        layers: list[nn.Module] = [WideBlock(channels, width, stride, dropout)]
        layers += [WideBlock(width, width, 1, dropout) for _ in range(blocks_per_stage - 1)]
        channels = width
        if index == 2:
            layers += [nn.BatchNorm2d(channels), nn.ReLU()]
        stages.append(nn.Sequential(*layers))
    model = StagedNet(stem, stages, GlobalAvgPool(), nn.Linear(channels, num_classes))
    init_weights(model)
    return model
