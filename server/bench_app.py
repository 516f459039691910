"""The ServerApp of ``fedcmi bench``: every unfinished cell of the grid on one simulated federation (Ray and
the client actors start once for the whole grid), ``jobs`` cells at a time.

Why several at once: one cell alone leaves cores idle while its server evaluates or waits for its slowest
client; cells share nothing but the grid (each has its own strategy, server thread, evaluation thread and
run directory), and every message carries its cell's config, so their results are those of one at a time.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedcmi.bench.plan import BenchPlan, Cell
from fedcmi.runs.layout import has_checkpoint
from fedcmi.runtime.interrupt import STOP, Interrupted
from server.app import run_server

logger = logging.getLogger("fedcmi.bench")


def run_cell(grid: Grid, plan: BenchPlan, cell: Cell, on_cell: Callable[[Cell, str], None] | None = None,
             on_round: Callable[[Cell, dict[str, Any]], None] | None = None) -> str:
    """Run one cell (resuming from its checkpoint when it has one): "complete" or "failed: ...". A stop
    request raises :class:`Interrupted` (before the cell starts, or from within it)."""
    STOP.check()
    path = plan.cell_dir(cell)
    resume = has_checkpoint(path)
    if path.exists() and not resume:
        shutil.rmtree(path)  # a cell that never finished a round: start it again
    if on_cell:
        on_cell(cell, "start")
    try:
        reporter = None if on_round is None else lambda row: on_round(cell, row)
        run_server(grid, plan.cell_config(cell), reporter, resume=resume)
        state = "complete"
    except Exception as exc:  # noqa: BLE001 - one bad cell is reported, the grid goes on
        logger.warning("cell %s failed: %s: %s", cell.id, type(exc).__name__, exc)
        state = f"failed: {type(exc).__name__}: {exc}"
    if on_cell:
        on_cell(cell, state)
    return state


def run_cells(grid: Grid, plan: BenchPlan, cells: list[Cell],
              on_cell: Callable[[Cell, str], None] | None = None,
              on_round: Callable[[Cell, dict[str, Any]], None] | None = None,
              outcome: dict[str, str] | None = None, jobs: int = 1) -> dict[str, str]:
    """Run the cells, ``jobs`` at a time, in order; a failed cell does not stop the grid, a stop request
    (Ctrl-C, SIGTERM) does: the running cells stop (each writes its status), no other starts, and
    :class:`Interrupted` is raised once they have. Each cell's outcome goes into ``outcome`` as it ends."""
    outcome = {} if outcome is None else outcome

    def one(cell: Cell) -> None:
        outcome[cell.id] = run_cell(grid, plan, cell, on_cell, on_round)

    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="fedcmi-cell") as pool:
        futures = [pool.submit(one, cell) for cell in cells]
    raised = [exc for f in futures if (exc := f.exception()) is not None]
    # A bug of the runner itself first (a cell's own failure is in outcome), then a stop request.
    for exc in sorted(raised, key=lambda e: isinstance(e, Interrupted)):
        raise exc
    return outcome


def make_bench_app(plan: BenchPlan, cells: list[Cell], outcome: dict[str, str],
                   on_cell: Callable[[Cell, str], None] | None = None,
                   on_round: Callable[[Cell, dict[str, Any]], None] | None = None,
                   interrupted: dict[str, Interrupted] | None = None, jobs: int = 1) -> ServerApp:
    """The bench's ServerApp; ``outcome`` gets cell id -> "complete" | "failed: ...", and ``interrupted``
    (when given) ``{"signal": Interrupted}`` if a stop request ended the grid."""
    interrupted = {} if interrupted is None else interrupted
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_cells(grid, plan, cells, on_cell, on_round, outcome, jobs)
        except Interrupted as exc:  # reported by the caller (fedcmi bench); finished cells stay finished
            interrupted["signal"] = exc

    return app
