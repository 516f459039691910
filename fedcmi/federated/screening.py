"""Checks on a client's reply before it may touch the global model. Pure numpy, no Flower.

Each check returns ``None`` for a good update or a one-line reason; the strategy logs the reason, counts the
client as rejected and leaves it out of the aggregation, so the global model never becomes NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedcmi.federated.membership import lower_median

MAX_NUM_EXAMPLES = 2**53  # a sample count above this cannot be an exact float; with float32 values the weighted
# sum of any number of clients stays far below float64's 1.8e308
STEP_EXPONENT = 1.0  # group norms are compared per local step (steps ** 1); docs/robustness.md has the measurements
HISTORY_ROUNDS = 3  # rounds of accepted updates that join a round's replies in the screen's reference
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


def local_steps(examples: float, epochs: int, batch_size: int) -> int:
    """SGD steps of an honest local update over ``examples`` samples (the server's trusted count)."""
    return max(1, int(epochs) * math.ceil(max(float(examples), 1.0) / max(int(batch_size), 1)))


@dataclass
class Verdict:
    """The screen's judgement of one reply: its group norms per local step, the largest ratio to the bound's
    reference (1.0 = at the reference; the bound is ``multiple``) and a reason when rejected."""

    per_step: dict[str, float]
    ratio: float
    reason: str | None


@dataclass
class UpdateScreen:
    """The relative update bound, per parameter group (each modality's encoder, the shared head).

    An honest update's distance to the global model grows with the local steps it took (more samples, more
    steps), so each group norm is divided by ``steps ** STEP_EXPONENT`` (steps from the server's trusted
    sample count, never the client's word) before it is compared. The reference of a group is the lower
    median of its per-step norms over this round's replies and the accepted ones of the last
    ``history_rounds`` rounds: a group with one or two holders in a round is still judged against its past,
    and with an even count the lower median is an honest value as long as attackers are at most half.
    A reply is rejected when one of its groups exceeds ``multiple`` x that reference (docs/robustness.md).
    """

    multiple: float
    history_rounds: int = HISTORY_ROUNDS
    history: dict[str, list[list[float]]] = field(default_factory=dict)  # group -> per round, accepted values

    def judge(self, norms: Sequence[Mapping[str, float]], steps: Sequence[int]) -> list[Verdict]:
        per_step = [{g: v / float(s) ** STEP_EXPONENT for g, v in n.items()} for n, s in zip(norms, steps, strict=True)]
        ratios = [0.0] * len(norms)
        reasons: list[str | None] = [None] * len(norms)
        for g in sorted({g for n in per_step for g in n}):
            pool = [p[g] for p in per_step if g in p] + [v for past in self.history.get(g, []) for v in past]
            pool = [v for v in pool if v > 0]
            if not pool:
                continue
            ref = lower_median(pool)
            for i, p in enumerate(per_step):
                if g not in p:
                    continue
                ratio = p[g] / ref
                ratios[i] = max(ratios[i], ratio)
                if self.multiple > 0 and reasons[i] is None and ratio > self.multiple:
                    reasons[i] = (f"group {g!r} update norm {norms[i][g]:.3g} over {steps[i]} local steps is "
                                  f"{ratio:.3g} x the reference {ref:.3g} per step^{STEP_EXPONENT:g}; "
                                  f"update-norm-multiple is {self.multiple:g}")
        return [Verdict(p, r, why) for p, r, why in zip(per_step, ratios, reasons, strict=True)]

    def remember(self, accepted: Sequence[Verdict]) -> None:
        """Keep this round's accepted per-step norms (the reference of the next rounds)."""
        groups = {g for v in accepted for g in v.per_step} | set(self.history)
        for g in sorted(groups):  # sorted: the checkpoint's history is byte-identical across processes
            past = self.history.setdefault(g, [])
            past.append([v.per_step[g] for v in accepted if g in v.per_step])
            del past[:-self.history_rounds]

    def state(self) -> dict[str, list[list[float]]]:
        return {g: [list(map(float, r)) for r in past] for g, past in self.history.items()}

    def load_state(self, state: Mapping[str, Sequence[Sequence[float]]]) -> None:
        self.history = {str(g): [[float(v) for v in r] for r in past][-self.history_rounds:]
                        for g, past in state.items()}


def check_screen_state(state: object) -> str | None:
    """Why a checkpoint's screen history cannot be loaded, or None."""
    if not isinstance(state, dict):
        return "screen: not a mapping"
    for g, past in state.items():
        if not isinstance(past, list) or not all(isinstance(r, list) for r in past):
            return f"screen: group {g!r} is not a list of rounds"
        for r in past:
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                       for v in r):
                return f"screen: group {g!r} holds a value that is not a finite norm"
    return None


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
