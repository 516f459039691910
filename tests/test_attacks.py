"""A single bad client must not sink the federation: updates are bounded relative to the round per modality group,
sample counts are capped at what the node vouched for at discovery, every field of a reply is untrusted, and robust
aggregation rules are plug-ins. Each attack is replayed through the strategy (``aggregate_train`` on hand-made
replies) and must reject that reply only. Then the test-only attackers themselves (tests/support/attacks.py)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from support.members import admit

from fedcmi.federated.aggregation import RULES, ClientUpdate, aggregate, rule
from fedcmi.federated.aggregation.clipped_mean import clipped_mean
from fedcmi.federated.aggregation.trimmed_mean import trimmed_mean
from fedcmi.modalities import group_of
from fedcmi.models import ModelSpec
from server.report import RoundReport
from server.strategy import FedCMIStrategy

# six multimodal nodes and one audio-only node, each reported 100 samples at discovery
NODES = {30 + i: (i, "mm") for i in range(6)} | {36: (6, "a")}
SIZE = 100
ZERO = {"enc_a.w": np.zeros(4, np.float32), "enc_b.w": np.zeros(3, np.float32),
        "fusion.w": np.zeros(2, np.float32), "enc_a.bn.num_batches_tracked": np.array(50, dtype=np.int64)}
STATS = (np.array([3.0, 1.0]), np.array([2.0, 1.0]), np.array([4.0, 2.0]))


def honest(i: int) -> dict[str, np.ndarray]:
    """Client i's honest update: a small step, different per client (norms within 2x of each other)."""
    step = 0.01 * (1 + i % 3)
    return {"enc_a.w": np.full(4, step, np.float32), "enc_b.w": np.full(3, -step, np.float32),
            "fusion.w": np.full(2, step, np.float32), "enc_a.bn.num_batches_tracked": np.array(50 + 4, np.int64)}


def reply(node: int, arrays: dict, n: object = SIZE, stats=STATS, pid: object = None, kind: object = None,
          metrics: dict | None = None, records: dict | None = None) -> Message:
    request = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    p, k = NODES[node]
    if k != "mm" and stats is STATS:
        stats = (np.zeros(2), np.zeros(2), np.zeros(2))
    m = MetricRecord({"partition-id": p, "loss": 0.5})
    if n is not None:
        m["num-examples"] = n
    if pid is not None:
        m["partition-id"] = pid
    content = RecordDict({
        "arrays": ArrayRecord({key: Array(np.asarray(v)) for key, v in arrays.items()}),
        "metrics": m,
        "info": ConfigRecord({"kind": k if kind is None else kind, "partition-id": p}),
        "class-stats": ArrayRecord({key: Array(np.asarray(v, np.float64))
                                    for key, v in zip(("sum-pa", "sum-pb", "counts"), stats, strict=True)}),
    })
    for key, value in (metrics or {}).items():
        content["metrics"][key] = value
    for key, value in (records or {}).items():
        content[key] = value
    return Message(content, reply_to=request)


def strategy(**kw) -> FedCMIStrategy:
    kw.setdefault("update_norm_multiple", 5.0)
    s = FedCMIStrategy(clients_per_round=6, model_spec=ModelSpec(2, (1,), (1,)),
                       run_config={"strategy": "fedcmi", "local-epochs": 2}, **kw)
    admit(s, NODES, SIZE)
    s.current_arrays = ArrayRecord({k: Array(v) for k, v in ZERO.items()})
    s.reports[1] = RoundReport(nodes=list(NODES)[:6])
    return s


def run_round(s: FedCMIStrategy, bad: Message, bad_node: int = 35) -> tuple[dict, MetricRecord, list[str]]:
    replies = [reply(30 + i, honest(i)) for i in range(6) if 30 + i != bad_node] + [bad]
    arrays, metrics = s.aggregate_train(1, replies)
    return {k: v.numpy() for k, v in arrays.items()}, metrics, s.reports[1].faults


def honest_mean(skip: int = 5) -> dict[str, float]:
    steps = [0.01 * (1 + i % 3) for i in range(6) if i != skip]
    return {"enc_a.w": float(np.mean(steps)), "enc_b.w": -float(np.mean(steps))}


