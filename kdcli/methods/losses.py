"""Pure loss functions. Shapes: logits ``[B, K]``; every loss returns a 0-d tensor (batch mean).

The online-distillation helpers below take stacks of heads ``[K, B, C]`` and return one value per head ``[K]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdcli.errors import KDError


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Hinton et al. (2015) soft-target loss: ``T² · KL(σ(t/T) ‖ σ(s/T))``, averaged over the batch.

    The T² factor keeps the gradient scale of the soft term independent of T.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1).mean()
    return kl * (t * t)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """``−Σ y log σ(z)`` for a soft target ``y`` (rows sum to 1), averaged over the batch."""
    return -(target_probs * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


# ---------------------------------------------------------------------------------------------
# Data-free distillation (DAFL, ZSKT, ZSKD, Lopes et al., DeepInversion). Pure functions; every
# method file cites its paper and says which of these it combines.


def onehot_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """DAFL's L_oh: ``CE(t, argmax t)``: the teacher should be confident on generated images."""
    logits = teacher_logits.float()
    return F.cross_entropy(logits, logits.detach().argmax(dim=1))


def activation_loss(features: torch.Tensor) -> torch.Tensor:
    """DAFL's L_a: ``−mean |f|`` of the teacher's penultimate features (large activations = real-looking inputs)."""
    return -features.float().abs().mean()


def information_entropy_loss(teacher_logits: torch.Tensor, log_base: float = 10.0) -> torch.Tensor:
    """DAFL's L_ie: ``Σ_k p̄_k log p̄_k`` with ``p̄`` the batch-mean softmax, i.e. minus the entropy of
    the mean prediction; minimal (−log K) when the batch spreads evenly over the K classes.

    ``log_base`` 10 is what the official DAFL code uses (its α_ie values are tuned for it); e for nats.
    """
    mean_probs = F.softmax(teacher_logits.float(), dim=1).mean(dim=0)
    return (mean_probs * torch.log(mean_probs.clamp_min(1e-12))).sum() / math.log(log_base)


def dafl_generator_loss(
    teacher_logits: torch.Tensor,
    teacher_features: torch.Tensor,
    alpha_oh: float,
    alpha_a: float,
    alpha_ie: float,
    log_base: float = 10.0,
) -> dict[str, torch.Tensor]:
    """DAFL's generator objective ``α_oh·L_oh + α_a·L_a + α_ie·L_ie``; returns the total and each part."""
    oh = onehot_loss(teacher_logits)
    act = activation_loss(teacher_features)
    ie = information_entropy_loss(teacher_logits, log_base)
    return {"loss": alpha_oh * oh + alpha_a * act + alpha_ie * ie, "onehot": oh, "activation": act, "entropy": ie}


