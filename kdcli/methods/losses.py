"""Pure loss functions. Shapes: logits ``[B, K]``; every loss returns a 0-d tensor (batch mean)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