def assert_rejected_alone(out: dict, metrics: MetricRecord, faults: list[str], reason: str) -> None:
    assert metrics["clients_rejected"] == 1 and metrics["clients_ok"] == 5, faults
    assert any(reason in f and f.startswith("partition 5: rejected") for f in faults), faults
    assert np.allclose(out["enc_a.w"], honest_mean()["enc_a.w"], atol=1e-7)  # exactly the honest mean
    assert all(np.all(np.isfinite(v)) for v in out.values())


# --- updates bounded relative to the round, per modality group --------------------------------------------------------
def test_noise_within_an_absolute_bound_is_rejected_relative_to_the_round():
    noise = np.random.default_rng(0).standard_normal(4).astype(np.float32)
    noise *= 990 / np.linalg.norm(noise)  # an absolute bound (max-update-norm=1000) would accept it
    out, metrics, faults = run_round(strategy(), reply(35, {**honest(5), "enc_a.w": noise}))
    assert_rejected_alone(out, metrics, faults, "group 'a' update norm 990 over 200 local steps")


def test_bound_is_per_group_and_honest_spread_passes():
    # the attacker's enc_a is honest, its enc_b is 6x the median step: the b group alone rejects it
    bad = {**honest(5), "enc_b.w": np.full(3, -0.12, np.float32)}
    out, metrics, faults = run_round(strategy(), reply(35, bad))
    assert_rejected_alone(out, metrics, faults, "group 'b'")
    # honest clients whose steps differ 3x are all accepted
    s = strategy()
    _, metrics = s.aggregate_train(1, [reply(30 + i, honest(i)) for i in range(6)])
    assert metrics["clients_ok"] == 6 and metrics["clients_rejected"] == 0


def test_update_norm_multiple_is_a_config_key_with_its_default_in_pyproject():
    from fedcmi.config import ConfigError, defaults, effective

    assert defaults()["update-norm-multiple"] == 10.0 and defaults()["max-update-norm"] == 0.0
    with pytest.raises(ConfigError, match="update-norm-multiple=1.5: must be 0"):
        effective({"update-norm-multiple": 1.5})


# --- counts capped at discovery, consistent with the kind, no overflow ------------------------------------------------
@pytest.mark.parametrize("n, reason", [(1e9, "exceeds the 100 samples vouched for"),
                                       (1e308, "above 2**53"), (101, "exceeds the 100 samples")])
def test_false_sample_count_is_rejected(n, reason):
    out, metrics, faults = run_round(strategy(), reply(35, honest(5), n=n))
    assert_rejected_alone(out, metrics, faults, reason)


def test_two_clients_with_1e308_samples_do_not_overflow_the_server():
    s = strategy()
    replies = [reply(30 + i, honest(i)) for i in range(4)] + [reply(34, honest(4), n=1e308),
                                                              reply(35, honest(5), n=1e308)]
    arrays, metrics = s.aggregate_train(1, replies)
    assert metrics["clients_rejected"] == 2 and metrics["num-examples"] == 400
    assert all(np.all(np.isfinite(v.numpy())) for v in arrays.values())


def test_forged_class_statistics_are_rejected():
    s = strategy()
    forged = (np.zeros(2), np.array([1e15, 0.0]), np.array([1e15, 0.0]))
    arrays, metrics = s.aggregate_train(1, [reply(30 + i, honest(i)) for i in range(5)]
                                        + [reply(36, {k: v for k, v in honest(6).items() if group_of(k) != "b"},
                                                 stats=forged)])
    assert metrics["clients_rejected"] == 1
    assert any("class-stats from a one-modality node (kind a)" in f for f in s.reports[1].faults)
    # counts above what a multimodal node reported (1e15 > 100) are rejected too
    out, metrics, faults = run_round(strategy(), reply(35, honest(5), stats=forged))
    assert_rejected_alone(out, metrics, faults, "class-stats counts: 1e+15 samples, the node reported 100")


