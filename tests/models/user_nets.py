"""Models written the way a user writes them outside kd; tests name them by import path
(``tests.models.user_nets:make_convnet``), as a user names ``my_pkg.nets:make_resnet``."""

from __future__ import annotations

from torch import nn

from kdcli.models import StagedNet
from kdcli.models.base import GlobalAvgPool


class ConvNet(nn.Module):
    """A plain classifier (not a StagedNet): conv-BN-ReLU ×2, global pool, linear. Logits only."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def make_convnet(num_classes: int, in_channels: int, width: int = 8) -> ConvNet:
    """The factory form: geometry by name, the rest from --model-arg."""
    return ConvNet(num_classes, in_channels, width)


def make_staged(in_channels: int, image_size: int, num_classes: int, width: int = 8) -> StagedNet:
    """A user's model built as a kd StagedNet (stem → stages → pool → classifier): every method can use it."""

    def block(cin: int, cout: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU())

    stages = [block(width, width, 1), block(width, 2 * width, 2), block(2 * width, 2 * width, 1)]
    return StagedNet(block(in_channels, width, 1), stages, GlobalAvgPool(), nn.Linear(2 * width, num_classes))


def make_ten_classes(in_channels: int) -> ConvNet:
    """Ignores the dataset's classes: kd must refuse it on a dataset with another count."""
    return ConvNet(10, in_channels)
