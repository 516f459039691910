"""Recording a round (central evaluation, metrics row, checkpoint) off the round loop's critical path.

Why: central evaluation run between rounds leaves every client actor idle while it runs. With
``pipelined-eval`` the ServerApp hands round r's snapshot to one background thread and starts round r+1
at once. Everything a record reads is captured when the round ends (``RoundSnapshot``), so its numbers
equal sequential evaluation's; records are written one at a time in round order, and at most one waits
while another runs, so a slow evaluation holds the loop back instead of piling up. The row and its
checkpoint are written together by the same job: a checkpoint never names a round whose row is missing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord

from server.report import RoundReport

logger = logging.getLogger("fedcmi")


@dataclass(frozen=True)
class RoundSnapshot:
    """What recording round ``server_round`` reads, frozen when the round's aggregation ended."""

    server_round: int
    arrays: ArrayRecord
    train_metrics: dict[str, Any]
    guidance: Any  # the strategy's Dominance (or None): what this round's statistics say
    report: RoundReport  # a copy: what the strategy reported for the round
    calibrate: Any  # the server side's calibration of the evaluated model, bound to the round's state (or None)
    strategy_state: dict[str, Any]
    wall_s: float


class Recorder:
    """Runs ``record(snapshot)`` for each round: inline (sequential) or on one background thread.

    ``submit`` waits for the previous record first (its error, if any, is raised there); ``drain`` waits
    for the last one. ``threads`` bounds the background thread's torch intra-op threads, so evaluation
    does not take cores from the client actors training meanwhile."""

    def __init__(self, record: Callable[[RoundSnapshot], None], background: bool, threads: int = 1) -> None:
        self.record = record
        self.threads = threads
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fedcmi-eval") if background else None
        self._pending: Future[None] | None = None
        self._lock = threading.Lock()

    def _run(self, snapshot: RoundSnapshot) -> None:
        torch.set_num_threads(self.threads)
        self.record(snapshot)

    def submit(self, snapshot: RoundSnapshot) -> None:
        if self._pool is None:
            self.record(snapshot)
            return
        self.drain()
        with self._lock:
            self._pending = self._pool.submit(self._run, snapshot)

    def drain(self) -> None:
        """Wait for the record in flight; re-raise its error."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Finish what was submitted (a round aggregated is a round recorded), then stop the thread; an
        error of that last record is logged, not raised, since the caller is already leaving on another."""
        try:
            self.drain()
        except Exception as exc:  # noqa: BLE001 - the caller's own exception is the one to report
            logger.warning("recording the last round failed: %s: %s", type(exc).__name__, exc)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
