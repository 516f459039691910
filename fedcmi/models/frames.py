"""Frame stacks (``B x C x F x H x W``, real video data) for encoders that take single images."""

from __future__ import annotations

import torch
from torch import nn


class FrameAveraged(nn.Module):
    """Runs ``inner`` on every frame (frames folded into the batch) and averages over frames (as the authors do)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.out_dim = inner.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            return self.inner(x)
        b, c, f, h, w = x.shape
        feats = self.inner(x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))
        return feats.view(b, f, -1).mean(dim=1)
