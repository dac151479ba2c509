"""The CIFAR-sized AlexNet and AlexNet-half of ZSKD."""

from __future__ import annotations

from torch import nn

from kdcli.models import MODELS
from kdcli.models.base import Flatten, StagedNet
from kdcli.models.layers import check_dropout, conv_output_size, init_weights

# (out_channels, kernel, pooled) for the five convolutions.
_CONVS = ((48, 5, True), (128, 5, True), (192, 3, False), (192, 3, False), (128, 3, True))
_FC_UNITS = (512, 256)


def alexnet_cifar(
    in_channels: int,
    image_size: int,
    num_classes: int,
    width_scale: float = 1.0,
    dropout: float = 0.5,
) -> StagedNet:
    """AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) in the 32×32 form of ZSKD (Nayak et al., ICML 2019).

    Convs 5×5·48, 5×5·128, 3×3·192, 3×3·192, 3×3·128 ('same' padding), each conv-BN-ReLU, with a
    3×3 stride-2 max-pool after conv1, conv2 and conv5 (32 → 15 → 7 → 3); then fc 512 and fc 256
    with ReLU and dropout, then the classifier. A pool is skipped when the map is smaller than
    3×3, so 8×8 digits go 8 → 3 → 1. ZSKD's local response normalisation is dropped (BatchNorm
    does its job) and its fc layers carry no BatchNorm, so batches of one train.

    Stages: ``[conv1, conv2, conv3, conv4, conv5, fc1, fc2]`` (7).
    """
    dropout = check_dropout(dropout)
    size = image_size
    channels = in_channels
    stages: list[nn.Module] = []
    for width, kernel, pooled in _CONVS:
        width = max(1, round(width * width_scale))
        layers: list[nn.Module] = [
            nn.Conv2d(channels, width, kernel_size=kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        if pooled and size >= 3:
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
            size = conv_output_size(size, kernel=3, stride=2)
        stages.append(nn.Sequential(*layers))
        channels = width

    features = channels * size * size
    for index, units in enumerate(_FC_UNITS):
        units = max(1, round(units * width_scale))
        head: list[nn.Module] = [Flatten()] if index == 0 else []
        tail: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        stages.append(nn.Sequential(*head, nn.Linear(features, units), nn.ReLU(), *tail))
        features = units

    model = StagedNet(nn.Identity(), stages, nn.Identity(), nn.Linear(features, num_classes))
    init_weights(model)
    return model


@MODELS.register("alexnet", help="CIFAR AlexNet of ZSKD (5 conv-BN-ReLU, fc 512-256); option dropout (0.5)")
def alexnet(in_channels: int, image_size: int, num_classes: int, dropout: float = 0.5) -> StagedNet:
    """AlexNet (Krizhevsky et al. 2012), the CIFAR-10 teacher of ZSKD (Nayak et al., ICML 2019)."""
    return alexnet_cifar(in_channels, image_size, num_classes, 1.0, dropout)


@MODELS.register("alexnet-half", help="AlexNet with half the filters and units (ZSKD's CIFAR-10 student)")
def alexnet_half(in_channels: int, image_size: int, num_classes: int, dropout: float = 0.5) -> StagedNet:
    """AlexNet-half: half the filters and fc units of AlexNet; the CIFAR-10 student of ZSKD (Nayak et al., ICML 2019)."""
    return alexnet_cifar(in_channels, image_size, num_classes, 0.5, dropout)
