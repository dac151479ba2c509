"""Fully connected networks named by their hidden widths: ``mlp-1200-1200`` (HintonNet)."""

from __future__ import annotations

import re

from torch import nn

from kdcli.errors import KDError
from kdcli.models import MODELS
from kdcli.models.base import Flatten, StagedNet
from kdcli.models.layers import check_dropout, init_weights


def _parse_hidden(match: re.Match[str]) -> dict[str, tuple[int, ...]]:
    return {"hidden": tuple(int(width) for width in match["hidden"].strip("-").split("-"))}


@MODELS.register(
    "mlp-H1-H2-...",
    help="MLP with the given hidden widths, ReLU (e.g. mlp-1200-1200); option dropout (default 0)",
    pattern=r"mlp(?P<hidden>(?:-\d+)+)",
    parse=_parse_hidden,
    examples=("mlp-1200-1200", "mlp-800-800"),
)
def mlp(
    in_channels: int,
    image_size: int,
    num_classes: int,
    hidden: tuple[int, ...],
    dropout: float = 0.0,
) -> StagedNet:
    """Multi-layer perceptron on the flattened image.

    ``mlp-1200-1200`` and ``mlp-800-800`` are the MNIST teacher and student of Hinton, Vinyals and
    Dean, "Distilling the Knowledge in a Neural Network" (NIPS-W 2015), reused by Lopes et al.
    (NIPS-W 2017) as "HintonNet" 784-1200-1200 → 784-800-800.

    Stem: flatten. Stages: one ``Linear → ReLU [→ Dropout]`` per hidden width (``len(hidden)``).
    """
    if not hidden or any(width < 1 for width in hidden):
        raise KDError(f"mlp hidden widths must be positive integers, got {'-'.join(map(str, hidden))}.")
    dropout = check_dropout(dropout)
    features = in_channels * image_size * image_size
    stages: list[nn.Module] = []
    for width in hidden:
        layers: list[nn.Module] = [nn.Linear(features, width), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        stages.append(nn.Sequential(*layers))
        features = width
    model = StagedNet(Flatten(), stages, nn.Identity(), nn.Linear(features, num_classes))
    init_weights(model)
    return model
