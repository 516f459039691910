"""PMR (Fan et al., CVPR 2023) ported into one client's local training (multimodal clients only).

Class prototypes (mean encoder features per class, refreshed every local epoch with momentum) give a
non-parametric classifier per modality; when one modality's prototype confidence is higher, the other's
prototype cross-entropy is added with weight ``alpha``. Unimodal clients train as in FedAvg.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedcmi.data.base import ClientData
from fedcmi.dominance import Guidance
from fedcmi.methods.fedavg import CrossEntropy
from fedcmi.methods.losses import true_class_probability
from fedcmi.modalities import MM


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


class Prototypes:
    """Per-class prototypes of each encoder, refreshed at the start of every local epoch."""

    def __init__(self, num_classes: int, momentum: float) -> None:
        self.num_classes, self.momentum = num_classes, momentum
        self.a: torch.Tensor | None = None
        self.b: torch.Tensor | None = None

    @torch.no_grad()
    def refresh(self, model: nn.Module, data: ClientData, batch_size: int = 512) -> None:
        """Each modality's prototypes from the samples that hold it (a missing modality adds nothing)."""
        was_training = model.training
        model.eval()
        for m in ("a", "b"):
            x, y = getattr(data, m), data.y
            if data.partial:
                keep = data.present(m)
                x, y = x[keep], y[keep]
            enc = getattr(model, f"enc_{m}")
            h = (torch.cat([enc(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x)
                 else torch.zeros(0, enc.out_dim, device=y.device))
            setattr(self, m, class_prototypes(h, y, self.num_classes, getattr(self, m), self.momentum))
        model.train(was_training)


class PMR(CrossEntropy):
    def __init__(self, alpha: float, momentum: float) -> None:
        self.alpha, self.momentum = alpha, momentum
        self.protos: Prototypes | None = None

    def start(self, model: nn.Module, data: ClientData, guidance: Guidance, num_classes: int) -> None:
        if data.kind == MM:
            self.protos = Prototypes(num_classes, self.momentum)

    def before_epoch(self, model: nn.Module, data: ClientData) -> None:
        if self.protos is not None:
            self.protos.refresh(model, data)

    def batch_loss(self, model: nn.Module, xa: torch.Tensor | None, xb: torch.Tensor | None,
                   y: torch.Tensor) -> dict[str, torch.Tensor]:
        if xa is None or xb is None:  # a unimodal batch: FedAvg's cross-entropy
            return super().batch_loss(model, xa, xb, y)
        h_a, h_b = model.enc_a(xa), model.enc_b(xb)
        fused = self.ce(model.fusion(h_a, h_b), y)
        proto = pmr_loss(h_a, h_b, y, self.protos.a, self.protos.b, self.alpha)
        return {"loss": fused + proto, "loss_fused": fused, "loss_proto": proto}


def build(cfg) -> PMR:  # noqa: ANN001 - RunConfig
    return PMR(cfg.method.pmr_alpha, cfg.method.pmr_momentum)
