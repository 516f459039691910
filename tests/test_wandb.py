"""Weights & Biases logging (wandb=true, off by default): a one-line config error without the package (no
wandb needed for those tests), and, with it, a real offline W&B run in the run directory holding every round's
numbers (the TensorBoard tags) and the configuration, continued without repeats when the run is resumed.

The offline run is read back from its ``.wandb`` file (a LevelDB-style log of protobuf records; wandb 0.31 has
no Python reader of it any more): what ``wandb sync`` would upload."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedcmi.config import RunConfig
from fedcmi.errors import ConfigError
from fedcmi.metrics import round_row, scalars
from fedcmi.runs import wandb_log
from fedcmi.runs.run_dir import RunDirectory

ROOT = Path(__file__).parents[1]
NAMES = ("audio", "visual")
CFG = RunConfig(num_clients=4, clients_per_round=3, num_server_rounds=5, tensorboard=False, wandb=True)


@pytest.fixture
def no_wandb(monkeypatch):
    """As if wandb were not installed: ``import wandb`` fails and find_spec finds nothing."""
    monkeypatch.setitem(sys.modules, "wandb", None)


@pytest.fixture(autouse=True)
def _offline_here(monkeypatch, tmp_path):
    """Whatever the caller's environment says: offline, and W&B's own settings/cache kept in tmp_path."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))


# --- without wandb ---------------------------------------------------------------------------------------

def test_wandb_true_without_the_package_is_a_one_line_config_error(no_wandb):
    with pytest.raises(ConfigError, match=r"^wandb=true: the wandb package is not installed; pip install wandb"):
        CFG.check_run()
    CFG.replace(wandb=False).check_run()  # off (the default): never needs it


def test_the_cli_refuses_it_in_one_line_before_starting_anything(no_wandb, tmp_path):
    from fedcmi.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(["simulate", "wandb=true", f"out-dir={tmp_path / 'run'}"])
        except SystemExit as exc:
            code = exc.code
    assert code == 2
    assert err.getvalue().count("\n") == 1 and err.getvalue().startswith("fedcmi: error: wandb=true: ")
    assert "pip install wandb" in err.getvalue()
    assert not (tmp_path / "run").exists()


def test_the_check_finds_wandb_without_importing_it():
    """``check_run`` with wandb=true answers in the CLI's fast path: wandb (seconds to import) stays unloaded."""
    pytest.importorskip("wandb")
    probe = ("import sys; from fedcmi.config import RunConfig; RunConfig(wandb=True).check_run(); "
             "print(sorted(m for m in ('wandb', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120).stdout
    assert out.strip() == "[]"


def test_wandb_is_off_by_default_and_its_project_is_checked():
    assert RunConfig().output.wandb is False and RunConfig().output.wandb_project == "fedcmi"
    for bad in ("", "a/b", "x" * 129, "what?"):
        with pytest.raises(ConfigError, match="wandb-project"):
            RunConfig(wandb_project=bad)


def test_a_run_whose_wandb_cannot_start_goes_on_without_it(no_wandb, tmp_path, caplog):
    """Past the edge check (e.g. the package broke, or online mode without a login): a warning, no failure."""
    run = RunDirectory(tmp_path / "run", CFG, NAMES)
    run.add_round(_row(0))
    run.release()
    assert run.wandb is None and "W&B cannot start" in caplog.text
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())[0]["round"] == 0


# --- a real offline run ----------------------------------------------------------------------------------

def _row(r: int, shift: float = 0.0) -> dict:
    accs = {"acc_mm": 0.5 + r / 100 + shift, "acc_audio": 0.4, "acc_visual": 0.3 + shift, "acc_audio_zero": 0.35,
            "acc_visual_zero": 0.25, "worst_class_acc": 0.1, "per_class_acc": [0.125, math.nan, 0.875]}
    losses = {"loss": 1.5 - r / 10, "loss-fused": 1.0, "loss-self": 0.25, "loss-cmi": 0.125} if r else {}
    info = {"clients_ok": 2, "clients_failed": 1, "clients_rejected": 0, "clients_timeout": 0,
            "clients_capped": 1} if r else {}
    return round_row(r, accs, losses, "audio" if r else "", 1.75 + shift if r else math.nan, info, 3.0 + r,
                     [1.0, 1.5, 2.0] if r else None)


_BLOCK, _HEADER = 32768, 7  # the .wandb log: 7-byte file header; records of (crc32, length, type) + data


def _records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if data[:4] != b":W&B":  # not written yet
        return
    pos, parts = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if left < _HEADER or (kind == 0 and length == 0):  # a block's zero padding
            pos += left
            continue
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        parts = chunk if kind in (1, 2) else parts + chunk  # FULL, FIRST | MIDDLE, LAST
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record


