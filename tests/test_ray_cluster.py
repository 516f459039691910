"""Joining an existing Ray cluster (``ray-address``): a head on 127.0.0.1, two rounds on it, then only the
processes this test started are stopped (found by an environment marker, never by name or `ray stop`)."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
RAY = Path(sys.executable).with_name("ray")
TINY = ["num-clients=4", "clients-per-round=2", "num-server-rounds=2", "train-size=600", "test-size=200"]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _marked(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"FEDCMI_TEST_MARK={marker}".encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _kill_marked(marker: str) -> None:
    """SIGTERM, then SIGKILL, every process (the head's daemons and workers) carrying this test's marker."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _marked(marker):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + 10
        while _marked(marker) and time.monotonic() < deadline:
            time.sleep(0.2)


def test_two_rounds_on_an_existing_ray_head(tmp_path):
    marker = uuid.uuid4().hex
    port = _free_port()
    # A short temp dir of our own: Ray's socket paths must stay short, and the cluster's address file goes
    # there instead of /tmp/ray, so no other `ray.init()` on this machine finds and joins this head.
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FEDCMI_TEST_MARK": marker, "RAY_ADDRESS": ""}
    try:
        head = subprocess.run([str(RAY), "start", "--head", "--port", str(port), "--num-cpus", "2",
                               "--include-dashboard=false", "--temp-dir", temp_dir, "--disable-usage-stats"],
                              capture_output=True, text=True, env=env, timeout=120)
        assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-2000:]
        out = tmp_path / "run"
        proc = subprocess.run([sys.executable, "-m", "fedcmi.cli", "simulate", "--out", str(out), *TINY,
                               f"ray-address=127.0.0.1:{port}"], capture_output=True, text=True, env=env,
                              cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        with open(out / "metrics.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert [int(r["round"]) for r in rows] == [0, 1, 2]
        assert all(int(r["clients_ok"]) == 2 for r in rows[1:])
        assert _marked(marker), "the head must outlive the run (the run only disconnects from it)"
    finally:
        _kill_marked(marker)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert _marked(marker) == []

