"""Restricted softmax (FedRS, Li and Zhan, KDD 2021): the logits of classes a client does not hold are scaled
by alpha in its local softmax, so local training does not push the shared head away from missing classes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from fedcmi.methods.remedies.base import Remedy

if TYPE_CHECKING:
    from fedcmi.config import RunConfig


def present_classes(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A boolean mask of the classes that occur in ``y``."""
    return torch.bincount(y, minlength=num_classes) > 0


def restrict(logits: torch.Tensor, present: torch.Tensor, alpha: float) -> torch.Tensor:
    """z_c for held classes, alpha * z_c for the others."""
    scale = torch.where(present, torch.ones_like(present, dtype=logits.dtype),
                        torch.full_like(present, alpha, dtype=logits.dtype))
    return logits * scale.to(logits.device)


class RestrictedSoftmax(Remedy):
    """``restricted-softmax=alpha``: every CE term sees the logits of the classes the client lacks times alpha."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.present: torch.Tensor | None = None

    def start(self, model: nn.Module, y: torch.Tensor, num_classes: int) -> None:
        self.present = present_classes(y, num_classes)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        assert self.present is not None, "start() reads the client's labels first"
        return restrict(z, self.present, self.alpha)


def build(cfg: RunConfig) -> RestrictedSoftmax | None:
    return RestrictedSoftmax(cfg.method.restricted_softmax) if cfg.method.restricted_softmax < 1 else None
