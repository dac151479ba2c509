"""Online-distillation losses against hand-computed values on fixed logits, and the ramp-up and ILR rules."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdcli.methods.losses import (
    attention_targets,
    consensus_of_others,
    mean_probability_logits,
    mutual_loss,
    peer_kl,
    rampup_weight,
    stacked_cross_entropy,
)
from kdcli.models.branched import Gate, scale_gradient

LN3 = math.log(3.0)


def kl(q: list[float], p: list[float]) -> float:
    return sum(qi * math.log(qi / pi) for qi, pi in zip(q, p))


def test_mutual_loss_golden_two_and_three_peers():
    # probabilities: peer0 (3/4, 1/4), peer1 (1/2, 1/2), peer2 (1/4, 3/4)
    z = torch.tensor([[[LN3, 0.0]], [[0.0, 0.0]], [[0.0, LN3]]])
    p = [[0.75, 0.25], [0.5, 0.5], [0.25, 0.75]]
    two = mutual_loss(z[:2], z[:2].detach())
    assert two[0].item() == pytest.approx(kl(p[1], p[0]), rel=1e-6)
    assert two[1].item() == pytest.approx(kl(p[0], p[1]), rel=1e-6)
    three = mutual_loss(z, z.detach())
    for i in range(3):
        expected = sum(kl(p[j], p[i]) for j in range(3) if j != i) / 2
        assert three[i].item() == pytest.approx(expected, rel=1e-6)
    # at T=2 the same logits give softer targets, and the term is scaled by T²
    soft = mutual_loss(z[:2] * 2, z[:2].detach() * 2, temperature=2.0)
    assert soft[0].item() == pytest.approx(4 * kl(p[1], p[0]), rel=1e-6)


def test_peer_kl_and_stacked_cross_entropy_golden():
    student = torch.tensor([[[0.0, 0.0]], [[LN3, 0.0]]])
    target = torch.tensor([[[LN3, 0.0]], [[0.0, 0.0]]])
    values = peer_kl(student, target, 1.0)
    assert values.tolist() == pytest.approx([kl([0.75, 0.25], [0.5, 0.5]), kl([0.5, 0.5], [0.75, 0.25])], rel=1e-6)
    labels = torch.tensor([0])
    assert stacked_cross_entropy(student, labels).tolist() == pytest.approx([math.log(2), -math.log(0.75)], rel=1e-6)


def test_consensus_of_others_is_the_mean_of_the_other_heads():
    logits = torch.tensor([[[1.0, 0.0]], [[3.0, 0.0]], [[5.0, 3.0]]])
    consensus = consensus_of_others(logits)
    assert consensus[0, 0].tolist() == [4.0, 1.5]
    assert consensus[1, 0].tolist() == [3.0, 1.5]
    assert consensus[2, 0].tolist() == [2.0, 0.0]
    with pytest.raises(ValueError):
        consensus_of_others(logits[:1])


def test_mean_probability_logits_is_log_of_mean_probabilities():
    z = torch.tensor([[[LN3, 0.0]], [[0.0, LN3]]])  # (3/4, 1/4) and (1/4, 3/4) → (1/2, 1/2)
    assert mean_probability_logits(z).exp()[0].tolist() == pytest.approx([0.5, 0.5], rel=1e-6)


def test_attention_targets_golden():
    logits = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])  # two peers, batch 1
    # q_0·k_0 = ln 3, q_0·k_1 = 0 → a_0 = (3/4, 1/4); q_1 = 0 → a_1 = (1/2, 1/2)
    queries = torch.tensor([[[LN3]], [[0.0]]])
    keys = torch.tensor([[[1.0]], [[0.0]]])
    targets, attention = attention_targets(logits, queries, keys)
    assert attention[0].tolist() == [pytest.approx([0.75, 0.25]), pytest.approx([0.5, 0.5])]
    assert targets[0, 0].tolist() == pytest.approx([0.75, 0.5])
    assert targets[1, 0].tolist() == pytest.approx([0.5, 1.0])
    assert torch.allclose(attention.sum(-1), torch.ones(1, 2))


@pytest.mark.parametrize(("epoch", "expected"), [(0, math.exp(-5.0)), (40, math.exp(-1.25)), (80, 1.0), (200, 1.0)])
def test_rampup_weight_at_epochs_0_40_80(epoch, expected):
    assert rampup_weight(epoch, 80) == pytest.approx(expected, rel=1e-12)


def test_rampup_is_fractional_and_zero_length_means_no_ramp():
    assert rampup_weight(20.5, 80) == pytest.approx(math.exp(-5 * (1 - 20.5 / 80) ** 2))
    assert rampup_weight(0, 0) == 1.0


def test_one_gate_rows_sum_to_one():
    torch.manual_seed(0)
    gate = Gate(channels=8, branches=3)
    for features in (torch.randn(5, 8, 4, 4), torch.randn(5, 8)):
        weights = gate(features)
        assert weights.shape == (5, 3)
        assert torch.allclose(weights.sum(1), torch.ones(5)) and (weights >= 0).all()
    gate.eval()
    assert torch.allclose(gate(torch.randn(2, 8, 3, 3)).sum(1), torch.ones(2))


def test_scale_gradient_is_identity_forward_and_scales_backward():
    x = torch.randn(3, 4, requires_grad=True)
    y = scale_gradient(x, 0.25)
    assert torch.equal(y, x)
    (y * torch.arange(4.0)).sum().backward()
    assert torch.allclose(x.grad, 0.25 * torch.arange(4.0).expand(3, 4))


def test_targets_passed_detached_get_no_gradient():
    z = torch.randn(3, 4, 5, requires_grad=True)
    mutual_loss(z, z.detach())[0].backward()
    assert z.grad[1:].abs().max() == 0 and z.grad[0].abs().max() > 0
    # and a live target does carry gradient: the caller decides
    z.grad = None
    mutual_loss(z, z)[0].backward()
    assert z.grad[1:].abs().max() > 0
    # the gradient of T²·KL(q ‖ σ(z/T)) with respect to z is T·(σ(z/T) − q)
    s, t = torch.randn(1, 2, 6, requires_grad=True), torch.randn(1, 2, 6)
    peer_kl(s, t, 3.0).sum().backward()
    expected = 3.0 * (F.softmax(s.detach() / 3, -1) - F.softmax(t / 3, -1)) / 2  # batch mean over 2
    assert torch.allclose(s.grad, expected, atol=1e-6)
