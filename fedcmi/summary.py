"""Terminal tables of a run's per-round accuracies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table


def results_table(rows: Sequence[dict[str, Any]], names: tuple[str, str]) -> Table:
    """Per round: multimodal, each modality alone (infiltration path and zero-filled), worst class."""
    a, b = names
    cols = [("round", "round"), ("acc_mm", "multimodal"), (f"acc_{a}", f"{a}"), (f"acc_{b}", f"{b}"),
            (f"acc_{a}_zero", f"{a} (0-fill)"), (f"acc_{b}_zero", f"{b} (0-fill)"),
            ("worst_class_acc", "worst class"), ("dominant", "dominant"), ("wall_s", "wall s")]
    table = Table(title="test accuracy per round")
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
