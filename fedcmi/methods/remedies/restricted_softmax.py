"""Restricted softmax (FedRS, Li and Zhan, KDD 2021): the logits of classes a client does not hold are scaled
by alpha in its local softmax, so local training does not push the shared head away from missing classes."""

from __future__ import annotations

import torch


def present_classes(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A boolean mask of the classes that occur in ``y``."""
    return torch.bincount(y, minlength=num_classes) > 0


def restrict(logits: torch.Tensor, present: torch.Tensor, alpha: float) -> torch.Tensor:
    """z_c for held classes, alpha * z_c for the others."""
    scale = torch.where(present, torch.ones_like(present, dtype=logits.dtype),
                        torch.full_like(present, alpha, dtype=logits.dtype))
    return logits * scale.to(logits.device)
