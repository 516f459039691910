"""Every encoder (``encoder=NAME``) and fusion head (``fusion=NAME``) by name: one file each, one line here.

Light on purpose (no torch), as ``fedcmi.methods.registry``: the configuration checks a name against these
tables and the docs list them before torch is imported; a part's code is imported when a model is built.
A spec's ``builder`` is ``"module:function"``:

* an encoder's ``(shape, EncoderOptions) -> nn.Module`` (a module with ``out_dim``) for one modality's input
  shape; a 1-D shape (token ids) never reaches it: ``models.build`` gives it the text encoder;
* a fusion head's ``(dim, num_classes, **options) -> nn.Module``, ``F(slot_a, slot_b) -> logits`` over two
  ``dim``-wide slots; ``options`` names the ``build_model`` arguments it reads, ``tokens`` the one that cuts a
  slot into tokens (``encoder=features`` then pools its tokens into as many segments).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EncoderOptions:
    """What an encoder's builder may read besides its input shape (from the run config and the fusion head)."""

    feature_dim: int
    weights: str = ""  # encoder-weights: '' = from scratch
    segments: int = 1  # tokens the fusion head cuts a slot into (FusionSpec.tokens), 1 for a vector head


@dataclass(frozen=True)
class PartSpec:
    """A model part by name: a one-line summary and its builder, ``"module:function"`` (imported on load)."""

    name: str
    summary: str
    builder: str

    def load(self) -> Callable[..., Any]:
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)


@dataclass(frozen=True)
class FusionSpec(PartSpec):
    options: tuple[str, ...] = ()
    tokens: str = ""


ENCODERS: dict[str, PartSpec] = {spec.name: spec for spec in (
    PartSpec("cnn", "three conv blocks and average pooling (frame stacks: per frame, averaged)",
             "fedcmi.models.encoders.cnn:build"),
    PartSpec("cnn-rows", "cnn's conv blocks averaged over time (the last axis) only: keeps which frequency band "
             "is active (spectrograms)", "fedcmi.models.encoders.cnn_rows:build"),
    PartSpec("resnet18", "torchvision ResNet-18 without its classifier (the FedCMI authors'; encoder-weights)",
             "fedcmi.models.encoders.resnet18:build"),
    PartSpec("features", "token embeddings of `fedcmi features` (data-root is its directory), pooled and projected",
             "fedcmi.models.encoders.features:build"),
)}

FUSIONS: dict[str, FusionSpec] = {spec.name: spec for spec in (
    FusionSpec("concat", "F(u, w) = W [u; w] + b", "fedcmi.models.fusion.concat:build"),
    FusionSpec("sgmft", "similarity-guided multimodal fusion transformer (sgmft-tokens, -heads, -layers)",
               "fedcmi.models.fusion.sgmft:build", options=("sgmft_tokens", "sgmft_heads", "sgmft_layers"),
               tokens="sgmft_tokens"),
)}


def encoder_names() -> tuple[str, ...]:
    return tuple(ENCODERS)


def fusion_names() -> tuple[str, ...]:
    return tuple(FUSIONS)


def _lookup(table: dict[str, Any], what: str, name: str) -> Any:
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; one of {', '.join(table)}")
    return table[name]


def encoder_spec(name: str) -> PartSpec:
    """The spec of ``encoder=name``; an unknown name is a one-line error naming the choices."""
    return _lookup(ENCODERS, "encoder", name)


def fusion_spec(name: str) -> FusionSpec:
    """The spec of ``fusion=name``; an unknown name is a one-line error naming the choices."""
    return _lookup(FUSIONS, "fusion", name)
