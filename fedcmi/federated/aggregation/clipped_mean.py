"""Norm clipping before the sample-weighted mean (the clipping of Flower's DP strategies, with an adaptive
bound and no noise), per modality group.

Each eligible client's update of one array (its value minus the global value) is scaled down to at most
the median of the clients' update norms for that array, then the clipped updates are averaged with the
sample weights. One client can move each array by at most ``median / n`` of its weight share, however
large its update; a minority of clients cannot raise the median.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def clipped_mean(current: np.ndarray, values: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    base = np.asarray(current, dtype=np.float64)
    deltas = [np.asarray(v, dtype=np.float64) - base for v in values]
    norms = np.array([float(np.linalg.norm(d)) for d in deltas])
    bound = float(np.median(norms))
    total = np.zeros_like(base)
    for d, norm, w in zip(deltas, norms, weights, strict=True):
        scale = 1.0 if norm <= bound or norm == 0 else bound / norm
        total = total + d * (scale * w)
    return base + total / sum(weights)
