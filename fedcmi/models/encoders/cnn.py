"""``encoder=cnn``: a small CNN sized for the embedded data."""

from __future__ import annotations

import torch
from torch import nn

from fedcmi.models.frames import FrameAveraged
from fedcmi.models.registry import EncoderOptions


def conv_blocks(in_channels: int, out_dim: int) -> list[nn.Module]:
    """Three conv-BN-ReLU blocks, the last two with stride 2: C x H x W -> ``out_dim`` x ceil(H/4) x ceil(W/4)."""
    return [
        nn.Conv2d(in_channels, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        nn.Conv2d(64, out_dim, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out_dim),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    """Three conv blocks and global average pooling: input C x H x W -> ``out_dim`` features."""

    def __init__(self, in_channels: int, out_dim: int = 64) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.net = nn.Sequential(*conv_blocks(in_channels, out_dim), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build(shape: tuple[int, ...], options: EncoderOptions) -> nn.Module:
    """C x H x W images; C x F x H x W frame stacks go through it frame by frame (averaged)."""
    enc = SmallCNN(shape[0], options.feature_dim)
    return FrameAveraged(enc) if len(shape) == 4 else enc
