"""The multi-branch builder on every family: split at every stage, branches export as the base model."""

import pytest
import torch

from kdcli.errors import KDError
from kdcli.models import MODELS, create_model, model_from_spec
from kdcli.models.branched import BranchedNet

BASES = ["lenet5", "lenet5-half", "resnet20", "wrn-16-1", "mlp-32-16", "alexnet-half"]


def _stages(base: str) -> int:
    return len(create_model(base, 1, 16, 10).stages)


@pytest.mark.parametrize("base", BASES)
def test_every_split_gives_branches_equal_to_exported_base_models(base):
    torch.manual_seed(0)
    x = torch.randn(3, 1, 16, 16)
    for k in range(1, _stages(base) + 1):
        net = create_model("branched", 1, 16, 10, base=base, split_at=f"stage{k}", branches=2, gate=True).eval()
        assert isinstance(net, BranchedNet) and net.split == k - 1
        with torch.no_grad():
            out = net.branch_outputs(x)
            assert out.logits.shape == (2, 3, 10) and out.gate.shape == (3, 2)
            for i in range(2):
                exported = net.export_branch(i)
                assert exported.spec.arch == base
                torch.testing.assert_close(exported(x), out.logits[i], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(net.branch_logits(x, i), out.logits[i], rtol=1e-5, atol=1e-5)
            # the model's own output is the gated sum of the branch logits
            torch.testing.assert_close(net(x), torch.einsum("bm,mbc->bc", out.gate, out.logits), rtol=1e-5, atol=1e-5)


def test_branches_share_the_trunk_and_start_from_different_inits():
    torch.manual_seed(0)
    net = create_model("branched", 3, 32, 10, base="resnet32", split_at="stage3", branches=3, gate=False)
    a, b = net.export_branch(0), net.export_branch(1)
    assert torch.equal(a.stages[1][0].conv1.weight, b.stages[1][0].conv1.weight)  # shared stage 2
    assert not torch.equal(a.stages[2][0].conv1.weight, b.stages[2][0].conv1.weight)  # own stage 3
    single = sum(p.numel() for p in create_model("resnet32", 3, 32, 10).parameters())
    assert sum(p.numel() for p in a.parameters()) == single
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        net.eval()
        torch.testing.assert_close(net(x), net.branch_outputs(x).logits.mean(0), rtol=1e-5, atol=1e-5)


def test_rebuilds_from_its_spec_with_the_gate():
    torch.manual_seed(0)
    net = create_model("branched", 1, 28, 10, base="lenet5", split_at="stage3", branches=3, gate=True).eval()
    rebuilt = model_from_spec(net.spec.to_dict()).eval()
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))
    assert any(k.endswith("gate.norm.running_mean") for k in net.state_dict())


def test_trunk_gradient_scale():
    torch.manual_seed(0)
    net = create_model("branched", 1, 8, 10, base="lenet5", split_at="stage2", branches=2, gate=False)
    x = torch.randn(4, 1, 8, 8)
    grads = []
    for scale in (1.0, 0.5):
        net.zero_grad()
        net.branch_outputs(x, trunk_grad_scale=scale).logits.sum().backward()
        grads.append(net.stages[0][0].weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0] / 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base": "lenet5", "split_at": "stage5"}, "beyond lenet5's depth: it has 4 stages"),
        ({"base": "resnet32", "split_at": "stage4"}, "beyond resnet32's depth: it has 3 stages"),
        ({"base": "resnet32", "split_at": "layer3"}, "must name a stage"),
        ({"base": "resnet32", "branches": 0}, "positive"),
        ({"base": "resnt32"}, "Did you mean"),
        ({"base": "branched"}, "plain model"),
    ],
)
def test_bad_splits_are_one_line_errors(kwargs, message):
    with pytest.raises(KDError, match=message) as info:
        create_model("branched", 3, 32, 10, **kwargs)
    assert "\n" not in str(info.value)


def test_registered_for_rebuilding_from_checkpoints():
    assert "branched" in MODELS
