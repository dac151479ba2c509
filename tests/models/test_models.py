"""Every registered model, at every input geometry kd supports: shapes, features, rebuild, errors, sizes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kdcli.errors import KDError
from kdcli.models import MODELS, StagedNet, count_parameters, create_model, model_from_spec

# (channels, image size, classes): digits 8×8, USPS 16×16, MNIST 28×28, CIFAR-10/100 32×32.
SHAPES = [(1, 8, 10), (1, 16, 10), (1, 28, 10), (3, 32, 10), (3, 32, 100)]
NAMES = MODELS.example_names()
BATCH = 2


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _images(channels: int, size: int) -> torch.Tensor:
    return torch.randn(BATCH, channels, size, size)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", NAMES)
def test_forward_and_features(name: str, shape: tuple[int, int, int]) -> None:
    channels, size, classes = shape
    model = create_model(name, channels, size, classes).eval()
    assert isinstance(model, StagedNet)
    x = _images(channels, size)
    with torch.no_grad():
        logits = model(x)
        feature_logits, features = model.forward_features(x)
    assert logits.shape == (BATCH, classes)
    assert torch.isfinite(logits).all()
    assert torch.equal(feature_logits, logits)
    assert len(features.groups) == len(model.stages) == len(model.stage_names)
    for group in features.groups:
        assert group.shape[0] == BATCH and group.dim() in (2, 4)
        assert all(dim >= 1 for dim in group.shape)
    assert features.embedding.shape == (BATCH, model.classifier.in_features)
    assert features.feature.dim() == 2 and features.feature.shape[0] == BATCH


@pytest.mark.parametrize("name", NAMES)
def test_trains_one_step(name: str) -> None:
    model = create_model(name, 1, 8, 10).train()
    loss = nn.functional.cross_entropy(model(_images(1, 8)), torch.tensor([0, 1]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_rebuild_from_spec_gives_identical_logits(name: str) -> None:
    model = create_model(name, 3, 16, 7).eval()
    spec = model.spec.to_dict()
    assert spec == {"arch": name, "in_channels": 3, "image_size": 16, "num_classes": 7, "kwargs": {}}
    rebuilt = model_from_spec(spec).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = _images(3, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    again = create_model(spec["arch"], spec["in_channels"], spec["image_size"], spec["num_classes"], **spec["kwargs"])
    assert again.spec == model.spec


def test_spec_records_only_caller_options() -> None:
    model = create_model("wrn-16-2", 3, 32, 10, dropout=0.3)
    assert model.spec.arch == "wrn-16-2"
    assert model.spec.kwargs == {"dropout": 0.3}
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules())
    assert model_from_spec(model.spec).spec == model.spec
    assert create_model("mlp-100-50", 1, 8, 10).spec.kwargs == {}


@pytest.mark.parametrize("name", NAMES)
def test_split_into_trunk_and_branch(name: str) -> None:
    """A later builder splits any model as trunk = stem + stages[:k], branch = stages[k:] + pool + classifier."""
    model = create_model(name, 1, 16, 10).eval()
    x = _images(1, 16)
    with torch.no_grad():
        expected = model(x)
        for k in range(len(model.stages) + 1):
            trunk = nn.Sequential(copy.deepcopy(model.stem), *copy.deepcopy(model.stages[:k]))
            branch = nn.Sequential(
                *copy.deepcopy(model.stages[k:]), copy.deepcopy(model.pool), copy.deepcopy(model.classifier)
            )
            assert torch.equal(branch(trunk(x)), expected)


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "wrn-16-1", "alexnet-half"])
def test_channels_last(name: str) -> None:
    model = create_model(name, 3, 32, 10).eval()
    x = _images(3, 32)
    with torch.no_grad():
        expected = model(x)
        fast = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fast, expected, rtol=1e-4, atol=1e-5)


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(KDError) as info:
        create_model("resnet23", 3, 32, 10)
    message = str(info.value)
    assert "resnet20" in message and "resnet32" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["wrn-17-2", "wrn-4-1", "wrn-16-0"])
def test_wrn_bad_geometry_is_one_line_error(name: str) -> None:
    with pytest.raises(KDError, match="wrn") as info:
        create_model(name, 3, 32, 10)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet20", {"dropout": 0.1}),  # not an option of resnet20
        ("wrn-16-1", {"depth": 22}),  # already fixed by the name
        ("mlp-800-800", {"dropout": 1.5}),
    ],
)
def test_bad_options_are_kd_errors(name: str, kwargs: dict[str, float]) -> None:
    with pytest.raises(KDError):
        create_model(name, 1, 8, 10, **kwargs)


@pytest.mark.parametrize("name", ["mlp-0-10", "mlp", "mlp-"])
def test_bad_mlp_names(name: str) -> None:
    with pytest.raises(KDError):
        create_model(name, 1, 8, 10)


def test_bad_geometry() -> None:
    with pytest.raises(KDError):
        create_model("lenet5", 0, 8, 10)


def test_mlp_family_takes_any_widths() -> None:
    model = create_model("mlp-64-32-16", 1, 8, 10)
    assert len(model.stages) == 3
    assert [stage[0].out_features for stage in model.stages] == [64, 32, 16]
    assert "mlp-64-32-16" in MODELS


@pytest.mark.parametrize(("half", "full"), [("lenet5-half", "lenet5"), ("alexnet-half", "alexnet")])
@pytest.mark.parametrize("shape", [(1, 28, 10), (3, 32, 10)])
def test_half_models_are_smaller(half: str, full: str, shape: tuple[int, int, int]) -> None:
    half_params = count_parameters(create_model(half, *shape))
    full_params = count_parameters(create_model(full, *shape))
    assert half_params < full_params / 2.5  # half the widths: roughly a quarter of the weights


@pytest.mark.parametrize(
    ("name", "classes", "expected"),
    [
        ("resnet20", 10, 0.27e6),  # He et al. 2016, Table 6
        ("resnet32", 100, 0.46e6),
        ("resnet56", 10, 0.85e6),
        ("resnet110", 10, 1.7e6),
        ("wrn-40-2", 10, 2.2e6),  # Zagoruyko & Komodakis 2016
        ("wrn-16-1", 10, 0.175e6),
        ("resnet18", 10, 11.2e6),
        ("resnet34", 10, 21.3e6),
        ("mlp-1200-1200", 10, 2.40e6),  # Hinton et al. 2015: 784-1200-1200-10
    ],
)
def test_parameter_counts_match_papers(name: str, classes: int, expected: float) -> None:
    size, channels = (28, 1) if name.startswith("mlp") else (32, 3)
    params = count_parameters(create_model(name, channels, size, classes))
    assert abs(params - expected) <= 0.1 * expected, f"{name}: {params}"


def test_count_parameters_trainable_only() -> None:
    model = create_model("lenet5", 1, 28, 10)
    total = count_parameters(model)
    model.classifier.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - 84 * 10 - 10


def test_lenet_and_mlp_have_no_batchnorm_others_do() -> None:
    def has_bn(name: str) -> bool:
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in create_model(name, 1, 8, 10).modules())

    for name in NAMES:
        assert has_bn(name) == (not name.startswith(("lenet", "mlp"))), name


def test_standard_init() -> None:
    model = create_model("resnet20", 3, 32, 10)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    conv = model.stem[0]
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.25)


@pytest.mark.parametrize("name, units", [("lenet5", 120), ("lenet5-half", 60)])
def test_lenet_declares_the_dafl_feature_the_120_unit_layer(name: str, units: int) -> None:
    """The official DAFL lenet.py returns conv3's output (120-d, after its ReLU) as the feature: at 32 px
    that 5×5 convolution on the 5×5 map is kd's first fc stage."""
    model = create_model(name, 1, 32, 10).eval()
    x = _images(1, 32)
    with torch.no_grad():
        _, features = model.forward_features(x)
        conv = model.stages[1](model.stages[0](x))  # [B, 16, 5, 5]: what DAFL's conv3 reads
        fc1 = model.stages[2][1]
        conv3 = nn.functional.conv2d(conv, fc1.weight.view(units, -1, 5, 5), fc1.bias).relu().flatten(1)
    assert conv.shape[2:] == (5, 5)
    assert features.feature.shape == (BATCH, units)
    assert torch.allclose(features.feature, conv3, atol=1e-6)
    assert torch.equal(features.feature, features.groups[2])


@pytest.mark.parametrize("name", ["resnet20", "wrn-16-1", "mlp-1200-1200"])
def test_models_without_a_declared_feature_give_the_embedding(name: str) -> None:
    model = create_model(name, 1, 28, 10).eval()
    assert model.feature_stage is None
    with torch.no_grad():
        _, features = model.forward_features(_images(1, 28))
    assert features.feature is features.embedding
