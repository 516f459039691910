"""The text encoder: pretrained weights found only on local disk (this code never downloads).

:class:`TextEncoder`: a BERT-family model from ``transformers`` (hub name, read from the local Hugging Face
cache, or a directory), over token ids; pooled output, projected to the other encoder's width. A 1-D input
(token ids) gets it whatever ``encoder`` names (``models.build``). ResNet-18 from ImageNet weights is
``encoder=resnet18`` (``models/encoders/resnet18.py``; :func:`resnet18_encoder` is named here too).

Modules marked ``keeps_weights`` are skipped by :func:`fedcmi.models.init.init_weights`.
"""

from __future__ import annotations

import torch
from torch import nn

from fedcmi.config import ConfigError

# resnet18 with pretrained weights: its own file (encoder=resnet18); named here too for existing callers
from fedcmi.models.encoders.resnet18 import resnet18_encoder, resolve_resnet_weights

__all__ = ["TextEncoder", "resnet18_encoder", "resolve_resnet_weights"]


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