# --- every field untrusted; a bad one rejects that reply only ---------------------------------------------------------
LIST = [1.0, 2.0]


@pytest.mark.parametrize("kw, reason", [
    ({"pid": LIST}, "partition-id [1.0, 2.0] is not an integer"),
    ({"metrics": {"loss": LIST}}, "metric loss [1.0, 2.0] is not a finite number"),
    ({"metrics": {"loss-self": float("nan")}}, "metric loss-self nan is not a finite number"),
    ({"metrics": {"loss": 1e300}}, "beyond"),
    ({"n": LIST}, "num-examples [1.0, 2.0] must be a positive finite number"),
    ({"n": None}, "num-examples None"),
    ({"kind": "xyz"}, "kind 'xyz' is not one of"),
    ({"records": {"junk": ArrayRecord({"x": Array(np.zeros(3))})}}, "unexpected record 'junk'"),
    ({"stats": (np.zeros(3), np.zeros(3), np.zeros(3))}, "class-stats sum-pa: shape (3,), expected (2,)"),
])
def test_malformed_reply_fields_reject_that_reply_only(kw, reason):
    out, metrics, faults = run_round(strategy(), reply(35, honest(5), **kw))
    assert_rejected_alone(out, metrics, faults, reason)


def test_oversized_array_is_rejected_before_it_is_deserialised(monkeypatch):
    big = Array(np.zeros(3, np.float32))
    big.data = big.data + bytes(8 * 1024 * 1024)  # declared shape (3,), 8 MB of payload
    unknown = Array(np.zeros((1000, 1000), np.float32))
    calls = []
    original = Array.numpy
    monkeypatch.setattr(Array, "numpy", lambda self: calls.append(len(self.data)) or original(self))
    for arrays, reason in (({**honest(5), "enc_b.w": big}, "enc_b.w: 8388"), ({**honest(5), "evil": unknown},
                                                                             "unknown parameter 'evil'")):
        calls.clear()
        s = strategy()
        content = reply(35, {k: v for k, v in arrays.items() if not isinstance(v, Array)})
        bad_arrays = content.content["arrays"]
        for k, v in arrays.items():
            if isinstance(v, Array):
                bad_arrays[k] = v
        out, metrics, faults = run_round(s, content)
        assert_rejected_alone(out, metrics, faults, reason)
        assert max(calls) < 1024 * 1024  # the large array was never deserialised


def test_integer_buffers_are_checked():
    bad = {**honest(5), "enc_a.bn.num_batches_tracked": np.array(3_600_000_000_000_000_000, np.int64)}
    out, metrics, faults = run_round(strategy(), reply(35, bad))
    assert_rejected_alone(out, metrics, faults, "integer buffer moved by 3.6e+18, allowed 0..200")
    assert out["enc_a.bn.num_batches_tracked"] == 54
    bad = {**honest(5), "enc_a.bn.num_batches_tracked": np.array(10, np.int64)}  # a counter cannot go back
    assert_rejected_alone(*run_round(strategy(), reply(35, bad)), "integer buffer")


# --- robust rules as plug-ins, per modality group ---------------------------------------------------------------------
def test_trimmed_mean_by_hand():
    values = [np.array([1.0, 10.0]), np.array([2.0, 20.0]), np.array([3.0, 30.0]), np.array([4.0, 40.0]),
              np.array([100.0, -1000.0])]
    # n=5, beta 0.2: one value cut at each end per coordinate -> (2+3+4)/3 and (10+20+30)/3
    assert np.allclose(trimmed_mean(np.zeros(2), values, [1] * 5), [3.0, 20.0])
    assert np.allclose(trimmed_mean(np.zeros(2), values[:4], [9, 1, 1, 1]), [2.5, 25.0])  # n=4: nothing cut


def test_clipped_mean_by_hand():
    current = np.array([1.0, 1.0])
    values = [np.array([2.0, 1.0]), np.array([1.0, 3.0]), np.array([1.0, 101.0])]  # update norms 1, 2, 100
    # median norm 2: updates (1,0), (0,2), (0,100)->(0,2); weights 1,1,2 -> (1/4, (2 + 4)/4)
    assert np.allclose(clipped_mean(current, values, [1, 1, 2]), [1.25, 2.5])


