"""Per-modality encoders, one file each (``encoder=NAME``; the names: ``fedcmi.models.registry.ENCODERS``).

The classes below are imported on first use (PEP 562), so importing a module of this package costs only
that module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedcmi.models.encoders.cnn import SmallCNN
    from fedcmi.models.encoders.features import FeatureTokens
    from fedcmi.models.encoders.resnet18 import ResNet18Encoder

_HOMES = {"SmallCNN": "fedcmi.models.encoders.cnn", "ResNet18Encoder": "fedcmi.models.encoders.resnet18",
          "FeatureTokens": "fedcmi.models.encoders.features"}

__all__ = ["FeatureTokens", "ResNet18Encoder", "SmallCNN"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
