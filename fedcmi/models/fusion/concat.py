"""The concat fusion head of the FedCMI paper and of the FedAvg baseline: F(u, w) = W [u; w] + b."""

from __future__ import annotations

import torch
from torch import nn


class ConcatFusion(nn.Module):
    """F(u, w) = W [u; w] + b."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * dim, num_classes)

    def forward(self, slot_a: torch.Tensor, slot_b: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([slot_a, slot_b], dim=1))


def build(dim: int, num_classes: int) -> nn.Module:
    """``fusion=concat``."""
    return ConcatFusion(dim, num_classes)