def test_rules_are_registered_and_run_per_modality_group():
    assert {"mean", "median", "trimmed-mean", "clipped-mean"} <= set(RULES)
    current = {"enc_a.x": np.zeros(1), "enc_b.x": np.zeros(1), "fusion.y": np.zeros(1)}
    ups = [ClientUpdate({"enc_a.x": np.array([v]), "enc_b.x": np.array([v]), "fusion.y": np.array([v])}, 1, mods)
           for v, mods in ((1.0, ("a", "b")), (2.0, ("a", "b")), (3.0, ("a",)), (4.0, ("a",)), (50.0, ("a",)))]
    new, count = aggregate(current, ups, group_of, rule("trimmed-mean"))
    assert count == {"enc_a.x": 5, "enc_b.x": 2, "fusion.y": 5}  # enc_b over the two clients that hold b
    assert new["enc_a.x"][0] == pytest.approx(3.0) and new["enc_b.x"][0] == pytest.approx(1.5)
    new, _ = aggregate(current, ups, group_of, rule("median"))
    assert new["enc_a.x"][0] == 3.0 and new["enc_b.x"][0] == 1.5
    new, _ = aggregate(current, ups, group_of, rule("clipped-mean"))
    assert new["enc_a.x"][0] == pytest.approx((1 + 2 + 3 + 3 + 3) / 5)  # 4 and 50 clipped to the median 3


@pytest.mark.parametrize("name", ["median", "trimmed-mean", "clipped-mean"])
def test_robust_rules_through_the_strategy_resist_a_noisy_client(name):
    s = strategy(rule=rule(name), update_norm_multiple=0.0)  # no norm screening: the rule alone
    noise = {**honest(5), "enc_a.w": np.full(4, 50.0, np.float32)}
    arrays, metrics = s.aggregate_train(1, [reply(30 + i, honest(i)) for i in range(5)] + [reply(35, noise)])
    assert metrics["clients_ok"] == 6
    assert abs(float(arrays["enc_a.w"].numpy()[0])) < 0.05  # the mean would be (0.01+0.02+0.03+0.01+0.02+50)/6


# --- the attackers themselves (tests/support/attacks.py), independent of the server's rules ---------------------------
# Each transformation is checked by hand on small arrays; one small simulation checks that the mod changes what
# nodes put on the wire (discovery included). Nothing here asserts whether the server resists an attack.
import json  # noqa: E402 - this section's imports are kept with it
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from flwr.app import Context  # noqa: E402

from fedcmi import protocol  # noqa: E402
from fedcmi.npy import record_arrays  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
import attacks  # noqa: E402 - the test-only attack mod
from attacks import LIE, Attack  # noqa: E402

GLOBAL = {"enc_a.w": np.array([1.0, 2.0, 3.0, 4.0], np.float32), "enc_b.w": np.array([0.5, -0.5, 1.0], np.float32),
          "fusion.w": np.array([2.0, -2.0], np.float32), "enc_a.bn.num_batches_tracked": np.array(50, np.int64)}
TRAINED = {"enc_a.w": np.array([1.5, 2.0, 2.0, 4.0], np.float32), "enc_b.w": np.array([0.5, 0.0, 1.0], np.float32),
           "fusion.w": np.array([2.25, -2.0], np.float32), "enc_a.bn.num_batches_tracked": np.array(54, np.int64)}
CLASS_STATS = (np.array([3.0, 1.0]), np.array([2.0, 1.0]), np.array([4.0, 2.0]))  # sum-pa, sum-pb, counts


