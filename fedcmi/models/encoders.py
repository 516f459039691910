"""Per-modality encoders: a small CNN sized for the embedded data, or torchvision's ResNet-18."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Three conv blocks and global average pooling: input C x H x W -> ``out_dim`` features."""

    def __init__(self, in_channels: int, out_dim: int = 64) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, out_dim, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out_dim),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResNet18Encoder(nn.Module):
    """torchvision ResNet-18 without its classifier, first conv adapted to ``in_channels`` (the authors' encoder).

    Frame stacks ``B x C x F x H x W`` are folded into the batch and average-pooled over frames.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        from torchvision.models import resnet18  # here: importing torchvision costs ~1 s per process

        net = resnet18(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.fc = nn.Identity()
        self.net = net
        self.out_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:  # B x C x F x H x W -> (B*F) x C x H x W, mean over frames
            b, c, f, h, w = x.shape
            feats = self.net(x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))
            return feats.view(b, f, -1).mean(dim=1)
        return self.net(x)


def build_encoder(kind: str, in_channels: int, feature_dim: int) -> nn.Module:
    if kind == "cnn":
        return SmallCNN(in_channels, feature_dim)
    if kind == "resnet18":
        return ResNet18Encoder(in_channels)
    raise ValueError(f"unknown encoder {kind!r}")
