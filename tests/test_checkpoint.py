"""Checkpoints: atomic pair of safetensors model + JSON state; corrupt input is a one-line error."""

from __future__ import annotations

import json
import random

import pytest
import torch

from fedcmi.cli import main
from fedcmi.models import ModelSpec
from fedcmi.runs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from server.strategy import FedCMIStrategy

HASH = "0" * 64


def test_roundtrip_keeps_tensors_and_strategy_state(tmp_path):
    s = FedCMIStrategy(clients_per_round=1, model_spec=ModelSpec(2, (1,), (1,)), run_config={}, seed=3)
    s.rng.random()
    tensors = {"enc_a.w": torch.randn(3, 2), "enc_a.bn.num_batches_tracked": torch.tensor(5)}
    save_checkpoint(tmp_path, 2, tensors, s.state(), HASH)
    save_checkpoint(tmp_path, 3, tensors, s.state(), HASH)
    ck = load_checkpoint(tmp_path)
    assert ck.round == 3
    assert torch.equal(ck.tensors["enc_a.w"], tensors["enc_a.w"])
    assert ck.tensors["enc_a.bn.num_batches_tracked"].shape == ()
    assert [p.name for p in (tmp_path / "checkpoint").glob("model-*")] == ["model-3.safetensors"]
    other = FedCMIStrategy(clients_per_round=1, model_spec=ModelSpec(2, (1,), (1,)), run_config={}, seed=99)
    other.load_state(ck.strategy)
    assert other.rng.random() == s.rng.random()  # sampling continues exactly where it stopped


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, {"rng": random.Random(0).getstate(), "guidance": None}, HASH)
    model = tmp_path / "checkpoint" / "model-1.safetensors"
    model.write_bytes(model.read_bytes()[:-3])
    with pytest.raises(CheckpointError, match="checksum does not match"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoint" / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt checkpoint state"):
        load_checkpoint(tmp_path)


