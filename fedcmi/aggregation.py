"""Per-modality weighted averaging of model arrays (spec A.10, Part 0 §5). Pure numpy, no Flower."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClientUpdate:
    """One client's trained arrays (a subset of the model's keys), its sample count and its modalities."""

    arrays: Mapping[str, np.ndarray]
    num_examples: float
    modalities: tuple[str, ...]


def aggregate(current: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate],
              group_of: Callable[[str], str]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """New global arrays: every key is the sample-weighted mean over the clients that hold its group.

    A key of modality ``m`` only counts clients that hold ``m``; ``"shared"`` keys count every client. A key
    no eligible client sent keeps its current value. Integer buffers (e.g. BatchNorm's
    ``num_batches_tracked``) are averaged and rounded. Returns (arrays, contributors per key).
    """
    sums: dict[str, np.ndarray] = {}
    weights: dict[str, float] = {}
    contributors: dict[str, int] = {}
    for upd in updates:
        if upd.num_examples <= 0:
            continue
        for key, arr in upd.arrays.items():
            group = group_of(key)
            if key not in current or (group != "shared" and group not in upd.modalities):
                continue
            contrib = np.asarray(arr, dtype=np.float64) * upd.num_examples
            sums[key] = sums[key] + contrib if key in sums else contrib
            weights[key] = weights.get(key, 0.0) + upd.num_examples
            contributors[key] = contributors.get(key, 0) + 1
    new: dict[str, np.ndarray] = {}
    for key, old in current.items():
        if key not in sums:
            new[key] = old
            continue
        mean = sums[key] / weights[key]
        if np.issubdtype(old.dtype, np.integer):
            mean = np.rint(mean)
        new[key] = mean.astype(old.dtype).reshape(old.shape)
    return new, contributors
