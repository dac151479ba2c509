"""Data-free losses against values computed by hand on fixed tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdcli.methods.losses import (
    activation_loss,
    activation_match_loss,
    at_loss,
    attention_map,
    bn_stat_loss,
    class_similarity,
    dafl_generator_loss,
    dirichlet_concentration,
    information_entropy_loss,
    input_l2,
    onehot_loss,
    sample_dirichlet_targets,
    total_variation_l2,
    zskt_divergence,
)


def test_onehot_loss_is_cross_entropy_to_the_argmax():
    # logits (ln 3, 0): argmax 0, p0 = 3/4 → CE = −ln(3/4)
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)]])
    assert onehot_loss(logits).item() == pytest.approx(-math.log(0.75), rel=1e-6)


def test_activation_loss_is_minus_mean_absolute_feature():
    features = torch.tensor([[1.0, -2.0], [3.0, -6.0]])
    assert activation_loss(features).item() == pytest.approx(-3.0)


def test_information_entropy_by_hand_in_log10_and_nats():
    # batch-mean softmax (3/4 + 1/4)/2 = (1/2, 1/2) → Σ p log p = log(1/2)
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)]])
    assert information_entropy_loss(logits).item() == pytest.approx(math.log10(0.5), rel=1e-6)
    assert information_entropy_loss(logits, log_base=math.e).item() == pytest.approx(math.log(0.5), rel=1e-6)
    # all confident on class 0: mean (3/4, 1/4)
    skewed = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    expected = 0.75 * math.log10(0.75) + 0.25 * math.log10(0.25)
    assert information_entropy_loss(skewed).item() == pytest.approx(expected, rel=1e-6)


def test_information_entropy_term_is_lowest_for_a_uniform_batch_prediction():
    # DAFL minimises Σ p̄ log p̄ = −H(p̄): a batch spread evenly over the classes is the optimum
    k = 10
    uniform_batch = torch.eye(k) * 20.0  # each sample confident, on a different class
    uniform_value = information_entropy_loss(uniform_batch, log_base=math.e).item()
    assert uniform_value == pytest.approx(-math.log(k), abs=1e-4)
    torch.manual_seed(0)
    for _ in range(20):
        other = information_entropy_loss(torch.randn(16, k) * 3, log_base=math.e).item()
        assert other > uniform_value - 1e-6
    one_class = torch.zeros(8, k)
    one_class[:, 3] = 20.0
    assert information_entropy_loss(one_class, log_base=math.e).item() == pytest.approx(0.0, abs=1e-4)
    # and the gradient pushes a skewed batch towards balance
    logits = torch.zeros(4, 3)
    logits[:, 0] = 2.0
    logits.requires_grad_(True)
    information_entropy_loss(logits).backward()
    assert (logits.grad[:, 0] > 0).all() and (logits.grad[:, 1:] < 0).all()


def test_dafl_generator_loss_combines_its_parts_with_the_alphas():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)]])
    features = torch.tensor([[1.0, -2.0], [3.0, -6.0]])
    parts = dafl_generator_loss(logits, features, alpha_oh=1.0, alpha_a=0.1, alpha_ie=5.0)
    expected = -math.log(0.75) + 0.1 * -3.0 + 5.0 * math.log10(0.5)
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert parts["activation"].item() == pytest.approx(-3.0)


def test_attention_map_and_at_loss_by_hand():
    # one channel, 2 positions with activations (1, 2): a² = (1, 4), normalised (1, 4)/√17
    s = torch.tensor([[[[1.0, 2.0]]]])
    t = torch.tensor([[[[2.0, 1.0]]]])
    assert torch.allclose(attention_map(s), torch.tensor([[1.0, 4.0]]) / math.sqrt(17))
    # difference (−3, 3)/√17 → mean of squares 9/17
    assert at_loss([s], [t]).item() == pytest.approx(9 / 17, rel=1e-6)
    # fc groups are ignored; groups pair from the last one
    fc = torch.randn(1, 5)
    assert at_loss([fc, s], [torch.randn(1, 3), t]).item() == pytest.approx(9 / 17, rel=1e-6)
    assert at_loss([s], [torch.randn(1, 4, 1, 2), t]).item() == pytest.approx(9 / 17, rel=1e-6)
    assert at_loss([s], [s.clone()]).item() == 0.0


def test_at_loss_compares_groups_of_different_resolution_at_the_smaller_one():
    student = torch.ones(2, 3, 2, 2)
    teacher = torch.ones(2, 5, 4, 4)
    assert at_loss([student], [teacher]).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.filterwarnings("ignore:reduction")
def test_zskt_divergence_is_kl_averaged_over_batch_and_classes():
    torch.manual_seed(0)
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    reference = F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="mean")  # the official code's call
    assert zskt_divergence(s, t).item() == pytest.approx(reference.item(), rel=1e-5)


def test_bn_stat_loss_by_hand():
    mean, var = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0])
    running_mean, running_var = torch.tensor([1.0, -1.0]), torch.tensor([4.0, 5.0])
    # ‖(3, 4)‖ + ‖(0, −3)‖ = 5 + 3
    assert bn_stat_loss(mean, var, running_mean, running_var).item() == pytest.approx(8.0)


def test_total_variation_and_l2_priors_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # horizontal diffs (−1, −2) → √5; vertical (−2, −3) → √13; diagonals (2 − 1) = 1 and (0 − 4) = −4
    expected = math.sqrt(5) + math.sqrt(13) + 1.0 + 4.0
    assert total_variation_l2(x).item() == pytest.approx(expected, rel=1e-6)
    assert input_l2(x).item() == pytest.approx(math.sqrt(21), rel=1e-6)
    assert total_variation_l2(torch.full((2, 3, 4, 4), 0.7)).item() == 0.0


def test_class_similarity_comes_from_the_classifier_weights():
    # classes 0 and 1 point the same way, class 2 opposite: cosines (1, 1, −1) for class 0
    weight = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0]])
    sim = class_similarity(weight)
    assert torch.allclose(sim[0], torch.tensor([1.0, 1.0, 0.0]))
    assert torch.allclose(sim[2], torch.tensor([0.0, 0.0, 1.0]))
    # orthogonal classes: cosine 0 between, 1 on the diagonal → min-max (1, 0, 0)
    assert torch.allclose(class_similarity(torch.eye(3)), torch.eye(3))


def test_dirichlet_concentration_is_beta_times_similarity_plus_floor():
    weight = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0]])
    sim = class_similarity(weight)
    alpha = dirichlet_concentration(sim, torch.tensor([0, 2]), torch.tensor([1.0, 0.1]))
    assert torch.allclose(alpha, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.1]]) + 1e-4)


def test_dirichlet_targets_follow_the_concentration():
    torch.manual_seed(0)
    weight = torch.tensor([[1.0, 0.2, 0.0], [0.9, 0.3, 0.1], [-1.0, 0.0, 1.0]])
    sim = class_similarity(weight)
    classes = torch.zeros(4000, dtype=torch.long)
    targets = sample_dirichlet_targets(sim, classes, torch.ones(4000))
    assert targets.shape == (4000, 3)
    assert torch.allclose(targets.sum(1), torch.ones(4000), atol=1e-5)
    expected_mean = dirichlet_concentration(sim, classes[:1], 1.0)[0]
    expected_mean = expected_mean / expected_mean.sum()
    assert torch.allclose(targets.mean(0), expected_mean, atol=0.03)
    # β = 0.1 spreads the same mean over sparser draws: a higher average maximum
    sparse = sample_dirichlet_targets(sim, classes, torch.full((4000,), 0.1))
    assert sparse.max(1).values.mean() > targets.max(1).values.mean()


def test_activation_match_loss_per_sample_by_hand():
    acts = [torch.tensor([[1.0, -1.0], [0.0, 2.0]]), torch.tensor([[3.0], [0.0]])]
    targets = [torch.tensor([[0.0, 5.0], [0.0, 0.0]]), torch.tensor([[1.0], [1.0]])]
    # sample 0: relu → layer 1 ((1−0)² + (0−5)²)/2/2 = 6.5, layer 2 (3−1)²/1/1 = 4 → 10.5
    # sample 1: layer 1 (0 + 4)/2/2 = 1, layer 2 (0 − 1)² = 1 → 2
    assert torch.allclose(activation_match_loss(acts, targets), torch.tensor([10.5, 2.0]))
    # without the ReLU (spectral coefficients) negative values count
    unrectified = activation_match_loss(acts, targets, [False, False])
    assert unrectified[0].item() == pytest.approx(((1 + 36) / 2) / 2 + 4)