@pytest.mark.parametrize("spec, expected", [
    ("", {}),
    ("noise:4,count:2", {4: Attack("noise"), 2: Attack("count")}),  # kind:partition, no parameter
    ("stats:1, metrics:0", {1: Attack("stats"), 0: Attack("metrics")}),
    ("sizelie:3", {3: Attack("sizelie")}),
    ("sizelie-zero:3; sizelie-stats:2", {3: Attack("sizelie-zero"), 2: Attack("sizelie-stats")}),
    ("sizelie-scale=-3:3", {3: Attack("sizelie-scale", factor=-3.0)}),
    ("scale=-5:3 scale=0.5:1", {3: Attack("scale", factor=-5.0), 1: Attack("scale", factor=0.5)}),
    ("scale-group=a,-50:2,scale-group=shared,2:5", {2: Attack("scale-group", factor=-50.0, group="a"),
                                                    5: Attack("scale-group", factor=2.0, group="shared")}),
    ("plus=1000:3", {3: Attack("plus", factor=1000.0)}),
    ("steal=2:3", {3: Attack("steal", claim=2)}),
])
def test_attack_spec_parses_and_round_trips(spec, expected):
    assert attacks.parse(spec) == expected
    assert attacks.parse(attacks.spec_of(expected)) == expected
    assert all(a.lies == a.kind.startswith("sizelie") for a in expected.values())


@pytest.mark.parametrize("spec, message", [
    ("bogus:1", "kind must be one of"), ("noise", "expected kind[=parameter]:partition"),
    ("scale:1", "scale needs a parameter: scale=F:partition"), ("sizelie=3:1", "sizelie takes no parameter"),
    ("scale=x:1", "bad parameter 'x'"), ("scale=inf:1", "must be finite"), ("steal=1.5:2", "bad parameter"),
    ("scale-group=c,2:1", "G one of a, b, shared"), ("scale-group=a:1", "expected G,F"),
    ("noise:x", "partition must be an integer"), ("noise:1,count:1", "partition 1 already attacks (noise)"),
])
def test_bad_attack_spec_names_the_item(spec, message):
    with pytest.raises(ValueError) as exc:
        attacks.parse(spec)
    assert message in str(exc.value)


def train_reply(n: int = 100) -> RecordDict:
    """An honest training reply of partition 3 (multimodal) carrying TRAINED, class statistics CLASS_STATS."""
    return RecordDict({
        "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in TRAINED.items()}),
        "metrics": MetricRecord({"num-examples": n, "partition-id": 3, "loss": 0.5}),
        "info": ConfigRecord({"kind": "mm", "partition-id": 3}),
        "class-stats": ArrayRecord({k: Array(np.asarray(v, np.float64))
                                    for k, v in zip(("sum-pa", "sum-pb", "counts"), CLASS_STATS, strict=True)}),
    })


def claims(content: RecordDict) -> tuple:
    """(partition id, kind, num-examples) of a discovery reply, as sent (no check)."""
    info = content["info"]
    return info["partition-id"], info["kind"], info["num-examples"]


def attacked(kind: str, **kw) -> tuple[dict[str, np.ndarray], object]:
    content = train_reply(**kw)
    sent = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    attacks.attack(content, kind, sent, multiple=10.0, seed=7)
    return record_arrays(content["arrays"]), content


def assert_arrays(got: dict[str, np.ndarray], want: dict[str, object]) -> None:
    assert set(got) == set(GLOBAL)
    for k, v in {**TRAINED, **want}.items():
        assert got[k].dtype == GLOBAL[k].dtype and got[k].shape == GLOBAL[k].shape, k
        assert np.array_equal(got[k], np.asarray(v, dtype=GLOBAL[k].dtype)), (k, got[k], v)


