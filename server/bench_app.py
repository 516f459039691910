"""The ServerApp of ``fedcmi bench``: every unfinished cell of the grid, one after another, on one
simulated federation (Ray and the client actors start once for the whole grid)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedcmi.bench.plan import BenchPlan, Cell
from fedcmi.runs.checkpoint import CHECKPOINT_DIR
from fedcmi.runtime.interrupt import STOP, Interrupted
from server.app import run_server

logger = logging.getLogger("fedcmi.bench")


def run_cells(grid: Grid, plan: BenchPlan, cells: list[Cell],
              on_cell: Callable[[Cell, str], None] | None = None,
              on_round: Callable[[dict[str, Any]], None] | None = None,
              outcome: dict[str, str] | None = None) -> dict[str, str]:
    """Run each cell (resuming from its checkpoint when it has one); a failed cell does not stop the grid,
    a stop request (Ctrl-C, SIGTERM) does: :class:`Interrupted` between cells or from within one. Each
    cell's outcome goes into ``outcome`` as it ends (so it is there also when a stop ends the grid)."""
    outcome = {} if outcome is None else outcome
    for cell in cells:
        STOP.check()
        path = plan.cell_dir(cell)
        resume = (path / CHECKPOINT_DIR / "state.json").is_file()
        if path.exists() and not resume:
            shutil.rmtree(path)  # a cell that never finished a round: start it again
        if on_cell:
            on_cell(cell, "start")
        try:
            run_server(grid, plan.cell_config(cell), on_round, resume=resume)
            outcome[cell.id] = "complete"
        except Exception as exc:  # noqa: BLE001 - one bad cell is reported, the grid goes on
            logger.warning("cell %s failed: %s: %s", cell.id, type(exc).__name__, exc)
            outcome[cell.id] = f"failed: {type(exc).__name__}: {exc}"
        if on_cell:
            on_cell(cell, outcome[cell.id])
    return outcome


def make_bench_app(plan: BenchPlan, cells: list[Cell], outcome: dict[str, str],
                   on_cell: Callable[[Cell, str], None] | None = None,
                   on_round: Callable[[dict[str, Any]], None] | None = None,
                   interrupted: dict[str, Interrupted] | None = None) -> ServerApp:
    """The bench's ServerApp; ``outcome`` gets cell id -> "complete" | "failed: ...", and ``interrupted``
    (when given) ``{"signal": Interrupted}`` if a stop request ended the grid."""
    interrupted = {} if interrupted is None else interrupted
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_cells(grid, plan, cells, on_cell, on_round, outcome)
        except Interrupted as exc:  # reported by the caller (fedcmi bench); finished cells stay finished
            interrupted["signal"] = exc

    return app
