"""SG-MFT fusion (Similarity Guided Multimodal Fusion Transformer, arXiv 2405.05760) as a FedCMI fusion head.

The paper gives the modules but not every equation; this is our reconstruction of them.

The FedCMI fusion head receives one vector per slot (a projector output, ``B x dim``). SG-MFT works on
token sequences, so each slot vector is cut into ``tokens`` tokens of width ``dim / tokens`` (plus a learned
position/modality embedding); the slot vectors themselves serve as the global embeddings whose cosine is
the modality-wise similarity. Because the interface stays ``F(slot_a, slot_b) -> logits``, every FedCMI
path keeps working: a unimodal client's infiltration output in the other slot, a zero-filled slot (cosine 0).

* Similarity-Guided Interaction Module (SIM), per layer:
  - coarse: s = cos(u, w) per pair; alpha = sigmoid(w_s * s + b_s); for each stream
    X <- X + (1 - alpha) * SelfAttn(X) + alpha * CrossAttn(X, other). Similar pairs borrow more from the
    other modality; dissimilar (noisy) pairs stay intra-modal.
  - fine: e = normalize(mean X_a) * normalize(mean X_b) (element-wise similarity), g = sigmoid(Linear(e)),
    X <- X + g * FFN(LN(X)).
* Similarity-aware Fusion Module (SFM): bidirectional cross-attention, then
  logits = MLP([mean U_a ; mean U_b ; s]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def modality_similarity(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per pair (``B``); 0 when either vector is zero (a zero-filled slot)."""
    return (F.normalize(u, dim=-1, eps=1e-8) * F.normalize(w, dim=-1, eps=1e-8)).sum(dim=-1)


def element_similarity(xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """Channel-wise similarity of the two streams' mean tokens (``B x d``); sums to their cosine."""
    return F.normalize(xa.mean(dim=1), dim=-1, eps=1e-8) * F.normalize(xb.mean(dim=1), dim=-1, eps=1e-8)


def _ffn(d: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * d, d))


def _mha(d: int, heads: int, dropout: float) -> nn.MultiheadAttention:
    return nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)


class SimilarityGuidedInteraction(nn.Module):
    """One SIM layer: similarity-aware feature interpolation attention, then the gated feed-forward."""

    def __init__(self, d: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        # alpha = sigmoid(4 s - 2): about 0.88 for identical streams, 0.12 for orthogonal ones, at init
        self.sim_scale = nn.Parameter(torch.tensor(4.0))
        self.sim_shift = nn.Parameter(torch.tensor(-2.0))
        self.norm_a, self.norm_b = nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_a, self.self_b = _mha(d, heads, dropout), _mha(d, heads, dropout)
        self.cross_a, self.cross_b = _mha(d, heads, dropout), _mha(d, heads, dropout)
        self.gate = nn.Linear(d, d)
        self.ffn_norm_a, self.ffn_norm_b = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn_a, self.ffn_b = _ffn(d, dropout), _ffn(d, dropout)

    def interpolation_weight(self, s: torch.Tensor) -> torch.Tensor:
        """alpha in (0, 1): the share of cross-modal attention, rising with the modality-wise similarity."""
        return torch.sigmoid(self.sim_scale * s + self.sim_shift)

    def coarse(self, xa: torch.Tensor, xb: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.interpolation_weight(s)[:, None, None]
        na, nb = self.norm_a(xa), self.norm_b(xb)
        ya = xa + (1 - alpha) * self.self_a(na, na, na, need_weights=False)[0] \
            + alpha * self.cross_a(na, nb, nb, need_weights=False)[0]
        yb = xb + (1 - alpha) * self.self_b(nb, nb, nb, need_weights=False)[0] \
            + alpha * self.cross_b(nb, na, na, need_weights=False)[0]
        return ya, yb

    def fine(self, xa: torch.Tensor, xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.sigmoid(self.gate(element_similarity(xa, xb)))[:, None, :]
        return xa + g * self.ffn_a(self.ffn_norm_a(xa)), xb + g * self.ffn_b(self.ffn_norm_b(xb))

    def forward(self, xa: torch.Tensor, xb: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fine(*self.coarse(xa, xb, s))


class SimilarityAwareFusion(nn.Module):
    """SFM: each stream attends to the other (cross-attention), residual, then mean-pooled."""

    def __init__(self, d: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_a, self.norm_b = nn.LayerNorm(d), nn.LayerNorm(d)
        self.a_to_b, self.b_to_a = _mha(d, heads, dropout), _mha(d, heads, dropout)

    def forward(self, xa: torch.Tensor, xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        na, nb = self.norm_a(xa), self.norm_b(xb)
        ua = xa + self.a_to_b(na, nb, nb, need_weights=False)[0]
        ub = xb + self.b_to_a(nb, na, na, need_weights=False)[0]
        return ua.mean(dim=1), ub.mean(dim=1)


class SGMFTFusion(nn.Module):
    """F(slot_a, slot_b) -> logits with SIM layers and the SFM over slot vectors cut into tokens."""

    def __init__(self, dim: int, num_classes: int, tokens: int = 8, heads: int = 4, layers: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if dim % tokens or (dim // tokens) % heads:
            raise ValueError(f"sgmft: width {dim} must split into {tokens} tokens whose width "
                             f"({dim / tokens:g}) is a multiple of {heads} heads")
        self.tokens, self.width = tokens, dim // tokens
        d = self.width
        self.embed_a = nn.Parameter(torch.zeros(1, tokens, d))
        self.embed_b = nn.Parameter(torch.zeros(1, tokens, d))
        nn.init.normal_(self.embed_a, std=0.02)
        nn.init.normal_(self.embed_b, std=0.02)
        self.in_norm_a, self.in_norm_b = nn.LayerNorm(d), nn.LayerNorm(d)
        self.sim = nn.ModuleList(SimilarityGuidedInteraction(d, heads, dropout) for _ in range(layers))
        self.sfm = SimilarityAwareFusion(d, heads, dropout)
        self.head = nn.Sequential(nn.Linear(2 * d + 1, d), nn.GELU(), nn.Linear(d, num_classes))

    def forward(self, slot_a: torch.Tensor, slot_b: torch.Tensor) -> torch.Tensor:
        b = slot_a.shape[0]
        s = modality_similarity(slot_a, slot_b)
        xa = self.in_norm_a(slot_a.reshape(b, self.tokens, self.width)) + self.embed_a
        xb = self.in_norm_b(slot_b.reshape(b, self.tokens, self.width)) + self.embed_b
        for layer in self.sim:
            xa, xb = layer(xa, xb, s)
        pa, pb = self.sfm(xa, xb)
        return self.head(torch.cat([pa, pb, s[:, None]], dim=1))


def build(dim: int, num_classes: int, *, sgmft_tokens: int, sgmft_heads: int, sgmft_layers: int) -> nn.Module:
    """``fusion=sgmft`` (its registry line passes the three sgmft keys)."""
    return SGMFTFusion(dim, num_classes, tokens=sgmft_tokens, heads=sgmft_heads, layers=sgmft_layers)
