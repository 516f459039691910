"""A real Flower deployment on 127.0.0.1: flower-superlink + flower-supernode processes, `flwr run`.

Insecure and with TLS + SuperNode authentication, both with the long-lived ClientApp worker (the
documented default; Flower's one-process-per-message SuperExec is measured in docs/deployment.md, not tested here:
it takes 1-2 minutes a run on two shared cores). Every process is stopped by PID in a
``finally``; the tests then check that none of them, nor their children, is still alive.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest

from fedcmi.runtime.loopback import Loopback, partition_sizes
from fedcmi.runtime.processes import alive

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("ssh-keygen") is None
                                 or not (Path(sys.executable).parent / "flower-superlink").exists(),
                                 reason="needs openssl, ssh-keygen and the Flower CLIs")]

NODES = 3
TINY = {"num-server-rounds": 2, "num-clients": NODES, "clients-per-round": 2, "train-size": 600, "test-size": 200,
        "local-epochs": 1}


def _check_run(out: Path, stream: str) -> None:
    status = json.loads((out / "status.json").read_text()) if (out / "status.json").exists() else {}
    assert status.get("status") == "complete", stream[-3000:]
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert int(row["clients_ok"]) == 2, (row, stream[-3000:])
        assert 0.0 <= float(row["acc_mm"]) <= 1.0
    assert json.loads((out / "config.json").read_text())["num-clients"] == NODES


def _stop_and_check(dep: Loopback) -> None:
    started = dep.pids()
    dep.stop()
    assert started, "no process was started"
    assert [p for p in started if alive(p)] == []


def test_insecure_deployment_with_warm_workers(tmp_path):
    dep = Loopback(tmp_path / "work", isolation="warm", runs_dir=tmp_path)
    out = tmp_path / "run"
    try:
        dep.start_superlink()
        for i in range(NODES):
            dep.start_supernode(f"supernode-{i}", f"partition-id={i} num-partitions={NODES}")
        # A misconfigured node: it joins, fails to describe itself, and is never sampled.
        dep.start_supernode("supernode-bad", f"partition-id={NODES} data-dir='{tmp_path / 'missing'}' "
                                             "modalities='audio'")
        dep.wait_ready()
        proc = dep.run({**TINY, "run-name": out.name})
        stream = proc.stdout + proc.stderr
        _check_run(out, stream)
        assert "could not describe itself" in stream and f"data-dir='{tmp_path / 'missing'}'" in stream, stream[-3000:]
        assert "task 2 (train) done" in "".join(dep.log_of(f"supernode-{i}-warm") for i in range(NODES))
    finally:
        _stop_and_check(dep)


def test_tls_deployment_with_node_authentication(tmp_path):
    """Only registered keys join; of those, only nodes in the operator's node registry are admitted, each with the
    partition and size the registry binds it to (a registered node outside the registry is refused, logged)."""
    dep = Loopback(tmp_path / "work", tls=True, auth=True, isolation="warm", runs_dir=tmp_path)
    out = tmp_path / "run"
    try:
        dep.make_certs(NODES + 2)  # key NODES is never registered; key NODES + 1 is registered, not in the registry
        sizes = partition_sizes(TINY)
        dep.server_config = dep.work / "server.toml"
        dep.start_superlink()
        entries = []
        for i in range(NODES):
            entries.append((dep.register(i), i, sizes[i]))
            dep.start_supernode(f"supernode-{i}", f"partition-id={i} num-partitions={NODES}", dep.key(i))
        stranger = dep.register(NODES + 1)
        dep.start_supernode("stranger", f"partition-id=0 num-partitions={NODES}", dep.key(NODES + 1))
        dep.write_registry(entries)
        dep.start_supernode("intruder", f"partition-id=0 num-partitions={NODES}", dep.key(NODES),
                            executor=False)
        assert dep.wait_exit("intruder", timeout_s=600) not in (None, 0), dep.log_of("intruder")[-2000:]
        assert "Failed to activate SuperNode" in dep.log_of("intruder")
        dep.wait_ready()
        proc = dep.run({**TINY, "run-name": out.name})
        stream = proc.stdout + proc.stderr
        _check_run(out, stream)
        assert f"node {stranger} refused: not in the node registry" in stream, stream[-3000:]
        with open(out / "replies.csv") as fh:
            replies = list(csv.DictReader(fh))
        assert {(int(r["partition"]), float(r["weight"])) for r in replies} <= {(i, sizes[i]) for i in range(NODES)}
        assert "https" in dep.log_of("superlink").lower() or "ssl" in dep.log_of("superlink").lower()
    finally:
        _stop_and_check(dep)
