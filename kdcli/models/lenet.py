"""LeNet-5 and LeNet-5-half, the MNIST teacher/student pair of the data-free KD papers."""

from __future__ import annotations

from torch import nn

from kdcli.models import MODELS
from kdcli.models.base import Flatten, StagedNet
from kdcli.models.layers import conv_output_size, init_weights


def lenet(
    in_channels: int,
    image_size: int,
    num_classes: int,
    conv_widths: tuple[int, int] = (6, 16),
    fc_units: tuple[int, int] = (120, 84),
) -> StagedNet:
    """LeNet-5 (LeCun, Bottou, Bengio, Haffner; Proc. IEEE 1998) as used for MNIST by Lopes et al.
    (NIPS-W 2017), ZSKD (Nayak et al., ICML 2019) and DAFL (Chen et al., ICCV 2019).

    ``conv5×5(6) → maxpool → conv5×5(16) → maxpool → fc 120 → fc 84 → classifier``, with ReLU and
    max-pooling (as those papers' code does), and deliberately no BatchNorm: it is the classic
    BN-free teacher, and methods that need BN statistics must refuse it.

    Stages: ``[conv1, conv2, fc1, fc2]`` (4). Images of 28 px or more use valid convolutions
    (28 → 24 → 12 → 8 → 4); smaller ones (digits 8×8, USPS 16×16) pad the convolutions to 'same'
    so the map never shrinks below 1×1, and a pool is skipped once the map is 1×1.

    Declared feature (``feature_stage``): the ``fc1`` stage, the 120 units (60 in the half net) after
    their ReLU. It is the layer the official DAFL code (huawei-noah, ``lenet.py``) returns with
    ``out_feature=True``: its ``conv3`` (a 5×5 convolution on the 5×5 map of 32 px inputs, so exactly
    this fully connected layer), flattened after ``relu3``.
    """
    padding = 0 if image_size >= 28 else 2
    size = image_size
    channels = in_channels
    stages: list[nn.Module] = []
    for width in conv_widths:
        layers: list[nn.Module] = [nn.Conv2d(channels, width, kernel_size=5, padding=padding), nn.ReLU()]
        size = conv_output_size(size, kernel=5, padding=padding)
        if size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        stages.append(nn.Sequential(*layers))
        channels = width

    features = channels * size * size
    for index, units in enumerate(fc_units):
        # The flatten opens the first fc stage so every stage is self-contained for splitting.
        head: list[nn.Module] = [Flatten()] if index == 0 else []
        stages.append(nn.Sequential(*head, nn.Linear(features, units), nn.ReLU()))
        features = units

    model = StagedNet(nn.Identity(), stages, nn.Identity(), nn.Linear(features, num_classes))
    model.feature_stage = len(conv_widths)  # the first fc stage: the official DAFL code's conv3 output
    init_weights(model)
    return model


@MODELS.register("lenet5", help="LeNet-5 (conv 6-16, fc 120-84), no BatchNorm; 4 stages")
def lenet5(in_channels: int, image_size: int, num_classes: int) -> StagedNet:
    """LeNet-5 (LeCun et al. 1998), the MNIST teacher of Lopes et al. 2017, ZSKD 2019 and DAFL 2019."""
    return lenet(in_channels, image_size, num_classes, (6, 16), (120, 84))


@MODELS.register("lenet5-half", help="LeNet-5 with half the channels and units (conv 3-8, fc 60-42)")
def lenet5_half(in_channels: int, image_size: int, num_classes: int) -> StagedNet:
    """LeNet-5-half: the student of Lopes et al. 2017, ZSKD (Nayak et al. 2019) and DAFL (Chen et al. 2019)."""
    return lenet(in_channels, image_size, num_classes, (3, 8), (60, 42))
