"""Where a client trains: device choice, bfloat16 autocast and pinned copies (CUDA only).

On the ground floor: the clients, the server's evaluation and the CLI's resource checks all choose devices here.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

from fedcmi.errors import ConfigError

if TYPE_CHECKING:
    from fedcmi.data.base import ClientData


def device_of(device: str) -> torch.device:
    """``cuda`` when asked for (or ``auto`` with a GPU), else the CPU."""
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def check_device(device: str) -> None:
    """Refuse ``device=cuda`` where no GPU is visible, before anything starts."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda': no CUDA GPU is visible on this machine (use device=auto or cpu)")


def autocast(bf16: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for ``bf16=true`` on CUDA (half the activation traffic); a no-op on CPU."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def on_device(data: ClientData, device: torch.device) -> ClientData:
    """The client's tensors on ``device``; on CUDA from pinned memory, so the copies are asynchronous."""
    if device.type != "cuda":
        return data
    return data.map(lambda t: t.pin_memory()).to(device)
