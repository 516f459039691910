"""SCAFFOLD (scaffold=true): the client correction and option II variate by hand on a two-parameter toy, the
server's c update by hand with a parameter one client never touches, the reply checks, the state (round trip,
validator, resume), the configuration's edge, and a run through Flower's simulation engine."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from support.grid import FakeGrid, client_app, node_context, simulated_nodes
from support.members import admit

from fedcmi import protocol
from fedcmi.config import ConfigError, effective
from fedcmi.dominance import Guidance
from fedcmi.federated.scaffold import STATE_KEY, Scaffold, check_control, federation_holders, update_control
from fedcmi.federated.server_side import server_side
from fedcmi.methods.registry import OPTIONS
from fedcmi.methods.scaffold import ControlVariates
from fedcmi.methods.server_step import ServerSide
from fedcmi.methods.sgd import SGD
from fedcmi.models import ModelSpec

LR, K = 0.1, 2
X = {"enc_a.w": 1.0, "head.w": 2.0}  # the global model: one parameter of modality a's group, one shared
C = {"enc_a.w": 0.5, "head.w": -1.0}  # the server's control variate c


def _train(c_i: dict[str, float], targets: dict[str, float], momentum: float = 0.0, weight_decay: float = 0.0,
           steps: int = K) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """``steps`` SGD steps on f(w) = sum_p 0.5 (w_p - t_p)^2 over the parameters in ``targets`` (the ones the
    client trains), with SCAFFOLD's correction; returns (y, c_i+, delta c_i) as floats."""
    named = [(k, torch.nn.Parameter(torch.tensor([X[k]], dtype=torch.float32))) for k in targets]
    cv = ControlVariates({k: torch.tensor([v]) for k, v in C.items()},
                         {k: torch.tensor([v]) for k, v in c_i.items()}, weight_decay)
    cv.start(named)
    opt = SGD([p for _, p in named], lr=LR, momentum=momentum, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        sum(0.5 * (p - targets[k]).pow(2).sum() for k, p in named).backward()
        cv.before_step(named)
        opt.step()
    new, delta = cv.finish()
    return ({k: float(p.detach()) for k, p in named}, {k: float(v) for k, v in new.items()},
            {k: float(v) for k, v in delta.items()})


def test_client_correction_and_option_ii_by_hand():
    # client 1 holds both groups, c_1 = (0.25, 0), targets (0, 0): gradient w - t, correction c - c_1 = (0.25, -1)
    #   step 1: w = (1, 2),        g = (1, 2),        g + c - c_1 = (1.25, 1.0)   -> w = (0.875, 1.9)
    #   step 2: w = (0.875, 1.9),  g = (0.875, 1.9),  g + c - c_1 = (1.125, 0.9)  -> w = (0.7625, 1.81)
    #   option II: (x - y) / (K lr) = (0.2375, 0.19) / 0.2 = (1.1875, 0.95)
    #   c_1+ = c_1 - c + (1.1875, 0.95) = (0.25 - 0.5 + 1.1875, 0 + 1 + 0.95) = (0.9375, 1.95)
    #        (= the mean of the uncorrected gradients: ((1 + 0.875) / 2, (2 + 1.9) / 2))
    #   delta c_1 = c_1+ - c_1 = (0.6875, 1.95)
    y, new, delta = _train({"enc_a.w": 0.25, "head.w": 0.0}, {"enc_a.w": 0.0, "head.w": 0.0})
    assert y == pytest.approx({"enc_a.w": 0.7625, "head.w": 1.81}, abs=1e-6)
    assert {k: (X[k] - y[k]) / (K * LR) for k in X} == pytest.approx({"enc_a.w": 1.1875, "head.w": 0.95}, abs=1e-5)
    assert new == pytest.approx({"enc_a.w": 0.9375, "head.w": 1.95}, abs=1e-6)
    assert delta == pytest.approx({"enc_a.w": 0.6875, "head.w": 1.95}, abs=1e-6)
    # client 2 holds only modality b: it trains the shared head alone, from c_2 = 0 (its first round), target 4
    #   step 1: w = 2,   g = -2,   g + c - c_2 = -3    -> w = 2.3
    #   step 2: w = 2.3, g = -1.7, g + c - c_2 = -2.7  -> w = 2.57
    #   option II: (2 - 2.57) / 0.2 = -2.85; c_2+ = 0 - (-1) - 2.85 = -1.85 = delta c_2
    #   enc_a.w: never touched, so no variate and no delta for it
    y, new, delta = _train({}, {"head.w": 4.0})
    assert y == pytest.approx({"head.w": 2.57}, abs=1e-6)
    assert new == pytest.approx({"head.w": -1.85}, abs=1e-6) and delta == pytest.approx({"head.w": -1.85}, abs=1e-6)


def test_server_update_by_hand_a_parameter_one_client_never_touches_does_not_drag_c():
    # federation kinds mm, b, a: enc_a.w is trained by N_a = 2 clients (mm, a), the head by N_shared = 3
    holders = federation_holders(["mm", "b", "a"], ("a", "b"))
    assert holders == {"a": 2, "b": 2, "shared": 3}
    deltas = [{"enc_a.w": np.array([0.6875]), "head.w": np.array([1.95])},  # client 1 (mm), from the test above
              {"head.w": np.array([-1.85])}]  # client 2 (b): no delta for enc_a.w
    c = update_control({k: np.array([v]) for k, v in C.items()}, deltas, holders)
    # enc_a.w: 0.5 + (1 / N_a) * 0.6875 = 0.5 + 0.34375 = 0.84375 (only client 1 moved it)
    # head.w: -1 + (1 / 3) * (1.95 - 1.85) = -1 + 0.1 / 3 = -0.966667 = c + (|S| / N) mean(delta)
    assert c["enc_a.w"] == pytest.approx([0.84375], abs=1e-12)
    assert c["head.w"] == pytest.approx([-1 + 0.1 / 3], abs=1e-12)
    # Counting client 2 as a zero delta over all N = 3 clients would give 0.5 + (2 / 3) * mean(0.6875, 0) =
    # 0.7292: c pulled towards 0 by a client that can never train enc_a.w.
    assert c["enc_a.w"][0] != pytest.approx(0.5 + (2 / 3) * 0.6875 / 2)
    # A parameter no reply moved keeps its c; |S_p| / N_p is capped at 1
    assert update_control(c, [], holders)["enc_a.w"] is c["enc_a.w"]
    assert update_control({}, [{"enc_b.w": np.array([3.0])}] * 3, {"b": 1})["enc_b.w"] == pytest.approx([3.0])


def test_momentum_gives_the_mean_gradient_not_the_momentum_buffer():
    # momentum 0.9, target 0, one parameter starting at 1, c = c_i = 0: the variate is the mean gradient along
    # the trajectory; the displacement / (K lr) would be the mean momentum buffer, larger by up to 1 / (1 - 0.9)
    global C
    saved, C = C, {}
    try:
        y, new, _ = _train({}, {"head.w": 0.0}, momentum=0.9, steps=3)
    finally:
        C = saved
    w, buf, grads = 2.0, 0.0, []
    for _ in range(3):
        grads.append(w)
        buf = 0.9 * buf + w
        w -= LR * buf
    assert y["head.w"] == pytest.approx(w, abs=1e-6)
    assert new["head.w"] == pytest.approx(sum(grads) / 3, abs=1e-5)
    assert (2.0 - w) / (3 * LR) > 1.5 * new["head.w"]  # what the literal displacement would have given


def test_weight_decay_is_part_of_the_direction_and_k_counts_each_parameters_own_steps():
    # plain SGD with weight decay 0.5: option II's displacement includes it, and so does the variate
    y, new, _ = _train({}, {"enc_a.w": 0.0, "head.w": 0.0}, weight_decay=0.5)
    # c_i = 0: c_i+ = 0 - c + (x - y) / (K lr), so (x - y) / (K lr) = c_i+ + c
    assert {k: (X[k] - y[k]) / (K * LR) for k in X} == pytest.approx({k: new[k] + C[k] for k in X}, abs=1e-5)
    # a parameter with a gradient in one of two batches moves once: K = 1 for it, no correction without a gradient
    p, q = torch.nn.Parameter(torch.tensor([1.0])), torch.nn.Parameter(torch.tensor([1.0]))
    named = [("enc_a.w", p), ("head.w", q)]
    cv = ControlVariates({"enc_a.w": torch.tensor([1.0]), "head.w": torch.tensor([1.0])}, {}, 0.0)
    cv.start(named)
    opt = SGD([p, q], lr=LR)
    for with_a in (True, False):
        opt.zero_grad()
        ((p if with_a else 0.0) * 2.0 + q * 3.0).sum().backward()
        cv.before_step(named)
        opt.step()
    assert cv.steps == {"enc_a.w": 1, "head.w": 2}
    assert float(p.detach()) == pytest.approx(1 - LR * (2 + 1))  # one corrected step
    _, delta = cv.finish()
    assert float(delta["enc_a.w"]) == pytest.approx(2.0)  # mean direction 3 (K = 1) - c 1
    assert float(delta["head.w"]) == pytest.approx(3.0)  # mean direction 4 over 2 steps - c 1


# --- replies: the record, the checks ---------------------------------------------------------------------
KINDS = {11: (0, "mm"), 12: (1, "a"), 13: (2, "b")}
CURRENT = {"enc_a.w": np.zeros((2, 2), np.float32), "enc_b.w": np.zeros(3, np.float32),
           "fusion.fc.weight": np.zeros(2, np.float32), "enc_a.bn.num_batches_tracked": np.array(0)}


def _reply(node: int, arrays: dict[str, np.ndarray], delta: dict[str, np.ndarray] | None) -> Message:
    request = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    pid, kind = KINDS[node]
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
        "metrics": MetricRecord({"num-examples": 10, "partition-id": pid}),
        "info": ConfigRecord({"kind": kind, "partition-id": pid}),
    })
    if delta is not None:
        content[OPTIONS["scaffold"].reply] = ArrayRecord({k: Array(v) for k, v in delta.items()})
    return Message(content, reply_to=request)


