"""Intervals and paired comparisons for bench results: a difference inside its interval is a tie.

Seeds are the unit of replication: each seed fixes the data partition, the modality kinds and the client
sampling, so two strategies run on the same seed see the same federation and can be compared pairwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """mean ± half_width (a two-sided t interval at ``level``); half_width is NaN with fewer than 2 values."""

    mean: float
    half_width: float
    n: int
    level: float = 0.95

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def text(self, digits: int = 3) -> str:
        if self.n == 0:
            return "–"
        if self.n < 2 or math.isnan(self.half_width):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def t_interval(values: Iterable[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean of ``values`` (NaNs dropped)."""
    vals = np.asarray([float(v) for v in values if v is not None and not math.isnan(float(v))], dtype=np.float64)
    n = len(vals)
    if n == 0:
        return Interval(math.nan, math.nan, 0, level)
    if n == 1:
        return Interval(float(vals[0]), math.nan, 1, level)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * vals.std(ddof=1) / math.sqrt(n))
    return Interval(float(vals.mean()), half, n, level)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], level: float = 0.95) -> Interval:
    """Interval of the mean per-seed difference a - b over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    return t_interval((a[s] - b[s] for s in seeds), level)


def paired_p_value(a: Mapping[int, float], b: Mapping[int, float]) -> float:
    """Two-sided p-value of the paired t-test of a - b over the seeds both have (NaN with fewer than 2, or when
    every difference is the same)."""
    seeds = sorted(set(a) & set(b))
    diffs = np.asarray([a[s] - b[s] for s in seeds], dtype=np.float64)
    diffs = diffs[~np.isnan(diffs)]
    if len(diffs) < 2 or np.ptp(diffs) == 0:
        return math.nan
    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values of a family of comparisons (NaN ones stay NaN and do not count):
    sorted ascending, the i-th (0-based) of m is multiplied by m - i, then made monotone and capped at 1. A
    comparison is significant at 5 % over the whole family when its adjusted value is below 0.05."""
    known = sorted((p, k) for k, p in p_values.items() if not math.isnan(p))
    m = len(known)
    out = {k: math.nan for k in p_values}
    running = 0.0
    for i, (p, k) in enumerate(known):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def rules_out(diff: Interval) -> str:
    """What a paired interval allows, in words: the difference lies between its ends (so it rules out a loss
    larger than -low and a gain larger than high)."""
    if diff.n < 2 or math.isnan(diff.half_width):
        return "nothing (fewer than 2 seeds)"
    return f"between {diff.low:+.3f} and {diff.high:+.3f}"


def verdict(diff: Interval) -> str:
    """``better`` / ``worse`` when the interval of the difference excludes 0, else ``tie``; ``n/a (1 seed)``
    when there is no interval (fewer than 2 common seeds): one seed says nothing either way."""
    if diff.n < 2 or math.isnan(diff.half_width):
        return f"n/a ({diff.n} seed{'s' * (diff.n != 1)})" if diff.n else "n/a (no common seed)"
    if diff.low > 0:
        return "better"
    if diff.high < 0:
        return "worse"
    return "tie"
