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
    from fedcmi.metrics import DOMINANT, ROUND, WALL_S, accuracy_columns

    a, b = names
    titles = ["mm", a, b, f"{a}/0", f"{b}/0", "worst"]  # of accuracy_columns, in its order
    cols = [(ROUND, "round"), *zip(accuracy_columns(names), titles, strict=True), (DOMINANT, "dominant"),
            (WALL_S, "s")]
    table = Table(title="test accuracy per round", caption=(
        f"mm: both modalities; {a}, {b}: one modality alone through its infiltration path; "
        "/0: alone with the other slot zeroed; worst: worst class (mm); s: wall seconds of the round"))
    for _, title in cols:
        table.add_column(title, justify="right")
    for r in rows:
        cells = []
        for key, _ in cols:
            v = r.get(key, "")
            cells.append(f"{v:.3f}" if isinstance(v, float) and key != WALL_S else
                         (f"{v:.1f}" if isinstance(v, float) else str(v)))
        table.add_row(*cells)
    return table


SHOWN_FAULTS = 5  # fault lines after the totals; the rest are counted and left to metrics.csv
FAULT_WIDTH = 200  # a reason longer than this is cut (metrics.csv has it whole)


def _faults_of(row: dict[str, Any]) -> list[str]:
    """A row's ``faults`` string split back into its entries ("partition 3: rejected: ..."); a reason that itself
    holds "; " stays whole (entries start with the partition or node they are about)."""
    import re

    from fedcmi.metrics import FAULTS

    text = str(row.get(FAULTS) or "").strip()
    return [f for f in re.split(r"; (?=(?:partition -?\d+|node \d+): )", text) if f] if text else []


def closing_lines(rows: Sequence[dict[str, Any]], shown: int = SHOWN_FAULTS) -> list[str]:
    """What a run ends with, about its clients' replies: the totals over its trained rounds in one line, then up
    to ``shown`` lines naming the round, partition and reason of each failed, rejected, timed-out or capped
    reply, and how many more there are. A run with nothing to report gets its one short line; a run
    with no trained round gets none."""
    from fedcmi.metrics import CAPPED, CLIENT_COUNTS, ROUND, SKIPPED, reply_totals

    trained = [r for r in rows if int(r.get(ROUND) or 0) >= 1]
    if not trained:
        return []
    t = reply_totals(trained)
    ok, failed, rejected, timeout = (t[k] for k in CLIENT_COUNTS)
    asked = ok + failed + rejected + timeout
    skipped = (f"; {t[SKIPPED]:,} round{'s' * (t[SKIPPED] != 1)} skipped (global model kept)"
               if t[SKIPPED] else "")
    if not (failed or rejected or timeout or t[CAPPED]):
        return [f"replies: all {ok:,} accepted as sent (none rejected, failed, timed out or capped)" + skipped]
    capped = t[CAPPED]
    lines = [f"replies: {ok:,} accepted of {asked:,} ({rejected:,} rejected, {failed:,} failed, {timeout:,} timed "
             f"out; {capped:,} weight{'s' * (capped != 1)} capped){skipped}"]
    details = []
    for r in trained:
        faults = _faults_of(r)
        details += [f"round {r[ROUND]}: {f}" for f in faults]
        for col, word, what in ((CAPPED, "capped", "sample weight capped"),):
            n = int(r.get(col) or 0) - sum(f": {word}" in f for f in faults)  # less those the faults name
            if n > 0:
                whose = "replies with their" if n > 1 else "reply with its"
                details.append(f"round {r[ROUND]}: {n} accepted {whose} {what}")
    for d in details[:shown]:
        lines.append("  " + (d if len(d) <= FAULT_WIDTH else d[:FAULT_WIDTH - 3] + "..."))
    if len(details) > shown:
        lines.append(f"  ... and {len(details) - shown:,} more; see metrics.csv (faults)")
    return lines
