"""Fused models: K models of one architecture as one network must compute what the K models compute."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdcli.models import MODELS, create_model
from kdcli.models.base import StagedNet
from kdcli.models.fused import FusedModels, GroupedLinear, NotFusable, fuse_models

# (name, channels, image size): every layer family kd's models use (conv, BN, linear, pool, residual, bottleneck)
ARCHS = [("lenet5", 1, 28), ("lenet5", 1, 8), ("resnet20", 3, 8), ("mlp-64-32", 1, 8), ("wrn-16-2", 3, 8),
         ("resnet-bottleneck-20", 3, 8), ("alexnet-half", 3, 8)]


def models_of(arch: str, channels: int, size: int, count: int = 3, seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [create_model(arch, channels, size, 10) for _ in range(count)]


@pytest.mark.parametrize("arch,channels,size", ARCHS)
def test_fused_forward_backward_and_state_match_the_separate_models(arch, channels, size):
    models = models_of(arch, channels, size)
    fused = fuse_models(models)
    for m in models:  # dropout (alexnet) draws differently fused: compare the deterministic computation
        for layer in m.modules():
            if isinstance(layer, nn.Dropout):
                layer.p = 0.0
    for layer in fused.modules():
        if isinstance(layer, nn.Dropout):
            layer.p = 0.0
    x = torch.randn(6, channels, size, size)
    expected = torch.stack([m(x) for m in models])
    got = fused(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # gradients: model k's slice of each fused gradient is model k's gradient
    expected.square().sum().backward()
    got.square().sum().backward()
    for k, model in enumerate(models):
        member_grads = {n: p.grad.chunk(len(models))[k] for n, p in fused.nets[0].named_parameters()}
        for name, p in model.named_parameters():
            scale = float(p.grad.abs().max()) + 1e-8  # float sums in another order: relative to the gradient's size
            torch.testing.assert_close(member_grads[name], p.grad, rtol=1e-3, atol=1e-4 * scale + 1e-6)
    # BatchNorm running statistics moved per model, as each model's own did
    state = fused.state_dict()
    reference = nn.ModuleList(models).state_dict()
    assert list(state) == list(reference)  # the keys of a ModuleList of the models
    for key in reference:
        torch.testing.assert_close(state[key].float(), reference[key].float(), rtol=1e-4, atol=1e-6)


def test_members_are_plain_models_with_the_models_weights_and_the_state_dict_round_trips():
    models = models_of("resnet20", 3, 8)
    fused = fuse_models(models)
    for k, model in enumerate(models):
        member = fused.member(k)
        assert type(member) is StagedNet and member.spec == model.spec and not isinstance(member, FusedModels)
        for (name, a), (_, b) in zip(member.state_dict().items(), model.state_dict().items()):
            assert torch.equal(a, b), name
    again = fuse_models(models_of("resnet20", 3, 8, seed=1))
    again.load_state_dict(fused.state_dict())
    for a, b in zip(again.parameters(), fused.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(IndexError):
        fused.member(3)


def test_grouped_fusion_is_the_same_models_in_several_networks():
    models = models_of("resnet20", 3, 8, count=3)
    fused = fuse_models(models, group=2)
    assert fused.sizes == [2, 1] and len(fused) == 3
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(fused(x), torch.stack([m(x) for m in models]), rtol=1e-4, atol=1e-5)
    data = torch.randn(3, 4, 3, 8, 8)
    torch.testing.assert_close(fused(data, per_model=True), torch.stack([m(d) for m, d in zip(models, data)]),
                               rtol=1e-4, atol=1e-5)
    assert list(fused.state_dict()) == list(nn.ModuleList(models).state_dict())
    whole = fuse_models(models_of("resnet20", 3, 8, count=3, seed=3))
    whole.load_state_dict(fused.state_dict())  # grouped and whole fusions read each other's state
    for k in range(3):
        for a, b in zip(whole.member(k).state_dict().values(), fused.member(k).state_dict().values()):
            assert torch.equal(a, b)


def test_per_model_batchnorm_statistics_follow_each_models_own_data():
    """Model k fed x_k keeps x_k's statistics: the same as that model alone, different between models."""
    models = models_of("resnet20", 3, 8, count=2)
    fused = fuse_models(models)
    data = torch.stack([torch.randn(8, 3, 8, 8), 3.0 + 2.0 * torch.randn(8, 3, 8, 8)])
    fused(data, per_model=True)
    for model, x in zip(models, data):
        model(x)
    first, second = fused.member(0), fused.member(1)
    for name, buffer in first.named_buffers():
        if name.endswith("running_mean"):
            torch.testing.assert_close(buffer, models[0].get_buffer(name), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(second.get_buffer(name), models[1].get_buffer(name), rtol=1e-4, atol=1e-5)
            assert not torch.allclose(buffer, second.get_buffer(name))


def test_grouped_linear_is_k_linear_layers():
    layers = [nn.Linear(5, 3) for _ in range(4)]
    fused = fuse_models([nn.Sequential(layer) for layer in layers])
    assert isinstance(fused.nets[0][0], GroupedLinear)
    x = torch.randn(7, 5)
    torch.testing.assert_close(fused(x), torch.stack([layer(x) for layer in layers]))


class _MixesChannels(nn.Module):
    """A forward that concatenates along channels: model-local in a plain model, across models once fused."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = torch.cat([h, h.flip(1)], dim=1).mean(dim=(2, 3))
        return self.head(h)


class _Normalised(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 2, 3), nn.LayerNorm([2, 2, 2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)


def test_what_cannot_be_fused_is_refused():
    with pytest.raises(NotFusable, match="different architecture|differ"):
        fuse_models([create_model("lenet5", 1, 8, 10), create_model("lenet5-half", 1, 8, 10)])
    with pytest.raises(NotFusable, match="LayerNorm"):
        fuse_models([_Normalised(), _Normalised()], probe=torch.randn(2, 1, 4, 4))
    with pytest.raises(NotFusable, match="does not reproduce"):
        fuse_models([_MixesChannels(), _MixesChannels()], probe=torch.randn(2, 1, 4, 4))


@pytest.mark.parametrize("name", ["lenet5-half", "wrn-16-1", "mlp-32", "resnet-bottleneck-20"])
def test_every_plain_model_family_fuses(name):
    assert MODELS.resolve(name)
    fuse_models([create_model(name, 3, 8, 10) for _ in range(2)])  # the fusion check runs a probe forward
