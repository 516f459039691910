"""The encoder of ``encoder=features``: precomputed token embeddings (``fedcmi features``) -> one slot vector.

The heavy pretrained encoder ran once, frozen, at extraction time; what the federation trains per modality is
this small module: the tokens (``B x T x D``: video frames, audio time steps, text tokens; an all-zero row is
padding) are mean-pooled into ``segments`` consecutive groups of the sample's own valid tokens, centred and
scaled to a fixed norm, and projected token by token to ``out_dim / segments``, then concatenated. With a
fusion head that cuts a slot vector into tokens (``FusionSpec.tokens``: ``fusion=sgmft``, ``sgmft-tokens``) the
segments are its tokens, so its cut falls on real temporal tokens; with the concat head there is one segment
(mean pooling).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedcmi.models.registry import EncoderOptions

TOKEN_NORM = 4.0  # a pooled token's norm: small enough not to diverge, large enough to learn (docs/features.md)


def segment_pool(x: torch.Tensor, segments: int) -> torch.Tensor:
    """``B x T x D`` -> ``B x segments x D``: means over consecutive groups of each sample's non-zero tokens.

    Token j of a sample with n valid tokens falls in group ``floor(rank_j * segments / n)``; an empty group (a
    text shorter than ``segments`` tokens) is zero.
    """
    valid = x.abs().sum(dim=-1) > 0  # B x T
    n = valid.sum(dim=1, keepdim=True).clamp(min=1)
    rank = valid.long().cumsum(dim=1) - 1
    group = torch.div(rank.clamp(min=0) * segments, n, rounding_mode="floor").clamp(max=segments - 1)
    weights = F.one_hot(group, segments).to(x.dtype) * valid[..., None].to(x.dtype)  # B x T x segments
    sums = torch.einsum("bts,btd->bsd", weights, x)
    return sums / weights.sum(dim=1)[..., None].clamp(min=1)


class FeatureTokens(nn.Module):
    """Precomputed tokens ``B x T x D`` -> ``B x out_dim`` (pooled per segment, normalised, projected per token)."""

    modulated_grad_dims = (2,)  # OGM-GE modulates the projection weight: the frozen CNN has no trainable convs

    def __init__(self, shape: tuple[int, ...], out_dim: int, segments: int = 1) -> None:
        super().__init__()
        if len(shape) != 2:
            raise ValueError(f"encoder=features takes token embeddings (T x D), not inputs of shape {shape}; "
                             "data-root must be a directory made by `fedcmi features`")
        if out_dim % segments:
            raise ValueError(f"feature width {out_dim} does not split into {segments} segments")
        self.segments = segments
        self.out_dim = out_dim
        self.width = shape[1]
        self.proj = nn.Linear(shape[1], out_dim // segments)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = segment_pool(x, self.segments)
        # centred tokens of norm TOKEN_NORM whatever the encoder's scale and width (768, 1280, 2048): per-dimension
        # unit variance, as LayerNorm gives, makes a 1280-wide input's curvature ~1280, too steep for SGD at the
        # default lr; a small norm is stable but learns slowly (what was tried: docs/features.md)
        normed = F.layer_norm(pooled, (self.width,)) * (TOKEN_NORM / self.width ** 0.5)
        return self.proj(normed).flatten(1)


def build(shape: tuple[int, ...], options: EncoderOptions) -> nn.Module:
    return FeatureTokens(shape, options.feature_dim, options.segments)
