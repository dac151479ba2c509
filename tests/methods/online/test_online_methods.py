"""Each online method's training step on fixed logits: golden loss values, golden gradients (what is a
constant and what is not), CL's backprop rescaling and DML's alternating update."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdcli.config import RunConfig
from kdcli.data.base import DatasetInfo
from kdcli.errors import KDError
from kdcli.methods.base import MethodContext
from kdcli.methods.online.cl import CL, CLParams
from kdcli.methods.online.dml import DML, DMLParams
from kdcli.methods.online.okddip import OKDDip, OKDDipParams
from kdcli.methods.online.one import ONE, ONEParams

LN3 = math.log(3.0)
INFO = DatasetInfo("stub", 2, 1, 8, (0.5,), (0.5,))
IMAGES = torch.zeros(1, 1, 8, 8)


def kl(q, p) -> float:
    return sum(qi * math.log(qi / pi) for qi, pi in zip(q, p))


def softmax(z) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def context(model: str = "mlp-16", info: DatasetInfo = INFO) -> MethodContext:
    config = RunConfig(command="distill-online", model=model)
    config.train.epochs = 3
    return MethodContext(config, info, torch.device("cpu"), steps_per_epoch=10)


class FixedLogits(nn.Module):
    """A 'peer' whose logits are a parameter: the gradient the loss sends to a peer's logits, exactly."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.z = nn.Parameter(torch.tensor([logits]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.z.expand(x.shape[0], -1)


class FixedBranches(nn.Module):
    """Stands in for a BranchRunner: fixed branch logits (and embeddings, and a gate), all leaves."""

    def __init__(self, logits, gate=None, embeddings=None) -> None:
        super().__init__()
        self.z = nn.Parameter(torch.tensor(logits).unsqueeze(1))  # [m, 1, C]
        self.e = nn.Parameter(torch.tensor(embeddings).unsqueeze(1) if embeddings else torch.zeros(len(logits), 1, 4))
        self.g = nn.Parameter(torch.tensor([gate])) if gate else None

    def forward(self, x):
        return (self.z, self.e) if self.g is None else (self.z, self.e, self.g)


def test_dml_golden_loss_and_each_peer_gets_only_its_own_gradient():
    method = DML(context(), DMLParams(peers=2, update="simultaneous"))
    method.peers = nn.ModuleList([FixedLogits([LN3, 0.0]), FixedLogits([0.0, 0.0])])
    parts = method.training_step((IMAGES, torch.tensor([1])), 0)
    p0, p1 = [0.75, 0.25], [0.5, 0.5]
    expected = math.log(4) + math.log(2) + kl(p1, p0) + kl(p0, p1)
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert parts["kl"].item() == pytest.approx((kl(p1, p0) + kl(p0, p1)) / 2, rel=1e-6)
    parts["loss"].backward()
    # d/dz_i [CE + KL(p_j ‖ p_i)] with p_j constant = (p_i − y) + (p_i − p_j)
    assert method.peers[0].z.grad[0].tolist() == pytest.approx([0.75 + 0.25, -0.75 - 0.25])
    assert method.peers[1].z.grad[0].tolist() == pytest.approx([0.5 - 0.25, -0.5 + 0.25])


def test_dml_alternating_recomputes_later_targets_after_earlier_peers_step():
    torch.manual_seed(0)
    method = DML(context(), DMLParams(peers=2, update="alternating"))
    assert method.manual_optimization and not method.graphable_models()
    assert len(method.optimizers()) == 2
    images, labels = torch.randn(6, 1, 8, 8), torch.randint(0, 2, (6,))
    peer0, peer1 = method.peers
    with torch.no_grad():
        old0, old1 = peer0(images), peer1(images)
    parts = method.training_step((images, labels), 0)
    with torch.no_grad():
        new0, new1 = peer0(images), peer1(images)
    assert not torch.equal(new0, old0) and not torch.equal(new1, old1)  # both stepped

    def kl_batch(target, student):
        return F.kl_div(F.log_softmax(student, 1), F.log_softmax(target, 1), reduction="batchmean", log_target=True).item()

    expected = (kl_batch(old1, old0) + kl_batch(new0, old1)) / 2  # peer 1 learns from peer 0's new prediction
    assert parts["kl"].item() == pytest.approx(expected, rel=1e-5)


def test_cl_golden_loss_consensus_of_others_is_a_constant():
    method = CL(context(), CLParams(peers=3, temperature=1.0, hard_weight=0.5, soft_weight=0.5))
    heads = [[LN3, 0.0], [0.0, 0.0], [0.0, LN3]]
    method.runner = FixedBranches(heads)
    parts = method.training_step((IMAGES, torch.tensor([0])), 0)
    probs = [softmax(z) for z in heads]
    targets = [softmax([(a + b) / 2 for a, b in zip(*[heads[j] for j in range(3) if j != h])]) for h in range(3)]
    expected = sum(0.5 * -math.log(probs[h][0]) + 0.5 * kl(targets[h], probs[h]) for h in range(3))
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-6)
    parts["loss"].backward()
    for h in range(3):  # β(p_h − y) + (1 − β)(p_h − q_h): nothing through the other heads' targets
        grad = [0.5 * (probs[h][c] - (c == 0)) + 0.5 * (probs[h][c] - targets[h][c]) for c in range(2)]
        assert method.runner.z.grad[h, 0].tolist() == pytest.approx(grad, abs=1e-6)


