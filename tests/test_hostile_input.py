"""Unbounded numbers and contradictory bench grids stop at the edge, one line, exit 2."""

from __future__ import annotations

import pytest

from fedcmi.bench.plan import make_plan
from fedcmi.cli import main


@pytest.mark.parametrize("arg, needle", [
    ("num-clients=1" + "0" * 400, "num-clients=100000000000... (401 digits): must be <= 100000"),
    (f"seed={2**70}", "seed=1180591620717411303424: must be <= 4294967295"),
    ("lr=" + "[" * 5000, "nested too deeply"),
    ("lr=[[[1.0]]]", "lr=[[[1.0]]]: must be a number"),
    ("local-epochs=1000000", "local-epochs=1000000: must be <= 10000"),
    ("round-timeout=1e12", "round-timeout=1000000000000.0: must be <= 604800"),
    ("run-name=../../../../x", "run-name='../../../../x': must be letters"),
    ("run-name=" + "a" * 5000, "run-name: longer than 4096"),
])
def test_unbounded_numbers_and_types_exit_2_with_one_line(arg, needle, tmp_path, capsys):
    assert main(["simulate", "--out", str(tmp_path / "run"), arg]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_contradictory_bench_grid_is_deduplicated(tmp_path):
    plan = make_plan("quick", tmp_path / "b", {}, strategies="fedavg,fedavg", alphas="0.5,5e-1,0.50",
                     mixes="0.5:0.5,5e-1:0.50")
    assert plan.strategies == ["fedavg"] and plan.alphas == [0.5] and len(plan.mixes) == 1
    assert len(plan.cells()) == 1  # one run, never counted as n=4 with std 0


@pytest.mark.parametrize("key", ["seed=3", "strategy=fedavg", "dirichlet-alpha=0.3", "out-dir=x"])
def test_overrides_the_grid_defines_are_refused(key, tmp_path, capsys):
    assert main(["bench", "--out", str(tmp_path / "b"), key]) == 2
    assert "the grid sets it for every cell" in capsys.readouterr().err
