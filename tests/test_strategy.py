"""FedCMIStrategy on hand-made replies: per-modality means, untouched groups, guidance, sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from support.grid import FakeGrid
from support.members import admit

from fedcmi.federated.aggregation import ClientUpdate, aggregate
from fedcmi.federated.aggregation.mean import weighted_mean
from fedcmi.methods.guidance import DominanceGuidance
from fedcmi.methods.server_step import ServerSide
from fedcmi.modalities import group_of
from fedcmi.models import ModelSpec
from server.report import RoundReport
from server.strategy import FedCMIStrategy, NoClientsError

KINDS = {11: (0, "mm"), 12: (1, "a"), 13: (2, "b"), 14: (3, "a"), 15: (4, "mm")}


def _arrays(a: float, b: float, f: float, nbt: int = 0) -> dict[str, np.ndarray]:
    return {"enc_a.w": np.full((2, 2), a, np.float32), "enc_b.w": np.full(3, b, np.float32),
            "fusion.fc.weight": np.full(2, f, np.float32), "enc_a.bn.num_batches_tracked": np.array(nbt)}


def _reply(node: int, n: int, arrays: dict[str, np.ndarray], stats=None) -> Message:
    request = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    pid, kind = KINDS[node]
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
        "metrics": MetricRecord({"num-examples": n, "partition-id": pid, "loss": 1.0 * pid}),
        "info": ConfigRecord({"kind": kind, "partition-id": pid}),
    })
    if stats is not None:
        content["class-stats"] = ArrayRecord({k: Array(np.asarray(v, np.float64)) for k, v in
                                              zip(("sum-pa", "sum-pb", "counts"), stats, strict=True)})
    return Message(content, reply_to=request)


def _strategy(**kw) -> FedCMIStrategy:
    s = FedCMIStrategy(clients_per_round=3, model_spec=ModelSpec(2, (1,), (1,)), run_config={"strategy": "fedcmi"},
                       **kw)
    admit(s, KINDS)
    s.current_arrays = ArrayRecord({k: Array(v) for k, v in _arrays(0.0, 0.5, 0.0, 7).items()})
    return s


def test_modality_groups_average_over_holders_only_fusion_over_all():
    s = _strategy()
    replies = [
        _reply(11, 1, _arrays(1, 1, 1, 10)),
        _reply(12, 3, {**_arrays(5, 100, 5, 20)}),  # an a-only client's enc_b must be ignored
        _reply(13, 4, {k: v for k, v in _arrays(0, 2, 2).items() if group_of(k) != "a"}),
    ]
    arrays, metrics = s.aggregate_train(1, replies)
    out = {k: v.numpy() for k, v in arrays.items()}
    assert np.allclose(out["enc_a.w"], (1 * 1 + 3 * 5) / 4)
    assert np.allclose(out["enc_b.w"], (1 * 1 + 4 * 2) / 5)
    assert np.allclose(out["fusion.fc.weight"], (1 * 1 + 3 * 5 + 4 * 2) / 8)
    assert out["enc_a.bn.num_batches_tracked"] == round((10 + 60) / 4)  # integer buffer, rounded
    assert out["enc_a.w"].dtype == np.float32 and out["enc_a.w"].shape == (2, 2)
    assert metrics["clients_ok"] == 3 and metrics["num-examples"] == 8
    assert metrics["loss"] == pytest.approx((0 * 1 + 1 * 3 + 2 * 4) / 8)


def test_group_nobody_trained_stays_unchanged():
    s = _strategy()
    arrays, _ = s.aggregate_train(1, [_reply(12, 2, {k: v for k, v in _arrays(3, 9, 3).items()
                                                    if group_of(k) != "b"})])
    out = {k: v.numpy() for k, v in arrays.items()}
    assert np.allclose(out["enc_b.w"], 0.5)
    assert np.allclose(out["enc_a.w"], 3) and np.allclose(out["fusion.fc.weight"], 3)


def test_guidance_from_statistics_is_sent_next_round():
    """Round 1's statistics (measured on the untrained initial model) are not used; round 2's decide round 3."""
    s = _strategy(server=ServerSide([DominanceGuidance(2, gamma=2.0, warmup_rounds=1)]))
    grid = FakeGrid(dict(KINDS))
    first = list(s.configure_train(1, s.current_arrays, ConfigRecord({"lr": 0.1}), grid))
    cfg1 = first[0].content["config"]
    assert cfg1["infiltrate"] is False and "dominant" not in cfg1 and cfg1["lr"] == 0.1
    replies = [
        _reply(11, 10, _arrays(1, 1, 1), stats=([9.0, 0.0], [3.0, 0.0], [10.0, 0.0])),
        _reply(15, 40, _arrays(1, 1, 1), stats=([15.0, 6.0], [15.0, 6.0], [30.0, 10.0])),
    ]
    s.aggregate_train(1, replies)
    assert s.guidance is None
    second = list(s.configure_train(2, s.current_arrays, ConfigRecord(), grid))
    cfg2 = second[0].content["config"]
    assert cfg2["infiltrate"] is True and "dominant" not in cfg2  # clients do not distil without a decision
    s.aggregate_train(2, replies)
    # P_a = (9 + 15) / 40 = 0.6 and 6 / 10; P_b = 18 / 40 = 0.45 and 0.6: ratios 4/3 and 1, mean 7/6
    assert s.guidance.dominant == "a" and s.guidance.ratio == pytest.approx(7 / 6)
    third = list(s.configure_train(3, s.current_arrays, ConfigRecord(), grid))
    cfg3 = third[0].content["config"]
    assert cfg3["infiltrate"] is True and cfg3["dominant"] == "a" and cfg3["server-round"] == 3
    assert cfg3["tau"] == pytest.approx([1 / (1 + 2 * math.log((4 / 3) / (7 / 6))), 1.0])


def test_sampling_is_seeded_and_discovers_nodes():
    picks = []
    for _ in range(2):
        s = FedCMIStrategy(clients_per_round=2, model_spec=ModelSpec(2, (1,), (1,)), run_config={}, seed=5)
        grid = FakeGrid(dict(KINDS))
        rounds = [sorted(m.metadata.dst_node_id for m in s.configure_train(r, ArrayRecord(), ConfigRecord(), grid))
                  for r in (1, 2, 3)]
        assert all(len(set(r)) == 2 for r in rounds)
        assert {n: (m.partition_id, m.kind) for n, m in s.nodes.items()} == KINDS  # learned through QUERY
        picks.append(rounds)
    assert picks[0] == picks[1]


def test_round_below_min_replies_is_skipped_and_model_kept():
    s = _strategy(min_replies=2)
    s.reports[1] = RoundReport(nodes=[11, 12])
    arrays, metrics = s.aggregate_train(1, [_reply(11, 1, _arrays(1, 1, 1))])
    assert arrays is None  # Flower/our loop keep the previous global model
    assert metrics["skipped"] == 1 and metrics["clients_ok"] == 1 and metrics["clients_timeout"] == 1
    assert s.reports[1].faults == ["partition 1: no reply within round-timeout"]


def test_discovery_needs_enough_nodes():
    s = FedCMIStrategy(clients_per_round=3, model_spec=ModelSpec(2, (1,), (1,)), run_config={},
                       discovery_timeout=0.1)
    with pytest.raises(NoClientsError, match="only 2 node"):
        s.sample(FakeGrid({11: (0, "mm"), 12: (1, "a")}))


def test_aggregate_pure_function_weights():
    current = {"enc_a.x": np.zeros(2), "fusion.y": np.zeros(1)}
    new, contributors = aggregate(current, [ClientUpdate({"enc_a.x": np.ones(2), "fusion.y": np.ones(1)}, 1, ("a",)),
                                            ClientUpdate({"enc_a.x": np.ones(2) * 4, "fusion.y": np.ones(1) * 4},
                                                         2, ("b",))], group_of, weighted_mean)
    assert np.allclose(new["enc_a.x"], 1)  # the b-only client's enc_a is not counted
    assert np.allclose(new["fusion.y"], 3)
    assert contributors == {"enc_a.x": 1, "fusion.y": 2}


def test_a_node_that_left_is_not_sampled_and_a_rejoined_one_counts_once():
    """A SuperNode killed and restarted: while its old id still shows as online, two nodes claim one partition
    and neither is sampled (logged as a fault of both); once the old id is gone the new one is admitted."""
    s = FedCMIStrategy(clients_per_round=3, model_spec=ModelSpec(2, (1,), (1,)), run_config={}, seed=1)
    grid = FakeGrid(dict(KINDS))
    list(s.configure_train(1, ArrayRecord(), ConfigRecord(), grid))
    gone = grid.nodes.pop(12)  # partition 1's SuperNode dies; the SuperLink stops listing it as online
    for rnd in range(2, 8):
        sampled = [m.metadata.dst_node_id for m in s.configure_train(rnd, ArrayRecord(), ConfigRecord(), grid)]
        assert 12 not in sampled and len(sampled) == 3
    assert 12 not in s.nodes
    grid.nodes[22] = gone  # it rejoins under a new node id...
    grid.nodes[12] = gone  # ...and the old id briefly shows up again too: two online claimants of partition 1
    sampled = [m.metadata.dst_node_id for m in s.configure_train(8, ArrayRecord(), ConfigRecord(), grid)]
    assert 12 not in sampled and 22 not in sampled
    assert sorted(m.partition_id for m in s.nodes.values()) == [0, 2, 3, 4]
    s.reports[8].nodes = []
    s.aggregate_train(8, [])
    faults = s.reports[8].faults
    assert any(f.startswith("node 22: refused: partition 1 is also claimed") for f in faults), faults
    assert any(f.startswith("node 12: refused: partition 1 is also claimed") for f in faults), faults
    del grid.nodes[12]  # the old id expires on the SuperLink: the dispute is settled
    list(s.configure_train(9, ArrayRecord(), ConfigRecord(), grid))
    assert sorted(m.partition_id for m in s.nodes.values()) == [0, 1, 2, 3, 4]
    assert (s.nodes[22].partition_id, s.nodes[22].kind) == (1, "a")
    s.reports[9] = RoundReport(nodes=[22])
    _, metrics = s.aggregate_train(9, [])
    assert metrics["clients_timeout"] == 1 and metrics["clients_failed"] == 0


def test_faults_are_listed_in_partition_order_whatever_order_the_replies_arrive_in():
    """The faults column of metrics.csv is reproducible: two bad replies arriving in either order give one list,
    and the good replies sum to the same bits."""
    bad = {k: v for k, v in _arrays(1, 1, 1).items() if k != "enc_a.w"}  # a client holding a misses enc_a
    results = []
    for order in ((14, 12, 15, 11), (11, 15, 12, 14)):
        s = _strategy()
        good = {11: _arrays(0.1, 0.3, 0.7), 15: _arrays(0.2, 0.6, 0.9)}
        replies = [_reply(n, 3 + n % 4, good[n] if n in good else bad) for n in order]
        arrays, _ = s.aggregate_train(1, replies)
        results.append((s.reports[1].faults, {k: v.numpy().tobytes() for k, v in arrays.items()}))
    faults, _ = results[0]
    assert [f.split(":")[0] for f in faults] == ["partition 1", "partition 3"]
    assert results[0] == results[1]


def test_a_round_sampling_fewer_than_clients_per_round_says_so_in_its_faults():
    """A SuperNode that died leaves the round short of clients-per-round; the row says so,
    naming the partition that is offline, until the node rejoins."""
    nodes = {11: (0, "mm"), 12: (1, "a"), 13: (2, "b")}
    s = FedCMIStrategy(clients_per_round=3, model_spec=ModelSpec(2, (1,), (1,)), run_config={}, seed=1)
    grid = FakeGrid(dict(nodes))
    s.configure_train(1, ArrayRecord(), ConfigRecord(), grid)
    s.aggregate_train(1, [])
    assert not any(f.startswith("sampled") for f in s.reports[1].faults)
    gone = grid.nodes.pop(12)
    assert len(s.configure_train(2, ArrayRecord(), ConfigRecord(), grid)) == 2
    s.aggregate_train(2, [])
    assert s.reports[2].faults[0] == ("sampled 2 of clients-per-round=3: 1 node(s) offline (partition 1); "
                                           "2 admitted node(s) hold a/b")
    grid.nodes[22] = gone  # restarted under a new node id (same key: the same id; either way it is admitted)
    assert len(s.configure_train(3, ArrayRecord(), ConfigRecord(), grid)) == 3
    s.aggregate_train(3, [])
    assert not any(f.startswith("sampled") for f in s.reports[3].faults) and s.offline == {}