def test_cl_rerun_loss_and_live_consensus_golden():
    """The OKDDip code's CL-ILR re-run (--preset paper): T = 3, weights 1 and 1, ramp by epoch, live consensus."""
    method = CL(context(), CLParams(peers=3, temperature=3.0, hard_weight=1.0, soft_weight=1.0, ramp_epochs=2.0,
                                    detach_consensus=False))
    heads = [[3.0, 0.0], [0.0, 0.0], [0.0, 1.5]]
    method.runner = FixedBranches(heads)
    parts = method.training_step((IMAGES, torch.tensor([0])), 15)  # epoch index 1 of a 2-epoch ramp
    w = math.exp(-5 * (1 - 1 / 2) ** 2)
    assert parts["w"].item() == pytest.approx(w)
    # By hand. Consensus of the others: head 0 ← [0, 0.75], head 1 ← [1.5, 0.75], head 2 ← [1.5, 0]. Label
    # terms −log softmax(z_h)[0]: 0.048587 + 0.693147 + 1.701413 = 2.443147. Soft terms T²·KL at T = 3:
    # 1.710386 + 0.069767 + 1.102134 = 2.882287. w(epoch 1 of 2) = e^−1.25 = 0.286505.
    assert parts["loss"].item() == pytest.approx(2.443147 + 0.286505 * 2.882287, abs=1e-5)  # 3.268937
    others = [[(a + b) / 2 for a, b in zip(*[heads[j] for j in range(3) if j != h])] for h in range(3)]
    soft = [9 * kl(softmax([v / 3 for v in others[h]]), softmax([v / 3 for v in heads[h]])) for h in range(3)]
    hard = [-math.log(softmax(z)[0]) for z in heads]
    assert parts["loss"].item() == pytest.approx(sum(hard) + w * sum(soft), rel=1e-6)
    parts["loss"].backward()
    # live: each head's gradient also comes through the two other heads' targets (numerical check of the total)
    z = torch.tensor(heads, dtype=torch.float64, requires_grad=True)
    total = sum(-torch.log_softmax(z[h], 0)[0] for h in range(3))
    for h in range(3):
        target = (z.sum(0) - z[h]) / 2
        q = torch.softmax(target / 3, 0)
        total = total + w * 9 * (q * (torch.log(q) - torch.log_softmax(z[h] / 3, 0))).sum()
    (expected,) = torch.autograd.grad(total, z)
    assert method.runner.z.grad[:, 0].double().tolist() == [pytest.approx(g, abs=1e-6) for g in expected.tolist()]
    detached = CL(context(), CLParams(peers=3, temperature=3.0, hard_weight=1.0, soft_weight=1.0, ramp_epochs=2.0))
    detached.runner = FixedBranches(heads)
    detached.training_step((IMAGES, torch.tensor([0])), 15)["loss"].backward()
    assert not torch.allclose(detached.runner.z.grad, method.runner.z.grad)  # the targets' share is the difference


def test_cl_ilr_trunk_gradient_is_one_over_h_of_the_unscaled_sum():
    images, labels = torch.randn(8, 1, 8, 8), torch.randint(0, 2, (8,))
    grads = {}
    for ilr in (True, False):
        torch.manual_seed(0)
        method = CL(context("lenet5"), CLParams(peers=4, split_at="stage3", ilr=ilr))
        method.training_step((images, labels), 0)["loss"].backward()
        net = method.net
        trunk = [p for stage in net.stages[: net.split] for p in stage.parameters()]
        branch = list(net.branch_stack.parameters())
        grads[ilr] = ([p.grad.clone() for p in trunk], [p.grad.clone() for p in branch])
    for scaled, plain in zip(grads[True][0], grads[False][0]):
        torch.testing.assert_close(scaled, plain / 4, rtol=1e-4, atol=1e-7)
    for scaled, plain in zip(grads[True][1], grads[False][1]):  # the heads themselves are not rescaled
        torch.testing.assert_close(scaled, plain)


def test_one_golden_loss_gated_teacher_is_detached_in_the_kl():
    method = ONE(context(), ONEParams(peers=2, temperature=1.0, ramp_epochs=0.0))  # w = 1
    method.runner = FixedBranches([[LN3, 0.0], [0.0, 0.0]], gate=[0.5, 0.5])
    parts = method.training_step((IMAGES, torch.tensor([0])), 0)
    p = [[0.75, 0.25], [0.5, 0.5]]
    pe = softmax([LN3 / 2, 0.0])
    expected = -math.log(0.75) + math.log(2) - math.log(pe[0]) + kl(pe, p[0]) + kl(pe, p[1])
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert parts["w"].item() == 1.0
    parts["loss"].backward()
    for i in range(2):  # (p_i − y) + g_i (p_e − y) + (p_i − p_e): CE(z_e) reaches the branches, the KL target does not
        grad = [(p[i][c] - (c == 0)) + 0.5 * (pe[c] - (c == 0)) + (p[i][c] - pe[c]) for c in range(2)]
        assert method.runner.z.grad[i, 0].tolist() == pytest.approx(grad, abs=1e-6)
    assert method.runner.g.grad.abs().sum() > 0  # the gate learns from CE(z_e)


