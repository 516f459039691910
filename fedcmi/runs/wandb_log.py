"""Weights & Biases logging of a run (``wandb = true``; off by default): ``<run>/wandb/``.

The same numbers TensorBoard gets (:func:`fedcmi.metrics.scalars`, one W&B step per round) and the
configuration (``config.json``'s content), written on the server by :meth:`RunDirectory.add_round
<fedcmi.runs.run_dir.RunDirectory.add_round>`. The W&B run lives in the run directory (``dir=`` it, named
after it) and is **offline** unless ``WANDB_MODE`` is set: it needs no account and no network, and
``wandb sync <run>/wandb/offline-run-*`` uploads it later.

``wandb`` is an optional extra (``pip install wandb``, or ``fedcmi[wandb]``): :func:`require` is called by
:meth:`RunConfig.check_run <fedcmi.config.RunConfig.check_run>` before anything starts, without importing it
(the CLI stays fast), and this module imports it only when a run opens its log.

A resumed run continues the same W&B run id, kept in ``<run>/wandb-run.json`` with the last round logged.
W&B cannot hide steps the way TensorBoard's purge marker does, so rounds already logged (by the stopped
attempt, past its checkpoint) are not logged again; a run resumed without the file (W&B was off, or it
predates it) gets its kept rows logged first. Offline, each attempt is its own ``offline-run-*`` folder with
that id and disjoint steps; ``wandb sync`` of them all uploads them into one run, in the order they started.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcmi.metrics import ROUND, scalars
from fedcmi.runs.files import atomic_write
from fedcmi.runs.layout import WANDB_DIR, WANDB_STATE

logger = logging.getLogger("fedcmi")

FOLDER = WANDB_DIR
STATE_FILE = WANDB_STATE


def sync_hint(run_path: Path) -> str | None:
    """The line that tells how to upload a run's offline W&B run (None when it has none)."""
    if os.environ.get("WANDB_MODE", "offline") not in ("offline", "dryrun") or not any(
            (run_path / FOLDER).glob("offline-run-*")):
        return None
    return f"W&B run (offline): upload it with `wandb sync {run_path / FOLDER}/offline-run-*`"


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) and isinstance(state.get("id"), str) else {}


class WandbLog:
    """The W&B run of one run directory; :meth:`open` decides its id and which rounds it still needs."""

    def __init__(self, run: Any, state_path: Path, names: tuple[str, str], last: int) -> None:
        self.run = run
        self.state_path = state_path
        self.names = names
        self.last = last  # the last round logged (-1: none)

    @classmethod
    def open(cls, run_path: Path, config: Mapping[str, Any], names: tuple[str, str], project: str,
             kept: Sequence[Mapping[str, Any]] = ()) -> WandbLog | None:
        """The W&B log of the run in ``run_path``; ``kept``: the rows a resumed run keeps (rounds 0..k), empty for
        a new run. None (with a warning) when W&B cannot start: a run never fails for its tracker."""
        state_path = run_path / STATE_FILE
        state = _read_state(state_path)
        try:
            import wandb

            run = wandb.init(
                project=project, name=run_path.name, dir=str(run_path), config=dict(config),
                id=state.get("id"), resume="allow" if state else None,
                mode=None if os.environ.get("WANDB_MODE") else "offline",
                reinit="create_new",  # bench cells run side by side in one process, each with its own run
                settings=wandb.Settings(console="off", silent=True))
        except Exception as exc:  # noqa: BLE001 -- ImportError, a refused login or network in online mode, ...
            logger.warning("wandb=true but W&B cannot start (%s: %s); the run goes on without it",
                           type(exc).__name__, exc)
            return None
        if state:  # a resume: the config may have changed (num-server-rounds)
            run.config.update(dict(config), allow_val_change=True)
        log = cls(run, state_path, names, int(state.get("round", -1)) if state else -1)
        log._save()
        for row in kept:  # rounds the stopped attempt had not logged (all of them, if it had no W&B run)
            log.add_round(row)
        return log

    def add_round(self, row: Mapping[str, Any]) -> None:
        """Log a round's numbers at step = round, once: a round already logged is skipped."""
        step = int(row[ROUND])
        if step <= self.last:
            return
        self.run.log(scalars(row, self.names), step=step)
        self.last = step
        self._save()

    def _save(self) -> None:
        atomic_write(self.state_path, json.dumps({"id": self.run.id, "round": self.last}) + "\n")

    def close(self, exit_code: int = 0) -> None:
        """Finish the W&B run (non-zero ``exit_code``: it did not complete) and flush its files."""
        self.run.finish(exit_code=exit_code)
