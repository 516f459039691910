"""Encoders that can start from pretrained weights, found only on local disk (this code never downloads).

* :class:`TextEncoder`: a BERT-family model from ``transformers`` (hub name, read from the local Hugging Face
  cache, or a directory), over token ids; pooled output, projected to the other encoder's width.
* :func:`resnet18_encoder`: the ResNet-18 of the FedCMI authors' code, optionally initialised from ImageNet
  weights (the file torchvision would download, taken from the local torch hub cache) or any state-dict file.

Modules marked ``keeps_weights`` are skipped by :func:`fedcmi.models.init.init_weights`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from fedcmi.config import ConfigError
from fedcmi.models.encoders import ResNet18Encoder

logger = logging.getLogger(__name__)

RESNET18_FILE = "resnet18-f37072fd.pth"
RESNET18_URL = f"https://download.pytorch.org/models/{RESNET18_FILE}"


def _load_text_model(name: str) -> nn.Module:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a weight-loading bar per client and round is noise in a simulation
    try:
        return AutoModel.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"text-encoder={name!r}: not available offline ({type(exc).__name__}); on a connected machine run "
            f"`huggingface-cli download {name}` (fills the local Hugging Face cache, HF_HOME), or set "
            "text-encoder to a directory holding config.json and the weights") from None


class TextEncoder(nn.Module):
    """Token ids (``B x L``, integers or integer-valued floats; 0 = padding) -> ``B x out_dim`` features."""

    keeps_weights = True

    def __init__(self, name: str, out_dim: int | None = None) -> None:
        super().__init__()
        self.bert = _load_text_model(name)
        hidden = int(self.bert.config.hidden_size)
        self.pad_id = int(getattr(self.bert.config, "pad_token_id", 0) or 0)
        self.out_dim = out_dim or hidden
        self.proj = nn.Linear(hidden, self.out_dim) if self.out_dim != hidden else nn.Identity()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.round().long() if ids.is_floating_point() else ids.long()
        out = self.bert(input_ids=ids, attention_mask=(ids != self.pad_id).long())
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out.last_hidden_state[:, 0]
        return self.proj(pooled)


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
