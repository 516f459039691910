"""Terminal tables of a run's per-round accuracies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table


def console() -> Console:
    """rich on a terminal; on a file or a pipe: no colour, no markup, and no wrapping or cutting at 80 columns."""
    import sys

    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(highlight=False, no_color=True, soft_wrap=True, width=10_000)


def results_table(rows: Sequence[dict[str, Any]], names: tuple[str, str]) -> Table:
    """Per round: multimodal, each modality alone (infiltration path and zero-filled), worst class."""
    a, b = names
    cols = [("round", "round"), ("acc_mm", "mm"), (f"acc_{a}", a), (f"acc_{b}", b),
            (f"acc_{a}_zero", f"{a}/0"), (f"acc_{b}_zero", f"{b}/0"),
            ("worst_class_acc", "worst"), ("dominant", "dominant"), ("wall_s", "s")]
    table = Table(title="test accuracy per round", caption=(
        f"mm: both modalities; {a}, {b}: one modality alone through its infiltration path; "
        "/0: alone with the other slot zeroed; worst: worst class (mm); s: wall seconds of the round"))
    for _, title in cols:
        table.add_column(title, justify="right")
    for r in rows:
        cells = []
        for key, _ in cols:
            v = r.get(key, "")
            cells.append(f"{v:.3f}" if isinstance(v, float) and key != "wall_s" else
                         (f"{v:.1f}" if isinstance(v, float) else str(v)))
        table.add_row(*cells)
    return table
