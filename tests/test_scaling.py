"""Scaling options without Ray: cluster address and local-Ray backend config, bf16 (a no-op on CPU), the
simulation's message dispatch (fedcmi.runtime.flower_dispatch)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fedcmi.config import ConfigError, RunConfig, from_mapping
from fedcmi.data import ClientData
from fedcmi.devices import autocast, on_device
from fedcmi.runtime.flower_dispatch import _take_undelivered
from fedcmi.runtime.simulation import check_resources

ROOT = Path(__file__).parents[1]


def _listening() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


def test_local_ray_never_joins_a_running_cluster():
    init = check_resources(RunConfig())["init_args"]
    assert init["address"] == "local" and init["num_cpus"] == os.cpu_count()


def test_ray_address_is_passed_to_ray_init_without_local_resources():
    server, port = _listening()
    with server:
        backend = check_resources(RunConfig(ray_address=f"127.0.0.1:{port}", client_num_cpus=64))
    assert backend["init_args"] == {"address": f"127.0.0.1:{port}"}  # num_cpus: the cluster's own
    assert backend["client_resources"]["num_cpus"] == 64  # not limited by this machine's CPUs


@pytest.mark.parametrize("address", ["nohost", "127.0.0.1:x", ":6379"])
def test_malformed_ray_address(address):
    with pytest.raises(ConfigError, match="must be host:port"):
        check_resources(RunConfig(ray_address=address))


def test_unreachable_ray_address_is_one_line_and_exit_2():
    server, port = _listening()
    server.close()  # nothing listens there now
    proc = subprocess.run([sys.executable, "-m", "fedcmi.cli", "simulate", "num-clients=4", "clients-per-round=2",
                           f"ray-address=127.0.0.1:{port}"], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    assert proc.returncode == 2
    assert f"ray-address='127.0.0.1:{port}': no Ray head answers there" in proc.stderr


def test_bf16_is_a_config_key_and_a_no_op_on_cpu():
    cfg = from_mapping({"bf16": "true"})
    assert cfg.runtime.bf16 is True
    with pytest.raises(ConfigError, match="bf16"):
        from_mapping({"bf16": "maybe"})
    assert isinstance(autocast(cfg.runtime.bf16, torch.device("cpu")), contextlib.nullcontext)
    assert isinstance(autocast(RunConfig().runtime.bf16, torch.device("cuda")), contextlib.nullcontext)  # bf16=false
    data = ClientData(torch.ones(2, 3), None, torch.zeros(2, dtype=torch.int64))
    assert on_device(data, torch.device("cpu")) is data  # no copy, no pinning on CPU


class _FakeState:
    """The parts of Flower's InMemoryLinkState that the dispatch reads."""

    def __init__(self, messages: dict[str, tuple[int, str]], expired: set[str] = frozenset()) -> None:
        self.lock = threading.RLock()
        self.message_ins_store = {i: SimpleNamespace(metadata=SimpleNamespace(dst_node_id=n, delivered_at=d))
                                  for i, (n, d) in messages.items()}
        self.expired = expired

    def _check_stored_messages(self, ids: set[str]) -> None:
        for i in ids & self.expired:
            del self.message_ins_store[i]


def test_dispatch_takes_each_undelivered_message_once():
    state = _FakeState({"m1": (1, ""), "m2": (2, ""), "m3": (3, "2026-01-01"), "m4": (9, ""), "m5": (2, "")},
                       expired={"m5"})
    got = _take_undelivered(state, {1, 2, 3})
    assert sorted(m.metadata.dst_node_id for m in got) == [1, 2]  # not delivered, known node, not expired
    assert all(m.metadata.delivered_at for m in got)
    assert "m5" not in state.message_ins_store
    assert _take_undelivered(state, {1, 2, 3}) == []


def test_ray_end_of_run_notes_are_dropped_and_other_notes_kept(monkeypatch):
    """Ray prints "(raylet)" notes straight to the terminal; the end-of-run retry note of every actor's
    goodbye is dropped, any other note (a real client crash) still reaches the user, until a stop is requested:
    then the notes are about the actors the stop killed (Ctrl-C ends with the single line, nothing from Ray)."""
    import ray._private.worker as worker

    from fedcmi.runtime.interrupt import STOP
    from fedcmi.runtime.simulation import quiet_ray_printing

    printed = []
    monkeypatch.setattr(worker, "print_to_stdstream", lambda data, ignore_prefix: printed.append(data["lines"]))
    monkeypatch.setattr(worker, "print_worker_logs", worker.print_worker_logs)  # restored after the test
    quiet_ray_printing()
    quiet_ray_printing()  # once per process: not wrapped twice
    note = ("Task ClientAppActor.terminate failed. There are 1 retries remaining, so the task will be retried. "
            "Error: The actor is temporarily unavailable: IntentionalSystemExit")
    crash = "Task ClientAppActor.run failed. There are 1 retries remaining, so the task will be retried."
    killed = crash + " Error: The actor is dead because it was killed by `ray.kill`."
    worker.print_to_stdstream({"lines": [note], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    worker.print_to_stdstream({"lines": [note, crash], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    assert printed == [[crash]]
    assert worker.print_to_stdstream._fedcmi_filtered
    STOP.request()
    try:
        worker.print_to_stdstream({"lines": [killed, killed], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    finally:
        STOP.clear()
    assert printed == [[crash]]


def test_ray_prints_no_colour_codes_into_a_file_or_a_pipe(monkeypatch):
    """`fedcmi simulate > log.txt`: what Ray prints to stdout (its notes, forwarded client logs that Flower
    coloured) has no ANSI codes; a terminal keeps them. Each stream is judged on its own."""
    import io

    import ray._private.worker as worker

    from fedcmi.runtime.simulation import ANSI, quiet_ray_printing

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    monkeypatch.setattr(worker, "print_to_stdstream", worker.print_to_stdstream)
    monkeypatch.setattr(worker, "print_worker_logs", worker.print_worker_logs)
    quiet_ray_printing()
    data = {"lines": ["\x1b[92mINFO \x1b[0m:      Start client", "(plain)"], "pid": 1234, "ip": "127.0.0.1",
            "localhost": "127.0.0.1", "actor_name": "ClientAppActor"}
    file, terminal = io.StringIO(), Terminal()
    worker.print_worker_logs(data, file)
    worker.print_worker_logs(data, terminal)
    assert file.getvalue() == "(ClientAppActor pid=1234) INFO :      Start client\n(ClientAppActor pid=1234) (plain)\n"
    assert "\x1b[" in terminal.getvalue() and ANSI.sub("", terminal.getvalue()) == file.getvalue()