def test_one_ramp_weight_is_set_once_per_epoch_as_in_the_official_code():
    method = ONE(context(), ONEParams(peers=2, ramp_epochs=2.0))
    method.runner = FixedBranches([[LN3, 0.0], [0.0, 0.0]], gate=[0.5, 0.5])
    w = [method.training_step((IMAGES, torch.tensor([0])), step)["w"].item() for step in (0, 9, 10, 15, 20)]
    assert w == pytest.approx([math.exp(-5), math.exp(-5), math.exp(-1.25), math.exp(-1.25), 1.0])
    assert ONE.resolve_params(ONEParams(peers=2), context()).ramp_epochs == pytest.approx(3 * 80 / 300)


@pytest.mark.parametrize("detach", [True, False])
def test_okddip_golden_loss_and_detach_semantics(detach):
    method = OKDDip(context(), OKDDipParams(peers=2, temperature=1.0, ramp_epochs=0.0, detach_targets=detach))
    nn.init.zeros_(method.query.weight)  # zero energies: uniform attention, t_i = mean of the peers
    nn.init.zeros_(method.key.weight)
    peers = [[LN3, 0.0], [0.0, 0.0]]
    method.runner = FixedBranches(peers + [[0.0, 0.0]], embeddings=[[1.0] * 16, [2.0] * 16, [3.0] * 16])
    parts = method.training_step((IMAGES, torch.tensor([0])), 0)
    q = softmax([LN3 / 2, 0.0])  # every target (peers' and leader's) is the peers' mean logits here
    probs = [[0.75, 0.25], [0.5, 0.5], [0.5, 0.5]]
    expected = -math.log(0.75) + 2 * math.log(2) + sum(kl(q, p) for p in probs)
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-6)
    parts["loss"].backward()
    grad = method.runner.z.grad[:, 0]
    constant_target = [[(probs[i][c] - (c == 0)) + (probs[i][c] - q[c]) for c in range(2)] for i in range(3)]
    if detach:  # (p − y) + (p − t): no gradient reaches a peer through another peer's (or the leader's) target
        assert grad.tolist() == [pytest.approx(g, abs=1e-6) for g in constant_target]
        assert method.runner.e.grad is None or method.runner.e.grad.abs().max() == 0
    else:  # the official code (--preset paper): gradient also reaches each peer through every target
        # t_i and the leader's target are both σ(z̄) with z̄ = (z_0 + z_1)/2 here; for a student s,
        # ∂KL(q ‖ p_s)/∂z̄ = q ⊙ [(log q − log p_s) − KL(q ‖ p_s)], and ∂z̄/∂z_j = 1/2.
        through_targets = [sum(q[c] * (math.log(q[c] / p[c]) - kl(q, p)) for p in probs) / 2 for c in range(2)]
        official = [[constant_target[j][c] + through_targets[c] for c in range(2)] for j in range(2)]
        assert grad[:2].tolist() == [pytest.approx(g, abs=1e-6) for g in official]
        assert max(abs(v) for v in through_targets) > 0.01  # a real difference from the detached variant
        assert grad[2].tolist() == pytest.approx(constant_target[2], abs=1e-6)  # the leader is never a target


def test_okddip_attention_projections_learn_in_both_modes():
    torch.manual_seed(0)
    for detach in (True, False):
        method = OKDDip(context(), OKDDipParams(peers=3, detach_targets=detach, ramp_epochs=0.0))
        method.runner = FixedBranches([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5], [0.0, 0.0]],
                                      embeddings=[[float(i + j) for j in range(16)] for i in range(4)])
        method.training_step((IMAGES, torch.tensor([0])), 0)["loss"].backward()
        assert method.query.weight.grad.abs().max() > 0 and method.key.weight.grad.abs().max() > 0
        assert method.query.bias is None and method.query.weight.shape == (2, 16)  # C → C/8, bias-free


@pytest.mark.parametrize(
    ("cls", "params", "message"),
    [
        (DML, DMLParams(peers=1), "at least 2"),
        (DML, DMLParams(update="sometimes"), "--update"),
        (CL, CLParams(peers=1), "at least 2"),
        (ONE, ONEParams(split_at="stage9"), "beyond"),
        (OKDDip, OKDDipParams(peers=1), "at least 2"),
    ],
)
def test_bad_method_input_is_a_kd_error(cls, params, message):
    """Hyperparameters are checked when they are resolved, before the method (or anything else) is built."""
    with pytest.raises(KDError, match=message):
        cls.resolve_params(params, context("lenet5"))
