"""What the server vouches for (membership) and the per-step update screen, computed by hand."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedcmi.config import effective
from fedcmi.data.partition import federation
from fedcmi.errors import ConfigError
from fedcmi.federated.membership import Known, Membership, capped_weights, load_registry, lower_median
from fedcmi.federated.screening import UpdateScreen, local_steps
from fedcmi.models import ModelSpec
from server.report import RoundReport
from server.strategy import FedCMIStrategy


def test_lower_median_is_an_actual_value_below_the_upper_half():
    assert lower_median([4.0, 1.0, 3.0, 2.0]) == 2.0  # not 2.5: with half the values inflated it stays honest
    assert lower_median([3.0, 1.0, 2.0]) == 2.0 and lower_median([5.0]) == 5.0


def test_claims_are_capped_at_four_times_the_rounds_lower_median():
    # lower median of (50, 80, 100, 2**53) is 80: every weight at most 320
    assert capped_weights([100, 2**53, 50, 80]) == [100, 320, 50, 80]
    assert capped_weights([69, 2**53]) == [69, 276]  # two replies: the liar gets at most 4x the honest one


def test_local_steps_follow_the_trusted_count():
    assert local_steps(69, epochs=1, batch_size=32) == 3  # ceil(69 / 32)
    assert local_steps(1020, epochs=2, batch_size=32) == 64
    assert local_steps(0, epochs=1, batch_size=32) == 1


FED = {0: Known(0, "mm", 100), 1: Known(1, "a", 50)}


def test_federation_mode_refuses_any_claim_the_server_did_not_build():
    m = Membership("federation", FED)
    assert m.admit(11, 0, "mm", 100, online=[11]) is None and m.get(11).size == 100
    assert m.admit(12, 1, "a", 2**53, online=[11, 12]) == "claims 9.0072e+15 samples; partition 1 holds 50"
    assert m.admit(12, 1, "mm", 50, online=[11, 12]) == "claims kind 'mm'; partition 1 holds 'a'"
    assert m.admit(12, 7, "a", 50, online=[11, 12]) == "claims partition 7, which this federation does not have"
    assert m.admit(12, 1, "a", float("nan"), online=[11, 12]) == "claims nan samples"
    assert 12 not in m and len(m) == 1


def test_two_online_claimants_of_one_partition_are_both_refused_until_one_leaves():
    m = Membership("federation", FED)
    assert m.admit(11, 0, "mm", 100, online=[11, 12]) is None
    reason = m.admit(12, 0, "mm", 100, online=[11, 12])  # an impostor with the right size and kind
    assert reason == "partition 0 is also claimed by online node(s) 11: neither is sampled"
    assert 11 not in m and 12 not in m  # never a silent eviction: both are out, the caller logs both
    assert m.admit(11, 0, "mm", 100, online=[11, 12]) is not None  # still disputed while both are online
    m.leave_offline([11])  # node 12 left
    assert m.admit(11, 0, "mm", 100, online=[11]) is None


def test_an_offline_holder_is_replaced_by_its_rejoin():
    m = Membership("federation", FED)
    m.admit(11, 0, "mm", 100, online=[11])
    assert m.admit(21, 0, "mm", 100, online=[21]) is None  # 11 is not online: the partition rejoined as 21
    assert 11 not in m and m.holder(0) == 21


def test_claims_mode_a_claim_never_grows():
    m = Membership("claims")
    m.admit(11, 0, "mm", 100, online=[11])
    m.leave_offline([])
    assert m.admit(12, 0, "mm", 10**9, online=[12]) is None and m.get(12).size == 100


def _registry(tmp_path, text: str):
    path = tmp_path / "nodes.toml"
    path.write_text(text)
    return load_registry(path)


def test_registry_binds_node_ids_to_partitions_and_sizes(tmp_path):
    known = _registry(tmp_path, """
[[node]]
node-id = 8412336590212361
partition-id = 0
examples = 523

