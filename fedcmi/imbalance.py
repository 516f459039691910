"""Centralized modality-imbalance methods ported into one client's local training (peers.md §2.2).

Both act on multimodal clients with the concat model; unimodal clients train as in FedAvg.

- OGM-GE (Peng et al., CVPR 2022): per batch, the confidence of each modality's half of the concat head
  gives a discrepancy ratio; the dominant encoder's convolution gradients are scaled by
  ``1 - tanh(alpha * ratio)`` and every encoder's convolution gradients get Gaussian noise with the
  gradient's own standard deviation (generalisation enhancement). As in the official code, the ratio itself
  (not ratio - 1) enters the tanh, and only 4-d (convolution) gradients are modulated.
- PMR (Fan et al., CVPR 2023): class prototypes (mean encoder features per class, refreshed every local epoch
  with momentum) give a non-parametric classifier per modality; when one modality's prototype confidence is
  higher, the other's prototype cross-entropy is added with weight ``alpha``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedcmi.losses import true_class_probability


def split_head_logits(fusion_fc: nn.Linear, h_a: torch.Tensor,
                      h_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each modality's share of the concat head: W_a h_a + b/2 and W_b h_b + b/2."""
    d = h_a.shape[1]
    w, b = fusion_fc.weight, fusion_fc.bias
    return h_a @ w[:, :d].T + b / 2, h_b @ w[:, d:].T + b / 2


def ogm_coefficients(out_a: torch.Tensor, out_b: torch.Tensor, y: torch.Tensor,
                     alpha: float) -> tuple[float, float]:
    """(coeff_a, coeff_b): the dominant modality's gradient scale, 1 for the other."""
    with torch.no_grad():
        score_a = true_class_probability(out_a, y).sum()
        score_b = true_class_probability(out_b, y).sum()
        ratio_a = float(score_a / score_b)
    if ratio_a > 1:
        return 1.0 - float(torch.tanh(torch.tensor(alpha * ratio_a))), 1.0
    return 1.0, 1.0 - float(torch.tanh(torch.tensor(alpha / ratio_a)))


def ogm_modulate(model: nn.Module, coeffs: tuple[float, float], generator: torch.Generator | None) -> None:
    """Scale each encoder's convolution gradients by its coefficient and add the GE noise."""
    with torch.no_grad():
        for m, coeff in zip(("a", "b"), coeffs, strict=True):
            for p in getattr(model, f"enc_{m}").parameters():
                if p.grad is None or p.grad.dim() != 4:
                    continue
                std = float(p.grad.std()) + 1e-8
                noise = torch.randn(p.grad.shape, generator=generator, dtype=p.grad.dtype).to(p.grad.device)
                p.grad.mul_(coeff).add_(noise * std)


@torch.no_grad()
def class_prototypes(features: torch.Tensor, y: torch.Tensor, num_classes: int,
                     previous: torch.Tensor | None = None, momentum: float = 0.2) -> torch.Tensor:
    """Mean feature per class (NaN rows for absent classes), mixed with the previous prototypes."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, y, features)
    counts = torch.bincount(y, minlength=num_classes).to(features.dtype).unsqueeze(1)
    protos = sums / counts  # 0/0 = NaN marks an absent class
    if previous is not None:
        protos = (1 - momentum) * protos + momentum * previous
    return protos


def prototype_logits(h: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """-Euclidean distance to each class prototype; absent classes get a very low logit."""
    absent = torch.isnan(prototypes).any(dim=1)
    logits = -torch.cdist(h, torch.nan_to_num(prototypes), p=2)
    return logits.masked_fill(absent.unsqueeze(0), -1e4)


def pmr_loss(h_a: torch.Tensor, h_b: torch.Tensor, y: torch.Tensor, protos_a: torch.Tensor,
             protos_b: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * prototype CE of the modality whose prototype confidence is lower (0 when equal)."""
    logits_a, logits_b = prototype_logits(h_a, protos_a), prototype_logits(h_b, protos_b)
    with torch.no_grad():
        ratio = true_class_probability(logits_a, y).sum() / true_class_probability(logits_b, y).sum()
    if ratio > 1:
        return alpha * F.cross_entropy(logits_b, y)
    if ratio < 1:
        return alpha * F.cross_entropy(logits_a, y)
    return torch.zeros((), device=h_a.device)