def _strategy(scaffold: bool = True):
    from server.strategy import FedCMIStrategy

    steps = [Scaffold(federation_holders([k for _, k in KINDS.values()], ("a", "b")))] if scaffold else []
    s = FedCMIStrategy(clients_per_round=3, model_spec=ModelSpec(2, (1,), (1,)), server=ServerSide(steps),
                       run_config={"strategy": "fedavg", "scaffold": scaffold})
    admit(s, KINDS)
    s.current_arrays = ArrayRecord({k: Array(v) for k, v in CURRENT.items()})
    return s


def _held(node: int) -> dict[str, np.ndarray]:
    group = {"mm": ("enc_a", "enc_b"), "a": ("enc_a",), "b": ("enc_b",)}[KINDS[node][1]]
    return {k: np.array(v + 1) for k, v in CURRENT.items() if k.split(".")[0] in (*group, "fusion")}


def test_the_strategy_moves_c_per_parameter_over_the_clients_that_sent_a_delta():
    s = _strategy()
    one = np.ones(2, np.float32)
    replies = [_reply(11, _held(11), {"enc_a.w": np.full((2, 2), 2.0, np.float32), "fusion.fc.weight": one}),
               _reply(12, _held(12), {"enc_a.w": np.full((2, 2), 4.0, np.float32), "fusion.fc.weight": 3 * one}),
               _reply(13, _held(13), {"enc_b.w": np.full(3, 6.0, np.float32)})]  # its head did not move
    arrays, metrics = s.aggregate_train(1, replies)
    assert metrics["clients_ok"] == 3
    c = s.server.find(Scaffold).c
    assert c["enc_a.w"] == pytest.approx(np.full((2, 2), (2 + 4) / 2))  # N_a = 2 (mm, a)
    assert c["enc_b.w"] == pytest.approx(np.full(3, 6 / 2))  # N_b = 2 (mm, b), one sent
    assert c["fusion.fc.weight"] == pytest.approx(np.full(2, (1 + 3) / 3))  # N_shared = 3, two sent
    assert arrays["enc_a.w"].numpy() == pytest.approx(np.ones((2, 2)))  # scaffold-lr 1: the aggregate
    # the next round's message carries c
    msgs = list(s.configure_train(2, arrays, ConfigRecord(), FakeGrid(dict(KINDS))))
    sent = protocol.read_train(msgs[0].content).guidance.records["scaffold"]
    assert set(sent) == set(c) and sent["enc_b.w"].dtype == np.float32


