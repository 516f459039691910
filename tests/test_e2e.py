"""End to end through Flower's simulation engine (Ray): `fedcmi simulate` and `flwr run .`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fedcmi.runtime.processes import alive, free_port, stop_pids

ROOT = Path(__file__).parents[1]
FEDCMI = [sys.executable, "-m", "fedcmi.cli"]
SMALL = ["num-clients=4", "clients-per-round=2", "num-server-rounds=3", "train-size=1200", "test-size=400",
         "local-epochs=2", "lr=0.05"]

pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", **extra}


MARK = uuid.uuid4().hex  # in the environment of every process the runs of this module start


def _simulate(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([*FEDCMI, "simulate", "--out", str(out), *SMALL, *overrides], capture_output=True,
                          text=True, env=_env(FEDCMI_TEST_MARK=MARK), cwd=ROOT, timeout=600)


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def _ray_processes() -> list[str]:
    """Ray processes started by this module's runs (other runs on the machine are not ours to judge)."""
    out = subprocess.run(["pgrep", "-a", "-f", "raylet|gcs_server|ray::"], capture_output=True, text=True).stdout
    ours = []
    for line in out.splitlines():
        if not line.strip() or "<defunct>" in line:
            continue
        try:
            if f"FEDCMI_TEST_MARK={MARK}".encode() in Path(f"/proc/{line.split()[0]}/environ").read_bytes():
                ours.append(line)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return ours


@pytest.fixture(scope="module")
def fedcmi_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("e2e") / "run"
    return out, _simulate(out, "--verbose")  # Flower's log lines too


def test_fedcmi_simulation_writes_results_and_learns(fedcmi_run):
    out, proc = fedcmi_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"results written to {out}" in " ".join(proc.stdout.split())
    for noise in ("Manually terminating ClientAppActor", "ClientAppActor.terminate failed"):  # end-of-run chatter
        assert noise not in proc.stderr, proc.stderr[-2000:]
    assert "\x1b[" not in proc.stdout + proc.stderr  # output to a file or a pipe: no colour codes
    rows = _rows(out)
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]
    for col in ("acc_mm", "acc_audio", "acc_visual", "acc_audio_zero", "acc_visual_zero", "worst_class_acc",
                "dominant", "ratio", "wall_s", "loss", "per_class_acc_0", "per_class_acc_5"):
        assert col in rows[0], col
    assert float(rows[-1]["acc_mm"]) > 0.45  # chance is 1/6
    assert rows[-1]["dominant"] in ("audio", "visual")
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 0 and config["num-clients"] == 4 and config["strategy"] == "fedcmi"
    assert json.loads((out / "metrics.json").read_text())[-1]["round"] == 3
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    state = load_file(str(out / "model.safetensors"))
    assert "inf_b.weight" in state and "fusion.fc.weight" in state
    assert (out / "accuracy.png").stat().st_size > 10_000


def test_no_process_left_behind(fedcmi_run):
    assert fedcmi_run[1].returncode == 0
    deadline = time.monotonic() + 300  # Ray's daemons exit asynchronously after shutdown (a backstop only)
    while _ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _ray_processes() == []


def _flower_processes(flwr_home: Path) -> list[int]:
    """Live processes started with this FLWR_HOME: the local SuperLink `flwr run` started, its SuperExec, apps."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"FLWR_HOME={flwr_home}".encode() in (entry / "environ").read_bytes().split(
                    b"\0") and alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            pass
    return found


@pytest.mark.skipif(shutil.which("flwr", path=str(Path(sys.executable).parent)) is None, reason="no flwr CLI")
def test_flwr_run_launcher(tmp_path):
    """Hermetic: its own FLWR_HOME and its own local SuperLink on free ports (Flower's defaults, 127.0.0.1:39091
    and :39093, may hold a SuperLink a user's `flwr run` left running, which would otherwise take the run)."""
    flwr_home = tmp_path / "flwr-home"
    out = tmp_path / "flwr-run"
    flwr = str(Path(sys.executable).parent / "flwr")
    env = _env(FLWR_HOME=str(flwr_home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()), FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
               FEDCMI_RUNS_DIR=str(tmp_path),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    try:
        proc = subprocess.run(
            [flwr, "run", ".", "--stream",
             "--run-config", f"num-server-rounds=2 num-clients=4 clients-per-round=2 train-size=800 "
                             f"test-size=200 run-name='{out.name}'",
             "--federation-config", "num-supernodes=4 client-resources-num-cpus=1"],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    finally:
        started = _flower_processes(flwr_home)
        stop_pids(started)  # `flwr run` leaves its local SuperLink running: stop exactly what this test started
    assert started, "no local SuperLink of this test's own (did the run go to another one?)"
    assert _flower_processes(flwr_home) == []
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    assert [int(r["round"]) for r in _rows(out)] == [0, 1, 2]
    assert json.loads((out / "config.json").read_text())["train-size"] == 800
