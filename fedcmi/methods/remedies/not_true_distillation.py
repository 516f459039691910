"""Not-true distillation (FedNTD, Lee et al., NeurIPS 2022): keep the global model's knowledge of the classes
a client's label is not, by distilling the frozen global model's not-true-class distribution into the local
one: KL(q~_global || q~_local) over the classes other than each sample's label, at temperature T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def not_true_logits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The logits with each sample's true class removed: B x (C - 1)."""
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep[torch.arange(len(y)), y] = False
    return logits[keep].reshape(len(y), logits.shape[1] - 1)


def ntd_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T^2 * KL(softmax(teacher_not_true / T) || softmax(student_not_true / T)), batch mean (as in FedNTD)."""
    s = not_true_logits(student, y) / temperature
    t = not_true_logits(teacher.detach(), y) / temperature
    return F.kl_div(F.log_softmax(s, dim=1), F.softmax(t, dim=1), reduction="batchmean") * temperature ** 2