def test_cli_resume_refuses_bad_input(tmp_path, capsys):
    assert main(["simulate", "--resume", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"num-clients": 4, "clients-per-round": 2}))
    assert main(["simulate", "--resume", str(run)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["simulate", "--resume", str(run), "lr=0.5"]) == 2
    assert "'lr' cannot change in a resumed run" in capsys.readouterr().err
    (run / "config.json").write_text("[1, 2]")
    assert main(["simulate", "--resume", str(run)]) == 2
    assert "expected a JSON object" in capsys.readouterr().err


# --- a checkpoint's content is validated field by field before anything starts ---------------------------------
def _rewrite(out, state_change=None, tensors_change=None):
    """Edit a run's checkpoint as an attacker or a bad disk would, keeping its checksum consistent (so only the
    content checks can catch it)."""
    import hashlib

    from safetensors.torch import load_file, save_file

    folder = out / "checkpoint"
    state = json.loads((folder / "state.json").read_text())
    if tensors_change is not None:
        model = folder / state["model"]
        tensors = load_file(str(model))
        tensors_change(tensors)
        save_file(tensors, str(model))
        state["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    if state_change is not None:
        state_change(state)
    (folder / "state.json").write_text(json.dumps(state))


def _first_float(tensors):
    return next(k for k, v in tensors.items() if v.is_floating_point())


def _set(tensors, name_of, value):
    tensors[name_of(tensors)] = value(tensors[name_of(tensors)])


CONTENT_DAMAGE = {
    "no config hash": (lambda st: st.pop("config"), None, 'has no configuration hash ("config")'),
    "malformed config hash": (lambda st: st.update(config="abc"), None, "has a malformed configuration hash"),
    "tau of length 1": (lambda st: st["strategy"].update(guidance={"dominant": "a", "ratio": 1.5, "tau": [0.5]}),
                        None, "does not fit the run's 6 classes (guidance tau has 1 temperatures)"),
    "tau NaN": (lambda st: st["strategy"].update(guidance={"dominant": "a", "ratio": 1.5, "tau": [float("nan")] * 6}),
                None, "guidance tau is not a list of finite positive temperatures"),
    "tau zero": (lambda st: st["strategy"].update(guidance={"dominant": "b", "ratio": 0.5, "tau": [0.0] * 6}),
                 None, "guidance tau is not a list of finite positive temperatures"),
    "all-NaN model": (None, lambda t: t.update({k: torch.full_like(v, float("nan")) for k, v in t.items()
                                                if v.is_floating_point()}), "holds NaN or Inf"),
    "one Inf": (None, lambda t: _set(t, _first_float, lambda v: v.flatten().index_fill(0, torch.tensor([0]),
                                                                                       float("inf")).view_as(v)),
                "holds NaN or Inf"),
    "wrong shape": (None, lambda t: _set(t, _first_float, lambda v: torch.zeros(v.numel() + 1)), "shape ("),
    "wrong dtype": (None, lambda t: _set(t, _first_float, lambda v: v.double()), "dtype torch.float64"),
    "missing tensor": (None, lambda t: t.pop(_first_float(t)), "lacks 1 tensor(s) of the model"),
    "unknown tensor": (None, lambda t: t.update(extra=torch.zeros(2)), "holds 1 tensor(s) the model this"),
    "smoothed not a mapping": (lambda st: st["strategy"].update(smoothed="abc"), None,
                               "smoothed: not a mapping of sum_pa, sum_pb, counts"),
    "smoothed NaN": (lambda st: st["strategy"].update(smoothed={"sum_pa": [float("nan")] * 6, "sum_pb": [0.0] * 6,
                                                                "counts": [1.0] * 6}), None,
                     "smoothed: not lists of finite non-negative numbers"),
    "smoothed ragged": (lambda st: st["strategy"].update(smoothed={"sum_pa": [0.1] * 6, "sum_pb": [0.1] * 5,
                                                                   "counts": [1.0] * 6}), None,
                        "smoothed: lists of different lengths"),
    "smoothed sum above count": (lambda st: st["strategy"].update(smoothed={"sum_pa": [5.0] * 6, "sum_pb": [0.1] * 6,
                                                                            "counts": [1.0] * 6}), None,
                                 "smoothed: a probability sum exceeds its class count"),
    "smoothed of 2 classes": (lambda st: st["strategy"].update(smoothed={"sum_pa": [0.1] * 2, "sum_pb": [0.1] * 2,
                                                                         "counts": [1.0] * 2}), None,
                              "(smoothed sum_pa has 2 values)"),
    "screen kept": (lambda st: st["strategy"].update(screen={"a": [[float("nan")]]}), None,
                    "screen: group 'a' holds a value that is not a finite norm"),
    "claims kept": (lambda st: st["strategy"].update(claims={"0": -3}), None,
                    "claims: not a mapping of partition ids to sample counts"),
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from tests.test_run_dir_once import _run

    out = tmp_path_factory.mktemp("ck") / "run"
    _run(out, rounds=1)
    return out


@pytest.mark.parametrize("case", sorted(CONTENT_DAMAGE))
def test_checkpoint_content_is_validated_before_anything_starts(finished_run, tmp_path, monkeypatch, capsys, case):
    import shutil

    import server.app
    from fedcmi.runtime import simulation

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "status.json").unlink()
    (out / "model.safetensors").unlink()
    state_change, tensors_change, needle = CONTENT_DAMAGE[case]
    _rewrite(out, state_change, tensors_change)
    if case == "no config hash":  # with the hash gone, an edited config used to resume
        cfg = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**cfg, "lr": 0.5}))

    def must_not_start(*args, **kwargs):
        raise AssertionError("a run started on a bad checkpoint")

    monkeypatch.setattr(simulation, "simulate", must_not_start)
    monkeypatch.setattr(server.app, "run_server", must_not_start)
    assert main(["simulate", "--resume", str(out), "num-server-rounds=2"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_an_intact_checkpoint_passes_the_content_checks(finished_run):
    from fedcmi.config import effective
    from fedcmi.runs.run_dir import resumable

    saved = json.loads((finished_run / "config.json").read_text())
    cfg = effective({k: v for k, v in saved.items() if k not in ("modalities", "unused-keys")})
    before = torch.random.get_rng_state()
    assert resumable(finished_run, cfg).round == 1
    assert torch.equal(torch.random.get_rng_state(), before)  # building the expected model drew nothing


def test_a_run_started_before_a_key_existed_resumes_while_that_key_is_at_its_default(tmp_path):
    """config.json of a run started before `natural-splits` existed: its checkpoint hash covers the keys it had;
    the run resumes with the new key at its default, and is refused with the key set or another key changed."""
    from fedcmi.config import effective
    from fedcmi.runs.run_dir import config_hash, same_config

    cfg = effective({"num-clients": 4, "clients-per-round": 2})
    old = {k: v for k, v in cfg.to_dict().items() if k != "natural-splits"}
    (tmp_path / "config.json").write_text(json.dumps(old))
    digest = config_hash(cfg, set(old))
    assert digest != config_hash(cfg)  # the key set grew: the plain hash no longer matches
    assert same_config(tmp_path, cfg, digest)
    assert not same_config(tmp_path, cfg.replace(natural_splits=cfg.federation.natural_splits + 1), digest)
    assert not same_config(tmp_path, cfg.replace(lr=cfg.training.lr * 2), digest)
    assert same_config(tmp_path, cfg, config_hash(cfg))  # a current run: the plain hash
