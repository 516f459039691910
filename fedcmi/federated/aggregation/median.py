"""The coordinate-wise median (Yin et al., 2018; Flower's FedMedian), per modality group.

Unweighted, as in FedMedian: a client's sample count cannot buy it the median. With an even number of
clients it is the mean of the two middle values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def coordinate_median(current: np.ndarray, values: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    return np.median(np.stack([np.asarray(v, dtype=np.float64) for v in values]), axis=0)
