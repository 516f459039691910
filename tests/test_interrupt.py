"""Ctrl-C and SIGTERM on real runs: the run stops within seconds at any point, records no round after the
signal, says ``interrupted`` with its last complete round, leaves no process behind, and ``--resume``
then gives the numbers of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
FAULTY_RUN = ROOT / "tests" / "support" / "faulty_run.py"
ARGS = ["num-clients=4", "clients-per-round=2", "num-server-rounds=3", "train-size=800", "test-size=400",
        "local-epochs=1"]
STOP_WITHIN_S = 30  # measured 3-11 s on a 2-core machine under heavy load from other jobs

pytestmark = pytest.mark.slow


def _env(marker: str) -> dict[str, str]:
    return {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FEDCMI_TEST_MARK": marker}


def _none_left(marker: str, backstop_s: float = 30.0) -> bool:
    """Whether every process of the run is gone: waits for it (a killed process needs a moment to exit, longer
    on a loaded machine); the backstop only bounds a failure."""
    deadline = time.monotonic() + backstop_s
    while _marked(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _described(pids: list[int]) -> list[str]:
    """Each pid with its command line, so a leftover names itself in the failure."""
    out = []
    for pid in pids:
        try:
            out.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes().replace(bytes(1), b' ').decode()[:200]}")
        except OSError:
            out.append(f"{pid}: gone")
    return out


def _marked(marker: str) -> list[int]:
    """Live processes (not zombies) that carry this test's marker in their environment."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"FEDCMI_TEST_MARK={marker}".encode() not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def _round_done(out: Path) -> int:
    state = out / "checkpoint" / "state.json"
    try:
        return int(json.loads(state.read_text())["round"])
    except (OSError, ValueError, KeyError):
        return -1


def _interrupt(cmd: list[str], sig: int, *, after_round: int | None = None, after_s: float = 0.0,
               to_group: bool = False) -> tuple[subprocess.CompletedProcess, float]:
    """Start ``cmd``; when ``after_round`` has its checkpoint (or after ``after_s``), send ``sig`` (to the process
    group, as a terminal's Ctrl-C does, or to the process alone, as ``kill`` does); (result, seconds to exit)."""
    marker = uuid.uuid4().hex
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=_env(marker))
    out = Path(cmd[cmd.index("--out") + 1]) if "--out" in cmd else None
    try:
        deadline = time.monotonic() + 400
        if after_round is not None:
            while _round_done(out) < after_round:
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                assert time.monotonic() < deadline
                time.sleep(0.02)
        time.sleep(after_s)
        (os.killpg if to_group else os.kill)(proc.pid, sig)
        sent = time.monotonic()
        stdout, stderr = proc.communicate(timeout=120)
        took = time.monotonic() - sent
        assert _none_left(marker), f"processes of the run are left: {_described(_marked(marker))}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in _marked(marker):
            os.kill(pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr), took