@pytest.mark.parametrize("node, delta, reason", [
    (11, {"enc_a.w": np.zeros(3, np.float32)}, "scaffold-delta-c enc_a.w: shape (3,), expected (2, 2)"),
    (11, {"enc_a.w": np.zeros((2, 2), np.float64)}, "scaffold-delta-c enc_a.w: dtype float64, expected float32"),
    (11, {"enc_a.w": np.full((2, 2), np.nan, np.float32)}, "scaffold-delta-c enc_a.w: not finite"),
    (11, {"nope": np.zeros(1, np.float32)}, "scaffold-delta-c: unknown parameter 'nope'"),
    (13, {"enc_a.w": np.zeros((2, 2), np.float32)},
     "scaffold-delta-c enc_a.w: group a, which this client does not train"),
    (11, {"enc_a.bn.num_batches_tracked": np.array(1)},
     "scaffold-delta-c enc_a.bn.num_batches_tracked: not a float parameter"),
    (11, None, "lacks its scaffold-delta-c record (scaffold is on)"),
])
def test_a_bad_delta_is_rejected_with_a_one_line_reason(node, delta, reason):
    s = _strategy()
    s.aggregate_train(1, [_reply(node, _held(node), delta)])
    assert s.reports[1].faults == [f"partition {KINDS[node][0]}: rejected: {reason}"]