def attention_map(features: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Zagoruyko & Komodakis (2017) spatial attention ``normalise(mean_c a²)``: ``[B, C, H, W] → [B, H·W]``.

    ``size`` average-pools the map first, so groups of different resolution can be compared.
    """
    amap = features.float().pow(2).mean(dim=1, keepdim=True)
    if size is not None and tuple(amap.shape[-2:]) != tuple(size):
        amap = F.adaptive_avg_pool2d(amap, size)
    return F.normalize(amap.flatten(1), dim=1)


def at_loss(student_groups: list[torch.Tensor], teacher_groups: list[torch.Tensor]) -> torch.Tensor:
    """Attention transfer summed over block groups: ``Σ_g mean((at(s_g) − at(t_g))²)`` (ZSKT's β term, unweighted).

    Only 4-d groups count (an fc group has no spatial map). Groups are paired from the last one
    backwards, so a 3-stage student meets the last 3 stages of a 4-stage teacher; a pair of
    different resolution is compared at the smaller one.
    """
    student_maps = [g for g in student_groups if g.dim() == 4]
    teacher_maps = [g for g in teacher_groups if g.dim() == 4]
    pairs = list(zip(reversed(student_maps), reversed(teacher_maps)))
    if not pairs:
        return student_groups[0].new_zeros(()).float() if student_groups else torch.zeros(())
    total = 0.0
    for s, t in pairs:
        size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
        total = total + (attention_map(s, size) - attention_map(t, size)).pow(2).mean()
    return total


def zskt_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """ZSKT's ``KL(σ(t/T) ‖ σ(s/T))`` averaged over batch *and* classes (``F.kl_div``'s default
    ``mean``, as in the official code, so its β=250 keeps its meaning): ``kd_loss / (T²·K)``."""
    return kd_loss(student_logits, teacher_logits, temperature) / (temperature * temperature * student_logits.shape[1])


def bn_stat_loss(
    mean: torch.Tensor, var: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor
) -> torch.Tensor:
    """DeepInversion's feature-statistics term for one BatchNorm: ``‖σ²_bn − σ²‖₂ + ‖μ_bn − μ‖₂``.

    ``mean``/``var`` are the batch's per-channel statistics of the BN *input* (biased variance).
    """
    return torch.linalg.vector_norm(running_var.float() - var.float()) + torch.linalg.vector_norm(
        running_mean.float() - mean.float()
    )


def total_variation_l2(images: torch.Tensor) -> torch.Tensor:
    """DeepInversion's TV prior: the L2 norms of the horizontal, vertical and both diagonal pixel
    differences, summed."""
    x = images.float()
    diffs = (
        x[:, :, :, :-1] - x[:, :, :, 1:],
        x[:, :, :-1, :] - x[:, :, 1:, :],
        x[:, :, 1:, :-1] - x[:, :, :-1, 1:],
        x[:, :, :-1, :-1] - x[:, :, 1:, 1:],
    )
    return sum(torch.linalg.vector_norm(d) for d in diffs)


def input_l2(images: torch.Tensor) -> torch.Tensor:
    """DeepInversion's L2 prior ``‖x‖₂`` over the whole batch."""
    return torch.linalg.vector_norm(images.float())


def class_similarity(classifier_weight: torch.Tensor) -> torch.Tensor:
    """ZSKD's class similarity: cosine similarity of the final layer's class weight vectors.

    Args:
        classifier_weight: ``[K, D]`` (an ``nn.Linear`` weight: one row per class).

    Returns:
        ``[K, K]``; row ``c`` min-max normalised to [0, 1] (1 on the diagonal).
    """
    w = F.normalize(classifier_weight.float(), dim=1)
    sim = w @ w.t()
    low = sim.min(dim=1, keepdim=True).values
    high = sim.max(dim=1, keepdim=True).values
    return (sim - low) / (high - low).clamp_min(1e-12)


#: How ZSKD applies its Dirichlet scale β (:func:`dirichlet_concentration`).
BETA_MODES = ("paper", "official")


def dirichlet_concentration(similarity: torch.Tensor, classes: torch.Tensor, beta: torch.Tensor | float,
                            floor: float = 1e-4, mode: str = "paper") -> torch.Tensor:
    """ZSKD's Dirichlet concentration for each aimed class ``c`` (``[N] → [N, K]``).

    * ``mode="paper"``: ``β·C_c + floor``, the paper's ``Dir(β·C_c)``.
    * ``mode="official"``: what the official code (vcl-iisc/ZSKD, ``generateDirch``) computes: it min-max
      normalises the row ``β·C_c`` again before adding the floor, which cancels β:
      ``(β·C_c − min)/(max − min) + floor`` = ``C_c + floor`` for every β.

    The floor keeps every concentration positive (the official code adds 1e-4): the least similar
    class has ``C_c = 0`` after min-max normalisation.
    """
    if mode not in BETA_MODES:
        raise KDError(f"beta_mode must be one of {', '.join(BETA_MODES)} (got {mode!r})")
    beta_t = torch.as_tensor(beta, dtype=similarity.dtype, device=similarity.device)
    if beta_t.dim() == 1:
        beta_t = beta_t.unsqueeze(1)
    scaled = similarity[classes] * beta_t
    if mode == "official":
        low = scaled.min(dim=1, keepdim=True).values
        high = scaled.max(dim=1, keepdim=True).values
        scaled = (scaled - low) / (high - low).clamp_min(1e-12)
    return scaled + floor


def sample_dirichlet_targets(similarity: torch.Tensor, classes: torch.Tensor, betas: torch.Tensor,
                             mode: str = "paper") -> torch.Tensor:
    """Soft targets ``y ~ Dir(α)`` for impressions aimed at ``classes`` with scales ``betas`` (``[N, K]``);
    ``α`` is :func:`dirichlet_concentration` in ``mode``.

    Drawn on the CPU in float64 from torch's global generator (seeded by the run), so the targets are
    the same on every device for one seed.
    """
    alpha = dirichlet_concentration(similarity.double().cpu(), classes.cpu(), betas.double().cpu(), mode=mode)
    return torch.distributions.Dirichlet(alpha).sample().float()


def activation_match_loss(
    activations: list[torch.Tensor], targets: list[torch.Tensor], rectify: list[bool] | None = None
) -> torch.Tensor:
    """Lopes et al.'s reconstruction objective, per sample: ``Σ_l mean_units((r(t_l) − r(a_l))²) / D_l``.

    The ``1/D_l`` weighting and the ReLU ``r`` on both sides are the official code's all-layers
    objective; spectral coefficients (which may be negative) are compared without the ReLU.

    Args:
        activations, targets: one ``[B, D_l]`` tensor per matched layer (or spectral block).
        rectify: per layer, whether to apply the ReLU (default: all).

    Returns:
        ``[B]``: each sample's loss, so a batch of independent reconstructions optimises each one alone.
    """
    total = 0.0
    for i, (a, t) in enumerate(zip(activations, targets)):
        a, t = a.float(), t.float()
        if rectify is None or rectify[i]:
            a, t = F.relu(a), F.relu(t)
        total = total + (t - a).pow(2).mean(dim=1) / a.shape[1]
    return total


# ---------------------------------------------------------------------------------------------
# Online distillation (DML, CL, ONE, OKDDip). Targets are passed in already detached or not: the
# method decides what is a constant, these functions only compute.


def mutual_loss(peer_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """DML's mimicry term for every peer at once (Zhang et al., CVPR 2018, eq. 4 with K peers).

    Args:
        peer_logits: ``[K, B, C]`` logits of the K peers (the students of this term).
        target_logits: ``[K, B, C]`` logits the targets are made of (usually ``peer_logits.detach()``).
        temperature: T of both softmaxes; the term is scaled by T² (1 in the paper, so no change).

    Returns:
        ``[K]``: for peer i, ``1/(K−1) · Σ_{j≠i} T²·KL(σ(t_j/T) ‖ σ(z_i/T))``, batch mean.
    """
    k = peer_logits.shape[0]
    if k < 2:
        raise ValueError("mutual_loss needs at least two peers")
    t = temperature
    log_p = F.log_softmax(peer_logits.float() / t, dim=-1)  # [K, B, C] students
    log_q = F.log_softmax(target_logits.float() / t, dim=-1)  # [K, B, C] targets
    q = log_q.exp()
    # KL(q_j ‖ p_i) = Σ_c q_j (log q_j − log p_i); the j = i term is excluded by subtracting it.
    cross = -torch.einsum("jbc,ibc->ijb", q, log_p)  # [K(i), K(j), B]: −Σ q_j log p_i
    neg_entropy = (q * log_q).sum(-1)  # [K(j), B]
    kl = cross + neg_entropy.unsqueeze(0)  # [i, j, B]
    off_diagonal = 1.0 - torch.eye(k, device=kl.device, dtype=kl.dtype)
    per_pair = kl.mean(-1) * off_diagonal  # batch mean, diagonal dropped
    return per_pair.sum(1) / (k - 1) * (t * t)


def peer_kl(student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T²·KL(σ(t/T) ‖ σ(s/T))`` for a stack of students at once: ``[..., B, C]`` → ``[...]`` (batch mean)."""
    t = temperature
    log_p = F.log_softmax(student_logits.float() / t, dim=-1)
    log_q = F.log_softmax(target_logits.float() / t, dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1).mean(-1) * (t * t)


def stacked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each of K heads: ``[K, B, C]``, ``[B]`` → ``[K]`` (batch mean each)."""
    k, b, c = logits.shape
    per_sample = F.cross_entropy(logits.float().reshape(k * b, c), labels.repeat(k), reduction="none")
    return per_sample.view(k, b).mean(-1)


def consensus_of_others(logits: torch.Tensor) -> torch.Tensor:
    """CL's soft-target logits (Song & Chai, NeurIPS 2018): for head h, the mean of the *other* heads' logits.

    ``[H, B, C]`` → ``[H, B, C]``; needs H ≥ 2. Whether the result is a constant is the caller's choice.
    """
    h = logits.shape[0]
    if h < 2:
        raise ValueError("a consensus of the other heads needs at least two heads")
    return (logits.sum(0, keepdim=True) - logits) / (h - 1)


def mean_probability_logits(logits: torch.Tensor) -> torch.Tensor:
    """The ensemble of K classifiers as log of their mean probabilities: ``[K, B, C]`` → ``[B, C]``."""
    k = logits.shape[0]
    return torch.logsumexp(F.log_softmax(logits.float(), dim=-1), dim=0) - math.log(k)


def attention_targets(logits: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OKDDip's first-level targets (Chen et al., AAAI 2020): ``t_i = Σ_j a_ij z_j``, ``a_i = softmax_j(q_i·k_j)``.

    Args:
        logits: ``[P, B, C]`` the auxiliary peers' logits z_j.
        queries, keys: ``[P, B, D]`` each peer's projected pooled feature.

    Returns:
        ``(targets [P, B, C], attention [B, P, P])``; each attention row sums to 1.
    """
    energy = torch.einsum("ibd,jbd->bij", queries.float(), keys.float())
    attention = energy.softmax(dim=-1)
    targets = torch.einsum("bij,jbc->ibc", attention, logits.float())
    return targets, attention


def rampup_weight(epoch: float, ramp_epochs: float) -> float:
    """The sigmoid-shaped ramp-up of Laine & Aila (2017) used by ONE and OKDDip: ``exp(−5 (1 − t/R)²)`` for t < R, else 1.

    ``epoch`` may be fractional (kd's online methods pass the epoch index, as the official codes do);
    ``ramp_epochs ≤ 0`` means no ramp.
    """
    if ramp_epochs <= 0 or epoch >= ramp_epochs:
        return 1.0
    phase = 1.0 - max(0.0, epoch) / ramp_epochs
    return math.exp(-5.0 * phase * phase)