def _simulate(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fedcmi.cli", "simulate", "--out", str(out), *ARGS, *extra]


def _rows(out: Path) -> list[dict]:
    return json.loads((out / "metrics.json").read_text())


def _same_numbers(a: Path, b: Path) -> None:
    ra, rb = _rows(a), _rows(b)
    assert [r["round"] for r in ra] == [r["round"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert {k: v for k, v in x.items() if k != "wall_s"} == {k: v for k, v in y.items() if k != "wall_s"}


def _check_interrupted(proc: subprocess.CompletedProcess, took: float, out: Path, sig: int) -> int:
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig, proc.stderr[-3000:]
    assert took < STOP_WITHIN_S
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fedcmi: interrupted ({name})"), proc.stderr[-3000:]
    status = json.loads((out / "status.json").read_text())
    done = _round_done(out)
    assert status == {"status": "interrupted", "rounds": done, "signal": name}
    assert [r["round"] for r in _rows(out)] == list(range(done + 1))  # nothing recorded past the checkpoint
    assert f"after round {done} of 3" in err[0] and f"--resume {out}" in err[0]
    return done


def _resume(out: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fedcmi.cli", "simulate", "--resume", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=_env(uuid.uuid4().hex))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    header = proc.stdout.splitlines()[0]
    assert "; resuming " in header and " from round " in header, proc.stdout[:500]


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    proc = subprocess.run(_simulate(out), cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=_env(uuid.uuid4().hex))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_ctrl_c_while_clients_train_stops_then_resume_matches(tmp_path, whole):
    """Ctrl-C (SIGINT to the process group) while round 2's clients are busy (they hang for 5 minutes)."""
    out = tmp_path / "sigint"
    cmd = [sys.executable, str(FAULTY_RUN), "--faults", "hang:0@2,hang:1@2,hang:2@2,hang:3@2",
           "--hang-seconds", "300", "simulate", "--out", str(out), *ARGS]
    proc, took = _interrupt(cmd, signal.SIGINT, after_round=1, after_s=1.0, to_group=True)
    assert _check_interrupted(proc, took, out, signal.SIGINT) == 1
    assert "Traceback" not in proc.stderr
    # nothing from Ray about the client actors the stop killed ("(raylet) Task ClientAppActor.run failed ...
    # killed by `ray.kill`" on stdout), and no colour codes in a pipe
    for noise in ("(raylet)", "ClientAppActor", "ray.kill", "\x1b["):
        assert noise not in proc.stdout + proc.stderr, proc.stdout[-3000:]
    _resume(out)
    _same_numbers(whole, out)


def test_sigterm_between_rounds_stops_then_resume_matches(tmp_path, whole):
    """SIGTERM to the process alone (as `kill`, systemd or a container runtime send it) once round 0 is
    written: discovery or round 1 is under way. No Ray abort (exit 134), no stack dump."""
    out = tmp_path / "sigterm"
    proc, took = _interrupt(_simulate(out), signal.SIGTERM, after_round=0)
    assert _check_interrupted(proc, took, out, signal.SIGTERM) in (0, 1)
    assert "Traceback" not in proc.stderr and "SIGABRT" not in proc.stderr
    _resume(out)
    _same_numbers(whole, out)


@pytest.mark.parametrize("sig, after_s", [(signal.SIGTERM, 2.0), (signal.SIGINT, 6.0)])
def test_signal_during_start_up_stops_cleanly(tmp_path, sig, after_s):
    """During imports, data loading or Ray's start: exit code and one line, nothing left running. (A signal
    before Python has imported the command kills it as the signal's default does: the shell shows 128 + sig
    too, without the line.)"""
    out = tmp_path / "early"
    proc, took = _interrupt(_simulate(out), sig, after_s=after_s, to_group=sig == signal.SIGINT)
    assert proc.returncode in (128 + sig, -sig), proc.stderr[-3000:]
    assert took < STOP_WITHIN_S
    assert "Traceback" not in proc.stderr
    if proc.returncode == 128 + sig:
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
        assert proc.stderr.startswith(f"fedcmi: interrupted ({signal.Signals(sig).name})")
    if (out / "status.json").exists():
        assert json.loads((out / "status.json").read_text())["status"] == "interrupted"


def test_ctrl_c_stops_a_bench_and_keeps_finished_cells(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "fedcmi.cli", "bench", "--strategies", "fedavg,fedcmi", "--alphas", "1",
           "--mixes", "0.5:0.5", "--seeds", "1", "--jobs", "2", "--out", str(out), *ARGS]
    marker = uuid.uuid4().hex
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=_env(marker))
    try:
        deadline = time.monotonic() + 400
        while not any(_round_done(c) >= 1 for c in (out / "cells").glob("*fedcmi*")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        _, stderr = proc.communicate(timeout=120)
        took = time.monotonic() - sent
        assert _none_left(marker), f"processes of the run are left: {_described(_marked(marker))}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in _marked(marker):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130 and took < STOP_WITHIN_S, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("fedcmi: interrupted (SIGINT)")
    # Both cells ran at once (--jobs 2): the fedcmi one is stopped; fedavg (faster) may have finished first.
    statuses = {c.name: json.loads((c / "status.json").read_text()) for c in (out / "cells").iterdir()}
    assert len(statuses) == 2 and {s["status"] for s in statuses.values()} <= {"complete", "interrupted"}
    for name, status in statuses.items():
        assert status["status"] == "interrupted" or name.startswith("fedavg"), statuses
        if status["status"] == "interrupted":  # its last complete round is the one its checkpoint holds
            assert status["rounds"] == _round_done(out / "cells" / name) >= 0, status


def test_a_second_ctrl_c_leaves_at_once_and_no_cell_says_running(tmp_path):
    """The first Ctrl-C asks to stop; a second one right after exits at once (130), and every cell that was
    training says `interrupted` with its last recorded round, never `running`."""
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "fedcmi.cli", "bench", "--strategies", "fedavg,fedcmi", "--alphas", "1",
           "--mixes", "0.5:0.5", "--seeds", "1", "--jobs", "2", "--out", str(out), *ARGS]
    marker = uuid.uuid4().hex
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=_env(marker))
    try:
        deadline = time.monotonic() + 400
        while not any(_round_done(c) >= 1 for c in (out / "cells").glob("*fedcmi*")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        assert _none_left(marker), f"processes of the run are left: {_described(_marked(marker))}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in _marked(marker):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130
    # the hard exit: no orderly closing line (the first stop had not finished when the second signal came)
    assert stderr.strip().splitlines()[-1].startswith("fedcmi: stopped at once (second SIGINT)"), stderr[-2000:]
    statuses = {c.name: json.loads((c / "status.json").read_text()) for c in (out / "cells").iterdir()}
    assert statuses and all(s["status"] in ("complete", "interrupted") for s in statuses.values()), statuses
    for name, status in statuses.items():
        if status["status"] == "interrupted":
            assert status["rounds"] == len(json.loads((out / "cells" / name / "metrics.json").read_text())) - 1
