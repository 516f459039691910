"""The class statistics a multimodal client reports, from which the server finds the dominant modality."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedcmi.data.base import ClientData
from fedcmi.dominance import ClassStats
from fedcmi.methods.losses import true_class_probability
from fedcmi.modalities import MM


def self_logits(model: nn.Module, x: torch.Tensor, m: str) -> torch.Tensor:
    """Modality ``m`` alone through its own path: the self branch (FedCMI model) or zero-filled (concat)."""
    if getattr(model, "decomposed", False):
        return model.classify(model.branches(x, m)[0], m)
    return model.forward_zero(**{f"x{m}": x})


@torch.no_grad()
def class_statistics(model: nn.Module, data: ClientData, num_classes: int, batch_size: int = 512) -> ClassStats:
    """Per-class sums of each self branch's true-class probability (multimodal clients; the FedCMI authors' code).

    Only labeled samples that hold both modalities count, so P_a(c) and P_b(c) compare the two modalities on
    the same samples (a sample missing one, or its label, says nothing about the ratio).
    """
    stats = ClassStats.zeros(num_classes)
    data = data.labeled().complete()
    if data.kind != MM or len(data) == 0:
        return stats
    was_training = model.training
    model.eval()
    for start in range(0, len(data), batch_size):
        sl = slice(start, start + batch_size)
        y = data.y[sl]
        pa = true_class_probability(self_logits(model, data.a[sl], "a"), y).double().cpu().numpy()
        pb = true_class_probability(self_logits(model, data.b[sl], "b"), y).double().cpu().numpy()
        yc = y.cpu().numpy()
        stats = stats + ClassStats(np.bincount(yc, pa, num_classes), np.bincount(yc, pb, num_classes),
                                   np.bincount(yc, minlength=num_classes).astype(np.float64))
    model.train(was_training)
    return stats
