"""The coordinate-wise trimmed mean (Yin et al., 2018; Flower's FedTrimmedAvg), per modality group.

Per coordinate, the ``floor(beta * n)`` largest and smallest of the ``n`` eligible clients' values are cut and
the rest averaged, unweighted as in FedTrimmedAvg (a client's sample count cannot buy it a place in the
middle). ``beta`` is Flower's default 0.2: with 10 clients of a group, two attackers are cut at each end;
with fewer than 5 clients nothing is cut and it is the plain mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BETA = 0.2


def trimmed_mean(current: np.ndarray, values: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    stack = np.stack([np.asarray(v, dtype=np.float64) for v in values])
    n = stack.shape[0]
    cut = int(BETA * n)
    part = np.partition(stack, (cut, n - cut - 1), axis=0) if cut else stack
    return part[cut:n - cut].mean(axis=0)