[[node]]
node-id = 77
partition-id = 1
max-examples = 600
kind = "a"
""")
    m = Membership("registry", known)
    assert m.admit(8412336590212361, 0, "mm", 523, online=[]) is None
    assert m.admit(5, 1, "a", 10, online=[]) == "not in the node registry"
    assert m.admit(77, 0, "a", 10, online=[]) == "claims partition 0; the node registry binds it to partition 1"
    assert m.admit(77, 1, "a", 601, online=[]) == "claims 601 samples; the node registry allows at most 600"
    assert m.admit(77, 1, "b", 10, online=[]) == "claims kind 'b'; partition 1 holds 'a'"
    assert m.admit(77, 1, "a", 600, online=[]) is None and m.get(77).size == 600


@pytest.mark.parametrize("text, needle", [
    ("", "no [[node]] entries"),
    ("[[node]]\npartition-id = 0\n", "node-id is missing"),
    ("[[node]]\nnode-id = 1\npartition-id = 0\n[[node]]\nnode-id = 1\npartition-id = 1\n", "listed twice"),
    ("[[node]]\nnode-id = 1\npartition-id = 0\n[[node]]\nnode-id = 2\npartition-id = 0\n", "bound to two nodes"),
    ("[[node]]\nnode-id = 1\npartition-id = 0\nexamples = 5\nmax-examples = 6\n", "not both"),
    ("[[node]]\nnode-id = 1\npartition-id = -1\n", "non-negative integer"),
    ("[[node]]\nnode-id = 1\npartition-id = 0\nsize = 3\n", "unknown key 'size'"),
    ("[[node]\n", "not a readable TOML file"),
])
def test_a_bad_registry_is_one_line(tmp_path, text, needle):
    with pytest.raises(ConfigError, match="node-registry") as exc:
        _registry(tmp_path, text)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_screen_judges_per_local_step_against_the_lower_median():
    s = UpdateScreen(multiple=10)
    # a large client takes 10x the steps and moves 10x as far: per step the same as the others
    v = s.judge([{"a": 1.0}, {"a": 1.2}, {"a": 10.0}], [1, 1, 10])
    assert [round(x.ratio, 3) for x in v] == [1.0, 1.2, 1.0] and not any(x.reason for x in v)
    # two holders, one scaled x50: the lower median of (1, 50) is the honest 1
    v = UpdateScreen(multiple=10).judge([{"a": 1.0}, {"a": 50.0}], [1, 1])
    assert v[0].reason is None and v[1].ratio == 50 and "50 x the reference 1" in v[1].reason


def test_screen_bounds_a_lone_holder_by_the_groups_history():
    s = UpdateScreen(multiple=10, history_rounds=2)
    s.remember(s.judge([{"a": 2.0}, {"a": 4.0}], [2, 2]))  # per step 1 and 2
    lone = s.judge([{"a": 30.0}], [1])  # pool (30, 1, 2): reference 2 -> ratio 15
    assert lone[0].ratio == 15 and lone[0].reason
    s.remember([])  # a round with no holder of "a"
    s.remember([])
    assert s.history["a"] == [[], []]  # two rounds later the history is gone: only the reply itself counts
    assert s.judge([{"a": 30.0}], [1])[0].ratio == 1


def test_screen_state_round_trips():
    s = UpdateScreen(multiple=10)
    s.remember(s.judge([{"a": 2.0, "shared": 1.0}], [2]))
    t = UpdateScreen(multiple=10)
    t.load_state(s.state())
    assert t.history == s.history == {"a": [[1.0]], "shared": [[0.5]]}


def test_screen_state_lists_groups_in_one_order_whatever_the_hash_seed():
    """The checkpoint is byte-identical across processes: the groups are not listed in set order."""
    code = ("from fedcmi.federated.screening import UpdateScreen; s = UpdateScreen(multiple=10); "
            "s.remember(s.judge([{'shared': 1.0, 'b': 1.0, 'a': 1.0}], [1])); print(list(s.state()))")
    orders = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout.strip() for seed in range(6)}
    assert orders == {"['a', 'b', 'shared']"}


def _reply(node: int, n: float, value: float, kind: str = "mm") -> Message:
    request = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    content = RecordDict({
        "arrays": ArrayRecord({"enc_a.w": Array(np.full(2, value, np.float32)),
                               "enc_b.w": Array(np.full(2, value, np.float32)),
                               "fusion.w": Array(np.full(1, value, np.float32))}),
        "metrics": MetricRecord({"num-examples": n, "loss": 1.0}),
        "info": ConfigRecord({"kind": kind, "partition-id": node - 10}),
    })
    return Message(content, reply_to=request)


def test_claims_mode_caps_a_liars_weight_in_the_mean():
    """Claims mode, three honest clients of 32 samples at +1 and a liar claiming 2**53 at -1: the liar weighs at most
    4 x 32 (lower median 32), so the mean is (3 x 32 - 128) / 224 = -1/7; uncapped it would be about -1."""
    s = FedCMIStrategy(clients_per_round=4, model_spec=ModelSpec(2, (1,), (1,)),
                       run_config={"local-epochs": 1, "batch-size": 32}, update_norm_multiple=0)
    for node, n in ((10, 32), (11, 32), (12, 32), (13, 2**53)):
        assert s.membership.admit(node, node - 10, "mm", n, online=[10, 11, 12, 13]) is None
    s.current_arrays = ArrayRecord({k: Array(np.zeros(d, np.float32)) for k, d in
                                    (("enc_a.w", 2), ("enc_b.w", 2), ("fusion.w", 1))})
    s.reports[1] = RoundReport(nodes=[10, 11, 12, 13])
    arrays, metrics = s.aggregate_train(1, [_reply(10, 32, 1), _reply(11, 32, 1), _reply(12, 32, 1),
                                            _reply(13, 2**53, -1)])
    assert np.allclose(arrays["fusion.w"].numpy(), (96 - 128) / 224)
    assert metrics["clients_capped"] == 1 and metrics["clients_ok"] == 4
    screen = s.reports[1].screened
    assert [r["verdict"] for r in screen] == ["accepted"] * 3 + ["capped"] and screen[3]["weight"] == 128


ATTACKED_RUN = Path(__file__).resolve().parent / "support" / "attacked_run.py"


@pytest.mark.slow
def test_liars_impostors_and_a_half_group_scaling_attack_fail_in_a_real_simulation(tmp_path):
    """Through Flower: 8 clients, all sampled. Partition 0 claims 2**53 samples, partition 1 claims partition 3,
    and three of the six holders of the audio encoder (2, 5, 7) send that group's update x-50. The server
    refuses the liar and the impostor at discovery (both named in round 1's faults), rejects the three scalers
    every round, and accepts every honest reply."""
    keys = {"num-clients": 8, "clients-per-round": 8, "num-server-rounds": 3, "train-size": 800, "test-size": 200,
            "local-epochs": 1, "update-norm-multiple": 10}  # a simulation's default is 0: an attack study sets it
    fed = {c.partition_id: (c.kind, len(c.indices)) for c in federation(effective(keys))}
    holders_a = sorted(p for p, (k, _) in fed.items() if k in ("mm", "a") and p > 1)
    assert fed[1][0] != fed[3][0] and holders_a == [2, 3, 4, 5, 6, 7]  # the roles this test was written for
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ATTACKED_RUN), "--attacks",
         "sizelie:0, steal=3:1, scale-group=a,-50:2, scale-group=a,-50:5, scale-group=a,-50:7",
         "simulate", "--out", str(out), *(f"{k}={v}" for k, v in keys.items())],
        capture_output=True, text=True, timeout=600, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    rows = json.loads((out / "metrics.json").read_text())[1:]
    assert [(r["clients_ok"], r["clients_rejected"], r["clients_capped"]) for r in rows] == [(3, 3, 0)] * 3
    faults = rows[0]["faults"]
    assert f"refused: claims 9.0072e+15 samples; partition 0 holds {fed[0][1]}" in faults, faults
    assert f"refused: claims kind '{fed[1][0]}'; partition 3 holds '{fed[3][0]}'" in faults, faults
    with open(out / "replies.csv", newline="") as fh:
        verdicts = {(int(r["round"]), int(r["partition"])): r["verdict"] for r in csv.DictReader(fh)}
    assert verdicts == {(rnd, p): "rejected" if p in (2, 5, 7) else "accepted"
                        for rnd in (1, 2, 3) for p in holders_a}
    assert "replies: 9 accepted of 18 (9 rejected" in proc.stdout, proc.stdout[-2000:]


def test_the_screen_is_off_in_simulations_and_on_in_deployments_unless_set(tmp_path):
    """`fedcmi simulate` and `fedcmi bench` resolve update-norm-multiple to 0 (every client is the researcher's
    code); the ServerApp's RunConfig default stays 10; a value the user sets wins everywhere."""
    from fedcmi.bench.plan import make_plan
    from fedcmi.cli import _parser
    from fedcmi.cli.config_args import resolve_config
    from fedcmi.config.run_config import UPDATE_NORM_MULTIPLE

    assert UPDATE_NORM_MULTIPLE == 10 and effective({}).reliability.update_norm_multiple == 10
    assert resolve_config(_parser().parse_args(["simulate"]), run=True).reliability.update_norm_multiple == 0
    paper = resolve_config(_parser().parse_args(["simulate", "--preset", "paper"]), run=True)
    assert paper.reliability.update_norm_multiple == 0
    assert resolve_config(_parser().parse_args(["simulate", "update-norm-multiple=7"]),
                          run=True).reliability.update_norm_multiple == 7
    for keys, want in (({}, 0), ({"update-norm-multiple": 12}, 12)):
        plan = make_plan("quick", tmp_path / f"bench-{want}", keys)
        assert {plan.cell_config(c).reliability.update_norm_multiple for c in plan.cells()} == {want}
