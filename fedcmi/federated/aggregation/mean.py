"""The sample-weighted mean (FedAvg; the FedCMI paper aggregates each modality's part this way)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def weighted_mean(current: np.ndarray, values: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_k n_k x_k / sum_k n_k, summed in the clients' order (callers sort them) in float64."""
    total = None
    for arr, n in zip(values, weights, strict=True):
        contrib = np.asarray(arr, dtype=np.float64) * n
        total = contrib if total is None else total + contrib
    return total / sum(weights)