def _attempts(run: Path, wait_s: float = 60.0) -> list[dict[str, Any]]:
    """Each offline W&B run in ``run`` (one per attempt, in order): its id, name, project, config, history by
    step and exit code. ``run.finish()`` returns before W&B's service has written the file out (the process
    living on, as a test does): read until it ends with its exit record, ``wait_s`` at most."""
    deadline = time.monotonic() + wait_s
    while True:
        out = _read_attempts(run)
        if all(a["exit"] is not None for a in out) or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _read_attempts(run: Path) -> list[dict[str, Any]]:
    out = []
    for folder in sorted((run / "wandb").glob("offline-run-*")):
        (file,) = folder.glob("run-*.wandb")
        got: dict[str, Any] = {"config": {}, "history": {}, "exit": None}
        for rec in _records(file):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                got.update(id=rec.run.run_id, name=rec.run.display_name, project=rec.run.project)
                got["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
            elif kind == "config":
                got["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                got["history"][rec.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
            elif kind == "exit":
                got["exit"] = rec.exit.exit_code
        out.append(got)
    return out


def _logged(run: Path) -> dict[str, Any]:
    return json.loads((run / wandb_log.STATE_FILE).read_text())


def test_every_round_is_logged_offline_with_the_tensorboard_tags_and_the_config(tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    run = RunDirectory(out, CFG, NAMES)
    for r in range(3):
        run.add_round(_row(r))
    run.finish("complete", rounds=2)
    run.release()
    (attempt,) = _attempts(out)
    assert attempt["name"] == "run" and attempt["project"] == "fedcmi" and attempt["exit"] == 0
    assert attempt["id"] == _logged(out)["id"] and _logged(out)["round"] == 2
    assert sorted(attempt["history"]) == [0, 1, 2]
    last = attempt["history"][2]
    expected = {"accuracy/acc_mm", "accuracy/acc_audio", "accuracy/acc_visual_zero", "accuracy/worst_class_acc",
                "accuracy/per_class_acc_0", "accuracy/per_class_acc_2", "loss/loss", "loss/loss_cmi",
                "replies/ok", "replies/failed", "replies/capped", "replies/skipped", "dominance/ratio",
                "dominance/tau_0", "dominance/tau_2", "time/wall_s"}
    assert expected <= set(last), expected - set(last)
    assert "accuracy/per_class_acc_1" not in last  # NaN left out, as in TensorBoard
    assert last["accuracy/acc_mm"] == pytest.approx(0.52) and last["replies/ok"] == 2
    assert last["dominance/tau_1"] == 1.5
    assert "dominance/ratio" not in attempt["history"][0]  # round 0 has none
    config = json.loads((out / "config.json").read_text())
    assert {k: attempt["config"][k] for k in config} == config  # config.json's content, modalities included


def test_a_resumed_run_continues_the_same_id_and_logs_no_round_twice(tmp_path):
    """The first attempt logged rounds 0-4 and was stopped (checkpoint at round 2): the resume (6 rounds now)
    continues the same W&B run and logs only rounds 5 and 6."""
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    run = RunDirectory(out, CFG, NAMES)
    for r in range(5):
        run.add_round(_row(r))
    run.finish("interrupted", rounds=4)
    run.release()
    first_id = _logged(out)["id"]
    resumed = RunDirectory(out, CFG.replace(num_server_rounds=6), NAMES, resume_after=2)
    for r in range(3, 7):
        resumed.add_round(_row(r, shift=0.25))
    resumed.finish("complete", rounds=6)
    resumed.release()
    first, second = _attempts(out)
    assert first["id"] == second["id"] == first_id and _logged(out) == {"id": first_id, "round": 6}
    assert (sorted(first["history"]), first["exit"]) == ([0, 1, 2, 3, 4], 1)
    assert (sorted(second["history"]), second["exit"]) == ([5, 6], 0)
    assert second["history"][6]["accuracy/acc_visual"] == pytest.approx(0.55)
    assert second["config"]["num-server-rounds"] == 6


def test_a_resumed_run_that_had_no_wandb_run_logs_its_earlier_rounds_first(tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    run = RunDirectory(out, CFG.replace(wandb=False), NAMES)
    for r in range(3):
        run.add_round(_row(r))
    run.release()
    assert not (out / "wandb").exists() and not (out / wandb_log.STATE_FILE).exists()
    resumed = RunDirectory(out, CFG, NAMES, resume_after=2)
    for r in range(3, 5):
        resumed.add_round(_row(r))
    resumed.release()
    (attempt,) = _attempts(out)
    assert sorted(attempt["history"]) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_fedcmi_simulate_with_wandb_writes_an_offline_run(tmp_path):
    """For real: `fedcmi simulate wandb=true` (Flower's simulation engine, no network needed)."""
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "WANDB_CONFIG_DIR": str(tmp_path / "wandb-home"),
           "WANDB_CACHE_DIR": str(tmp_path / "wandb-home"), "WANDB_DATA_DIR": str(tmp_path / "wandb-home")}
    env.pop("WANDB_MODE", None)
    proc = subprocess.run([sys.executable, "-m", "fedcmi.cli", "simulate", "wandb=true", "num-server-rounds=2",
                           "num-clients=4", "clients-per-round=2", "train-size=600", "test-size=200",
                           f"out-dir={out}"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == f"W&B run (offline): upload it with `wandb sync {out}/wandb/offline-run-*`"
    (attempt,) = _attempts(out)
    assert attempt["name"] == "run" and attempt["exit"] == 0 and attempt["id"] == _logged(out)["id"]
    assert sorted(attempt["history"]) == [0, 1, 2]
    config = json.loads((out / "config.json").read_text())
    names = tuple(config["modalities"])
    for row in json.loads((out / "metrics.json").read_text()):  # every round: exactly TensorBoard's numbers
        assert attempt["history"][row["round"]] == pytest.approx(scalars(row, names)), row["round"]
    assert {"accuracy/acc_mm", "accuracy/worst_class_acc", "loss/loss", "replies/ok",
            "time/wall_s"} <= set(attempt["history"][2])  # (round 2 has no dominance yet: docs/method.md)
    assert attempt["config"]["wandb"] is True and attempt["config"]["num-server-rounds"] == 2
    assert not list(tmp_path.glob("wandb"))  # nothing outside the run directory
