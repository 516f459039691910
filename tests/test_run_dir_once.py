"""A run directory is written once, names cannot escape the runs folder, two writers cannot race; a resume
finishes what a kill left, follows an extension, refuses an edited config and checks a damaged checkpoint before
anything starts. A run submitted to a deployment sets only allowlisted keys within the server's limits, writes
under the server's runs folder, and a complete one is final unless the operator extends it.

Rounds run in-process (the real ServerApp loop, Strategy and ClientApp handlers; a grid hands each message to
its node's handler), so no Ray is needed.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from flwr.app import Context, RecordDict
from support.grid import simulated_nodes

from fedcmi.cli import main
from fedcmi.config import ConfigError, effective
from fedcmi.runs.run_dir import MARKER, claim, default_run_dir
from server.app import run_server

TINY = {"num-clients": 3, "clients-per-round": 2, "train-size": 150, "test-size": 60, "local-epochs": 1,
        "num-server-rounds": 2, "min-partition-size": 5}


def _run(out, rounds: int = 2, resume: bool = False, grid=None) -> None:
    cfg = effective({**TINY, "num-server-rounds": rounds, "out-dir": str(out)})
    run_server(grid or simulated_nodes(3), cfg, resume=resume)


def _status(out) -> dict:
    return json.loads((out / "status.json").read_text())


# --- a run directory is written once, by one writer, inside the runs folder -------------------------------------------
def test_a_run_directory_is_created_once_and_never_overwritten(tmp_path):
    out = tmp_path / "run"
    _run(out)
    before = (out / "metrics.json").read_text()
    with pytest.raises(ConfigError, match="exists and is not empty; a run directory is written once"):
        _run(out)  # what a reused deployment out-dir did: overwrite a finished run
    assert (out / "metrics.json").read_text() == before and _status(out)["status"] == "complete"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="not a fedcmi run directory"):
        _run(foreign, resume=True)
    with pytest.raises(ConfigError, match="exists and is not empty"):
        _run(foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]


def test_two_writers_of_one_run_directory_cannot_race(tmp_path):
    out = tmp_path / "run"
    _run(out)
    fd = claim(out, resume=True)  # a resume in progress holds the lock
    try:
        with pytest.raises(ConfigError, match="another process is writing this run directory"):
            _run(out, rounds=3, resume=True)
    finally:
        os.close(fd)
    empty = tmp_path / "new"
    fd = claim(empty, resume=False)
    try:
        with pytest.raises(ConfigError, match="exists and is not empty"):  # the marker is already there
            claim(empty, resume=False)
    finally:
        os.close(fd)
    assert (empty / MARKER).is_file()


def test_run_name_cannot_escape_the_runs_folder(tmp_path):
    with pytest.raises(ConfigError, match="run-name='../../x'"):
        effective({"run-name": "../../x"})
    cfg = effective({"run-name": "ok-name.1"})
    assert default_run_dir(cfg, tmp_path).parent == tmp_path


# --- resume: finishes what a kill left, follows an extension, checks config and checkpoint ----------------------------
def test_killed_after_the_last_checkpoint_resume_writes_the_missing_files(tmp_path, capsys):
    out = tmp_path / "run"
    _run(out)
    for name in ("model.safetensors", "accuracy.png", "status.json"):
        (out / name).unlink()  # killed after the last checkpoint, before the final files
    assert main(["simulate", "--resume", str(out)]) == 0
    assert "wrote the final model, plot and status" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file() and (out / "accuracy.png").is_file()
    assert _status(out) == {"status": "complete", "rounds": 2}
    assert main(["simulate", "--resume", str(out)]) == 0
    assert "nothing to resume" in capsys.readouterr().out


def test_an_extended_run_updates_config_and_status(tmp_path):
    out = tmp_path / "run"
    _run(out)
    with pytest.raises(KeyboardInterrupt):
        _run(out, rounds=4, resume=True, grid=simulated_nodes(3, stop_from_round=4))  # stopped in round 4
    assert json.loads((out / "config.json").read_text())["num-server-rounds"] == 4
    status = _status(out)
    assert status["status"] == "failed" and status["rounds"] == 3  # not "complete, 2"
    _run(out, rounds=4, resume=True)
    assert _status(out) == {"status": "complete", "rounds": 4}
    assert [r["round"] for r in json.loads((out / "metrics.json").read_text())] == [0, 1, 2, 3, 4]


def test_an_edited_config_is_refused_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    _run(out, rounds=1)
    cfg = json.loads((out / "config.json").read_text())
    (out / "status.json").unlink()
    cfg["num-clients"] = 4
    (out / "config.json").write_text(json.dumps(cfg))
    assert main(["simulate", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "differs from the configuration the checkpoint was trained with" in err and err.count("\n") == 1


@pytest.mark.parametrize("damage, needle", [
    (lambda st, m: st.update(round=-5), "round -5 is not a round number"),
    (lambda st, m: st.update(round="2"), "round '2' is not a round number"),
    (lambda st, m: st.update(strategy={}), "corrupt strategy state (rng missing or malformed)"),
    (lambda st, m: st["strategy"].update(guidance={"dominant": "a", "ratio": None, "tau": []}), "guidance ratio"),
    (lambda st, m: m.write_text(m.read_text()[:40]), "metrics.json: unreadable or truncated"),
    (lambda st, m: m.write_text("[]"), "rounds 0..1 of the checkpoint are not all present"),
])
def test_damaged_checkpoint_fields_stop_before_anything_starts(tmp_path, capsys, damage, needle):
    out = tmp_path / "run"
    _run(out, rounds=1)
    (out / "status.json").unlink()
    state_file = out / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    damage(state, out / "metrics.json")
    state_file.write_text(json.dumps(state))
    assert main(["simulate", "--resume", str(out), "num-server-rounds=2"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


# --- a submitted run may set only allowlisted keys --------------------------------------------------------------------
def _submit(run_config: dict, grid=None) -> None:
    from server.app import main as server_main

    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    server_main(grid or simulated_nodes(3), ctx)


@pytest.mark.parametrize("key, value", [("out-dir", "/srv/other-run"), ("update-norm-multiple", 0.0),
                                        ("data-root", "/etc"), ("round-timeout", 1.0), ("ray-address", "x:1"),
                                        ("encoder-weights", "/root/.ssh/id_rsa")])
def test_a_submitted_run_cannot_set_server_side_keys(tmp_path, monkeypatch, key, value):
    monkeypatch.setenv("FEDCMI_RUNS_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=f"{key}: a submitted run cannot set it"):
        _submit({**TINY, "run-name": "r", key: value})
    assert not (tmp_path / "r").exists()


def test_a_submitted_run_writes_under_the_servers_runs_dir_and_resumes_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCMI_RUNS_DIR", str(tmp_path / "runs"))
    server_cfg = tmp_path / "server.toml"
    server_cfg.write_text("update-norm-multiple = 20.0\n")
    monkeypatch.setenv("FEDCMI_SERVER_CONFIG", str(server_cfg))
    _submit({**TINY, "num-server-rounds": 1, "run-name": "demo"})
    out = tmp_path / "runs" / "demo"
    assert _status(out)["status"] == "complete"
    assert json.loads((out / "config.json").read_text())["update-norm-multiple"] == 20.0  # the server's value
    server_cfg.write_text('update-norm-multiple = 20.0\nextend-runs = ["demo"]\n')  # the operator opens it
    _submit({**TINY, "num-server-rounds": 2, "run-name": "demo"})  # the same run, extended: resumed
    assert [r["round"] for r in json.loads((out / "metrics.json").read_text())] == [0, 1, 2]
    with pytest.raises(ConfigError, match="exists and is not empty"):  # finished: never overwritten
        _submit({**TINY, "num-server-rounds": 2, "run-name": "demo"})
    with pytest.raises(ConfigError, match="differs from the configuration"):  # another run under its name
        _submit({**TINY, "num-server-rounds": 3, "lr": 0.5, "run-name": "demo"})


# --- complete runs are final unless the operator extends them ---------------------------------------------------------
def test_a_submitter_cannot_extend_a_complete_run_unless_the_operator_opens_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCMI_RUNS_DIR", str(tmp_path / "runs"))
    server_cfg = tmp_path / "server.toml"
    server_cfg.write_text("")
    monkeypatch.setenv("FEDCMI_SERVER_CONFIG", str(server_cfg))
    out = tmp_path / "runs" / "done"
    _submit({**TINY, "num-server-rounds": 1, "run-name": "done"})
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match=r"run-name='done': that run is complete \(1 rounds\) and complete runs are "
                                          r"final; num-server-rounds=3 would extend it: only the operator"):
        _submit({**TINY, "num-server-rounds": 3, "run-name": "done"})  # a second submitter, more rounds
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing written
    server_cfg.write_text('extend-runs = ["other"]\n')  # another run opened: not this one
    with pytest.raises(ConfigError, match="complete runs are final"):
        _submit({**TINY, "num-server-rounds": 3, "run-name": "done"})
    server_cfg.write_text('extend-runs = ["done"]\n')  # the operator extends it
    _submit({**TINY, "num-server-rounds": 3, "run-name": "done"})
    assert _status(out) == {"status": "complete", "rounds": 3}
    server_cfg.write_text("extend-runs = true\n")
    with pytest.raises(ConfigError, match="extend-runs must be a list of run names"):
        _submit({**TINY, "num-server-rounds": 4, "run-name": "done"})


def test_an_unfinished_submitted_run_continues_only_with_its_own_rounds(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCMI_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("FEDCMI_SERVER_CONFIG", raising=False)
    out = tmp_path / "runs" / "half"
    with pytest.raises(KeyboardInterrupt):  # stopped in round 2 of 3
        _submit({**TINY, "num-server-rounds": 3, "run-name": "half"}, grid=simulated_nodes(3, stop_from_round=2))
    with pytest.raises(ConfigError, match="continues an unfinished run of num-server-rounds=3, not 50; only the "
                                          "operator"):
        _submit({**TINY, "num-server-rounds": 50, "run-name": "half"})
    _submit({**TINY, "num-server-rounds": 3, "run-name": "half"})  # what the docs promise: it continues
    assert _status(out) == {"status": "complete", "rounds": 3}
    assert [r["round"] for r in json.loads((out / "metrics.json").read_text())] == [0, 1, 2, 3]


# --- the server bounds what a submitted run may ask for ---------------------------------------------------------------
@pytest.mark.parametrize("key, value, limit", [("train-size", 10**8, "100000"), ("test-size", 10**8, "50000"),
                                               ("num-server-rounds", 100_000, "1000"), ("local-epochs", 10_000, "100"),
                                               ("feature-dim", 16_384, "1024")])
def test_submitted_sizes_are_bounded_by_the_servers_limits(tmp_path, monkeypatch, key, value, limit):
    from server.app import submitted_config

    monkeypatch.setenv("FEDCMI_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("FEDCMI_SERVER_CONFIG", raising=False)
    with pytest.raises(ConfigError) as err:
        submitted_config({**TINY, "run-name": "big", key: value})
    assert str(err.value) == (f"{key}={value}: above the server's limit for submitted runs ({limit}; the operator "
                              "sets it in [limits] of $FEDCMI_SERVER_CONFIG)")
    assert not (tmp_path / "runs").exists()


def test_the_operator_changes_the_limits_in_the_server_config(tmp_path, monkeypatch):
    from server.app import submitted_config

    monkeypatch.setenv("FEDCMI_RUNS_DIR", str(tmp_path / "runs"))
    server_cfg = tmp_path / "server.toml"
    monkeypatch.setenv("FEDCMI_SERVER_CONFIG", str(server_cfg))
    server_cfg.write_text("[limits]\nlocal-epochs = 20000\nlr = 0.5\nnum-server-rounds = 5\n")
    cfg, _ = submitted_config({**TINY, "local-epochs": 10_000})  # raised by the operator
    assert cfg.training.local_epochs == 10_000
    with pytest.raises(ConfigError, match=r"lr=0.9: above the server's limit for submitted runs \(0.5;"):
        submitted_config({**TINY, "lr": 0.9})  # a key the operator bounded
    with pytest.raises(ConfigError, match=r"num-server-rounds=40: above .* \(5;"):  # the default is held to it too
        submitted_config({k: v for k, v in TINY.items() if k != "num-server-rounds"})
    server_cfg.write_text("local-epochs = 500\n[limits]\nlocal-epochs = 10\n")  # the operator's own value
    assert submitted_config(TINY)[0].training.local_epochs == 500
    for bad, needle in [("[limits]\nround-timeout = 5\n", "[limits] round-timeout: not a numeric key a submitted"),
                        ("[limits]\ndataset = 5\n", "[limits] dataset: not a numeric key"),
                        ("[limits]\nlr = -1\n", "[limits] lr=-1: must be a number > 0"),
                        ("limits = 3\n", "limits must be a table")]:
        server_cfg.write_text(bad)
        with pytest.raises(ConfigError, match=re.escape(needle)):
            submitted_config(TINY)
