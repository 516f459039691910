"""The aggregation-rule interface and the per-modality-group driver every rule runs under.

A rule combines one array key's values from the clients eligible for it (those holding its modality
group; every client for the shared fusion head). The driver picks those clients, calls the rule per key
and casts back to the key's dtype, so a rule is a few lines of numpy over a stack of client values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class ClientUpdate:
    """One client's trained arrays (a subset of the model's keys), its sample count and its modalities."""

    arrays: Mapping[str, np.ndarray]
    num_examples: float
    modalities: tuple[str, ...]


class Rule(Protocol):
    """``combine(current, values, weights)``: the new value of one key (float64) from its eligible clients."""

    def __call__(self, current: np.ndarray, values: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
        ...


def aggregate(current: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate], group_of: Callable[[str], str],
              rule: Rule) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """New global arrays: ``rule`` over the clients that hold each key's group; returns (arrays, contributors).

    A key of modality ``m`` only counts clients that hold ``m``; ``"shared"`` keys count every client. A key
    no eligible client sent keeps its current value. Integer buffers (e.g. BatchNorm's
    ``num_batches_tracked``) are combined in float and rounded.
    """
    values: dict[str, list[np.ndarray]] = {}
    weights: dict[str, list[float]] = {}
    for upd in updates:
        if upd.num_examples <= 0:
            continue
        for key, arr in upd.arrays.items():
            group = group_of(key)
            if key not in current or (group != "shared" and group not in upd.modalities):
                continue
            values.setdefault(key, []).append(np.asarray(arr))
            weights.setdefault(key, []).append(float(upd.num_examples))
    new: dict[str, np.ndarray] = {}
    for key, old in current.items():
        if key not in values:
            new[key] = old
            continue
        combined = np.asarray(rule(np.asarray(old), values[key], weights[key]), dtype=np.float64)
        if np.issubdtype(old.dtype, np.integer):
            combined = np.rint(combined)
        new[key] = combined.astype(old.dtype).reshape(old.shape)
    return new, {k: len(v) for k, v in values.items()}
