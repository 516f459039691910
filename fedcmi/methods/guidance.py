"""FedCMI's server step: the dominant modality and class-wise temperatures from the clients' class statistics.

Why on the server: one client under label skew sees a few classes; the server sums every accepted client's
statistics (``fedcmi.dominance``), so the whole federation agrees on which modality leads. Every method's
spec names this step (``MethodSpec.server``): FedCMI's clients distil with its guidance, and every run's
metrics row reports the dominance it measures (the other methods' clients ignore it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcmi.dominance import ClassStats, Dominance, Guidance, dominance
from fedcmi.methods.server_step import Arrays, Reply, ServerStep, corrupt, misfit

if TYPE_CHECKING:
    from fedcmi.config import RunConfig

# Class statistics are measured with the received model; those of round 1 describe the untrained initial model.
FIRST_INFORMATIVE_ROUND = 2
SMOOTHED = ("sum_pa", "sum_pb", "counts")


class DominanceGuidance(ServerStep):
    """Infiltration after ``warmup_rounds``; the dominant modality and tau_c from the accepted statistics.

    ``dominance_momentum``: moving average of the statistics across rounds (0 = this round's only), so one
    round's participants under label skew cannot flip the dominant modality on their own. ``tau_min``: lower
    bound of the temperatures (0 = none). ``ratio_mean``: ``arithmetic`` (the authors') or ``geometric`` r̄.
    """

    name = "dominance"
    state_keys = ("guidance", "smoothed")

    def __init__(self, num_classes: int, *, gamma: float = 2.0, warmup_rounds: int = 1,
                 dominance_momentum: float = 0.0, tau_min: float = 0.0, ratio_mean: str = "arithmetic") -> None:
        self.num_classes, self.gamma, self.warmup_rounds = num_classes, gamma, warmup_rounds
        self.dominance_momentum, self.tau_min, self.ratio_mean = dominance_momentum, tau_min, ratio_mean
        self.current: Dominance | None = None  # from the latest statistics; sent next round
        self.smoothed: ClassStats | None = None  # the moving average of the class statistics

    def guidance(self, server_round: int, guidance: Guidance) -> Guidance:
        g = self.current
        return Guidance(infiltrate=server_round > self.warmup_rounds, dominant=g.dominant if g else None,
                        tau=g.tau if g else None)

    def reported(self) -> Dominance | None:
        return self.current

    def after_aggregation(self, server_round: int, current: Mapping[str, np.ndarray], new: Arrays,
                          updated: frozenset[str], replies: Sequence[Reply]) -> Arrays:
        self.update(server_round, [r.stats for r in replies if r.stats is not None])
        return new

    def update(self, server_round: int, all_stats: Sequence[ClassStats]) -> None:
        """The next round's dominant modality and tau_c from the accepted class statistics (smoothed with
        ``dominance_momentum``). Round 1's describe the untrained initial model (ratios near 1, a coin flip of
        a dominant modality): they are not used."""
        if server_round < FIRST_INFORMATIVE_ROUND:
            return
        stats = sum(all_stats, ClassStats.zeros(self.num_classes))
        if stats.counts.sum() <= 0:
            return
        if self.dominance_momentum > 0:
            m = self.dominance_momentum
            prev = self.smoothed
            self.smoothed = stats if prev is None else ClassStats(
                m * prev.sum_pa + (1 - m) * stats.sum_pa, m * prev.sum_pb + (1 - m) * stats.sum_pb,
                m * prev.counts + (1 - m) * stats.counts)
            stats = self.smoothed
        new = dominance(stats, self.gamma, geometric=self.ratio_mean == "geometric")
        if new is not None:
            if self.tau_min > 0:
                new = Dominance(new.dominant, new.ratio, np.maximum(new.tau, self.tau_min))
            self.current = new

    # --- state: written, checked and read here only ------------------------------------------------------
    def state(self) -> dict[str, Any]:
        g = self.current
        out: dict[str, Any] = {"guidance": None if g is None else
                               {"dominant": g.dominant, "ratio": g.ratio, "tau": [float(t) for t in g.tau]}}
        if self.smoothed is not None:
            out["smoothed"] = {k: [float(v) for v in getattr(self.smoothed, k)] for k in SMOOTHED}
        return out

    def check_state(self, state: Mapping[str, Any], num_classes: int | None = None,
                    shapes: Mapping[str, tuple[int, ...]] | None = None) -> str | None:
        reason = _smoothed_problem(state.get("smoothed")) if state.get("smoothed") is not None else None
        reason = reason or _guidance_problem(state.get("guidance", "missing"))
        if reason:
            return corrupt(reason)
        if num_classes is None:
            return None
        g, sm = state.get("guidance"), state.get("smoothed")
        if g is not None and len(g["tau"]) != num_classes:
            return misfit(num_classes, f"guidance tau has {len(g['tau'])} temperatures")
        if sm is not None:
            for k in SMOOTHED:
                if len(sm[k]) != num_classes:
                    return misfit(num_classes, f"smoothed {k} has {len(sm[k])} values")
        return None

    def load_state(self, state: Mapping[str, Any]) -> None:
        g = state.get("guidance")
        self.current = None if g is None else Dominance(g["dominant"], float(g["ratio"]),
                                                        np.asarray(g["tau"], dtype=np.float64))
        sm = state.get("smoothed")
        self.smoothed = None if sm is None else ClassStats(*(np.asarray(sm[k], dtype=np.float64) for k in SMOOTHED))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _guidance_problem(g: Any) -> str | None:
    """Why the saved guidance is malformed, or None (None itself: no decision yet)."""
    if g is None:
        return None
    if not isinstance(g, dict) or g.get("dominant") not in ("a", "b"):
        return "guidance missing or malformed"
    ratio, tau = g.get("ratio"), g.get("tau")
    if not _number(ratio):
        return "guidance ratio is not a number"
    if not isinstance(tau, list) or not tau or not all(_number(t) and t > 0 for t in tau):
        return "guidance tau is not a list of finite positive temperatures"
    return None


def _smoothed_problem(sm: Any) -> str | None:
    """Why the moving average of the class statistics (``dominance-momentum``) is malformed, or None."""
    if not isinstance(sm, dict) or set(sm) != set(SMOOTHED):
        return f"smoothed: not a mapping of {', '.join(SMOOTHED)}"
    lists = [sm[k] for k in SMOOTHED]
    if not all(isinstance(v, list) and v and all(_number(x) and x >= 0 for x in v) for v in lists):
        return "smoothed: not lists of finite non-negative numbers"
    if len({len(v) for v in lists}) != 1:
        return "smoothed: lists of different lengths"
    sum_pa, sum_pb, counts = lists
    slack = 1e-6
    if any(p > c * (1 + slack) + slack for ps in (sum_pa, sum_pb) for p, c in zip(ps, counts, strict=True)):
        return "smoothed: a probability sum exceeds its class count"
    return None


def build(cfg: RunConfig, num_classes: int) -> DominanceGuidance:
    """The step a run's configuration asks for (``gamma``, ``warmup-rounds``, ``dominance-momentum``,
    ``tau-min``, ``ratio-mean``)."""
    return DominanceGuidance(num_classes, gamma=cfg.method.gamma, warmup_rounds=cfg.method.warmup_rounds,
                             dominance_momentum=cfg.method.dominance_momentum, tau_min=cfg.method.tau_min,
                             ratio_mean=cfg.method.ratio_mean)
