"""The data-free generators are the official codes' networks: same layers, same BatchNorm settings, same outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdcli.models.generator import create_generator


def official_zskt(z_dim: int) -> nn.Sequential:
    """polo5/ZeroShotKnowledgeTransfer ``models/generator.py`` (last changed Aug 2019), transcribed."""
    return nn.Sequential(
        nn.Linear(z_dim, 128 * 8**2), nn.Unflatten(1, (128, 8, 8)), nn.BatchNorm2d(128),
        nn.Upsample(scale_factor=2), nn.Conv2d(128, 128, 3, stride=1, padding=1), nn.BatchNorm2d(128),
        nn.LeakyReLU(0.2),
        nn.Upsample(scale_factor=2), nn.Conv2d(128, 64, 3, stride=1, padding=1), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),
        nn.Conv2d(64, 3, 3, stride=1, padding=1),
        nn.BatchNorm2d(3, affine=True),
    )


def official_dafl(z_dim: int, channels: int) -> nn.Sequential:
    """huawei-noah DAFL ``DAFL-train.py``'s Generator (img_size 32), transcribed."""
    return nn.Sequential(
        nn.Linear(z_dim, 128 * 8**2), nn.Unflatten(1, (128, 8, 8)), nn.BatchNorm2d(128),
        nn.Upsample(scale_factor=2), nn.Conv2d(128, 128, 3, stride=1, padding=1), nn.BatchNorm2d(128, 0.8),
        nn.LeakyReLU(0.2),
        nn.Upsample(scale_factor=2), nn.Conv2d(128, 64, 3, stride=1, padding=1), nn.BatchNorm2d(64, 0.8),
        nn.LeakyReLU(0.2),
        nn.Conv2d(64, channels, 3, stride=1, padding=1), nn.Tanh(), nn.BatchNorm2d(channels, affine=False),
    )


def _batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("name, channels, official", [
    ("generator-zskt", 3, lambda: official_zskt(100)),
    ("generator-dafl", 1, lambda: official_dafl(100, 1)),
])
def test_generator_is_the_official_network(name, channels, official):
    torch.manual_seed(0)
    ours, theirs = create_generator(name, channels, 32, 10, latent_dim=100), official()
    ours_bn, theirs_bn = _batchnorms(ours), _batchnorms(theirs)
    assert [(b.eps, b.affine, b.num_features) for b in ours_bn] == [(b.eps, b.affine, b.num_features) for b in theirs_bn]
    ours_params, theirs_params = list(ours.parameters()), list(theirs.parameters())
    assert [p.shape for p in ours_params] == [p.shape for p in theirs_params]
    with torch.no_grad():
        for mine, other in zip(ours_params, theirs_params):
            other.copy_(mine)
        z = torch.randn(16, 100)
        assert torch.allclose(ours.train()(z), theirs.train()(z), atol=1e-5)  # training mode: batch statistics


def test_zskt_and_dafl_generators_differ_where_their_codes_do():
    zskt, dafl = create_generator("generator-zskt", 3, 32, 10), create_generator("generator-dafl", 3, 32, 10)
    assert [b.eps for b in _batchnorms(zskt)] == [1e-5] * 4 and all(b.affine for b in _batchnorms(zskt))
    assert [b.eps for b in _batchnorms(dafl)] == [1e-5, 0.8, 0.8, 1e-5] and not _batchnorms(dafl)[-1].affine
    assert any(isinstance(m, nn.Tanh) for m in dafl.modules()) and not any(isinstance(m, nn.Tanh) for m in zskt.modules())
