"""Which modality dominates, and the class-wise temperatures derived from it (the FedCMI paper and
the authors' code).

Pure numpy: clients report per-class sums of the true-class probability of each self branch and per-class
counts; the server adds them up and calls :func:`dominance`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ClassStats:
    """Per-class sums of the true-class probability of each modality's self branch, and counts."""

    sum_pa: np.ndarray
    sum_pb: np.ndarray
    counts: np.ndarray

    def __add__(self, other: ClassStats) -> ClassStats:
        return ClassStats(self.sum_pa + other.sum_pa, self.sum_pb + other.sum_pb, self.counts + other.counts)

    @classmethod
    def zeros(cls, num_classes: int) -> ClassStats:
        z = np.zeros(num_classes, dtype=np.float64)
        return cls(z.copy(), z.copy(), z.copy())

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        """P_a(c), P_b(c): count-weighted mean true-class probabilities (NaN for absent classes)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum_pa / self.counts, self.sum_pb / self.counts


@dataclass(frozen=True)
class Guidance:
    """What the server sends besides the weights: infiltration on/off, dominant modality, tau_c, and the arrays
    of run options (``records``: option name -> parameter name -> array, filled by the option's server step and
    read by its client half; ``fedcmi.methods.registry.OPTIONS`` names the record each travels in)."""

    infiltrate: bool = False
    dominant: str | None = None
    tau: np.ndarray | None = None
    records: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict)


@dataclass(frozen=True)
class Dominance:
    """The dominant modality (``"a"``/``"b"``), the mean ratio r̄ = mean_c P_a(c)/P_b(c), and tau_c."""

    dominant: str
    ratio: float
    tau: np.ndarray


def class_temperatures(p_a: np.ndarray, p_b: np.ndarray, gamma: float,
                       geometric: bool = False) -> tuple[np.ndarray, float]:
    """Class-wise temperatures (the FedCMI authors' code): tau_c < 1 for classes whose imbalance exceeds
    the average one; tau_c = 1 otherwise.

    The average r̄ is the arithmetic mean of the ratios r_c (the authors' code), or with ``geometric`` the
    exponential of the mean log ratio: under label skew a class the round barely holds can have P_b(c) near 0
    and r_c of 1e9 or more, and then alone decides an arithmetic r̄ (and so the dominant modality).
    Classes with NaN or non-positive probabilities are absent and keep tau_c = 1. Returns (tau, r̄);
    r̄ is NaN when no class is usable.
    """
    p_a = np.asarray(p_a, dtype=np.float64)
    p_b = np.asarray(p_b, dtype=np.float64)
    tau = np.ones_like(p_a)
    ok = np.isfinite(p_a) & np.isfinite(p_b) & (p_a > 0) & (p_b > 0)
    if not ok.any():
        return tau, float("nan")
    r = np.where(ok, p_a / np.where(ok, p_b, 1.0), np.nan)
    r_bar = float(np.exp(np.nanmean(np.log(r)))) if geometric else float(np.nanmean(r))
    if r_bar > 1:
        hit = ok & (r > r_bar)
        tau[hit] = 1.0 / (1.0 + gamma * np.log(r[hit] / r_bar))
    else:
        q = 1.0 / r
        hit = ok & (q > 1.0 / r_bar)
        tau[hit] = 1.0 / (1.0 + gamma * np.log(q[hit] * r_bar))
    return tau, r_bar


def dominance(stats: ClassStats, gamma: float, geometric: bool = False) -> Dominance | None:
    """Global dominant modality and class temperatures from aggregated statistics (None if no data)."""
    p_a, p_b = stats.means()
    tau, r_bar = class_temperatures(p_a, p_b, gamma, geometric)
    if not np.isfinite(r_bar):
        return None
    return Dominance("a" if r_bar > 1 else "b", r_bar, tau)
