"""``encoder=resnet18``: torchvision's ResNet-18 trunk (the FedCMI authors' encoder), optionally initialised from
ImageNet weights (the file torchvision would download, taken from the local torch hub cache; this code never
downloads) or any state-dict file (``encoder-weights``).

Modules marked ``keeps_weights`` are skipped by :func:`fedcmi.models.init.init_weights`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from fedcmi.config import ConfigError
from fedcmi.models.registry import EncoderOptions

logger = logging.getLogger(__name__)

RESNET18_FILE = "resnet18-f37072fd.pth"
RESNET18_URL = f"https://download.pytorch.org/models/{RESNET18_FILE}"


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


def resolve_resnet_weights(spec: str) -> Path:
    """``imagenet`` -> the torchvision file in the local torch hub cache; otherwise a file path."""
    if spec == "imagenet":
        path = Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE
        hint = f"download {RESNET18_URL} on a connected machine into {path.parent}/"
    else:
        path = Path(spec).expanduser()
        hint = "give a state-dict file (.pth or .safetensors) of torchvision's resnet18"
    if not path.is_file():
        raise ConfigError(f"encoder-weights={spec!r}: {path} does not exist; {hint}, or set encoder-weights='' "
                          "to train from scratch, as the FedCMI authors do")
    return path


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def resnet18_encoder(in_channels: int, weights: str = "") -> ResNet18Encoder:
    """ResNet-18 trunk; with ``weights``, its conv/BN layers start from them (conv1 averaged for 1 channel)."""
    enc = ResNet18Encoder(in_channels)
    if not weights:
        return enc
    path = resolve_resnet_weights(weights)
    state = {k.removeprefix("net."): v for k, v in _read_state(path).items() if not k.startswith("fc.")}
    conv1 = state.get("conv1.weight")
    if conv1 is not None and conv1.shape[1] != in_channels:
        state["conv1.weight"] = conv1.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
    missing, unexpected = enc.net.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("fc.")]:
        raise ConfigError(f"encoder-weights={weights!r}: {path} is not a resnet18 state dict "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    enc.keeps_weights = True
    logger.info("resnet18 (%d channel(s)) initialised from %s", in_channels, path)
    return enc


def build(shape: tuple[int, ...], options: EncoderOptions) -> nn.Module:
    """Images or frame stacks (folded into the batch by the encoder itself)."""
    return resnet18_encoder(shape[0], options.weights)
