"""Test-only fault injection on the client side (see ``fedcmi/faults.py`` for the ``inject-faults`` syntax)."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch

from fedcmi.config import RunConfig
from fedcmi.dominance import ClassStats
from fedcmi.faults import faults_for

logger = logging.getLogger("fedcmi.faults")


def active_faults(cfg: RunConfig, partition_id: int, server_round: int) -> set[str]:
    return faults_for(cfg.inject_faults, partition_id, server_round) if cfg.inject_faults else set()


def before_training(faults: set[str], cfg: RunConfig) -> None:
    """``raise``: the ClientApp fails; ``hang``: it sleeps past the round timeout; ``exit``: its process dies."""
    if "raise" in faults:
        raise RuntimeError("injected fault: client raised")
    if "exit" in faults:
        logger.warning("injected fault: client process exits")
        os._exit(17)
    if "hang" in faults:
        time.sleep(cfg.round_timeout + 2.0)


def corrupt_reply(faults: set[str], arrays: dict[str, torch.Tensor],
                  stats: ClassStats) -> tuple[dict[str, torch.Tensor], ClassStats]:
    """Damage the reply in the ways the server must reject."""
    arrays = dict(arrays)
    first = next(k for k, v in arrays.items() if v.is_floating_point())
    if "nan" in faults:
        arrays[first] = torch.full_like(arrays[first], float("nan"))
    if "inf" in faults:
        arrays[first] = torch.full_like(arrays[first], float("inf"))
    if "shape" in faults:
        arrays[first] = torch.zeros(arrays[first].numel() + 1)
    if "dtype" in faults:
        arrays[first] = arrays[first].double()
    if "norm" in faults:
        arrays[first] = arrays[first] + 1e6
    if "missing" in faults:
        group = first.split(".", 1)[0]
        arrays = {k: v for k, v in arrays.items() if k.split(".", 1)[0] != group}
    if "stats" in faults:
        stats = ClassStats(stats.counts + 5.0, stats.sum_pb, np.maximum(stats.counts, 1.0) * -1.0)
    return arrays, stats
