"""The shape every kd model has: stem → stages (block groups) → pool → classifier.

Keeping that one shape lets the engine and the methods ask any model for its block-group
features (attention transfer, activation statistics, BatchNorm hooks) and lets the multi-branch
builder split any model at a named stage, without a special case per architecture.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model: stored in every checkpoint's metadata."""

    arch: str
    in_channels: int
    image_size: int
    num_classes: int
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Features:
    """Intermediate outputs of one forward pass.

    Attributes:
        groups: output of each stage (block group), in order; shapes ``[B, C_i, H_i, W_i]`` or ``[B, D_i]``.
        embedding: the pooled penultimate vector the classifier reads, ``[B, D]``.
        feature: the model's declared feature vector ``[B, D']``: the output of the stage that
            :attr:`StagedNet.feature_stage` names, flattened; the embedding when the model declares none.
            It is the "extracted feature" ``f_T`` of DAFL's activation loss: the official DAFL code reads
            LeNet-5's 120-d conv3 output and a ResNet's pooled penultimate vector.
    """

    groups: list[torch.Tensor]
    embedding: torch.Tensor
    feature: torch.Tensor


class StagedNet(nn.Module):
    """A classifier built as ``stem → stages[0..n-1] → pool → classifier``.

    Subclasses (or builders) fill the four parts; ``forward`` is shared.
    ``spec`` is set by :func:`kdcli.models.create_model` so checkpoints can rebuild the model.

    ``feature_stage`` declares which stage's output is the model's feature vector (``Features.feature``):
    a builder sets it when its paper's code reads a layer other than the pooled embedding (LeNet-5:
    the 120-unit layer, DAFL's conv3). ``None`` (the default, and every model that does not declare
    one, your own included) means the penultimate embedding.
    """

    spec: ModelSpec
    feature_stage: int | None = None

    def __init__(self, stem: nn.Module, stages: list[nn.Module], pool: nn.Module, classifier: nn.Linear) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.pool = pool
        self.classifier = classifier

    @property
    def stage_names(self) -> list[str]:
        return [f"stage{i + 1}" for i in range(len(self.stages))]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        h = self.stem(x)
        groups = []
        for stage in self.stages:
            h = stage(h)
            groups.append(h)
        embedding = self.pool(h)
        feature = embedding if self.feature_stage is None else groups[self.feature_stage].flatten(1)
        return self.classifier(embedding), Features(groups, embedding, feature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for stage in self.stages:
            h = stage(h)
        return self.classifier(self.pool(h))


class GlobalAvgPool(nn.Module):
    """``[B, C, H, W] → [B, C]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class Flatten(nn.Module):
    """``[B, ...] → [B, D]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)