def test_a_delta_without_scaffold_is_rejected_and_no_delta_changes_nothing():
    s = _strategy(scaffold=False)
    s.aggregate_train(1, [_reply(11, _held(11), {"enc_a.w": np.zeros((2, 2), np.float32)})])
    assert s.reports[1].faults == ["partition 0: rejected: unexpected record 'scaffold-delta-c' (scaffold is off)"]
    assert check_control({}, CURRENT, ("a",)) is None


# --- state ---------------------------------------------------------------------------------------------
def _step_with_c() -> Scaffold:
    step = Scaffold({"a": 2, "b": 2, "shared": 3})
    step.c = {"enc_a.w": np.array([0.84375, 1.0]), "head.w": np.array([-0.25])}
    return step


def test_state_round_trip_and_validator():
    state = json.loads(json.dumps(_step_with_c().state()))
    restored = Scaffold({"a": 2, "b": 2, "shared": 3})
    assert restored.check_state(state, 6, {"enc_a.w": (2,), "head.w": (1,)}) is None
    restored.load_state(state)
    assert all(np.array_equal(restored.c[k], v) for k, v in _step_with_c().c.items())
    assert restored.guidance(2, Guidance(infiltrate=True)).infiltrate  # the guidance passes through
    assert restored.check_state(state, 6, {"enc_a.w": (3,), "head.w": (1,)}) == \
        "is corrupt (scaffold: enc_a.w: shape (2,), the model has (3,))"
    assert restored.check_state(state, 6, {"enc_a.w": (2,)}) == \
        "is corrupt (scaffold: head.w: not a parameter of the model)"
    assert restored.check_state({STATE_KEY: {"c": {"x": "no"}}}) == "is corrupt (scaffold: x: not a float64 array)"
    assert restored.check_state({STATE_KEY: []}) == "is corrupt (scaffold: not a mapping of c to parameter arrays)"
    nan = json.loads(json.dumps(Scaffold({}).state()))
    from fedcmi.npy import to_b64

    nan[STATE_KEY]["c"]["x"] = to_b64(np.array([math.nan]))
    with pytest.raises(ValueError, match=r"strategy state is corrupt \(scaffold: x: not finite\)"):
        ServerSide([restored]).load_state(nan)


def test_config_edge():
    cfg = effective({"scaffold": True, "scaffold-lr": 0.5}).check_run()
    assert cfg.client_dict()["scaffold"] is True and "scaffold-lr" not in cfg.client_dict()
    step = server_side(cfg, 6).find(Scaffold)
    assert step.lr == 0.5 and step.holders == {"a": 15, "b": 15, "shared": 20}  # 10 mm, 5 a, 5 b
    assert server_side(effective({}), 6).find(Scaffold) is None
    assert effective({"strategy": "unimodal-a", "scaffold": True}).check_run().method.scaffold
    with pytest.raises(ConfigError, match=r"^scaffold-lr=0.5: only read with scaffold=true"):
        effective({"scaffold-lr": 0.5}).check_run()
    with pytest.raises(ConfigError, match=r"^scaffold-lr=-1.0: must be > 0$"):
        effective({"scaffold": True, "scaffold-lr": -1.0})
    assert "scaffold" not in json.dumps(effective({}).to_dict().get("unused-keys", []))


