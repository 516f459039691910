"""Loss terms of the local objectives (the FedCMI paper, arXiv 2401.00894, and the authors' code).

Plain functions of tensors."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F


def infiltration_distillation(student: torch.Tensor, teacher: torch.Tensor,
                              tau: torch.Tensor) -> torch.Tensor:
    """Soft-label cross-entropy between temperature-scaled teacher and student logits (the infiltration term).

    ``tau`` holds one temperature per sample (the temperature of its true class) and divides both logit
    sets; no tau^2 scaling, as in the authors' code. The teacher is detached.
    """
    t = tau.reshape(-1, 1)
    target = F.softmax(teacher.detach() / t, dim=1)
    return -(target * F.log_softmax(student / t, dim=1)).sum(dim=1).mean()


def proximal_term(params: Iterable[torch.Tensor], anchors: Iterable[torch.Tensor], mu: float) -> torch.Tensor:
    """(mu / 2) * sum ||theta - theta_global||^2 (FedProx)."""
    total = torch.zeros(())
    for p, g in zip(params, anchors, strict=True):
        total = total + (p.detach().float() - g.float()).pow(2).sum()
    return 0.5 * mu * total


def add_proximal_gradient(params: Iterable[torch.Tensor], anchors: Iterable[torch.Tensor], mu: float) -> None:
    """grad += mu * (theta - theta_global) for every parameter that received a gradient.

    This is the gradient of :func:`proximal_term`, applied as the authors do so that parameters untouched
    by this batch (no gradient) are not moved by the term or by weight decay.
    """
    with torch.no_grad():
        for p, g in zip(params, anchors, strict=True):
            if p.grad is not None:
                p.grad.add_(p - g, alpha=mu)


def true_class_probability(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """softmax(logits)[i, y_i] for every sample."""
    return F.softmax(logits, dim=1).gather(1, y.reshape(-1, 1)).squeeze(1)
