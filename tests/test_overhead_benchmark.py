"""benchmarks/overhead.py runs to its last line, timing the server steps that run (not a copy of them).

The Flower half (a) is swapped for the in-process run here (no Ray, seconds): the report, the step timers
and the same-work check are what is tested; the real engine is the same ``run_server`` behind Ray.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "overhead.py"
TINY = ["num-clients=3", "clients-per-round=2", "train-size=150", "test-size=60", "local-epochs=1",
        "num-server-rounds=3", "min-partition-size=5"]


@pytest.fixture
def overhead():
    spec = importlib.util.spec_from_file_location("overhead_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    module.uninstrument()
    sys.modules.pop(spec.name, None)


def test_overhead_runs_to_its_last_line_on_the_server_code_that_runs(overhead, monkeypatch, capsys):
    monkeypatch.setattr(overhead, "simulate_flower", overhead.run_in_process)
    assert overhead.main([*TINY, "--plain-threads", "1"]) == 0
    out = capsys.readouterr().out
    steady = next(line for line in out.splitlines() if line.startswith("(a) steady round, s:"))
    for step in ("sample+configure", "messages+client training", "screen+aggregate", "central evaluation",
                 "results files", "checkpoint"):
        assert f"{step} " in steady
    assert "messages+client training 0.000" not in steady  # the timed grid is the one the messages go through
    # (a) and (b) run the same server and client code: the same numbers
    assert "largest per-round difference 0.0000" in out
    assert "metrics identical: True" in out
    assert "overhead_ratio=" in out and "pipelined_ratio=" in out
    assert out.rstrip().splitlines()[-1]  # the memory report, the script's last print
    assert "(a) where the memory goes" in out


def test_the_timers_are_taken_off_again(overhead):
    from server.strategy import FedCMIStrategy

    original = FedCMIStrategy.configure_train
    overhead.instrument()
    assert FedCMIStrategy.configure_train is not original
    overhead.uninstrument()
    assert FedCMIStrategy.configure_train is original
