"""The metrics row of one round: every column is named here once.

Used by the run directory (``metrics.csv``/``metrics.json``), its plot, the terminal table, the bench
reports and the progress display. Accuracy columns carry the data set's modality names
(``acc_audio``); :func:`accuracy_columns` spells them for a pair of names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

ROUND = "round"
ACC_MM, WORST_CLASS, PER_CLASS = "acc_mm", "worst_class_acc", "per_class_acc"
DOMINANT, RATIO, FAULTS, WALL_S, SKIPPED = "dominant", "ratio", "faults", "wall_s", "skipped"
TAU = "tau"  # the class-wise temperatures tau_c decided with DOMINANT and RATIO (one per class; empty before)
# Replies per round: accepted, failed on the client, rejected by the server's checks, not back in time. The
# strategy's round report and its train metrics use these names too.
CLIENTS_OK, CLIENTS_FAILED, CLIENTS_REJECTED, CLIENTS_TIMEOUT = (
    "clients_ok", "clients_failed", "clients_rejected", "clients_timeout")
CLIENT_COUNTS = (CLIENTS_OK, CLIENTS_FAILED, CLIENTS_REJECTED, CLIENTS_TIMEOUT)
# Accepted replies whose sample weight the server capped (claims mode: a size claim above what the round
# allows); counted among clients_ok, shown beside the counts above.
CAPPED = "clients_capped"


_ACC, _ZERO = "acc_", "_zero"


def acc_alone(name: str) -> str:
    """Modality ``name`` alone through its infiltration path (zero-filled for models without one)."""
    return f"{_ACC}{name}"


def acc_zero(name: str) -> str:
    """Modality ``name`` alone with the other slot zeroed."""
    return f"{_ACC}{name}{_ZERO}"


def modality_names(row: Mapping[str, Any]) -> tuple[str, str]:
    """The two modality names a row's accuracy columns carry (what :func:`accuracy_columns` was given)."""
    names = [k.removeprefix(_ACC) for k in row if k.startswith(_ACC) and k != ACC_MM and not k.endswith(_ZERO)]
    return names[0], names[1]


def accuracy_columns(names: tuple[str, str]) -> list[str]:
    """The accuracy columns in display order: mm, each alone, each zero-filled, worst class."""
    a, b = names
    return [ACC_MM, acc_alone(a), acc_alone(b), acc_zero(a), acc_zero(b), WORST_CLASS]


def column_labels(names: tuple[str, str]) -> dict[str, str]:
    """Readable labels of the accuracy columns (plots, legends)."""
    a, b = names
    return {ACC_MM: "multimodal", acc_alone(a): f"{a} alone (infiltration path)",
            acc_alone(b): f"{b} alone (infiltration path)", acc_zero(a): f"{a} alone, {b} zeroed",
            acc_zero(b): f"{b} alone, {a} zeroed", WORST_CLASS: "worst class (multimodal)"}


def round_row(server_round: int, accuracies: Mapping[str, Any], losses: Mapping[str, float], dominant: str,
              ratio: float, round_info: Mapping[str, Any], wall_s: float,
              tau: Any = None) -> dict[str, Any]:
    """One round's row: accuracies, mean loss terms of the good clients, guidance (the dominant modality, r̄ and
    tau_c the server decided from this round's statistics, sent with the next round), reply counts, time."""
    return {
        ROUND: server_round, **accuracies,
        **{k.replace("-", "_"): float(v) for k, v in losses.items()},
        DOMINANT: dominant, RATIO: ratio if ratio is not None else math.nan,
        TAU: [] if tau is None else [float(t) for t in tau],
        **{k: int(round_info.get(k, 0)) for k in (*CLIENT_COUNTS, CAPPED)},
        SKIPPED: int(round_info.get(SKIPPED, False)), FAULTS: "; ".join(round_info.get(FAULTS, [])),
        WALL_S: round(wall_s, 3)}


def scalars(row: Mapping[str, Any], names: tuple[str, str]) -> dict[str, float]:
    """The numbers of a row as TensorBoard tags (``group/column``): every accuracy column (per class too), the
    mean loss terms, the reply counts, the dominance ratio and the wall time; absent or non-finite ones left out
    (round 0 has no replies, losses or ratio)."""
    columns = [(f"accuracy/{c}", c) for c in accuracy_columns(names)]
    columns += [(f"loss/{k}", k) for k in row if k.startswith("loss")]
    columns += [(f"replies/{k.removeprefix('clients_')}", k) for k in (*CLIENT_COUNTS, CAPPED, SKIPPED)]
    columns += [(f"dominance/{RATIO}", RATIO), (f"time/{WALL_S}", WALL_S)]
    values = [(tag, row.get(key)) for tag, key in columns]
    values += [(f"accuracy/{PER_CLASS}_{i}", v) for i, v in enumerate(row.get(PER_CLASS) or [])]
    values += [(f"dominance/{TAU}_{i}", v) for i, v in enumerate(row.get(TAU) or [])]
    return {tag: float(v) for tag, v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def round_line(row: Mapping[str, Any], total: int, names: tuple[str, str]) -> str:
    """A round in one plain line: accuracies (mm, each modality alone, worst class), replies and time."""
    a, b = names
    head = f"round {row[ROUND]}/{total}"
    accs = (f"mm {row[ACC_MM]:.3f}  {a} {row[acc_alone(a)]:.3f}  {b} {row[acc_alone(b)]:.3f}  "
            f"worst class {row[WORST_CLASS]:.3f}")
    if row[ROUND] == 0:
        return f"{head}  {accs}  (initial model)"
    asked = sum(int(row.get(k, 0)) for k in CLIENT_COUNTS)
    bad = [f"{row[k]} {k.split('_')[1]}" for k in CLIENT_COUNTS[1:] if row.get(k)]
    replies = f"replies {row.get(CLIENTS_OK, 0)}/{asked}" + (f" ({', '.join(bad)})" if bad else "")
    tail = "  skipped: global model kept" if row.get(SKIPPED) else ""
    return f"{head}  {accs}  {replies}  {row[WALL_S]:.1f} s{tail}"


def reply_totals(rows: Any) -> dict[str, int]:
    """Per reply column (:data:`CLIENT_COUNTS`, :data:`CAPPED`) and :data:`SKIPPED`: the sum over
    the trained rounds of ``rows`` (an iterable of rows; a missing or empty value counts 0: rows written before a
    column existed, CSV cells)."""
    totals = dict.fromkeys((*CLIENT_COUNTS, CAPPED, SKIPPED), 0)
    for row in rows:
        if int(row.get(ROUND) or 0) < 1:
            continue
        for k in totals:
            v = row.get(k)
            if v not in (None, "") and not (isinstance(v, float) and math.isnan(v)):
                totals[k] += int(float(v))
    return totals