# --- through the server: node state kept in the node's Context, resume exactly ----------------------------
def _kept_state_grid(n: int) -> FakeGrid:
    """Nodes answered by the ClientApp handlers with one Context per node kept across messages (and across runs,
    when the same grid serves them): what Flower does with ``context.state``. ``grid.trace``: (round, partition,
    c_i entries the node held before) of each TRAIN message."""
    from clients.app import run_config_of

    contexts: dict[int, Context] = {}
    trace: list[tuple[int, int, int]] = []

    def reply(message, node_config):
        ctx = contexts.setdefault(message.metadata.dst_node_id, node_context(message, node_config))
        if message.metadata.message_type != MessageType.TRAIN:
            return client_app(message, node_config, ctx)
        scope = protocol.run_scope(run_config_of(message, ctx).client_dict())  # as the ClientApp scopes it
        held = len(protocol.node_state(ctx.state, scope).get("scaffold", {}))
        answer = client_app(message, node_config, ctx)
        trace.append((protocol.server_round_of(message.content), int(node_config["partition-id"]), held))
        return answer

    grid = simulated_nodes(n, reply=reply)
    grid.trace = trace
    return grid


def _run(out, rounds: int, keys: dict, grid, resume: bool = False) -> None:
    from server.app import run_server
    from tests.test_run_dir_once import TINY

    cfg = effective({**TINY, **keys, "num-server-rounds": rounds, "out-dir": str(out)}).check_run()
    run_server(grid, cfg, resume=resume)


def test_resume_continues_c_exactly_and_nodes_keep_c_i(tmp_path):
    from safetensors.torch import load_file

    keys = {"scaffold": True}
    whole, part = tmp_path / "whole", tmp_path / "part"
    grid = _kept_state_grid(3)
    _run(whole, 5, keys, grid)
    # a node sampled again starts from the c_i its earlier round left in its context.state
    seen: set[int] = set()
    again = []
    for rnd, pid, held in grid.trace:
        assert (held > 0) == (pid in seen), (rnd, pid, held)
        again += [rnd] if pid in seen else []
        seen.add(pid)
    assert again
    parts = _kept_state_grid(3)
    _run(part, 2, keys, parts)
    state = json.loads((part / "checkpoint" / "state.json").read_text())["strategy"]
    assert state[STATE_KEY]["c"]
    (part / "status.json").unlink()
    _run(part, 5, keys, parts, resume=True)  # the nodes' state survives, as a SuperNode's would
    rows = [json.loads((p / "metrics.json").read_text()) for p in (whole, part)]
    assert [{k: v for k, v in r.items() if k != "wall_s"} for r in rows[0]] == \
        [{k: v for k, v in r.items() if k != "wall_s"} for r in rows[1]]
    a, b = (load_file(str(p / "model.safetensors")) for p in (whole, part))
    assert all(bool((a[k] == b[k]).all()) for k in a)
    plain = tmp_path / "plain"
    _run(plain, 5, {}, _kept_state_grid(3))
    c = load_file(str(plain / "model.safetensors"))
    assert any(not bool((a[k] == c[k]).all()) for k in a)  # the correction changed the weights


