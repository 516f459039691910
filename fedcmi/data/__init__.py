"""Data sets by name, partitions, and per-client tensors."""

from fedcmi.data.base import ClientData, MultimodalData
from fedcmi.data.prepared import load_prepared
from fedcmi.data.registry import load_data

__all__ = ["ClientData", "MultimodalData", "load_data", "load_prepared"]
