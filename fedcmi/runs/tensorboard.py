"""TensorBoard event files of a run (``tensorboard = true``, the default): ``<run>/tensorboard/``.

Written on the server, next to ``metrics.json``, from the same rows (:meth:`RunDirectory.add_round
<fedcmi.runs.run_dir.RunDirectory.add_round>`), with :class:`torch.utils.tensorboard.SummaryWriter` (needs the
``tensorboard`` package, a dependency of fedcmi). Per round (the step): every accuracy column, the mean loss
terms, the reply counts, the dominance ratio and the round's wall time (:func:`fedcmi.metrics.scalars`);
once, the configuration as text. Flushed after every round, so a stopped run keeps what it recorded.

A resumed run does not repeat steps: when the folder already holds event files, the new file starts with
TensorBoard's purge marker at the first round after the checkpoint (``purge_step``), which hides whatever the
stopped run had written from that round on; when it holds none (the run had them off, or predates them), the
kept rows are written first, so the log is complete either way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcmi.metrics import ROUND, scalars
from fedcmi.runs.layout import TENSORBOARD_DIR

logger = logging.getLogger("fedcmi")

FOLDER = TENSORBOARD_DIR
CONFIG_TAG = "config"
_EVENT_FILES = "events.out.tfevents.*"


def config_text(config: Mapping[str, Any]) -> str:
    """The configuration as TensorBoard's text plugin shows it (Markdown: an indented block keeps the layout)."""
    return "\n".join("    " + line for line in json.dumps(dict(config), indent=2).splitlines())


class TensorBoardLog:
    """The event files of one run; :meth:`open` decides where a (resumed) run's log starts."""

    def __init__(self, folder: Path, names: tuple[str, str], purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder
        self.names = names
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    @classmethod
    def open(cls, run_path: Path, config: Mapping[str, Any], names: tuple[str, str],
             kept: Sequence[Mapping[str, Any]] = ()) -> TensorBoardLog | None:
        """The log of the run in ``run_path``; ``kept``: the rows a resumed run keeps (rounds 0..k), empty for a
        new run. None (with a warning) when the ``tensorboard`` package is missing: a run never fails for it."""
        folder = run_path / FOLDER
        had_events = folder.is_dir() and any(folder.glob(_EVENT_FILES))
        first = int(kept[-1][ROUND]) + 1 if kept else 0
        try:
            log = cls(folder, names, purge_step=first if kept and had_events else None)
        except ImportError as exc:
            logger.warning("tensorboard=true but TensorBoard cannot be written (%s); install the `tensorboard` "
                           "package, or set tensorboard=false", exc)
            return None
        # a new log (also one backfilled with the kept rows) has the config at round 0; a resumed one restates
        # it at its first new round (num-server-rounds may have grown), if it has one left to train
        if not had_events or first <= int(config.get("num-server-rounds", first)):
            log.writer.add_text(CONFIG_TAG, config_text(config), first if had_events else 0)
        if not had_events:
            for row in kept:
                log.add_round(row, flush=False)
        log.writer.flush()
        return log

    def add_round(self, row: Mapping[str, Any], flush: bool = True) -> None:
        step = int(row[ROUND])
        for tag, value in scalars(row, self.names).items():
            self.writer.add_scalar(tag, value, step)
        if flush:
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
