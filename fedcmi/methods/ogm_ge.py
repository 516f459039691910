"""OGM-GE (Peng et al., CVPR 2022) ported into one client's local training (multimodal clients only).

Per batch, the confidence of each modality's half of the concat head gives a discrepancy ratio; the
dominant encoder's convolution gradients are scaled by ``1 - tanh(alpha * ratio)`` and every encoder's
convolution gradients get Gaussian noise with the gradient's own standard deviation (generalisation
enhancement). As in the official code, the ratio itself (not ratio - 1) enters the tanh, and only 4-d
(convolution) gradients are modulated. Unimodal clients train as in FedAvg.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fedcmi.methods.fedavg import CrossEntropy
from fedcmi.methods.losses import true_class_probability


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
    """Scale each encoder's convolution gradients by its coefficient and add the GE noise.

    An encoder without convolutions (``encoder=features``) names the weight ranks that stand in for them
    (``modulated_grad_dims``).
    """
    with torch.no_grad():
        for m, coeff in zip(("a", "b"), coeffs, strict=True):
            enc = getattr(model, f"enc_{m}")
            dims = getattr(enc, "modulated_grad_dims", (4,))
            for p in enc.parameters():
                if p.grad is None or p.grad.dim() not in dims:
                    continue
                std = float(p.grad.std()) + 1e-8
                noise = torch.randn(p.grad.shape, generator=generator, dtype=p.grad.dtype).to(p.grad.device)
                p.grad.mul_(coeff).add_(noise * std)


class OGMGE(CrossEntropy):
    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def batch_loss(self, model: nn.Module, xa: torch.Tensor | None, xb: torch.Tensor | None,
                   y: torch.Tensor) -> dict[str, torch.Tensor]:
        if xa is None or xb is None:  # a unimodal batch: FedAvg's cross-entropy
            return super().batch_loss(model, xa, xb, y)
        h_a, h_b = model.enc_a(xa), model.enc_b(xb)
        fused = self.ce(model.fusion(h_a, h_b), y)
        out_a, out_b = split_head_logits(model.fusion.fc, h_a, h_b)
        coeff_a, coeff_b = ogm_coefficients(out_a, out_b, y, self.alpha)
        return {"loss": fused, "loss_fused": fused, "ogm_coeff_a": torch.tensor(coeff_a),
                "ogm_coeff_b": torch.tensor(coeff_b)}

    def after_backward(self, model: nn.Module, terms: Mapping[str, torch.Tensor],
                       generator: torch.Generator | None) -> None:
        if "ogm_coeff_a" in terms:
            ogm_modulate(model, (float(terms["ogm_coeff_a"]), float(terms["ogm_coeff_b"])), generator)


def build(cfg) -> OGMGE:  # noqa: ANN001 - RunConfig
    return OGMGE(cfg.method.ogm_alpha)
