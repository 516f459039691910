"""Checks on a client's reply before it may touch the global model. Pure numpy, no Flower.

Each check returns ``None`` for a good update or a one-line reason; the strategy logs the reason, counts the
client as rejected and leaves it out of the aggregation, so the global model never becomes NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

MAX_NUM_EXAMPLES = 2**53  # a sample count above this cannot be an exact float; with float32 values the weighted
# sum of any number of clients stays far below float64's 1.8e308
MAX_LOSS = 1e9  # a loss term beyond this is not a loss; n * loss must not overflow the weighted mean


def check_arrays(arrays: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray],
                 modalities: tuple[str, ...], group_of: Callable[[str], str],
                 max_update_norm: float = 0.0, max_batches: float | None = None) -> str | None:
    """Keys, groups, shapes, dtypes, finiteness, the L2 norm of the update (``0`` = no bound) and integer
    buffers (a counter such as BatchNorm's ``num_batches_tracked`` may grow by at most ``max_batches``)."""
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
        elif np.issubdtype(arr.dtype, np.integer) and max_batches is not None:
            step = arr.astype(np.float64) - ref.astype(np.float64)
            if np.any(step < 0) or np.any(step > max_batches):
                return (f"{key}: integer buffer moved by {float(np.max(np.abs(step))):.3g}, allowed 0..{max_batches:g} "
                        "(one step per local batch)")
    norm = math.sqrt(sq_norm)
    if max_update_norm > 0 and norm > max_update_norm:
        return f"update norm {norm:.3g} exceeds max-update-norm {max_update_norm:g}"
    return None


def group_norms(arrays: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray],
                group_of: Callable[[str], str], groups: Sequence[str]) -> dict[str, float]:
    """L2 distance to the global model of each parameter group in ``groups`` (floating arrays only)."""
    sq = dict.fromkeys(groups, 0.0)
    for key, arr in arrays.items():
        group = group_of(key)
        if group in sq and np.issubdtype(arr.dtype, np.floating):
            sq[group] += float(np.sum((arr.astype(np.float64) - current[key].astype(np.float64)) ** 2))
    return {g: math.sqrt(v) for g, v in sq.items()}


def relative_norm_outliers(norms: Sequence[Mapping[str, float]], multiple: float) -> list[str | None]:
    """Per reply, a reason when one of its group norms exceeds ``multiple`` x the median of that group's norms
    over the round's replies that hold it (``None`` otherwise; ``multiple`` 0 = no bound).

    The median is taken over every screened reply, so attackers would need half the replies of a group to
    move it; a group with one or two holders cannot reject anyone for ``multiple >= 2``.
    """
    out: list[str | None] = [None] * len(norms)
    if multiple <= 0:
        return out
    groups = sorted({g for n in norms for g in n})
    for g in groups:
        holders = [i for i, n in enumerate(norms) if g in n]
        median = float(np.median([norms[i][g] for i in holders]))
        for i in holders:
            if out[i] is None and norms[i][g] > multiple * median:
                out[i] = (f"group {g!r} update norm {norms[i][g]:.3g} exceeds update-norm-multiple {multiple:g} x "
                          f"the round's median {median:.3g}")
    return out


def check_num_examples(value: object) -> str | None:
    try:
        n = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"num-examples {value!r} is not a number"
    if not math.isfinite(n) or n <= 0:
        return f"num-examples {value!r} must be a positive finite number"
    return None


def check_class_stats(sum_pa: np.ndarray, sum_pb: np.ndarray, counts: np.ndarray, num_classes: int,
                      max_count: float | None = None, kind: str = "mm") -> str | None:
    """Per-class sums of probabilities must lie in [0, count]; counts must be non-negative and finite, sum to at
    most ``max_count`` (the node's size reported at discovery), and a one-modality node reports none."""
    for name, arr in (("sum-pa", sum_pa), ("sum-pb", sum_pb), ("counts", counts)):
        if arr.shape != (num_classes,):
            return f"class-stats {name}: shape {tuple(arr.shape)}, expected ({num_classes},)"
        if not np.all(np.isfinite(arr)):
            return f"class-stats {name}: contains NaN or Inf"
    if np.any(counts < 0) or np.any(counts != np.round(counts)):
        return "class-stats counts: must be non-negative integers"
    if kind != "mm" and (np.any(counts != 0) or np.any(sum_pa != 0) or np.any(sum_pb != 0)):
        return f"class-stats from a one-modality node (kind {kind}): only multimodal nodes report them"
    if max_count is not None and float(np.sum(counts)) > max_count:
        return f"class-stats counts: {float(np.sum(counts)):.3g} samples, the node reported {max_count:g}"
    tol = 1e-6 * np.maximum(counts, 1.0)
    for name, arr in (("sum-pa", sum_pa), ("sum-pb", sum_pb)):
        if np.any(arr < -tol) or np.any(arr > counts + tol):
            return f"class-stats {name}: probability sums out of range [0, count]"
    return None
