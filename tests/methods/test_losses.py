import math

import pytest
import torch
import torch.nn.functional as F

from kdcli.methods.losses import kd_loss, soft_cross_entropy


def test_kd_loss_matches_hand_computed_value():
    # teacher probabilities (0.75, 0.25), student uniform:
    # KL = 0.75 ln(0.75/0.5) + 0.25 ln(0.25/0.5)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    student = torch.zeros(1, 2)
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    assert kd_loss(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_scales_by_temperature_squared():
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    student = torch.zeros(1, 2)
    teacher = torch.tensor([[2 * math.log(3.0), 0.0]])  # same probabilities at T=2
    assert kd_loss(student, teacher, 2.0).item() == pytest.approx(4 * expected, rel=1e-6)


def test_kd_loss_equals_torch_kl_div_on_random_logits():
    torch.manual_seed(0)
    s, t = torch.randn(16, 10), torch.randn(16, 10)
    ref = F.kl_div(F.log_softmax(s / 3, 1), F.log_softmax(t / 3, 1), reduction="batchmean", log_target=True) * 9
    assert kd_loss(s, t, 3.0).item() == pytest.approx(ref.item(), rel=1e-5)


def test_kd_loss_is_zero_with_zero_gradient_for_identical_logits():
    s = torch.randn(4, 5, requires_grad=True)
    loss = kd_loss(s, s.detach().clone(), 4.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert s.grad.abs().max().item() < 1e-6  # the teacher's prediction is the loss's minimum


def test_kd_loss_student_gradient_is_t_times_the_probability_gap_and_a_live_teacher_gets_one_too():
    """d/ds T²·KL(σ(t/T) ‖ σ(s/T)) = T·(σ(s/T) − σ(t/T)) / B. The loss does not detach the teacher:
    callers pass detached teacher logits (a live one would be trained towards the student)."""
    torch.manual_seed(0)
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4, requires_grad=True)
    kd_loss(s, t, 2.0).backward()
    expected = 2.0 * (torch.softmax(s.detach() / 2, 1) - torch.softmax(t.detach() / 2, 1)) / 3
    assert torch.allclose(s.grad, expected, atol=1e-6)
    assert t.grad is not None and t.grad.abs().max().item() > 1e-3


def test_soft_cross_entropy_with_one_hot_target_is_cross_entropy():
    logits = torch.randn(8, 6)
    labels = torch.randint(0, 6, (8,))
    assert soft_cross_entropy(logits, F.one_hot(labels, 6).float()).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-6
    )
