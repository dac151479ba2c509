"""The online-distillation papers' CIFAR networks that need bottleneck blocks: ONE's and OKDDip's ResNet-110
and OKDDip's WRN-20-8 — sizes (exact and against the papers), layout, CPU training step, split and export.

The exact counts below were also matched, outside the test suite, against the official model definitions
(ONE: ``models/cifar/resnet.py`` ``resnet(depth=110)`` and ``one_resnet(depth=110)``; OKDDip:
``models/model_cifar/resnet.py`` ``resnet110()``/``wide_resnet20_8()`` and ``resnet_GL.py``) and, with
their weights loaded into kd's models, gave the same logits.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdcli.errors import KDError
from kdcli.models import count_parameters, create_model
from kdcli.models.branched import BranchedNet
from kdcli.models.resnet_bottleneck import Bottleneck
from kdcli.models.resnet_cifar import BasicBlock

# name → (blocks per stage, inner widths of the three stages); the comment names the network it reproduces
LAYOUT = {
    "resnet-bottleneck-164": (18, (16, 32, 64)),  # ONE's "ResNet-110"
    "resnet-bottleneck-110": (12, (16, 32, 64)),  # OKDDip's "ResNet-110"
    "wrn-bottleneck-20-8": (2, (128, 256, 512)),  # OKDDip's "WRN-20-8"
}
NAMES = list(LAYOUT)
EXACT = {"resnet-bottleneck-164": 1_727_284, "resnet-bottleneck-110": 1_170_868, "wrn-bottleneck-20-8": 6_871_220}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _expected_parameters(blocks: int, widths: tuple[int, ...], in_channels: int, classes: int) -> int:
    """Parameters of the official definitions, counted by hand from their layer lists.

    Stem conv3×3(16) + BN; per block 1×1, 3×3, 1×1 convs and three BNs (+ a 1×1 conv + BN projection in a
    stage's first block); linear(256 → classes) with bias. Every conv is bias-free; a BN has 2 per channel.
    """
    total = in_channels * 16 * 9 + 2 * 16
    channels = 16
    for width, out in zip(widths, (64, 128, 256)):
        for index in range(blocks):
            total += channels * width + 9 * width * width + width * out + 2 * (width + width + out)
            if index == 0:
                total += channels * out + 2 * out
            channels = out
    return total + channels * classes + classes


@pytest.mark.parametrize(
    ("name", "classes", "exact"),
    [
        ("resnet-bottleneck-164", 10, 1_704_154),
        ("resnet-bottleneck-164", 100, 1_727_284),
        ("resnet-bottleneck-110", 10, 1_147_738),
        ("resnet-bottleneck-110", 100, 1_170_868),
        ("wrn-bottleneck-20-8", 10, 6_848_090),
        ("wrn-bottleneck-20-8", 100, 6_871_220),
    ],
)
def test_exact_parameter_counts(name: str, classes: int, exact: int) -> None:
    model = create_model(name, 3, 32, classes)
    assert count_parameters(model) == exact
    blocks, widths = LAYOUT[name]
    assert _expected_parameters(blocks, widths, 3, classes) == exact


@pytest.mark.parametrize("classes", [10, 100])
def test_one_resnet110_matches_the_papers_1_7m(classes: int) -> None:
    """ONE (Lan et al., NeurIPS 2018) gives 1.7M parameters for its ResNet-110, as do He et al. for the
    bottleneck ResNet-164 ("Identity Mappings", ECCV 2016); stated to 0.1M, so within ±0.05M."""
    params = count_parameters(create_model("resnet-bottleneck-164", 3, 32, classes))
    assert abs(params - 1.7e6) <= 0.05e6, params


def test_the_two_resnet110s_differ_and_resnet110_is_unchanged() -> None:
    """ONE's and OKDDip's "ResNet-110" are different networks, and kd's ``resnet110`` stays He et al.'s."""
    basic = create_model("resnet110", 3, 32, 100)
    assert [len(stage) for stage in basic.stages] == [18, 18, 18]
    assert all(isinstance(block, BasicBlock) for stage in basic.stages for block in stage)
    one = count_parameters(create_model("resnet-bottleneck-164", 3, 32, 100))
    okddip = count_parameters(create_model("resnet-bottleneck-110", 3, 32, 100))
    assert okddip < 0.7 * one


@pytest.mark.parametrize("name", NAMES)
def test_layout_follows_the_official_code(name: str) -> None:
    blocks, widths = LAYOUT[name]
    model = create_model(name, 3, 32, 100).eval()
    assert len(model.stages) == 3
    assert model.stem[0].out_channels == 16 and model.stem[0].kernel_size == (3, 3)
    for stage, width, out in zip(model.stages, widths, (64, 128, 256)):
        assert len(stage) == blocks
        assert all(isinstance(block, Bottleneck) for block in stage)
        for index, block in enumerate(stage):
            assert (block.conv1.out_channels, block.conv2.out_channels, block.conv3.out_channels) == (width, width, out)
            assert block.conv2.kernel_size == (3, 3) and block.conv1.kernel_size == block.conv3.kernel_size == (1, 1)
            assert isinstance(block.shortcut, nn.Identity) == (index > 0)  # projection only in a stage's first block
    assert model.classifier.in_features == 256
    with torch.no_grad():
        _, features = model.forward_features(torch.randn(2, 3, 32, 32))
    assert [tuple(g.shape) for g in features.groups] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8)]


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_on_cpu(name: str) -> None:
    model = create_model(name, 3, 32, 100).train()
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 100) and torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([3, 97])).backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), parameter_name
    assert any(p.grad.abs().sum() > 0 for p in model.stem.parameters())


@pytest.mark.parametrize("split", [1, 2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_split_and_export_round_trip(name: str, split: int) -> None:
    """``--split-at stageK`` works for each network and an exported branch is the plain model, logit for logit."""
    net = create_model("branched", 3, 32, 100, base=name, split_at=f"stage{split}", branches=2, gate=True).eval()
    assert net.split == split - 1
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = net.branch_outputs(x)
        assert out.logits.shape == (2, 2, 100)
        exported = net.export_branch(1)
        assert exported.spec.arch == name and not isinstance(exported, BranchedNet)
        assert count_parameters(exported) == EXACT[name]
        torch.testing.assert_close(exported(x), out.logits[1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net.branch_logits(x, 1), out.logits[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("base", "branches", "gate", "extra", "official"),
    [
        # ONE's one_resnet(depth=110, num_classes=10): 3 copies of stage 3 + classifiers, gate Linear(128→3) + BN1d.
        ("resnet-bottleneck-164", 3, True, 0, 4_294_263),
        # OKDDip's resnet_GL resnet110 / wide_resnet20_8 (num_branches=4, input_channel=256): 4 copies of stage 3
        # + classifiers, plus the attention's bias-free query and key maps 256 → 32 (kept by kd's OKDDip method).
        ("resnet-bottleneck-110", 4, False, 2 * 256 * 32, 3_781_496),
        ("wrn-bottleneck-20-8", 4, False, 2 * 256 * 32, 22_519_416),
    ],
)
def test_multi_branch_networks_match_the_official_ones(
    base: str, branches: int, gate: bool, extra: int, official: int
) -> None:
    net = create_model("branched", 3, 32, 10, base=base, split_at="stage3", branches=branches, gate=gate)
    assert count_parameters(net) + extra == official


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("resnet-bottleneck-32", "9n\\+2"),
        ("resnet-bottleneck-1", "9n\\+2"),
        ("wrn-bottleneck-16-8", "9n\\+2"),
        ("wrn-bottleneck-20-0", "K must be >= 1"),
        ("wrn-20-8", "wrn-bottleneck-20-8"),  # the 6n+4 family points to the bottleneck one
    ],
)
def test_bad_depths_are_one_line_errors(name: str, message: str) -> None:
    with pytest.raises(KDError, match=message) as info:
        create_model(name, 3, 32, 10)
    assert "\n" not in str(info.value)


def test_paper_style_names_suggest_the_bottleneck_families() -> None:
    with pytest.raises(KDError, match="resnet-bottleneck-110"):
        create_model("resnet110-bottleneck", 3, 32, 10)
