"""The adaptive server optimisers (server-opt): each rule's step by hand on a two-parameter toy, untouched
parameters, the moments' state (round trip, validator), the configuration's edge, and a run through Flower."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedcmi.config import ConfigError, effective
from fedcmi.config.run_config import SERVER_OPT_NAMES
from fedcmi.federated.server_opt import RULES, STATE_KEY, ServerOptimiser, adaptive_step
from fedcmi.federated.server_side import server_side
from fedcmi.methods.server_step import ServerSide

LR, B1, B2, TAU = 0.1, 0.9, 0.99, 0.01
X0 = np.array([1.0, 2.0])
DELTA = np.array([0.5, -1.0])  # the aggregate moved the first parameter up by 0.5, the second down by 1


def _two_steps(rule: str) -> list[np.ndarray]:
    """x after two rounds whose aggregate moves the weights by DELTA each time."""
    x, m, v, out = X0, np.zeros(2), np.zeros(2), []
    for _ in range(2):
        x, m, v = adaptive_step(rule, x, DELTA, m, v, lr=LR, beta1=B1, beta2=B2, tau=TAU)
        out.append(x)
    return out


def test_adam_by_hand():
    # round 1: m = 0.1 delta = (0.05, -0.1); v = 0.01 delta^2 = (0.0025, 0.01), sqrt v = (0.05, 0.1)
    # round 2: m = 0.9 m + 0.1 delta = (0.095, -0.19); v = 0.99 v + 0.01 delta^2 = (0.004975, 0.0199)
    first, second = _two_steps("adam")
    assert first == pytest.approx([1 + 0.1 * 0.05 / (0.05 + 0.01), 2 - 0.1 * 0.1 / (0.1 + 0.01)], abs=1e-12)
    assert second == pytest.approx([first[0] + 0.1 * 0.095 / (math.sqrt(0.004975) + 0.01),
                                    first[1] - 0.1 * 0.19 / (math.sqrt(0.0199) + 0.01)], abs=1e-12)


def test_yogi_by_hand():
    # round 1 from v = 0: v - 0.01 d^2 sign(0 - d^2) = 0.01 d^2, the same step as Adam's
    # round 2: v = 0.01 d^2 < d^2, so v grows by 0.01 d^2 again: (0.005, 0.02) where Adam decays to (0.004975, 0.0199)
    first, second = _two_steps("yogi")
    assert first == pytest.approx(_two_steps("adam")[0], abs=1e-12)
    assert second == pytest.approx([first[0] + 0.1 * 0.095 / (math.sqrt(0.005) + 0.01),
                                    first[1] - 0.1 * 0.19 / (math.sqrt(0.02) + 0.01)], abs=1e-12)


def test_adagrad_by_hand():
    # v sums delta^2: (0.25, 1) then (0.5, 2); m as Adam's
    first, second = _two_steps("adagrad")
    assert first == pytest.approx([1 + 0.1 * 0.05 / (0.5 + 0.01), 2 - 0.1 * 0.1 / (1.0 + 0.01)], abs=1e-12)
    assert second == pytest.approx([first[0] + 0.1 * 0.095 / (math.sqrt(0.5) + 0.01),
                                    first[1] - 0.1 * 0.19 / (math.sqrt(2.0) + 0.01)], abs=1e-12)


def test_beta1_zero_steps_along_this_rounds_delta_only():
    x, m, _ = adaptive_step("adagrad", X0, DELTA, np.array([7.0, 7.0]), np.zeros(2), lr=LR, beta1=0.0, beta2=B2,
                            tau=TAU)
    assert np.array_equal(m, DELTA)  # Flower's FedAdagrad: no momentum
    assert x == pytest.approx([1 + 0.1 * 0.5 / (0.5 + 0.01), 2 - 0.1 * 1.0 / (1.0 + 0.01)], abs=1e-12)


def _opt(rule: str = "adam") -> ServerOptimiser:
    return ServerOptimiser(rule, lr=LR, beta1=B1, beta2=B2, tau=TAU)


CURRENT = {"enc_a.w": X0.astype(np.float32), "enc_b.w": np.array([3.0, 4.0], np.float32),
           "enc_a.bn.num_batches_tracked": np.array(5)}


def _aggregated(shift: float = 0.0) -> dict[str, np.ndarray]:
    """What the aggregation returned: enc_a moved by DELTA (+ shift), enc_b untouched (no holder sampled)."""
    return {"enc_a.w": (X0 + DELTA + shift).astype(np.float32), "enc_b.w": CURRENT["enc_b.w"],
            "enc_a.bn.num_batches_tracked": np.array(9)}


def test_the_step_runs_per_parameter_on_the_aggregate_and_leaves_untouched_ones_alone():
    opt = _opt()
    new = opt.after_aggregation(2, CURRENT, _aggregated(), frozenset({"enc_a.w", "enc_a.bn.num_batches_tracked"}), [])
    assert new["enc_a.w"].dtype == np.float32
    assert new["enc_a.w"] == pytest.approx(_two_steps("adam")[0], abs=1e-6)
    assert new["enc_b.w"] is CURRENT["enc_b.w"]  # no client updated it: kept, and no moments for it
    assert new["enc_a.bn.num_batches_tracked"] == 9  # integer buffers take the aggregate as it is
    assert set(opt.m) == set(opt.v) == {"enc_a.w"}


def test_state_round_trip_continues_exactly_through_json():
    opt, updated = _opt("yogi"), frozenset({"enc_a.w"})
    current = opt.after_aggregation(2, CURRENT, _aggregated(), updated, [])
    state = json.loads(json.dumps(opt.state()))  # what the checkpoint file holds
    assert set(state) == {STATE_KEY} and state[STATE_KEY]["rule"] == "yogi"
    restored = _opt("yogi")
    assert restored.check_state(state) is None
    restored.load_state(state)
    a = opt.after_aggregation(3, current, {**current, "enc_a.w": current["enc_a.w"] + 0.25}, updated, [])
    b = restored.after_aggregation(3, current, {**current, "enc_a.w": current["enc_a.w"] + 0.25}, updated, [])
    assert np.array_equal(a["enc_a.w"], b["enc_a.w"])
    assert np.array_equal(opt.v["enc_a.w"], restored.v["enc_a.w"])


def _state_with(**changes) -> dict:
    opt = _opt()
    opt.after_aggregation(2, CURRENT, _aggregated(), frozenset({"enc_a.w"}), [])
    state = json.loads(json.dumps(opt.state()))
    state[STATE_KEY].update(changes)
    return state


@pytest.mark.parametrize("change, needle", [
    ({"rule": "yogi"}, "is corrupt (server-opt: moments of server-opt='yogi', the run has 'adam')"),
    ({"m": {"enc_a.w": "not base64 npy"}}, "is corrupt (server-opt: enc_a.w: not a float64 array)"),
    ({"v": {}}, "is corrupt (server-opt: m and v must map the same parameter names to arrays)"),
    ({"extra": 1}, "is corrupt (server-opt: not a mapping of rule, m, v)"),
])
def test_the_validator_names_what_is_wrong(change, needle):
    assert _opt().check_state(_state_with(**change)) == needle


def test_the_validator_checks_values_and_the_model_shapes():
    from fedcmi.federated.server_opt import _encode

    bad = _state_with(v={"enc_a.w": _encode(np.array([-1.0, 0.0]))})
    assert "v >= 0" in _opt().check_state(bad)
    good = _state_with()
    assert _opt().check_state(good, 6, {"enc_a.w": (2,)}) is None
    assert _opt().check_state(good, 6, {"enc_a.w": (3,)}) == \
        "is corrupt (server-opt: enc_a.w: shape (2,), the model has (3,))"
    assert _opt().check_state(good, 6, {}) == "is corrupt (server-opt: enc_a.w: not a parameter of the model)"
    side = ServerSide([_opt()])
    with pytest.raises(ValueError, match=r"strategy state is corrupt \(server-opt: enc_a.w: not a float64"):
        side.load_state(_state_with(m={"enc_a.w": 3}))


def test_config_edge():
    assert SERVER_OPT_NAMES == ("none", *RULES)
    assert effective({}).server.server_opt == "none"
    with pytest.raises(ConfigError, match=r"^server-opt='adamw': must be one of none, adam, yogi, adagrad"):
        effective({"server-opt": "adamw"})
    with pytest.raises(ConfigError, match=r"^server-lr=-0.1: must be > 0$"):
        effective({"server-opt": "adam", "server-lr": -0.1})
    with pytest.raises(ConfigError, match=r"^server-beta2=1.0: must be in \[0, 1\)$"):
        effective({"server-opt": "yogi", "server-beta2": 1.0})
    with pytest.raises(ConfigError, match=r"^server-lr=0.5: only read with server-opt=adam, yogi or adagrad"):
        effective({"server-lr": 0.5}).check_run()
    cfg = effective({"server-opt": "adagrad", "server-lr": 0.5, "server-beta1": 0.0}).check_run()
    assert "server-opt" not in cfg.client_dict()  # a server key: never sent to clients
    step = server_side(cfg, 6).steps[-1]
    assert isinstance(step, ServerOptimiser) and (step.rule, step.lr, step.beta1) == ("adagrad", 0.5, 0.0)
    assert not any(isinstance(s, ServerOptimiser) for s in server_side(effective({}), 6).steps)


# --- through the server: in one process (resume exactly), and through Flower's simulation engine -----------
def test_resume_continues_the_moments_exactly(tmp_path):
    from safetensors.torch import load_file

    from tests.test_run_dir_once import _status

    keys = {"server-opt": "adam", "server-lr": 0.05}
    whole, part = tmp_path / "whole", tmp_path / "part"
    _run_keys(whole, 3, keys)
    _run_keys(part, 2, keys)
    state = json.loads((part / "checkpoint" / "state.json").read_text())["strategy"]
    assert state[STATE_KEY]["rule"] == "adam" and state[STATE_KEY]["m"]
    (part / "status.json").unlink()
    _run_keys(part, 3, keys, resume=True)
    assert _status(part)["status"] == "complete"
    rows = [json.loads((p / "metrics.json").read_text()) for p in (whole, part)]
    drop = ("wall_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows[0]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in rows[1]]
    a, b = (load_file(str(p / "model.safetensors")) for p in (whole, part))
    assert all(bool((a[k] == b[k]).all()) for k in a)
    plain = tmp_path / "plain"
    _run_keys(plain, 3, {})
    c = load_file(str(plain / "model.safetensors"))
    assert any(not bool((a[k] == c[k]).all()) for k in a)  # the optimiser changed the weights


def _run_keys(out, rounds: int, keys: dict, resume: bool = False) -> None:
    from support.grid import simulated_nodes

    from server.app import run_server
    from tests.test_run_dir_once import TINY

    cfg = effective({**TINY, **keys, "num-server-rounds": rounds, "out-dir": str(out)}).check_run()
    run_server(simulated_nodes(3), cfg, resume=resume)


@pytest.mark.slow
def test_adam_through_flower_simulation(tmp_path):
    import csv
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    out = tmp_path / "adam"
    keys = ["num-clients=4", "clients-per-round=2", "num-server-rounds=3", "train-size=600", "test-size=200",
            "local-epochs=1", "server-opt=adam", "server-lr=0.05"]
    proc = subprocess.run([sys.executable, "-m", "fedcmi.cli", "simulate", "--out", str(out), *keys],
                          capture_output=True, text=True, cwd=root, timeout=600,
                          env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["server-opt"] == "adam"
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]
    assert all(math.isfinite(float(r["acc_mm"])) for r in rows)
    state = json.loads((out / "checkpoint" / "state.json").read_text())["strategy"]
    restored = _opt("adam")
    assert restored.check_state(state) is None and state[STATE_KEY]["m"]
