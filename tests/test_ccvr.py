"""CCVR: pooled class-conditional feature moments and the server-side calibration of the fusion head.

On toy Gaussians the calibrated head recovers the Bayes classifier's decisions, even when it starts out
biased toward one class (what a head takes on from the last round's participants under label skew).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.grid import FakeGrid
from support.members import admit

from fedcmi.config import effective
from fedcmi.data.base import ClientData
from fedcmi.federated.calibration import FeatureStats, calibrated, feature_statistics
from fedcmi.federated.ccvr import CCVR
from fedcmi.federated.server_side import server_side


class Slots(torch.nn.Module):
    """A model whose head inputs are its inputs (so the features are the toy Gaussians themselves)."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        from fedcmi.models.fusion.concat import ConcatFusion

        self.fusion = ConcatFusion(dim, classes)

    def slots(self, xa, xb):
        return xa, xb


def _gaussians(n_per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    means = np.array([[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 2.0]])
    x = np.concatenate([rng.normal(m, 1.0, size=(n_per_class, 4)) for m in means])
    y = np.repeat(np.arange(3), n_per_class)
    return x.astype(np.float32), y, means


def test_moments_pool_exactly_across_clients():
    x, y, _ = _gaussians(50, 0)
    model = Slots(2, 3)
    t = torch.from_numpy(x)
    parts = [ClientData(t[i::3, :2], t[i::3, 2:], torch.from_numpy(y[i::3])) for i in range(3)]
    pooled = sum((feature_statistics(model, p, 3) for p in parts), FeatureStats.zeros(3, 4))
    present, means, cov = pooled.moments()
    assert present.tolist() == [0, 1, 2]
    for c in range(3):
        xc = x[y == c].astype(np.float64)
        assert np.allclose(means[c], xc.mean(0)) and np.allclose(cov[c], np.cov(xc.T, bias=True))
    assert pooled.check(3) is None and FeatureStats(-pooled.counts, pooled.sums, pooled.outer).check(3)


def test_calibrated_head_recovers_the_bayes_decisions_from_a_biased_start():
    x, y, means = _gaussians(200, 1)
    model = Slots(2, 3)
    with torch.no_grad():  # a head that predicts class 2 for everything
        model.fusion.fc.weight.zero_()
        model.fusion.fc.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))
    stats = feature_statistics(model, ClientData(torch.from_numpy(x[:, :2]), torch.from_numpy(x[:, 2:]),
                                                 torch.from_numpy(y)), 3)
    test_x, test_y, _ = _gaussians(300, 2)
    bayes = np.argmin(((test_x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)  # equal priors, identity cov
    t = torch.from_numpy(test_x)

    def decisions(m):
        with torch.no_grad():
            return m.fusion(t[:, :2], t[:, 2:]).argmax(1).numpy()

    assert (decisions(model) == 2).all()
    fixed = calibrated(model, stats, samples=200, steps=300, lr=0.1, seed=0)
    agree = (decisions(fixed) == bayes).mean()
    assert agree > 0.95, agree
    assert (decisions(model) == 2).all()  # the original model is left as it was
    again = calibrated(model, stats, samples=200, steps=300, lr=0.1, seed=0)
    assert torch.equal(again.fusion.fc.weight, fixed.fusion.fc.weight)  # seeded: reproducible


@pytest.mark.parametrize("name", ["fedavg", "fedcmi"])
def test_ccvr_round_trip_through_the_client_step_and_the_strategy(name):
    """ccvr-moments=received: the training replies carry the moments, measured with the received weights."""
    from flwr.app import ArrayRecord, Message, MessageType, RecordDict

    from fedcmi import protocol
    from fedcmi.config import effective
    from fedcmi.data import load_data
    from fedcmi.data.partition import client_data, federation
    from fedcmi.dominance import Guidance
    from fedcmi.federated.client_step import client_step
    from fedcmi.methods.registry import method_spec
    from fedcmi.models import ModelSpec, model_for
    from server.app import build_strategy

    cfg = effective({"strategy": name, "num-clients": 4, "clients-per-round": 4, "train-size": 400,
                     "test-size": 100, "ccvr-steps": 5, "local-epochs": 1, "multimodal-ratio": 1.0,
                     "ccvr-moments": "received"}).check_run()
    data = load_data(cfg)
    spec = ModelSpec.of(data)
    torch.manual_seed(0)
    model = model_for(cfg.model, spec, method_spec(name).decomposed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    strategy = build_strategy(cfg, spec)
    admit(strategy, {10 + c.partition_id: (c.partition_id, c.kind) for c in federation(cfg)})
    strategy.current_arrays = ArrayRecord(model.state_dict())
    replies = []
    for client in federation(cfg):
        res = client_step(model, state, Guidance(), client_data(data, client), cfg, num_classes=spec.num_classes,
                          server_round=1, partition_id=client.partition_id)
        assert res.features is not None and res.features.counts.sum() == len(client.indices)
        request = Message(RecordDict(), dst_node_id=10 + client.partition_id, message_type=MessageType.TRAIN)
        content = protocol.reply_content(res.arrays, res.num_examples, res.losses, res.stats,
                                         client.partition_id, client.kind, res.features)
        replies.append(Message(content, reply_to=request))
    strategy.aggregate_train(1, replies)
    pooled = strategy.server.find(CCVR).feature_stats
    assert pooled is not None and pooled.counts.sum() == 400


# --- ccvr-moments=fresh: the evaluate phase gathers the moments of the new global weights -----------------
FRESH_NODES = {11: (0, "mm"), 12: (1, "a"), 13: (2, "mm"), 14: (3, "b"), 15: (4, "mm"), 16: (5, "mm"), 17: (6, "mm")}


def _moments(seed: int, classes: int = 3, dim: int = 4) -> FeatureStats:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 20, classes).astype(np.float64)
    return FeatureStats(counts, rng.normal(size=(classes, dim)), rng.normal(size=(classes, dim, dim)))


def _moments_grid(answers: dict) -> FakeGrid:
    """The fresh-moments nodes; ``answers`` maps node -> its reply content to an EVALUATE request, or an Exception
    (an error reply), or None (no reply within the timeout)."""
    return FakeGrid(dict(FRESH_NODES), reply=lambda message, node: answers[message.metadata.dst_node_id])


def _fresh_strategy(**run_config):
    from fedcmi.models import ModelSpec
    from server.strategy import FedCMIStrategy

    cfg = effective({"strategy": "fedavg", "ccvr-steps": 5, **run_config})
    s = FedCMIStrategy(clients_per_round=2, model_spec=ModelSpec(3, (1,), (1,)), run_config=cfg.client_dict(),
                       server=server_side(cfg, 3))
    admit(s, FRESH_NODES, size=100)
    return s


def test_fresh_moments_are_asked_of_every_multimodal_member_and_pooled_as_their_sum():
    """Only multimodal members get an EVALUATE message, with the new weights; the pool is the exact sum of the
    good replies; a NaN, an over-count, an error and a silence are each left out and named in the faults."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, MetricRecord, RecordDict

    from fedcmi import protocol
    from server.report import RoundReport

    s = _fresh_strategy()
    s.reports[3] = RoundReport(faults=["partition 1: rejected: something in training"])
    good = {11: _moments(1), 13: _moments(2)}
    nan = _moments(3)
    nan.sums[0, 0] = np.nan
    big = FeatureStats(np.full(3, 50.0), _moments(4).sums, _moments(4).outer)  # 150 samples, 100 vouched for
    nan_reply = protocol.moments_reply(_moments(3), 5)
    nan_reply[protocol.FEATURE_STATS] = protocol.features_record(nan)  # a NaN in the sums
    grid = _moments_grid({11: protocol.moments_reply(good[11], 0), 13: protocol.moments_reply(good[13], 2),
                          15: protocol.moments_reply(big, 4), 16: nan_reply,
                          17: RecordDict({**protocol.moments_reply(_moments(5), 6), "extra": MetricRecord({"x": 1})})})
    new = ArrayRecord({"fusion.fc.weight": Array(np.full(3, 7.0, np.float32))})
    messages = list(s.configure_evaluate(3, new, ConfigRecord(), grid))
    assert [m.metadata.dst_node_id for m in messages] == [11, 13, 15, 16, 17]  # multimodal, partition order
    assert {m.metadata.message_type for m in messages} == {MessageType.EVALUATE}
    assert all(np.array_equal(m.content[protocol.ARRAYS]["fusion.fc.weight"].numpy(), np.full(3, 7.0))
               for m in messages)
    metrics = s.aggregate_evaluate(3, grid.send_and_receive(messages))
    pooled = s.server.find(CCVR).feature_stats
    want = good[11] + good[13]
    assert np.array_equal(pooled.counts, want.counts) and np.array_equal(pooled.sums, want.sums)
    assert np.array_equal(pooled.outer, want.outer)
    assert metrics["ccvr-nodes"] == 2 and metrics["num-examples"] == int(want.counts.sum())
    faults = s.reports[3].faults
    assert faults[0] == "partition 1: rejected: something in training"  # the round's training faults stay first
    assert any(f.startswith("partition 4: ccvr moments rejected: 150 samples exceed the 100") for f in faults)
    assert "partition 5: ccvr moments rejected: feature-stats: contains NaN or Inf" in faults
    assert "partition 6: ccvr moments rejected: unexpected record 'extra'" in faults
    assert len(faults) == 4


def test_fresh_moments_failures_and_silence_are_faults_and_no_usable_reply_means_no_calibration():
    from flwr.app import ArrayRecord, ConfigRecord

    from fedcmi import protocol

    s = _fresh_strategy()
    ccvr = s.server.find(CCVR)
    ccvr.feature_stats = _moments(9)  # an older pool must not calibrate this round
    answers = {11: RuntimeError("injected"), 13: None, 15: protocol.moments_reply(_moments(2), 4),
               16: protocol.moments_reply(_moments(3), 5), 17: protocol.moments_reply(_moments(1, dim=6), 6)}
    grid = _moments_grid(answers)
    messages = s.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid)
    s.aggregate_evaluate(1, grid.send_and_receive(messages))
    faults = s.reports[1].faults
    assert "partition 0: ccvr moments failed: RuntimeError: injected" in faults
    assert "partition 2: ccvr moments: no reply within round-timeout" in faults
    assert "partition 6: ccvr moments rejected: width 6, the others' 4" in faults  # the majority's width wins
    assert np.array_equal(ccvr.feature_stats.counts, (_moments(2) + _moments(3)).counts)
    answers.update({15: None, 16: None, 17: None})
    s.aggregate_evaluate(2, grid.send_and_receive(s.configure_evaluate(2, ArrayRecord(), ConfigRecord(), grid)))
    assert ccvr.feature_stats is None and len(s.reports[2].faults) == 5


@pytest.mark.parametrize("run_config", [{"ccvr-steps": 0}, {"ccvr-moments": "received"}])
def test_no_evaluate_phase_when_ccvr_is_off_or_uses_the_received_moments(run_config):
    from flwr.app import ArrayRecord, ConfigRecord

    s = _fresh_strategy(**run_config)
    assert list(s.configure_evaluate(1, ArrayRecord(), ConfigRecord(), _moments_grid({}))) == []
    assert s.aggregate_evaluate(1, []) is None


def test_the_round_is_recorded_after_its_fresh_moments_arrived():
    """run_rounds keeps Flower's order: aggregate_train, then the evaluate phase with the new weights, then
    the round's record (which reads the pool)."""
    from flwr.app import Array, ArrayRecord, Message, MessageType, RecordDict
    from support.grid import empty

    from server.app import run_rounds

    events = []

    class Recording:
        reports: dict = {}

        def configure_train(self, server_round, arrays, config, grid):
            return [Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)]

        def aggregate_train(self, server_round, replies):
            events.append(("aggregate_train", server_round))
            return ArrayRecord({"w": Array(np.full(1, float(server_round)))}), None

        def configure_evaluate(self, server_round, arrays, config, grid):
            events.append(("configure_evaluate", server_round, float(arrays["w"].numpy()[0])))
            return [Message(RecordDict(), dst_node_id=1, message_type=MessageType.EVALUATE)]

        def aggregate_evaluate(self, server_round, replies):
            events.append(("aggregate_evaluate", server_round, [r.metadata.message_type for r in replies]))

    run_rounds(Recording(), FakeGrid({1: None}, reply=empty), ArrayRecord(), range(1, 3), timeout=5,
               max_consecutive_skips=3, on_round_end=lambda r, arrays: events.append(("record", r)))
    evaluate_reply = [MessageType.EVALUATE]
    assert events == [("aggregate_train", 1), ("configure_evaluate", 1, 1.0), ("aggregate_evaluate", 1,
                      evaluate_reply), ("record", 1), ("aggregate_train", 2), ("configure_evaluate", 2, 2.0),
                      ("aggregate_evaluate", 2, evaluate_reply), ("record", 2)]


def test_client_moments_round_trip_and_only_multimodal_nodes_measure_them():
    from fedcmi import protocol
    from fedcmi.config import effective
    from fedcmi.data import load_data
    from fedcmi.data.partition import client_data, federation
    from fedcmi.federated.client_step import client_moments
    from fedcmi.methods.registry import method_spec
    from fedcmi.models import ModelSpec, model_for

    cfg = effective({"strategy": "fedavg", "num-clients": 4, "clients-per-round": 2, "train-size": 400,
                     "test-size": 100, "ccvr-steps": 5}).check_run()
    data = load_data(cfg)
    spec = ModelSpec.of(data)
    model = model_for(cfg.model, spec, method_spec("fedavg").decomposed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = set()
    for client in federation(cfg):
        local = client_data(data, client)
        kinds.add(client.kind)
        if client.kind != "mm":
            with pytest.raises(ValueError, match="multimodal"):
                client_moments(model, state, local, cfg, num_classes=spec.num_classes)
            continue
        features = client_moments(model, state, local, cfg, num_classes=spec.num_classes)
        assert features.counts.sum() == len(local.labeled().complete())
        back = protocol.read_moments_reply(protocol.moments_reply(features, client.partition_id), spec.num_classes)
        assert back.partition_id == client.partition_id and np.array_equal(back.features.outer, features.outer)
    assert "mm" in kinds and len(kinds) > 1


@pytest.mark.slow
def test_fresh_and_received_runs_through_flower(tmp_path):
    """Two small simulations, the same but for ccvr-moments: both complete with the same training (loss
    columns), the fresh one sends EVALUATE messages after every round to the multimodal nodes only, its rows
    and saved model are calibrated differently, and a node failing its moments request is a fault, not a crash."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    from fedcmi.config import effective
    from fedcmi.config.parse import parse_overrides
    from fedcmi.data.partition import federation

    root = Path(__file__).parents[1]
    keys = ["num-clients=4", "clients-per-round=2", "num-server-rounds=3", "train-size=600", "test-size=200",
            "local-epochs=1", "ccvr-steps=5"]
    cfg = effective(parse_overrides(keys))
    multimodal = sorted(c.partition_id for c in federation(cfg) if c.kind == "mm")
    assert 0 < len(multimodal) < cfg.federation.num_clients
    failing = multimodal[-1]
    rows, traces = {}, {}
    for mode in ("fresh", "received"):
        out, trace = tmp_path / mode, tmp_path / f"{mode}.trace"
        cmd = [sys.executable, str(root / "tests" / "support" / "faulty_run.py"), "--faults", f"moments:{failing}@2",
               "--trace", str(trace), "simulate", "--out", str(out), *keys, f"ccvr-moments={mode}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=600,
                              env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((out / "status.json").read_text())["status"] == "complete"
        rows[mode] = json.loads((out / "metrics.json").read_text())
        traces[mode] = trace.read_text().split("\n") if trace.exists() else []
        saved, checkpoint = load_file(str(out / "model.safetensors")), load_file(str(out / "checkpoint" /
                                                                                     "model-3.safetensors"))
        fusion = [k for k in saved if k.startswith("fusion.") and saved[k].is_floating_point()]
        assert any(not saved[k].equal(checkpoint[k]) for k in fusion)  # the saved head is the calibrated one
        assert all(saved[k].equal(checkpoint[k]) for k in saved if not k.startswith("fusion."))
    asked = sorted(line for line in traces["fresh"] if line)
    assert asked == sorted(f"evaluate round {r} partition {p}" for r in (1, 2, 3) for p in multimodal)
    assert traces["received"] == []  # received: no evaluate phase at all
    fresh, received = rows["fresh"], rows["received"]
    assert f"partition {failing}: ccvr moments failed: RuntimeError: injected fault" in fresh[2]["faults"]
    assert all(r["clients_failed"] == 0 and r["clients_ok"] == 2 for r in fresh[1:])  # training untouched
    for a, b in zip(fresh, received, strict=True):
        assert {k: v for k, v in a.items() if k.startswith("loss")} == \
               {k: v for k, v in b.items() if k.startswith("loss")}
    assert fresh[0]["acc_mm"] == received[0]["acc_mm"]  # round 0: the initial model, uncalibrated in both
    assert any(f[k] != r[k] for f, r in zip(fresh[1:], received[1:], strict=True) for k in f if k.startswith("acc"))
