"""Data sets by name, partitions, and per-client tensors.

The names below are imported on first use (PEP 562): ``fedcmi.data.sources`` (every data set's name) is read
by the configuration before torch and ``datasets`` are imported, and importing it runs this file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedcmi.data.base import ClientData, MultimodalData
    from fedcmi.data.prepared import load_prepared
    from fedcmi.data.registry import load_data

_HOMES = {"ClientData": "fedcmi.data.base", "MultimodalData": "fedcmi.data.base",
          "load_prepared": "fedcmi.data.prepared", "load_data": "fedcmi.data.registry"}

__all__ = ["ClientData", "MultimodalData", "load_data", "load_prepared"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
