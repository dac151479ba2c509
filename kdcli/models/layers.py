"""Small pieces every kd architecture shares: weight init, conv shorthands, size arithmetic."""

from __future__ import annotations

from torch import nn

from kdcli.errors import KDError


def init_weights(model: nn.Module) -> None:
    """Standard init: Kaiming-normal convs (fan-out, ReLU gain), zero conv biases, BatchNorm γ=1 β=0.

    Linear layers keep PyTorch's default (Kaiming-uniform), which is what the reference
    implementations of the papers' networks use for their classifiers.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3×3 'same' convolution without bias (a BatchNorm follows it)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1×1 projection without bias, for shortcuts that change width or resolution."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size after a convolution or pooling layer (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


def check_dropout(p: float) -> float:
    """Validate a dropout probability given on the command line."""
    if not 0.0 <= p < 1.0:
        raise KDError(f"dropout must be in [0, 1), got {p}.")
    return float(p)
