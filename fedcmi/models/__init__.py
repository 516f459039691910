"""Encoders, fusion heads, the two-projector FedCMI model and the concat baseline.

The names below are imported on first use (PEP 562): ``fedcmi.models.registry`` (every encoder's and fusion
head's name) is read by the configuration before torch is imported, and importing it runs this file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedcmi.models.build import ModelSpec, build_model, model_for, model_key, model_options
    from fedcmi.models.concat_model import ConcatModel
    from fedcmi.models.fedcmi_model import FedCMIModel

_HOMES = {"ModelSpec": "fedcmi.models.build", "build_model": "fedcmi.models.build",
          "model_for": "fedcmi.models.build", "model_key": "fedcmi.models.build",
          "model_options": "fedcmi.models.build", "ConcatModel": "fedcmi.models.concat_model",
          "FedCMIModel": "fedcmi.models.fedcmi_model"}

__all__ = ["ConcatModel", "FedCMIModel", "ModelSpec", "build_model", "model_for", "model_key", "model_options"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
