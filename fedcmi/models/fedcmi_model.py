"""The decomposed FedCMI model (spec A.4) and the plain concat baseline (spec A.12).

Parameter names carry their modality group in the first component: ``enc_a``, ``self_a``, ``inf_a``, ``cls_a``
belong to modality ``a``; ``*_b`` to ``b``; ``fusion`` is shared. The strategy aggregates by that prefix.

Slots of the fusion head: slot ``a`` then slot ``b``. A client holding only ``a`` fills slot ``b`` with
``a``'s infiltration output (which learns to imitate ``b``), and vice versa.
"""

from __future__ import annotations

import torch
from torch import nn

from fedcmi.models.encoders import build_encoder

MODALITIES = ("a", "b")


def group_of(key: str) -> str:
    """``"a"``, ``"b"`` or ``"shared"`` for a state-dict key."""
    head = key.split(".", 1)[0]
    for m in MODALITIES:
        if head.endswith(f"_{m}"):
            return m
    return "shared"


def _projector(in_dim: int, out_dim: int, kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(inplace=True), nn.Linear(out_dim, out_dim),
                         nn.ReLU(inplace=True), nn.Linear(out_dim, out_dim))


class ConcatFusion(nn.Module):
    """F(u, w) = W [u; w] + b."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * dim, num_classes)

    def forward(self, slot_a: torch.Tensor, slot_b: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([slot_a, slot_b], dim=1))


def init_weights(module: nn.Module) -> None:
    """Spec A.4: Xavier-normal linears, Kaiming-normal convs, BatchNorm at identity."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class FedCMIModel(nn.Module):
    """Per modality: encoder -> self and infiltration projectors -> one shared classifier; fusion head."""

    decomposed = True

    def __init__(self, enc_a: nn.Module, enc_b: nn.Module, num_classes: int, dim: int,
                 projector: str = "linear") -> None:
        super().__init__()
        self.enc_a, self.enc_b = enc_a, enc_b
        self.self_a = _projector(enc_a.out_dim, dim, projector)
        self.inf_a = _projector(enc_a.out_dim, dim, projector)
        self.self_b = _projector(enc_b.out_dim, dim, projector)
        self.inf_b = _projector(enc_b.out_dim, dim, projector)
        self.cls_a = nn.Linear(dim, num_classes)
        self.cls_b = nn.Linear(dim, num_classes)
        self.fusion = ConcatFusion(dim, num_classes)
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

    # --- the fusion-head paths of spec A.4 -----------------------------------------------------
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
        """Unimodal logits with the missing slot zero-filled (the spec's acc_a / acc_v)."""
        if (xa is None) == (xb is None):
            raise ValueError("forward_zero takes exactly one modality")
        if xa is not None:
            h = self.branches(xa, "a")[0]
            return self.fuse(h, torch.zeros_like(h))
        h = self.branches(xb, "b")[0]
        return self.fuse(torch.zeros_like(h), h)


class ConcatModel(nn.Module):
    """The FedAvg/FedProx baseline: two encoders, concat head, missing modality zero-filled."""

    decomposed = False

    def __init__(self, enc_a: nn.Module, enc_b: nn.Module, num_classes: int) -> None:
        super().__init__()
        if enc_a.out_dim != enc_b.out_dim:
            raise ValueError("concat baseline needs equal encoder widths")
        self.enc_a, self.enc_b = enc_a, enc_b
        self.fusion = ConcatFusion(enc_a.out_dim, num_classes)
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


def build_model(encoder: str, shapes: tuple[tuple[int, ...], tuple[int, ...]], num_classes: int,
                feature_dim: int, decomposed: bool, projector: str = "linear") -> nn.Module:
    """A FedCMI model (``decomposed``) or the concat baseline, for inputs of the given shapes."""
    enc_a = build_encoder(encoder, shapes[0][0], feature_dim)
    enc_b = build_encoder(encoder, shapes[1][0], feature_dim)
    if decomposed:
        return FedCMIModel(enc_a, enc_b, num_classes, feature_dim, projector)
    return ConcatModel(enc_a, enc_b, num_classes)