@pytest.mark.parametrize("kind, want, n", [
    ("sizelie", {}, LIE),  # honest update, the lie only
    ("sizelie-zero", GLOBAL, LIE),  # the global arrays back, integer buffers included
    # update (trained - global): a (0.5, 0, -1, 0), b (0, 0.5, 0), shared (0.25, 0)
    ("sizelie-scale=-3", {"enc_a.w": [-0.5, 2, 6, 4], "enc_b.w": [0.5, -2, 1], "fusion.w": [1.25, -2]}, LIE),
    ("scale=-5", {"enc_a.w": [-1.5, 2, 8, 4], "enc_b.w": [0.5, -3, 1], "fusion.w": [0.75, -2]}, 100),
    ("scale-group=a,-50", {"enc_a.w": [-24, 2, 53, 4]}, 100),
    ("scale-group=shared,2", {"fusion.w": [2.5, -2]}, 100),
    ("plus=1000", {"enc_a.w": [1001.5, 1002, 1002, 1004], "enc_b.w": [1000.5, 1000, 1001],
                   "fusion.w": [1002.25, 998]}, 100),  # the integer buffer stays 54
    ("steal=4", {}, 100),
    ("stats", {}, 100),
])
def test_each_attack_transforms_a_training_reply_by_hand(kind, want, n):
    got, content = attacked(kind)
    assert_arrays(got, want)
    assert content["metrics"]["num-examples"] == n
    claim = 4 if kind == "steal=4" else 3
    assert content["metrics"]["partition-id"] == claim and content["info"]["partition-id"] == claim
    assert content["metrics"]["loss"] == 0.5 and content["info"]["kind"] == "mm"


