"""``encoder=cnn-rows``: the small CNN's conv blocks, averaged over the last axis only (for spectrograms).

``encoder=cnn`` averages its last feature map over both axes, so it can tell which local patterns occur but not
in which row. On a spectrogram (1 x mel bands x time frames) the row is the frequency band, and which bands are
active is most of what tells one spoken digit from another: on the prepared FSDD audio, the global average
leaves a trained CNN near chance while keeping the rows lets it learn (docs/datasets.md, "the audio encoder").
This encoder averages over time (the last axis) only, flattens the ``ceil(H/4)`` rows and projects them to
``feature-dim`` with a linear layer and a ReLU.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedcmi.models.encoders.cnn import conv_blocks
from fedcmi.models.frames import FrameAveraged
from fedcmi.models.registry import EncoderOptions


class RowPooledCNN(nn.Module):
    """C x H x W -> ``out_dim`` features that keep where along H (the frequency axis) each pattern occurs."""

    def __init__(self, in_channels: int, height: int, out_dim: int = 64) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.rows = math.ceil(math.ceil(height / 2) / 2)  # the two stride-2 convolutions of conv_blocks
        self.body = nn.Sequential(*conv_blocks(in_channels, out_dim))
        self.head = nn.Sequential(nn.Linear(out_dim * self.rows, out_dim), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(dim=-1).flatten(1))


def build(shape: tuple[int, ...], options: EncoderOptions) -> nn.Module:
    """C x H x W inputs; C x F x H x W frame stacks go through it frame by frame (averaged), as with ``cnn``."""
    enc = RowPooledCNN(shape[0], shape[-2], options.feature_dim)
    return FrameAveraged(enc) if len(shape) == 4 else enc
