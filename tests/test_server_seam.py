"""The server-side seam: FedCMI's guidance behind it on hand-made statistics, its one serialiser and validator,
and how a run's steps are composed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedcmi.config import effective
from fedcmi.dominance import ClassStats, Guidance
from fedcmi.federated.ccvr import CCVR
from fedcmi.federated.server_opt import ServerOptimiser
from fedcmi.federated.server_side import server_side
from fedcmi.methods.guidance import DominanceGuidance
from fedcmi.methods.registry import METHODS
from fedcmi.methods.server_step import ServerSide, ServerStep
from fedcmi.models import ModelSpec
from server.strategy import FedCMIStrategy


class _Reply:
    def __init__(self, stats: ClassStats) -> None:
        self.who, self.partition_id, self.stats, self.features = "partition 0", 0, stats, None


def _stats(pa, pb, n) -> ClassStats:
    return ClassStats(np.array(pa, float), np.array(pb, float), np.array(n, float))


def _round(step: DominanceGuidance, server_round: int, stats: ClassStats) -> None:
    step.after_aggregation(server_round, {}, {}, frozenset(), [_Reply(stats)])


def test_guidance_of_a_hand_made_statistics_sequence():
    """gamma 2, warm-up 1, momentum 0.5, tau-min 0.8; two classes."""
    step = DominanceGuidance(2, gamma=2.0, warmup_rounds=1, dominance_momentum=0.5, tau_min=0.8)
    side = ServerSide([step])
    assert side.guidance(1) == Guidance(infiltrate=False)
    _round(step, 1, _stats([9, 0], [1, 0], [10, 0]))  # round 1 measures the initial model: not used
    assert side.guidance(2) == Guidance(infiltrate=True) and step.smoothed is None
    # round 2: P_a = (0.6, 0.6), P_b = (0.3, 0.6): r = (2, 1), r̄ = 1.5 -> a; tau_0 = 1 / (1 + 2 ln(2 / 1.5))
    _round(step, 2, _stats([6, 3], [3, 3], [10, 5]))
    g = side.guidance(3)
    assert g.infiltrate and g.dominant == "a" and step.current.ratio == pytest.approx(1.5)
    assert 1 / (1 + 2 * math.log(2 / 1.5)) < 0.8  # so tau-min clips it
    assert list(g.tau) == [0.8, 1.0]
    # round 3: smoothed = (S2 + S3) / 2 = sum_pa (3.5, 2), sum_pb (3.5, 3.5), counts (7.5, 5):
    # P_a = (7/15, 0.4), P_b = (7/15, 0.7): r = (1, 4/7), r̄ = 11/14 -> b; class 1: 1/r = 7/4 > 14/11, so
    # tau_1 = 1 / (1 + 2 ln(7/4 * 11/14)) = 1 / (1 + 2 ln 1.375) = 0.611, clipped to 0.8
    _round(step, 3, _stats([1, 1], [4, 4], [5, 5]))
    g = side.guidance(4)
    assert g.dominant == "b" and step.current.ratio == pytest.approx(11 / 14)
    assert list(step.smoothed.sum_pa) == [3.5, 2.0] and list(step.smoothed.counts) == [7.5, 5.0]
    assert 1 / (1 + 2 * math.log(1.375)) < 0.8 and list(g.tau) == [1.0, 0.8]
    unclipped = DominanceGuidance(2, gamma=2.0)
    _round(unclipped, 2, _stats([6, 3], [3, 3], [10, 5]))
    assert unclipped.current.tau[0] == pytest.approx(1 / (1 + 2 * math.log(4 / 3)), abs=1e-12)


def test_the_strategy_sends_what_the_seam_decides():
    step = DominanceGuidance(2, gamma=2.0, warmup_rounds=2)
    s = FedCMIStrategy(clients_per_round=1, model_spec=ModelSpec(2, (1,), (1,)), run_config={},
                       server=ServerSide([step]))
    _round(step, 2, _stats([6, 3], [3, 3], [10, 5]))
    assert s.guidance is step.current
    assert s.guidance_for(2).infiltrate is False and s.guidance_for(3).infiltrate is True
    assert s.guidance_for(3).dominant == "a"


def test_state_round_trip_and_the_validator():
    step = DominanceGuidance(2, dominance_momentum=0.5)
    _round(step, 2, _stats([6, 3], [3, 3], [10, 5]))
    _round(step, 3, _stats([1, 1], [4, 4], [5, 5]))
    side = ServerSide([step])
    state = json.loads(json.dumps(side.state()))
    assert set(state) == {"guidance", "smoothed"}
    back = DominanceGuidance(2, dominance_momentum=0.5)
    ServerSide([back]).load_state(state, 2)
    assert back.current.dominant == step.current.dominant and np.array_equal(back.current.tau, step.current.tau)
    assert np.array_equal(back.smoothed.sum_pb, step.smoothed.sum_pb)
    assert side.check_state(state, 3) == "does not fit the run's 3 classes (guidance tau has 2 temperatures)"
    bad = {**state, "smoothed": {**state["smoothed"], "sum_pa": [99.0, 0.0]}}
    assert side.check_state(bad) == "is corrupt (smoothed: a probability sum exceeds its class count)"
    with pytest.raises(ValueError, match=r"^strategy state is corrupt \(smoothed: not lists of finite non-negative"):
        ServerSide([DominanceGuidance(2)]).load_state({**state, "smoothed": {k: [-1.0, 0.0] for k in
                                                                            ("sum_pa", "sum_pb", "counts")}})
    s = FedCMIStrategy(clients_per_round=1, model_spec=ModelSpec(2, (1,), (1,)), run_config={}, seed=1)
    full = s.state()
    with pytest.raises(ValueError, match=r"guidance tau is not a list of finite positive temperatures"):
        s.load_state({**full, "guidance": {"dominant": "a", "ratio": 1.0, "tau": [0.0, 1.0]}})


def test_steps_compose_in_order_and_own_their_state_keys():
    cfg = effective({"ccvr-steps": 3, "server-opt": "yogi"})
    side = server_side(cfg, 6)
    assert [type(s) for s in side.steps] == [DominanceGuidance, CCVR, ServerOptimiser]
    assert set(side.state()) == {"guidance", "server-opt"}  # no smoothed without dominance-momentum
    assert all(spec.server == ("fedcmi.methods.guidance:build",) for spec in METHODS.values())
    assert [type(s) for s in server_side(effective({"strategy": "fedavg"}), 6).steps] == [DominanceGuidance]

    class Twice(ServerStep):
        state_keys = ("guidance",)

    with pytest.raises(ValueError, match="share a state key"):
        ServerSide([DominanceGuidance(2), Twice()])


def test_calibrations_are_bound_when_asked_for():
    """The record of a round runs later (pipelined): its calibration must use the pool as it was."""
    ccvr = CCVR(2, steps=1, samples=4, lr=0.1, moments="fresh", seed=0)
    side = ServerSide([DominanceGuidance(2), ccvr])
    assert side.calibration() is None and side.asks_moments()
    from fedcmi.federated.calibration import FeatureStats

    first = FeatureStats(np.array([3.0, 3.0]), np.ones((2, 2)), np.ones((2, 2, 2)) * 2)
    assert side.take_moments(1, [("partition 0", first)], []) == (1, 6)
    bound = side.calibration()
    side.take_moments(2, [], [])
    assert ccvr.feature_stats is None and side.calibration() is None and bound is not None


class HalfStep(ServerStep):
    """A toy method's server half: halves every update it is given (what a one-file method would hold)."""

    name = "half"

    def after_aggregation(self, server_round, current, new, updated, replies):
        return {k: (current[k] + new[k]) / 2 if k in updated else new[k] for k in new}


def build_server(cfg, num_classes):
    return HalfStep()


def test_a_method_with_a_server_step_is_its_file_and_its_registry_line(monkeypatch):
    """The spec's ``server`` names the builders; the strategy needs no change to run the step."""
    import fedcmi.methods.registry as registry
    from fedcmi.methods.spec import DOMINANCE_GUIDANCE

    spec = METHODS["fedavg"]
    toy = type(spec)("toy", "toy", spec.builder, uses=spec.uses, defaults=dict(spec.defaults),
                     server=(DOMINANCE_GUIDANCE, f"{__name__}:build_server"))
    monkeypatch.setitem(registry.METHODS, "toy", toy)
    monkeypatch.setattr(registry, "METHOD_NAMES", (*registry.METHOD_NAMES, "toy"))
    side = server_side(effective({"strategy": "toy"}), 2)
    assert [s.name for s in side.steps] == ["dominance", "half"]
    current = {"w": np.array([0.0, 4.0]), "v": np.array([1.0])}
    new = side.after_aggregation(2, current, {"w": np.array([2.0, 8.0]), "v": np.array([1.0])}, frozenset({"w"}),
                                 [])
    assert list(new["w"]) == [1.0, 6.0] and list(new["v"]) == [1.0]
