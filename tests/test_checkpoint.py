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


def test_roundtrip_keeps_tensors_and_strategy_state(tmp_path):
    s = FedCMIStrategy(clients_per_round=1, model_spec=ModelSpec(2, (1,), (1,)), run_config={}, seed=3)
    s.rng.random()
    tensors = {"enc_a.w": torch.randn(3, 2), "enc_a.bn.num_batches_tracked": torch.tensor(5)}
    save_checkpoint(tmp_path, 2, tensors, s.state())
    save_checkpoint(tmp_path, 3, tensors, s.state())
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
    save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, {"rng": random.Random(0).getstate(), "guidance": None})
    model = tmp_path / "checkpoint" / "model-1.safetensors"
    model.write_bytes(model.read_bytes()[:-3])
    with pytest.raises(CheckpointError, match="checksum does not match"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoint" / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt checkpoint state"):
        load_checkpoint(tmp_path)


def test_cli_resume_refuses_bad_input(tmp_path, capsys):
    assert main(["simulate", "--resume", str(tmp_path / "nope")]) == 2
    assert "no config.json" in capsys.readouterr().err
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
