"""The pieces of a clean stop, without Ray: the stop flag and signal handlers, the stoppable grid, the round
loop's all-or-nothing rounds, the run token that finds every process a run started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from flwr.app import ArrayRecord, Message, MessageType, RecordDict
from support.grid import FakeGrid, empty

from fedcmi.runtime.interrupt import STOP, TOKEN_ENV, Interrupted, ProcessToken, StoppableGrid, handle_signals
from server.app import run_rounds


@pytest.fixture(autouse=True)
def _clear_stop():
    STOP.clear()
    yield
    STOP.clear()


def _message(node: int = 1) -> Message:
    return Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)


def _grid(delay: float | None) -> FakeGrid:
    """Nodes 1 and 2 answer every message after ``delay`` seconds (never when None)."""
    return FakeGrid({1: None, 2: None}, reply=empty, delay=delay)


def test_interrupted_carries_the_shell_exit_code():
    assert Interrupted(signal.SIGINT).exit_code == 130 and Interrupted(signal.SIGINT).name == "SIGINT"
    assert Interrupted(signal.SIGTERM).exit_code == 143 and isinstance(Interrupted(), KeyboardInterrupt)


def test_grid_returns_all_replies_without_a_stop():
    grid = StoppableGrid(_grid(delay=0.05))
    assert len(grid.send_and_receive([_message(1), _message(2)], timeout=5)) == 2
    assert list(grid.get_node_ids()) == [1, 2]


def test_grid_honours_the_round_timeout():
    started = time.monotonic()
    assert StoppableGrid(_grid(delay=None)).send_and_receive([_message()], timeout=0.3) == []
    assert 0.25 <= time.monotonic() - started < 2


def test_stop_ends_the_wait_for_replies_at_once():
    grid = StoppableGrid(_grid(delay=None))
    threading.Timer(0.2, STOP.request, args=(signal.SIGTERM,)).start()
    started = time.monotonic()
    with pytest.raises(Interrupted) as info:
        grid.send_and_receive([_message()], timeout=600)
    assert time.monotonic() - started < 1.5 and info.value.exit_code == 143


def test_stop_is_raised_even_when_the_last_replies_arrive_with_it():
    grid = StoppableGrid(_grid(delay=0.0))
    STOP.request(signal.SIGINT)
    with pytest.raises(Interrupted):
        grid.send_and_receive([_message()], timeout=5)
    with pytest.raises(Interrupted):  # discovery polls the node ids
        grid.get_node_ids()


class CountingStrategy:
    def __init__(self) -> None:
        self.aggregated: list[int] = []
        self.reports: dict = {}

    def configure_train(self, server_round, arrays, config, grid):
        return [_message()]

    def aggregate_train(self, server_round, replies):
        self.aggregated.append(server_round)
        return ArrayRecord(), None

    def configure_evaluate(self, server_round, arrays, config, grid):
        return []  # CCVR off: no evaluate phase


def test_a_stop_during_a_round_aggregates_and_records_nothing_of_it():
    strategy, recorded = CountingStrategy(), []
    grid = _grid(delay=0.0)

    def end(server_round, arrays):
        recorded.append(server_round)
        if server_round == 2:
            grid.delay = None  # round 3 never gets its replies: it waits ...
            threading.Timer(0.2, STOP.request).start()  # ... until the stop

    with pytest.raises(Interrupted):
        run_rounds(strategy, StoppableGrid(grid), ArrayRecord(), range(1, 6), timeout=600, max_consecutive_skips=3,
                   on_round_end=end)
    assert strategy.aggregated == [1, 2] and recorded == [1, 2]
    assert len(grid.sent) == 3  # round 3 was sent: the stop came while it waited


def test_a_stop_during_evaluation_ends_before_the_next_round():
    strategy, recorded = CountingStrategy(), []

    def end(server_round, arrays):
        recorded.append(server_round)
        STOP.request()  # arrives while round 1 is evaluated and written: round 1 completes, round 2 never starts

    with pytest.raises(Interrupted):
        run_rounds(strategy, StoppableGrid(_grid(delay=0.0)), ArrayRecord(), range(1, 4), timeout=5,
                   max_consecutive_skips=3, on_round_end=end)
    assert strategy.aggregated == [1] and recorded == [1]


def test_signals_set_the_stop_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with handle_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.is_set() and stop.signum == signal.SIGTERM
        with handle_signals():  # nested: changes nothing, clears nothing
            assert stop.is_set()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_token_finds_and_kills_exactly_the_processes_started_under_it():
    token, other = ProcessToken(), ProcessToken()
    with token.active():
        assert os.environ[TOKEN_ENV] == token.value
        ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert TOKEN_ENV not in os.environ
    with other.active():
        theirs = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert token.pids() == [ours.pid]
        assert token.kill_all(grace_s=2.0) == [ours.pid]
        assert ours.wait(timeout=5) != 0 and theirs.poll() is None
        assert token.pids() == []
    finally:
        theirs.kill()
        ours.kill()
        theirs.wait()



def test_a_grid_without_push_and_pull_is_called_as_it_is_and_checked_after():
    plain = SimpleNamespace(send_and_receive=_grid(delay=0.0).send_and_receive)  # no push_messages/pull_messages
    assert len(StoppableGrid(plain).send_and_receive([_message(1), _message(2)], timeout=1)) == 2
    STOP.request()
    with pytest.raises(Interrupted):
        StoppableGrid(plain).send_and_receive([_message()], timeout=1)