def test_class_statistics_forgeries():
    # CLASS_STATS counts (4, 2): stats keeps them; sizelie-stats scales them to whole multiples within 2**53
    for kind, k in (("stats", 1.0), ("sizelie-stats", float(LIE // 6))):
        got, content = attacked(kind)
        assert_arrays(got, {})
        cs = record_arrays(content["class-stats"])
        assert np.array_equal(cs["counts"], [4 * k, 2 * k]) and np.array_equal(cs["sum-pb"], cs["counts"])
        assert np.array_equal(cs["sum-pa"], [0.0, 0.0])
        assert cs["counts"].sum() <= LIE and np.all(cs["counts"] == np.floor(cs["counts"]))  # whole, exact
    assert content["metrics"]["num-examples"] == LIE


def test_count_metrics_and_noise_attacks_transform_the_reply():
    assert attacked("count")[1]["metrics"]["num-examples"] == 1e9
    assert attacked("metrics")[1]["metrics"]["loss"] == [1.0, 2.0]
    got, _ = attacked("noise")  # per group, 0.5 x multiple (10) x the honest update norm of that group
    for g, honest_norm in (("a", np.sqrt(0.5**2 + 1)), ("b", 0.5), ("shared", 0.25)):
        keys = [k for k in GLOBAL if group_of(k) == g and GLOBAL[k].dtype.kind == "f"]
        norm = np.sqrt(sum(np.sum((got[k].astype(np.float64) - GLOBAL[k]) ** 2) for k in keys))
        assert norm == pytest.approx(5 * honest_norm, rel=1e-5)


@pytest.mark.parametrize("kind, want", [("sizelie", (3, "mm", LIE)), ("sizelie-zero", (3, "mm", LIE)),
                                        ("sizelie-scale=-3", (3, "mm", LIE)), ("sizelie-stats", (3, "mm", LIE)),
                                        ("steal=1", (1, "mm", 69)), ("scale=-5", (3, "mm", 69)),
                                        ("plus=1000", (3, "mm", 69)), ("noise", (3, "mm", 69))])
def test_discovery_reply_claims(kind, want):
    content = protocol.info_content(protocol.NodeInfo(3, "mm", 69))
    attacks.describe(content, kind)
    assert claims(content) == want


def run_mod(tmp_path, spec: str, mtype: str, partition: int):
    """The mod around a stand-in ClientApp: ``(the reply, the trace lines)``."""
    spec_file, trace = tmp_path / "spec.txt", tmp_path / "trace.txt"
    spec_file.write_text(spec)
    mod = attacks.attack_mod(str(spec_file), 10.0, str(trace))
    if mtype == MessageType.QUERY:
        msg = Message(protocol.query_content({}), dst_node_id=33, message_type=MessageType.QUERY)
        answer = protocol.info_content(protocol.NodeInfo(partition, "mm", 69))
    else:
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
                              "config": ConfigRecord({"server-round": 2})})
        msg = Message(content, dst_node_id=33, message_type=MessageType.TRAIN)
        answer = train_reply()
    context = Context(run_id=1, node_id=33, node_config={"partition-id": partition}, state=RecordDict(),
                      run_config={})
    out = mod(msg, context, lambda m, c: Message(answer, reply_to=m))
    return out, trace.read_text().splitlines()


def test_mod_intercepts_discovery_and_training_of_the_named_partitions_only(tmp_path):
    out, trace = run_mod(tmp_path, "sizelie-scale=-3:3, steal=3:1", MessageType.QUERY, 3)
    assert claims(out.content) == (3, "mm", LIE)
    assert trace == ["query round 0 partition 3 attack sizelie-scale=-3"]
    out, _ = run_mod(tmp_path, "sizelie-scale=-3:3, steal=3:1", MessageType.QUERY, 1)
    assert claims(out.content) == (3, "mm", 69)
    out, _ = run_mod(tmp_path, "sizelie-scale=-3:3, steal=3:1", MessageType.QUERY, 2)  # not named: honest
    assert claims(out.content) == (2, "mm", 69)
    out, trace = run_mod(tmp_path, "sizelie-scale=-3:3", MessageType.TRAIN, 3)
    assert out.content["metrics"]["num-examples"] == LIE
    assert record_arrays(out.content["arrays"])["fusion.w"].tolist() == [1.25, -2.0]
    assert trace[-1] == "train round 2 partition 3 attack sizelie-scale=-3"
    out, _ = run_mod(tmp_path, "", MessageType.TRAIN, 3)
    assert_arrays(record_arrays(out.content["arrays"]), {})


@pytest.mark.slow
def test_attacked_nodes_change_what_they_send_in_a_real_simulation(tmp_path):
    """Through Flower's simulation engine: a bare ServerApp (no strategy, so no trust rule) asks every node to
    describe itself and to train once, and records what arrives (tests/support/attack_probe.py)."""
    from fedcmi.config import effective
    from fedcmi.data.partition import federation

    keys = ["num-clients=3", "train-size=300", "test-size=100", "local-epochs=1"]
    out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "support" / "attack_probe.py"), "--spec",
                           "sizelie-zero:1, steal=0:2", "--out", str(out), *keys], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(out.read_text())
    fed = federation(effective({"num-clients": 3, "train-size": 300, "test-size": 100}))
    size = {c.partition_id: len(c.indices) for c in fed}
    kind = {c.partition_id: c.kind for c in fed}
    # discovery: partition 1 lies about its size, partition 2 claims partition 0 with its own kind and size
    claims = sorted((q["partition-id"], q["kind"], q["num-examples"]) for q in found["query"])
    assert claims == sorted([(0, kind[0], size[0]), (1, kind[1], LIE), (0, kind[2], size[2])])
    # training: the liar's update is zero at 2**53 samples; the impostor keeps claiming partition 0
    trained = sorted((t["partition-id"], t["info-partition-id"], t["num-examples"], t["max-abs-update"] > 0)
                     for t in found["train"])
    assert trained == sorted([(0, 0, size[0], True), (1, 1, LIE, False), (0, 0, size[2], True)])
    assert found["trace"] == [f"{t} round {r} partition {p} attack {a}" for t, r in (("query", 0), ("train", 1))
                              for p, a in ((0, "-"), (1, "sizelie-zero"), (2, "steal=0"))]


def test_attack_benchmark_scenarios_are_valid_specs_aimed_at_their_roles():
    import importlib.util

    spec = importlib.util.spec_from_file_location("attack_bench", ROOT / "benchmarks" / "attacks.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["attack_bench"] = bench  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    who = bench.roles(0)
    assert (who["x"], who["kind"][who["x"]], who["size"][who["x"]]) == (3, "mm", 69)  # the scenarios' attacker
    assert len(who["audio"]) == 4 and {who["a1"], who["a2"]} <= set(who["audio"]) and who["v"] != who["x"]
    for name, (template, _) in bench.CLAIMS.items():
        parsed = attacks.parse(template.format(**who))
        assert (name.startswith("clean")) == (not parsed)
        assert bench.baseline_of(name) in bench.CLAIMS
    assert bench.claims_names(["steal-cpr5", "sizelie"]) == ["clean", "sizelie", "clean-cpr5", "steal-cpr5"]
