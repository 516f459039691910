"""Not-true distillation (FedNTD, Lee et al., NeurIPS 2022): keep the global model's knowledge of the classes
a client's label is not, by distilling the frozen global model's not-true-class distribution into the local
one: KL(q~_global || q~_local) over the classes other than each sample's label, at temperature T.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fedcmi.methods.remedies.base import Remedy

if TYPE_CHECKING:
    from fedcmi.config import RunConfig


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


class NotTrueDistillation(Remedy):
    """``ntd-beta=beta``: loss += beta * ntd_loss(model(x), frozen global model(x)) on the fused logits."""

    def __init__(self, beta: float, temperature: float) -> None:
        self.beta, self.temperature = beta, temperature
        self.teacher: nn.Module | None = None

    def start(self, model: nn.Module, y: torch.Tensor, num_classes: int) -> None:
        self.teacher = copy.deepcopy(model).eval()  # the received global weights
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def loss_terms(self, model: nn.Module, xa: torch.Tensor | None, xb: torch.Tensor | None,
                   y: torch.Tensor) -> dict[str, tuple[float, torch.Tensor]]:
        assert self.teacher is not None, "start() freezes the teacher first"
        with torch.no_grad():
            teacher = self.teacher(xa, xb)
        return {"loss_ntd": (self.beta, ntd_loss(model(xa, xb), teacher, y, self.temperature))}


def build(cfg: RunConfig) -> NotTrueDistillation | None:
    return NotTrueDistillation(cfg.method.ntd_beta, cfg.method.ntd_temperature) if cfg.method.ntd_beta > 0 else None
