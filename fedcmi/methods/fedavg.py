"""FedAvg's local objective: cross-entropy of the concat model, the missing modality zero-filled."""

from __future__ import annotations

import torch
from torch import nn

from fedcmi.methods.base import LocalMethod


class CrossEntropy(LocalMethod):
    """CE of the fused logits; a unimodal client's missing slot is zeros (the FedCMI paper's baseline)."""

    def batch_loss(self, model: nn.Module, xa: torch.Tensor | None, xb: torch.Tensor | None,
                   y: torch.Tensor) -> dict[str, torch.Tensor]:
        fused = self.ce(model(xa, xb), y)
        return {"loss": fused, "loss_fused": fused}


def build(cfg) -> CrossEntropy:  # noqa: ANN001 - RunConfig
    """fedavg, fedprox, fedavg-la, unimodal-a/b (fedcmi.methods.registry): the same objective."""
    return CrossEntropy()
