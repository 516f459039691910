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
from server.app import run_server

logger = logging.getLogger("fedcmi.bench")


def run_cells(grid: Grid, plan: BenchPlan, cells: list[Cell],
              on_cell: Callable[[Cell, str], None] | None = None,
              on_round: Callable[[dict[str, Any]], None] | None = None) -> dict[str, str]:
    """Run each cell (resuming from its checkpoint when it has one); a failed cell does not stop the grid."""
    outcome: dict[str, str] = {}
    for cell in cells:
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
                   on_round: Callable[[dict[str, Any]], None] | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        outcome.update(run_cells(grid, plan, cells, on_cell, on_round))

    return app
