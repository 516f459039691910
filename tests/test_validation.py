"""Bad updates are rejected with a reason and left out; the global model never becomes NaN."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from support.members import admit

from fedcmi.federated.screening import check_arrays, check_class_stats
from fedcmi.modalities import group_of
from fedcmi.models import ModelSpec
from server.report import RoundReport
from server.strategy import FedCMIStrategy

NODES = {21: (0, "mm"), 22: (1, "mm")}
GOOD = {"enc_a.w": np.full(3, 1.0, np.float32), "enc_b.w": np.full(2, 1.0, np.float32),
        "fusion.w": np.full(2, 1.0, np.float32), "enc_a.n": np.array(4, dtype=np.int64)}
STATS = (np.array([3.0, 1.0]), np.array([2.0, 1.0]), np.array([4.0, 2.0]))


def _reply(node: int, arrays: dict, stats=STATS, n: float = 10, pid: int | None = None) -> Message:
    request = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
        "metrics": MetricRecord({"num-examples": n, "partition-id": NODES[node][0] if pid is None else pid}),
        "info": ConfigRecord({"kind": "mm"}),
        "class-stats": ArrayRecord({k: Array(np.asarray(v, np.float64))
                                    for k, v in zip(("sum-pa", "sum-pb", "counts"), stats, strict=True)}),
    })
    return Message(content, reply_to=request)


def _strategy() -> FedCMIStrategy:
    s = FedCMIStrategy(clients_per_round=2, model_spec=ModelSpec(2, (1,), (1,)), run_config={},
                       max_update_norm=100.0)
    admit(s, NODES)
    s.current_arrays = ArrayRecord({k: Array(np.zeros_like(v)) for k, v in GOOD.items()})
    return s


def _bad(kind: str) -> Message:
    arrays = {k: v.copy() for k, v in GOOD.items()}
    stats = STATS
    kw = {}
    if kind == "nan":
        arrays["enc_a.w"][0] = np.nan
    elif kind == "inf":
        arrays["fusion.w"][1] = np.inf
    elif kind == "shape":
        arrays["enc_b.w"] = np.ones(5, np.float32)
    elif kind == "dtype":
        arrays["enc_b.w"] = np.ones(2, np.float64)
    elif kind == "missing":
        del arrays["enc_b.w"]
    elif kind == "unknown":
        arrays["evil.w"] = np.ones(1, np.float32)
    elif kind == "stats":
        stats = (np.array([9.0, 1.0]), STATS[1], STATS[2])  # sum of probabilities above the count
    elif kind == "stats-negative":
        stats = (STATS[0], STATS[1], np.array([-4.0, 2.0]))
    elif kind == "norm":
        arrays["enc_a.w"] = np.full(3, 1e3, np.float32)
    elif kind == "examples":
        kw["n"] = float("nan")
    elif kind == "partition":
        kw["pid"] = 7
    return _reply(22, arrays, stats, **kw)


@pytest.mark.parametrize("kind, reason", [
    ("nan", "contains NaN or Inf"), ("inf", "contains NaN or Inf"), ("shape", "shape (5,), expected (2,)"),
    ("dtype", "dtype float64, expected float32"), ("missing", "missing parameter group 'enc_b'"),
    ("unknown", "unknown parameter 'evil.w'"), ("stats", "sum-pa: probability sums out of range"),
    ("stats-negative", "counts: must be non-negative"), ("norm", "exceeds max-update-norm 100"),
    ("examples", "num-examples"), ("partition", "claims partition 7"),
])
def test_each_bad_update_is_rejected_and_left_out(kind, reason):
    s = _strategy()
    s.reports[2] = RoundReport(nodes=[21, 22])  # round 2: its class statistics count (round 1's describe the
    arrays, metrics = s.aggregate_train(2, [_reply(21, GOOD), _bad(kind)])  # initial model)
    assert metrics["clients_rejected"] == 1 and metrics["clients_ok"] == 1
    assert any(reason in line and line.startswith("partition 1: rejected") for line in s.reports[2].faults)
    out = {k: v.numpy() for k, v in arrays.items()}
    for v in out.values():
        assert np.all(np.isfinite(v))
    assert np.allclose(out["enc_a.w"], 1.0)  # exactly the good client's update
    assert s.guidance is not None and s.guidance.ratio == pytest.approx(np.mean([3 / 2, 1.0]))


def test_all_updates_bad_skips_round_model_unchanged():
    s = _strategy()
    s.reports[1] = RoundReport(nodes=[22])
    arrays, metrics = s.aggregate_train(1, [_bad("nan")])
    assert arrays is None and metrics["skipped"] == 1


def test_pure_checks():
    cur = {"enc_a.w": np.zeros(2, np.float32), "enc_b.w": np.zeros(2, np.float32), "fusion.w": np.zeros(1)}
    # an a-only client need not send group b
    assert check_arrays({"enc_a.w": np.ones(2, np.float32), "fusion.w": np.ones(1)}, cur, ("a",), group_of) is None
    assert "exceeds" in check_arrays({"enc_a.w": np.full(2, 3.0, np.float32), "fusion.w": np.ones(1)}, cur,
                                     ("a",), group_of, max_update_norm=1.0)
    assert check_class_stats(np.zeros(2), np.zeros(2), np.zeros(2), 2) is None
    assert "shape" in check_class_stats(np.zeros(3), np.zeros(2), np.zeros(2), 2)
