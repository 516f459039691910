"""Stop a run on Ctrl-C (SIGINT) or SIGTERM within seconds, at any point, and leave nothing behind.

How: the main thread's signal handler only sets :data:`STOP` (it never raises inside Ray or Flower code).
The ServerApp thread checks it between steps and while it waits for replies (:class:`StoppableGrid`, a
send + poll loop instead of ``grid.send_and_receive``) and raises :class:`Interrupted`, so no round is
aggregated or recorded after the signal. :func:`run_app <fedcmi.runtime.simulation.run_app>` then frees
the client workers that are still busy, shuts Ray down and kills every process the run started (they carry
the run's token in their environment, :class:`ProcessToken`). A second signal stops at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fedcmi.runtime.processes import alive

logger = logging.getLogger("fedcmi")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; ``exit_code`` is the shell's 128 + signal number (130, 143)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopFlag:
    """A process-wide stop request: set from a signal handler, checked by the server thread."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None

    def request(self, signum: int = signal.SIGINT) -> None:
        if self.signum is None:
            self.signum = int(signum)
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)

    def check(self) -> None:
        """Raise :class:`Interrupted` when a stop was requested."""
        if self._event.is_set():
            raise Interrupted(self.signum or signal.SIGINT)

    def clear(self) -> None:
        self._event.clear()
        self.signum = None


STOP = StopFlag()


_installed = threading.local()
# Called with the signal number when a second signal ends the process at once (run directories mark themselves
# interrupted: without this, every bench cell still training would say "running" forever).
_HARD_EXIT_HOOKS: list[Any] = []


@contextlib.contextmanager
def at_hard_exit(hook: Any) -> Iterator[None]:
    """For the duration, ``hook(signum)`` runs (errors ignored) before a second signal exits the process."""
    _HARD_EXIT_HOOKS.append(hook)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            _HARD_EXIT_HOOKS.remove(hook)


def _handler(signum: int, frame: Any) -> None:
    if STOP.is_set():  # the user asked twice: record where each run stopped, kill what they started, leave now
        for hook in list(_HARD_EXIT_HOOKS):
            try:
                hook(signum)
            except Exception:  # noqa: BLE001 - leaving is what was asked; a hook must not stop it
                pass
        _kill_until_none_left(list(LIVE_TOKENS))
        name = signal.Signals(signum).name
        os.write(2, f"fedcmi: stopped at once (second {name}); each run says where it stopped in its "
                    "status.json and continues with --resume\n".encode())
        os._exit(128 + signum)
    logger.info("%s received: stopping the run", signal.Signals(signum).name)
    STOP.request(signum)


@contextlib.contextmanager
def handle_signals() -> Iterator[StopFlag]:
    """For the duration, SIGINT and SIGTERM request a stop (:data:`STOP`); a second signal kills the
    processes of every live :class:`ProcessToken` and exits at once. Re-entrant (an inner use changes
    nothing); outside the main thread signals cannot be handled and only :data:`STOP` is reset."""
    if getattr(_installed, "depth", 0):
        _installed.depth += 1
        try:
            yield STOP
        finally:
            _installed.depth -= 1
        return
    STOP.clear()
    if threading.current_thread() is not threading.main_thread():
        yield STOP
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _handler)
    _installed.depth = 1
    try:
        yield STOP
    finally:
        _installed.depth = 0
        for s, h in previous.items():
            signal.signal(s, h)


def our_handlers() -> dict[int, Any]:
    """The handlers :func:`handle_signals` installed, to put back after a library replaced them."""
    return {s: signal.getsignal(s) for s in SIGNALS}


def reinstall(handlers: dict[int, Any]) -> None:
    """Put back signal handlers that a library replaced (Ray sets its own SIGTERM handler in ``ray.init``)."""
    if threading.current_thread() is threading.main_thread():
        for s, h in handlers.items():
            if h is not None:
                signal.signal(s, h)


# How often the ServerApp asks a deployment's SuperLink for the replies it waits for. Flower's own
# Grid.send_and_receive sleeps 3 s between pulls, so every message exchange of a round (discovery, training)
# ended on average 1.5 s after its last reply had arrived; one pull is one small request to the SuperLink.
DEPLOYMENT_POLL_S = 0.5


class StoppableGrid:
    """A Flower ``Grid`` whose blocking calls return within a poll interval of a stop request.

    ``send_and_receive`` is Flower's push + pull loop, but waits on :data:`STOP` between polls and raises
    :class:`Interrupted` instead of returning a partial round; ``get_node_ids`` (polled during discovery)
    raises too. Everything else is the wrapped grid's.
    """

    def __init__(self, grid: Any, stop: StopFlag = STOP) -> None:
        self._grid = grid
        self._stop = stop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def get_node_ids(self) -> Iterable[int]:
        self._stop.check()
        return self._grid.get_node_ids()

    def _interval(self, in_flight: int) -> float:
        base = getattr(self._grid, "pull_interval", None)
        if base is None:  # a deployment grid: see DEPLOYMENT_POLL_S
            return DEPLOYMENT_POLL_S
        # the in-memory grid: as fedcmi.runtime.flower_dispatch tunes it (one poll costs O(messages))
        return min(0.1, max(float(base), 1e-4 * in_flight))

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        self._stop.check()
        if not hasattr(self._grid, "push_messages"):  # a grid of its own kind (tests): its call, checked after
            replies = list(self._grid.send_and_receive(messages, timeout=timeout))
            self._stop.check()
            return replies
        waiting = set(self._grid.push_messages(list(messages)))
        interval = self._interval(len(waiting))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Any] = []
        while waiting:
            got = list(self._grid.pull_messages(waiting))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if not waiting:
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            if self._stop.wait(interval if left is None else min(interval, left)):
                self._stop.check()
        self._stop.check()  # a stop during the last poll: the round is not used
        return replies


# --- the processes a run starts ----------------------------------------------------------------------

TOKEN_ENV = "FEDCMI_RUN_TOKEN"
LIVE_TOKENS: set[ProcessToken] = set()


class ProcessToken:
    """A token in the environment of every process started while it is :meth:`active` (Ray's GCS,
    raylet and workers inherit it), so they can all be found, and only they, even once re-parented."""

    def __init__(self) -> None:
        self.value = uuid.uuid4().hex

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        old = os.environ.get(TOKEN_ENV)
        os.environ[TOKEN_ENV] = self.value
        try:
            yield
        finally:
            if old is None:
                os.environ.pop(TOKEN_ENV, None)
            else:
                os.environ[TOKEN_ENV] = old

    def pids(self) -> list[int]:
        """Live processes carrying this token (never this process)."""
        needle = f"{TOKEN_ENV}={self.value}".encode()
        me = os.getpid()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                env = (entry / "environ").read_bytes()
            except OSError:  # gone, or not ours to read
                continue
            if needle in env.split(b"\0") and alive(int(entry.name)):
                found.append(int(entry.name))
        return found

    def kill_all(self, grace_s: float = 3.0) -> list[int]:
        """SIGTERM every process of the token, SIGKILL those still alive after ``grace_s``; their pids."""
        pids = self.pids()
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.05)
        for pid in pids:
            if alive(pid):
                _signal(pid, signal.SIGKILL)
        return pids


def _kill_until_none_left(tokens: list[ProcessToken], within_s: float = 2.0) -> None:
    """SIGKILL every process of ``tokens``, again and again: one that Ray spawns while the first snapshot is
    killed (a worker the raylet was starting) would otherwise outlive the run. Gives up after ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        pids = [p for token in tokens for p in token.kill_all(grace_s=0.0)]
        if not pids or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