def test_runs_sharing_nodes_keep_their_own_c_i(tmp_path):
    """fedcmi bench runs every cell in one Flower run: a node's context.state outlives a cell. Each cell's
    c_i is its own: a second cell on the same nodes starts from c_i = 0 and ends as it would on fresh nodes."""
    from safetensors.torch import load_file

    shared = _kept_state_grid(3)
    _run(tmp_path / "first", 3, {"scaffold": True}, shared)
    _run(tmp_path / "second", 3, {"scaffold": True, "seed": 1}, shared)
    second = shared.trace[len(shared.trace) // 2:]
    firsts = {}
    for _rnd, pid, held in second:
        firsts.setdefault(pid, held)
    assert firsts and all(held == 0 for held in firsts.values()), second  # no c_i from the first cell
    _run(tmp_path / "fresh", 3, {"scaffold": True, "seed": 1}, _kept_state_grid(3))
    rows = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("second", "fresh")]
    assert [{k: v for k, v in r.items() if k != "wall_s"} for r in rows[0]] == \
        [{k: v for k, v in r.items() if k != "wall_s"} for r in rows[1]]
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("second", "fresh"))
    assert all(bool((a[k] == b[k]).all()) for k in a)


def test_a_node_keeps_the_state_of_its_most_recent_run_scopes_only():
    state = RecordDict()
    one = {"w": torch.ones(2)}
    for i in range(protocol.MAX_KEPT_SCOPES):
        protocol.keep_node_state(state, {"scaffold": one}, f"s{i}")
    protocol.keep_node_state(state, {"scaffold": one}, "s0")  # used again: now the most recent
    protocol.keep_node_state(state, {"scaffold": one}, "new")  # one scope too many: the oldest (s1) goes
    assert "scaffold" in protocol.node_state(state, "s0") and "scaffold" in protocol.node_state(state, "new")
    assert protocol.node_state(state, "s1") == {}
    assert len(state.array_records) == protocol.MAX_KEPT_SCOPES
    assert protocol.run_scope({"seed": 0, "lr": 0.1}) == protocol.run_scope({"lr": 0.1, "seed": 0}) != \
        protocol.run_scope({"seed": 1, "lr": 0.1})


@pytest.mark.slow
def test_node_state_persists_through_flower_simulation(tmp_path):
    import csv
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    out, trace = tmp_path / "scaffold", tmp_path / "trace.jsonl"
    keys = ["num-clients=3", "clients-per-round=3", "num-server-rounds=3", "train-size=300", "test-size=100",
            "local-epochs=1", "scaffold=true"]
    proc = subprocess.run([sys.executable, str(root / "tests" / "support" / "scaffold_trace.py"), "--trace",
                           str(trace), "simulate", "--out", str(out), *keys],
                          capture_output=True, text=True, cwd=root, timeout=600,
                          env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]
    lines = sorted((json.loads(x) for x in trace.read_text().splitlines()), key=lambda d: (d["round"], d["partition"]))
    assert [(d["round"], d["partition"]) for d in lines] == [(r, p) for r in (1, 2, 3) for p in range(3)]
    for d in lines:
        assert d["after"] > 0 and d["delta"] > 0
        if d["round"] == 1:
            assert d["before"] == 0 and d["c"] == 0 and d["correction"] == 0  # c = c_i = 0 at the start
        else:
            assert d["before"] == lines[d["partition"]]["after"]  # the node's c_i kept by Flower
            assert d["c"] > 0 and d["correction"] > 0  # round 2 on: a non-zero correction c - c_i
    state = json.loads((out / "checkpoint" / "state.json").read_text())["strategy"]
    assert Scaffold({}).check_state(state) is None and state[STATE_KEY]["c"]


def test_scaffold_lr_scales_the_aggregate_step_of_float_parameters_only():
    # eta_g = 0.5: x + 0.5 (aggregate - x); integer buffers and parameters nobody updated take the aggregate
    step = Scaffold({"a": 1, "shared": 1}, lr=0.5)
    current = {"enc_a.w": np.array([1.0, 2.0], np.float32), "enc_a.bn.num_batches_tracked": np.array(4),
               "enc_b.w": np.array([7.0], np.float32)}
    new = {"enc_a.w": np.array([3.0, 0.0], np.float32), "enc_a.bn.num_batches_tracked": np.array(6),
           "enc_b.w": current["enc_b.w"]}
    out = step.after_aggregation(1, current, new, frozenset({"enc_a.w", "enc_a.bn.num_batches_tracked"}), [])
    assert out["enc_a.w"] == pytest.approx([2.0, 1.0]) and out["enc_a.w"].dtype == np.float32
    assert out["enc_a.bn.num_batches_tracked"] == 6 and out["enc_b.w"] is current["enc_b.w"]
