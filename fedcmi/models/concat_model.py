"""The concat baseline of FedAvg, FedProx and the ported imbalance methods (the FedCMI paper's baselines).

Two encoders, one concat head; a missing modality is zero-filled.
"""

from __future__ import annotations

import torch
from torch import nn

from fedcmi.models.fusion.concat import ConcatFusion
from fedcmi.models.init import init_weights


class ConcatModel(nn.Module):
    """The FedAvg/FedProx baseline: two encoders, concat head, missing modality zero-filled."""

    decomposed = False

    def __init__(self, enc_a: nn.Module, enc_b: nn.Module, num_classes: int, fusion: nn.Module | None = None) -> None:
        super().__init__()
        if enc_a.out_dim != enc_b.out_dim:
            raise ValueError("concat baseline needs equal encoder widths")
        self.enc_a, self.enc_b = enc_a, enc_b
        self.fusion = fusion if fusion is not None else ConcatFusion(enc_a.out_dim, num_classes)
        init_weights(self)

    def forward(self, xa: torch.Tensor | None = None, xb: torch.Tensor | None = None) -> torch.Tensor:
        if xa is None and xb is None:
            raise ValueError("forward needs at least one modality")
        ha = self.enc_a(xa) if xa is not None else None
        hb = self.enc_b(xb) if xb is not None else None
        ha = ha if ha is not None else torch.zeros_like(hb)
        hb = hb if hb is not None else torch.zeros_like(ha)
        return self.fusion(ha, hb)

    def forward_zero(self, xa: torch.Tensor | None = None, xb: torch.Tensor | None = None) -> torch.Tensor:
        if (xa is None) == (xb is None):
            raise ValueError("forward_zero takes exactly one modality")
        return self.forward(xa, xb)

    def slots(self, xa: torch.Tensor, xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fusion head's inputs on the multimodal path: (enc_a, enc_b)."""
        return self.enc_a(xa), self.enc_b(xb)

    def path_logits(self, xa: torch.Tensor, xb: torch.Tensor, only: str | None = None) -> dict[str, torch.Tensor]:
        """Logits of every evaluation path; alone = zero-filled, as this model has no other path. ``only`` "a" or
        "b": just that modality's paths, without running the other encoder."""
        if only == "a":
            ha = self.enc_a(xa)
            alone = self.fusion(ha, torch.zeros_like(ha))
            return {"a": alone, "a_zero": alone}
        if only == "b":
            hb = self.enc_b(xb)
            alone = self.fusion(torch.zeros_like(hb), hb)
            return {"b": alone, "b_zero": alone}
        ha, hb = self.enc_a(xa), self.enc_b(xb)
        alone_a, alone_b = self.fusion(ha, torch.zeros_like(ha)), self.fusion(torch.zeros_like(hb), hb)
        return {"mm": self.fusion(ha, hb), "a": alone_a, "b": alone_b, "a_zero": alone_a, "b_zero": alone_b}
