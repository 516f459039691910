"""Checks on a client's reply before it may touch the global model. Pure numpy, no Flower.

Each check returns ``None`` for a good update or a one-line reason; the strategy logs the reason, counts the
client as rejected and leaves it out of the aggregation, so the global model never becomes NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np


def check_arrays(arrays: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray],
                 modalities: tuple[str, ...], group_of: Callable[[str], str],
                 max_update_norm: float = 0.0) -> str | None:
    """Keys, groups, shapes, dtypes, finiteness and the L2 norm of the update (``0`` = no bound)."""
    unknown = sorted(set(arrays) - set(current))
    if unknown:
        return f"unknown parameter {unknown[0]!r}"
    held = {*modalities, "shared"}
    expected = {k for k in current if group_of(k) in held}
    missing = sorted(expected - set(arrays))
    if missing:
        return f"missing parameter group {missing[0].split('.', 1)[0]!r} ({len(missing)} arrays)"
    sq_norm = 0.0
    for key, arr in arrays.items():
        ref = current[key]
        if arr.shape != ref.shape:
            return f"{key}: shape {tuple(arr.shape)}, expected {tuple(ref.shape)}"
        if arr.dtype != ref.dtype:
            return f"{key}: dtype {arr.dtype}, expected {ref.dtype}"
        if group_of(key) not in held:
            continue  # not aggregated for this client; checked above for shape only
        if np.issubdtype(arr.dtype, np.floating):
            if not np.all(np.isfinite(arr)):
                return f"{key}: contains NaN or Inf"
            sq_norm += float(np.sum((arr.astype(np.float64) - ref.astype(np.float64)) ** 2))
    norm = math.sqrt(sq_norm)
    if max_update_norm > 0 and norm > max_update_norm:
        return f"update norm {norm:.3g} exceeds max-update-norm {max_update_norm:g}"
    return None


def check_num_examples(value: object) -> str | None:
    try:
        n = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"num-examples {value!r} is not a number"
    if not math.isfinite(n) or n <= 0:
        return f"num-examples {value!r} must be a positive finite number"
    return None


def check_class_stats(sum_pa: np.ndarray, sum_pb: np.ndarray, counts: np.ndarray, num_classes: int) -> str | None:
    """Per-class sums of probabilities must lie in [0, count]; counts must be non-negative and finite."""
    for name, arr in (("sum-pa", sum_pa), ("sum-pb", sum_pb), ("counts", counts)):
        if arr.shape != (num_classes,):
            return f"class-stats {name}: shape {tuple(arr.shape)}, expected ({num_classes},)"
        if not np.all(np.isfinite(arr)):
            return f"class-stats {name}: contains NaN or Inf"
    if np.any(counts < 0) or np.any(counts != np.round(counts)):
        return "class-stats counts: must be non-negative integers"
    tol = 1e-6 * np.maximum(counts, 1.0)
    for name, arr in (("sum-pa", sum_pa), ("sum-pb", sum_pb)):
        if np.any(arr < -tol) or np.any(arr > counts + tol):
            return f"class-stats {name}: probability sums out of range [0, count]"
    return None
