"""CCVR as a server step (``ccvr-steps`` > 0, every method): pool the multimodal clients' head-input moments,
then calibrate the evaluated model's fusion head on them (``fedcmi.federated.calibration`` has the math).

Why a step: the pooling and the calibration are the server half of an option any method can switch on; the
strategy only delivers the checked moments (the accepted replies' with ``ccvr-moments=received``, the
evaluate phase's with ``fresh``) and never looks inside.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcmi.federated.calibration import FeatureStats, calibrated
from fedcmi.federated.client_step import round_seed
from fedcmi.methods.server_step import Arrays, Calibrate, Reply, ServerStep

if TYPE_CHECKING:
    from fedcmi.config import RunConfig

_logger = logging.getLogger("fedcmi.server")


class CCVR(ServerStep):
    """The latest pooled moments (``feature_stats``) and the calibration they give the evaluated model."""

    name = "ccvr"

    def __init__(self, num_classes: int, *, steps: int, samples: int, lr: float, moments: str, seed: int) -> None:
        self.num_classes, self.steps, self.samples, self.lr = num_classes, steps, samples, lr
        self.fresh, self.seed = moments == "fresh", seed
        self.feature_stats: FeatureStats | None = None  # the latest round's pooled head-input moments

    def after_aggregation(self, server_round: int, current: Mapping[str, np.ndarray], new: Arrays,
                          updated: frozenset[str], replies: Sequence[Reply]) -> Arrays:
        """``ccvr-moments=received``: sum the accepted replies' moments; a malformed set is left out (logged)."""
        if self.fresh:
            return new
        pooled = None
        for reply in replies:
            features = reply.features
            if features is None:
                continue
            reason = features.check(self.num_classes)
            if reason:
                _logger.warning("round %s: %s: %s; left out of the calibration", server_round, reply.who, reason)
                continue
            if pooled is not None and pooled.sums.shape != features.sums.shape:
                continue
            pooled = features if pooled is None else pooled + features
        if pooled is not None:
            self.feature_stats = pooled
        return new

    def asks_moments(self) -> bool:
        return self.fresh

    def take_moments(self, server_round: int, good: list[tuple[str, FeatureStats]],
                     faults: list[str]) -> tuple[int, int]:
        """The evaluate phase's moments replace the pool (None when none is usable: the round is evaluated
        uncalibrated)."""
        self.feature_stats, used = pool_moments(good, faults)
        return used, int(self.feature_stats.counts.sum()) if self.feature_stats is not None else 0

    def calibration(self) -> Calibrate | None:
        stats = self.feature_stats
        if stats is None:
            return None

        def calibrate(model: Any, server_round: int) -> Any:
            return calibrated(model, stats, samples=self.samples, steps=self.steps, lr=self.lr,
                              seed=round_seed(self.seed, server_round, -1))

        return calibrate


def pool_moments(good: list[tuple[str, FeatureStats]], faults: list[str]) -> tuple[FeatureStats | None, int]:
    """Sum the moments of the width most replies share (one node cannot veto the others by sending another);
    the rest go to ``faults``. Returns the pool (None if empty) and how many replies it holds."""
    if not good:
        return None, 0
    dims = Counter(f.sums.shape[1] for _, f in good)
    dim = max(dims, key=lambda d: (dims[d], -[f.sums.shape[1] for _, f in good].index(d)))
    pooled: FeatureStats | None = None
    used = 0
    for who, features in good:
        if features.sums.shape[1] != dim:
            faults.append(f"{who}: ccvr moments rejected: width {features.sums.shape[1]}, the others' {dim}")
            continue
        pooled = features if pooled is None else pooled + features
        used += 1
    return pooled, used


def build(cfg: RunConfig, num_classes: int) -> CCVR | None:
    """The step when ``ccvr-steps`` > 0, else None."""
    if cfg.method.ccvr_steps <= 0:
        return None
    return CCVR(num_classes, steps=cfg.method.ccvr_steps, samples=cfg.method.ccvr_samples, lr=cfg.method.ccvr_lr,
                moments=cfg.method.ccvr_moments, seed=cfg.federation.seed)
