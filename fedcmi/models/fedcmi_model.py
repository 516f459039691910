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
    """Spec A.4: Xavier-normal linears, Kaiming-normal convs, BatchNorm at identity.

    Submodules marked ``keeps_weights`` (pretrained encoders) keep theirs.
    """
    kept = {id(sub) for m in module.modules() if getattr(m, "keeps_weights", False) for sub in m.modules()}
    for m in module.modules():
        if id(m) in kept:
            continue
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_fusion(kind: str, dim: int, num_classes: int, **sgmft: int) -> nn.Module:
    """The fusion head over two ``dim``-wide slots: ``concat`` (spec A.4) or ``sgmft`` (spec Part B)."""
    if kind == "concat":
        return ConcatFusion(dim, num_classes)
    if kind == "sgmft":
        from fedcmi.models.sgmft import SGMFTFusion

        return SGMFTFusion(dim, num_classes, **sgmft)
    raise ValueError(f"unknown fusion {kind!r}")


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

    def path_logits(self, xa: torch.Tensor, xb: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every evaluation path from one pass of each encoder (what evaluation needs)."""
        sa, ia = self.branches(xa, "a")
        sb, ib = self.branches(xb, "b")
        return {"mm": self.fuse(sa, sb), "a": self.fuse(sa, ia), "b": self.fuse(ib, sb),
                "a_zero": self.fuse(sa, torch.zeros_like(sa)), "b_zero": self.fuse(torch.zeros_like(sb), sb)}


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

    def path_logits(self, xa: torch.Tensor, xb: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every evaluation path; alone = zero-filled, as this model has no other path."""
        ha, hb = self.enc_a(xa), self.enc_b(xb)
        alone_a, alone_b = self.fusion(ha, torch.zeros_like(ha)), self.fusion(torch.zeros_like(hb), hb)
        return {"mm": self.fusion(ha, hb), "a": alone_a, "b": alone_b, "a_zero": alone_a, "b_zero": alone_b}


def build_model(encoder: str, shapes: tuple[tuple[int, ...], tuple[int, ...]], num_classes: int,
                feature_dim: int, decomposed: bool, projector: str = "linear", *, fusion: str = "concat",
                text_encoder: str = "bert-base-uncased", encoder_weights: str = "", sgmft_tokens: int = 8,
                sgmft_heads: int = 4, sgmft_layers: int = 1) -> nn.Module:
    """A FedCMI model (``decomposed``) or the concat baseline, for inputs of the given shapes.

    A 1-D input shape is a token-id sequence and gets the ``text_encoder`` (transformers), projected to the
    other encoder's width; ``encoder_weights`` initialises ResNet-18 encoders (see ``models.pretrained``).
    """
    def image_encoder(shape: tuple[int, ...]) -> nn.Module:
        if encoder == "resnet18" and encoder_weights:
            from fedcmi.models.pretrained import resnet18_encoder

            return resnet18_encoder(shape[0], encoder_weights)
        enc = build_encoder(encoder, shape[0], feature_dim)
        if len(shape) == 4 and encoder != "resnet18":  # C x F x H x W: frames through a 2-D encoder
            from fedcmi.models.frames import FrameAveraged

            return FrameAveraged(enc)
        return enc

    encs: list[nn.Module | None] = [None if len(s) == 1 else image_encoder(s) for s in shapes]
    width = next((e.out_dim for e in encs if e is not None), feature_dim)
    if any(e is None for e in encs):
        from fedcmi.models.pretrained import TextEncoder

        encs = [e if e is not None else TextEncoder(text_encoder, out_dim=width) for e in encs]
    enc_a, enc_b = encs
    sgmft = {"tokens": sgmft_tokens, "heads": sgmft_heads, "layers": sgmft_layers} if fusion == "sgmft" else {}
    if decomposed:
        return FedCMIModel(enc_a, enc_b, num_classes, feature_dim, projector,
                           build_fusion(fusion, feature_dim, num_classes, **sgmft))
    return ConcatModel(enc_a, enc_b, num_classes, build_fusion(fusion, enc_a.out_dim, num_classes, **sgmft))


def model_options(cfg) -> dict:
    """The ``build_model`` keywords a run config sets (fusion, text encoder, pretrained weights, SG-MFT)."""
    return {"fusion": cfg.fusion, "text_encoder": cfg.text_encoder, "encoder_weights": cfg.encoder_weights,
            "sgmft_tokens": cfg.sgmft_tokens, "sgmft_heads": cfg.sgmft_heads, "sgmft_layers": cfg.sgmft_layers}
