"""Pipelined central evaluation (server/pipeline.py) and the discovery timeout key.

The recorder's contract in units (order, at most one record in flight, errors surface, a round that was
aggregated is recorded even when the loop leaves on a stop request), then two short simulations, sequential
and pipelined, with a failed client round and a skipped round in each: the same metrics.json but for wall_s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from flwr.app import ArrayRecord
from support.grid import FakeGrid

from fedcmi.config import resolve
from fedcmi.models import ModelSpec
from fedcmi.runtime.interrupt import Interrupted
from server.app import build_strategy
from server.pipeline import Recorder, RoundSnapshot
from server.report import RoundReport
from server.strategy import NoClientsError

ROOT = Path(__file__).parents[1]


def _snap(r: int) -> RoundSnapshot:
    return RoundSnapshot(r, ArrayRecord(), {}, None, RoundReport(), None, {}, 0.0)


def test_background_records_run_in_order_one_at_a_time_off_the_callers_thread():
    seen: list[tuple[int, str]] = []
    running = threading.Semaphore(1)

    def record(snap: RoundSnapshot) -> None:
        assert running.acquire(blocking=False), "two records at once"
        time.sleep(0.02)
        seen.append((snap.server_round, threading.current_thread().name))
        running.release()

    recorder = Recorder(record, background=True)
    start = time.monotonic()
    recorder.submit(_snap(0))
    assert time.monotonic() - start < 0.02  # the caller goes on while round 0 is recorded
    for r in range(1, 5):
        recorder.submit(_snap(r))
    recorder.drain()
    assert [r for r, _ in seen] == [0, 1, 2, 3, 4]
    assert all(name.startswith("fedcmi-eval") for _, name in seen)
    recorder.close()


def test_sequential_records_inline():
    seen: list[str] = []
    recorder = Recorder(lambda s: seen.append(threading.current_thread().name), background=False)
    recorder.submit(_snap(1))
    assert seen == [threading.current_thread().name]


def test_a_failed_record_fails_the_next_submit():
    def record(snap: RoundSnapshot) -> None:
        if snap.server_round == 1:
            raise OSError("disk full")

    recorder = Recorder(record, background=True)
    recorder.submit(_snap(1))
    with pytest.raises(OSError, match="disk full"):
        recorder.submit(_snap(2))
    recorder.close()


def test_a_stop_request_still_records_the_aggregated_round():
    """The loop raises Interrupted while round r is being recorded: close() finishes round r, so metrics.json
    and the checkpoint both end at r (as when the round was recorded before the next one started)."""
    written: list[int] = []

    def record(snap: RoundSnapshot) -> None:
        time.sleep(0.2)
        written.append(snap.server_round)

    recorder = Recorder(record, background=True)
    try:
        recorder.submit(_snap(3))
        raise Interrupted()
    except Interrupted:
        recorder.close()
    assert written == [3]


def test_discovery_timeout_defaults_to_round_timeout_and_can_be_set():
    spec = ModelSpec(2, (1,), (1,))
    assert build_strategy(resolve(overrides={"round-timeout": 45.0}), spec).discovery_timeout == 45.0
    cfg = resolve(overrides={"round-timeout": 45.0, "discovery-timeout": 0.2})
    strategy = build_strategy(cfg, spec)
    assert strategy.discovery_timeout == 0.2

    two_silent_nodes = FakeGrid({11: None, 12: None}, reply=lambda message, node: None)
    start = time.monotonic()
    with pytest.raises(NoClientsError):
        strategy.sample(two_silent_nodes)  # clients-per-round is 10: waits discovery-timeout, then fails
    assert 0.2 <= time.monotonic() - start < 5


def test_discovery_timeout_must_not_be_negative():
    from fedcmi.config import ConfigError

    with pytest.raises(ConfigError, match="discovery-timeout"):
        resolve(overrides={"discovery-timeout": -1.0})


@pytest.mark.slow
def test_pipelined_and_sequential_runs_write_the_same_metrics(tmp_path):
    """A failed client in round 1 and a skipped round 2 (min-replies=2), each way: identical rows."""
    runs = {}
    for mode in ("true", "false"):
        out = tmp_path / mode
        cmd = [sys.executable, str(ROOT / "tests" / "support" / "faulty_run.py"), "--faults",
               "raise:0@1,raise:0@2,raise:1@2", "simulate", "--out", str(out), "num-clients=3",
               "clients-per-round=3", "num-server-rounds=3", "min-replies=2", "train-size=600", "test-size=200",
               "local-epochs=1", f"pipelined-eval={mode}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                              env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((out / "status.json").read_text())["status"] == "complete"
        assert json.loads((out / "checkpoint" / "state.json").read_text())["round"] == 3
        runs[mode] = json.loads((out / "metrics.json").read_text())
    pipelined, sequential = runs["true"], runs["false"]
    assert [r["round"] for r in pipelined] == [0, 1, 2, 3]
    assert any(r["clients_failed"] for r in pipelined) and [r["skipped"] for r in pipelined][2] == 1
    for a, b in zip(pipelined, sequential, strict=True):
        assert _numbers(a) == _numbers(b)


def _numbers(row: dict) -> dict:
    """A row but wall_s; its faults as a set (listed in the order the replies arrived, also sequentially)."""
    out = {k: v for k, v in row.items() if k != "wall_s"}
    out["faults"] = sorted(row["faults"].split("; "))
    return out
