"""The decomposed FedCMI model (the FedCMI paper, arXiv 2401.00894, and the authors' code).

Per modality: an encoder, a self projector and an infiltration projector, and one classifier shared by
both projectors; a fusion head over two slots. Slot ``a`` then slot ``b``: a client holding only ``a`` fills
slot ``b`` with ``a``'s infiltration output (which learns to imitate ``b``), and vice versa. Parameter names
carry their modality group (``fedcmi.modalities.group_of``).
"""

from __future__ import annotations

import torch
from torch import nn

from fedcmi.models.fusion.concat import ConcatFusion
from fedcmi.models.init import init_weights


def _projector(in_dim: int, out_dim: int, kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(inplace=True), nn.Linear(out_dim, out_dim),
                         nn.ReLU(inplace=True), nn.Linear(out_dim, out_dim))


class FedCMIModel(nn.Module):
    """Per modality: encoder -> self and infiltration projectors -> one shared classifier; fusion head."""

    decomposed = True

    def __init__(self, enc_a: nn.Module, enc_b: nn.Module, num_classes: int, dim: int,
                 projector: str = "linear", fusion: nn.Module | None = None) -> None:
        super().__init__()
        self.enc_a, self.enc_b = enc_a, enc_b
        self.self_a = _projector(enc_a.out_dim, dim, projector)
        self.inf_a = _projector(enc_a.out_dim, dim, projector)
        self.self_b = _projector(enc_b.out_dim, dim, projector)
        self.inf_b = _projector(enc_b.out_dim, dim, projector)
        self.cls_a = nn.Linear(dim, num_classes)
        self.cls_b = nn.Linear(dim, num_classes)
        self.fusion = fusion if fusion is not None else ConcatFusion(dim, num_classes)
        self.dim = dim
        init_weights(self)

    # --- pieces ---------------------------------------------------------------------------------
    def branches(self, x: torch.Tensor, m: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(self, infiltration) projector outputs of modality ``m``."""
        feats = getattr(self, f"enc_{m}")(x)
        return getattr(self, f"self_{m}")(feats), getattr(self, f"inf_{m}")(feats)

    def classify(self, h: torch.Tensor, m: str) -> torch.Tensor:
        """Modality ``m``'s shared classifier (used on both of its projectors)."""
        return getattr(self, f"cls_{m}")(h)

    def fuse(self, slot_a: torch.Tensor, slot_b: torch.Tensor) -> torch.Tensor:
        return self.fusion(slot_a, slot_b)

    # --- the fusion-head paths --------------------------------------------------------------------
    def forward(self, xa: torch.Tensor | None = None, xb: torch.Tensor | None = None) -> torch.Tensor:
        """Fused logits; a missing modality's slot holds the present one's infiltration output."""
        if xa is not None and xb is not None:
            return self.fuse(self.branches(xa, "a")[0], self.branches(xb, "b")[0])
        if xa is not None:
            h_self, h_inf = self.branches(xa, "a")
            return self.fuse(h_self, h_inf)
        if xb is not None:
            h_self, h_inf = self.branches(xb, "b")
            return self.fuse(h_inf, h_self)
        raise ValueError("forward needs at least one modality")

    def forward_zero(self, xa: torch.Tensor | None = None, xb: torch.Tensor | None = None) -> torch.Tensor:
        """Unimodal logits with the missing slot zero-filled (acc_<m>_zero)."""
        if (xa is None) == (xb is None):
            raise ValueError("forward_zero takes exactly one modality")
        if xa is not None:
            h = self.branches(xa, "a")[0]
            return self.fuse(h, torch.zeros_like(h))
        h = self.branches(xb, "b")[0]
        return self.fuse(torch.zeros_like(h), h)

    def slots(self, xa: torch.Tensor, xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fusion head's inputs on the multimodal path: (self_a, self_b)."""
        return self.branches(xa, "a")[0], self.branches(xb, "b")[0]

    def path_logits(self, xa: torch.Tensor, xb: torch.Tensor, only: str | None = None) -> dict[str, torch.Tensor]:
        """Logits of every evaluation path from one pass of each encoder (what evaluation needs); ``only`` "a"
        or "b": just that modality's two paths (alone, zero-filled), without running the other encoder."""
        if only is not None:
            s, i = self.branches(xa if only == "a" else xb, only)
            zero = torch.zeros_like(s)
            if only == "a":
                return {"a": self.fuse(s, i), "a_zero": self.fuse(s, zero)}
            return {"b": self.fuse(i, s), "b_zero": self.fuse(zero, s)}
        sa, ia = self.branches(xa, "a")
        sb, ib = self.branches(xb, "b")
        return {"mm": self.fuse(sa, sb), "a": self.fuse(sa, ia), "b": self.fuse(ib, sb),
                "a_zero": self.fuse(sa, torch.zeros_like(sa)), "b_zero": self.fuse(torch.zeros_like(sb), sb)}
