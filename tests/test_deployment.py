"""A real Flower deployment on 127.0.0.1: flower-superlink + flower-supernode processes, `flwr run`.

Insecure and with TLS + SuperNode authentication, both with the long-lived ClientApp worker (the
documented default; Flower's one-process-per-message SuperExec is measured in docs/deployment.md, not tested here:
it takes 1-2 minutes a run on two shared cores). Then docs/deployment.md's trust model and restarts: a hostile
submitted app against Flower's default and against the ServerApp's own executor run as another user, an
executor without the SuperExec secret, and a SuperNode killed with kill -9 and restarted. Every process is
stopped by PID in a ``finally``; the tests then check that none of them, nor their children, is still alive.

Start-up (a SuperLink, SuperNodes, warm workers importing torch) is most of a deployment test's cost, so the
three tests that need the same TLS + authentication deployment with warm workers (node registry, Flower's default
ServerApp placement, a node killed and restarted) share one (:func:`tls_deployment`), each with its own run in it,
and the two that need the ServerApp under its own SuperExec share another (:func:`isolated_deployment`). Each
still asserts what it did on its own deployment; a test selected alone starts the deployment it needs.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedcmi.runtime.loopback import FEDERATION, Loopback, partition_sizes
from fedcmi.runtime.processes import alive, descendants, stop_pids

HOSTILE_APP = Path(__file__).parent / "hostile_app"

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


def _others_can_run_python() -> bool:
    """Whether another user can start this interpreter: every directory above it is searchable by others (on
    machines where Python lives under a 0700 /root, e.g. pyenv's, no other user can run the ServerApp)."""
    real = Path(sys.executable).resolve()
    return all(os.stat(d).st_mode & 0o001 for d in real.parents)


AS_ANOTHER_USER = pytest.mark.skipif(
    os.geteuid() != 0 or not _others_can_run_python(),
    reason="runs the ServerApp as another user: needs root and an interpreter others can run")


def _serverapp_home() -> tuple[Path, Path]:
    """A directory a ServerApp run as another user can reach (not under pytest's tmp_path: 0700, root's), and
    the runs directory in it."""
    home = Path(tempfile.mkdtemp(prefix="fedcmi-serverapp-"))
    home.chmod(0o755)
    runs = home / "runs"
    runs.mkdir()
    return home, runs


@pytest.fixture(scope="module")
def isolated_deployment(tmp_path_factory):
    """TLS + SuperNode authentication, the ServerApp under its own SuperExec (``--isolation process``), as
    ``nobody`` where the tests run as root and another user can run this interpreter; no SuperNodes. Shared by
    the executor-without-the-secret test and the submitted-app test's ``process`` variant."""
    home, runs = _serverapp_home()
    user = "nobody" if os.geteuid() == 0 and _others_can_run_python() else None
    dep = Loopback(tmp_path_factory.mktemp("isolated") / "work", tls=True, auth=True, runs_dir=runs,
                   serverapp="process", serverapp_user=user, serverapp_dir=home / "superexec")
    try:
        dep.make_certs(1)
        dep.start_superlink()
        yield SimpleNamespace(dep=dep, home=home, runs=runs)
    finally:
        try:
            _stop_and_check(dep)
        finally:
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_deployment(tmp_path_factory):
    """TLS + SuperNode authentication with warm workers: SuperNodes 0-2 (registered keys, under
    fedcmi.runtime.rejoin) and a stranger (a registered key the operator's node registry will leave out), every
    worker loaded. Key NODES is made but never registered. Flower's default ServerApp placement (a child of the
    SuperLink). Shared by the node-registry test, the submitted-app test's ``subprocess`` variant and the
    kill-and-restart test; each writes the server settings its own run needs."""
    home, runs = _serverapp_home()
    dep = Loopback(tmp_path_factory.mktemp("tls") / "work", tls=True, auth=True, isolation="warm", runs_dir=runs)
    try:
        dep.make_certs(NODES + 2)  # key NODES is never registered; key NODES + 1 is registered, not in the registry
        sizes = partition_sizes(TINY)
        dep.server_config = dep.work / "server.toml"  # written by each test before its run
        dep.start_superlink()
        ids = []
        for i in range(NODES):
            ids.append(dep.register(i))
            dep.start_supernode(f"supernode-{i}", f"partition-id={i} num-partitions={NODES}", dep.key(i), rejoin=True)
        stranger = dep.register(NODES + 1)
        dep.start_supernode("stranger", f"partition-id=0 num-partitions={NODES}", dep.key(NODES + 1))
        dep.wait_ready()
        yield SimpleNamespace(dep=dep, home=home, runs=runs, ids=ids, sizes=sizes, stranger=stranger)
    finally:
        try:
            _stop_and_check(dep)
        finally:
            shutil.rmtree(home, ignore_errors=True)


def test_an_executor_without_the_superexec_secret_is_refused(isolated_deployment):
    """With --isolation process the SuperLink hands ServerApp tasks only to an executor holding the SuperExec
    secret: one without it (anyone who reaches the port) gets 401 and stops; the real one keeps running."""
    dep = isolated_deployment.dep
    dep._spawn("rogue", [dep._tool("flower-superexec"), "--runtime-api-address",
                         f"127.0.0.1:{dep.superlink_port}", "--root-certificates", str(dep.certs / "ca.crt")],
               "rogue")
    assert dep.wait_exit("rogue", timeout_s=300) is not None, dep.log_of("rogue")[-2000:]
    assert "SuperExec authentication failed" in dep.log_of("superlink"), dep.log_of("superlink")[-2000:]
    assert dep.procs["serverapp-superexec"].poll() is None, dep.log_of("serverapp-superexec")[-2000:]


def test_tls_deployment_with_node_authentication(tls_deployment):
    """Only registered keys join; of those, only nodes in the operator's node registry are admitted, each with the
    partition and size the registry binds it to (a registered node outside the registry is refused, logged)."""
    dep, ids, sizes, stranger = tls_deployment.dep, tls_deployment.ids, tls_deployment.sizes, tls_deployment.stranger
    out = tls_deployment.runs / "registry-run"
    dep.write_registry([(ids[i], i, sizes[i]) for i in range(NODES)])
    dep.start_supernode("intruder", f"partition-id=0 num-partitions={NODES}", dep.key(NODES), executor=False)
    assert dep.wait_exit("intruder", timeout_s=600) not in (None, 0), dep.log_of("intruder")[-2000:]
    assert "Failed to activate SuperNode" in dep.log_of("intruder")
    proc = dep.run({**TINY, "run-name": out.name})
    stream = proc.stdout + proc.stderr
    _check_run(out, stream)
    assert f"node {stranger} refused: not in the node registry" in stream, stream[-3000:]
    with open(out / "replies.csv") as fh:
        replies = list(csv.DictReader(fh))
    assert {(int(r["partition"]), float(r["weight"])) for r in replies} <= {(i, sizes[i]) for i in range(NODES)}
    assert "https" in dep.log_of("superlink").lower() or "ssl" in dep.log_of("superlink").lower()


@pytest.mark.parametrize("serverapp", [pytest.param("process", marks=AS_ANOTHER_USER), "subprocess"])
def test_submitted_serverapp_reaches_superlink_keys_only_without_isolation(tmp_path, serverapp, request):
    """A hostile app submitted with ``flwr run`` probes for the SuperLink's keys and writes outside the runs
    directory. Flower's default (the ServerApp a child of the SuperLink): it reads the TLS key. The documented
    deployment (``--isolation process``, the ServerApp's SuperExec as another user with its own directory):
    the key, the SuperExec secret copy of the SuperLink and the SuperLink's environment are out of reach, and
    it writes into the runs directory only (of the paths tried; /tmp stays writable without a container)."""
    isolated = serverapp == "process"
    shared = request.getfixturevalue("isolated_deployment" if isolated else "tls_deployment")
    dep, home, runs = shared.dep, shared.home, shared.runs
    assert dep.serverapp == serverapp and (dep.serverapp_user == "nobody") == isolated
    key, secret = dep.certs / "server.key", dep.certs / "superexec.secret"
    outside = [home / "outside.txt", dep.work / "superlink" / "outside.txt", tmp_path / "outside.txt"]
    inside = runs / "inside.txt"
    config = (f'read-paths="{key},{secret}" '
              f'write-paths="{",".join(str(p) for p in [*outside, inside])}"')
    proc = dep.flwr("run", str(HOSTILE_APP), FEDERATION, "--stream", "--run-config", config)
    stream = proc.stdout + proc.stderr
    assert (runs / "probe.json").exists(), stream[-3000:] + dep.log_of("serverapp-superexec")[-3000:]
    report = json.loads((runs / "probe.json").read_text())
    found = report["superlink"]["paths"]
    assert str(key) in found, report  # the key's path is on the SuperLink's command line either way
    assert report["write"][str(inside)] == "written"
    if not isolated:  # Flower's default: the submitted app reads the key, writes outside the runs directory
        assert report["read"][str(key)].startswith("read"), report
        assert all(report["write"][str(p)] == "written" for p in outside), report
        return
    assert report["uid"] != 0
    assert "FEDCMI_SERVER_CONFIG" not in dep.env("superlink") and "--ssl-keyfile" not in \
        " ".join(dep.procs["serverapp-superexec"].args)
    for path in (str(key), str(secret)):
        assert report["read"][path].startswith("PermissionError"), report
    # Only this test's SuperLink: another deployment on the same machine (a demo, a parallel suite) is not ours.
    ours = {p: v for p, v in found.items() if p.startswith(str(dep.work))}
    assert ours and all(v.startswith("PermissionError") for v in ours.values()), report
    assert all(v.startswith("PermissionError") for v in report["superlink"]["environ"].values()), report
    assert not [v for v in report["env"].values() if v.startswith(str(dep.certs))], report  # no key path in its env
    for path in outside:
        assert report["write"][str(path)].startswith("PermissionError"), report
        assert not path.exists()


def _rows(out: Path) -> list[dict[str, str]]:
    if not (out / "metrics.csv").exists():
        return []
    with open(out / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def _leave(dep: Loopback, name: str, node_id: int, timeout_s: float = 60.0) -> None:
    """Stop SuperNode ``name`` and its worker with SIGTERM, as an operator would; wait (at most ``timeout_s``)
    until the SuperLink has deactivated the node. (Were it not, it would stay listed until its heartbeat
    expires, and the next run's first discovery would wait for it: slower, not different.)"""
    pids = []
    for proc in (dep.procs[name], dep.procs.get(f"{name}-{dep.isolation}")):
        if proc is not None:
            pids += [proc.pid, *descendants(proc.pid)]
    stop_pids(pids)
    deadline = time.monotonic() + timeout_s
    while f"Deactivated node_id={node_id}" not in dep.log_of("superlink") and time.monotonic() < deadline:
        time.sleep(0.2)


def test_a_supernode_killed_and_restarted_rejoins_and_short_rounds_say_so(tls_deployment):
    """SuperNode 1 (and its worker) killed with kill -9 after round 1, restarted 8 s later with
    the same key under fedcmi.runtime.rejoin. The SuperLink refuses it until the old session expires (at most
    60 s after its last heartbeat); the wrapper retries and it trains again in later rounds. Every round with
    fewer good replies than clients-per-round names why in its faults column. The three SuperNodes alone: the
    stranger of the shared deployment leaves first, and this run has no node registry (round-timeout 30 s)."""
    dep, ids = tls_deployment.dep, tls_deployment.ids
    out = tls_deployment.runs / "rejoin-run"
    result: dict[str, object] = {}
    _leave(dep, "stranger", tls_deployment.stranger)
    dep.server_config.write_text("round-timeout = 30\n")
    config = {**TINY, "num-server-rounds": 6, "clients-per-round": NODES, "run-name": out.name}
    runner = threading.Thread(target=lambda: result.update(proc=dep.run(config, timeout_s=1500)), daemon=True)
    runner.start()
    deadline = time.monotonic() + 900
    while len(_rows(out)) < 2 and runner.is_alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(_rows(out)) >= 2, dep.log_of("superlink")[-2000:]
    dep.kill9("supernode-1", "supernode-1-warm")
    killed = time.monotonic()
    time.sleep(8)
    dep.start_supernode("supernode-1-again", f"partition-id=1 num-partitions={NODES}", dep.key(1), rejoin=True)
    activated = f"Activated node_id={ids[1]}"
    while dep.log_of("superlink").count(activated) < 2 and time.monotonic() - killed < 180:
        time.sleep(1)
    rejoined_s = time.monotonic() - killed
    assert dep.log_of("superlink").count(activated) == 2, dep.log_of("supernode-1-again")[-3000:]
    # The old session expires at most 60 s after the kill; then one retry interval (2 s) and one SuperNode
    # start-up (5-7 s per try measured under load 10 on 2 cores; 20 s allowed).
    assert rejoined_s <= 60 + 2 + 20, rejoined_s
    assert "Failed to activate SuperNode" in dep.log_of("supernode-1-again")  # refused first: the old session
    assert f"SuperNode with node ID {ids[1]} could not be activated" in dep.log_of("superlink")
    runner.join(timeout=1500)
    proc = result["proc"]
    stream = proc.stdout + proc.stderr
    rows = _rows(out)
    status = json.loads((out / "status.json").read_text())["status"]
    assert status == "complete" and len(rows) == 7, stream[-3000:]
    short = [r for r in rows[1:] if int(r["clients_ok"]) < NODES]
    assert short and all(r["faults"] for r in short), short  # fewer replies than requested: marked
    assert int(rows[-1]["clients_ok"]) == NODES, rows[-1]  # the restarted node trains again
    print(f"rejoined {rejoined_s:.1f} s after kill -9; rows: "
          + " | ".join(f"{r['round']}: ok {r['clients_ok']} {r['faults']}" for r in rows[1:]))
