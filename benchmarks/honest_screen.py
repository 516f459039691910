"""Honest-rejection table: how close honest replies come to the update screen's bound, over finished runs.

Reads every ``replies.csv`` under the given folders (run directories or ``fedcmi bench`` folders: one row per
screened reply with its group norms, local steps, ratio to the reference and verdict) and prints, per setting
(strategy, alpha, mix), the replies screened, the rejected ones, and the largest and 99.9th-percentile ratio.

``--old`` replays the screen before issue 22 (raw norms against the round's median). ``--replay P``
recomputes the ratios from the recorded norms with the norms divided by steps ** P (the screen
of ``fedcmi.federated.screening`` with another exponent; ``--history`` rounds in the reference), so runs made
with the screen off (``update-norm-multiple=0``) show what a candidate rule would have done to them.

    python benchmarks/honest_screen.py runs/bench-default
    python benchmarks/honest_screen.py /tmp/measure-off --replay 0 --replay 0.5 --replay 1
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path

from fedcmi.runs.layout import CONFIG_FILE, REPLIES_FILE

GROUPS = ("a", "b", "shared")


def lower_median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def replay(rows: list[dict], exponent: float, history: int) -> list[float]:
    """Each reply's largest ratio to its group's reference under the exponent (no rejections assumed)."""
    by_round: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        by_round[int(r["round"])].append(r)
    past: dict[str, list[list[float]]] = defaultdict(list)
    out = []
    for rnd in sorted(by_round):
        replies = by_round[rnd]
        per_step = [{g: float(r[f"norm_{g}"]) / float(r["steps"]) ** exponent for g in GROUPS
                     if r.get(f"norm_{g}") not in ("", "nan", None) and not math.isnan(float(r[f"norm_{g}"]))}
                    for r in replies]
        ratios = [0.0] * len(replies)
        for g in GROUPS:
            pool = [p[g] for p in per_step if g in p] + [v for rr in past[g] for v in rr]
            pool = [v for v in pool if v > 0]
            if not pool:
                continue
            ref = lower_median(pool)
            for i, p in enumerate(per_step):
                if g in p:
                    ratios[i] = max(ratios[i], p[g] / ref)
        for g in GROUPS:
            past[g].append([p[g] for p in per_step if g in p])
            del past[g][:-history]
        out += ratios
    return out


def replay_old(rows: list[dict]) -> list[float]:
    """The screen before issue 22: each raw group norm against the median of that group over the round only."""
    by_round: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        by_round[int(r["round"])].append(r)
    out = []
    for rnd in sorted(by_round):
        norms = [{g: float(r[f"norm_{g}"]) for g in GROUPS if r.get(f"norm_{g}") not in ("", "nan", None)
                  and not math.isnan(float(r[f"norm_{g}"]))} for r in by_round[rnd]]
        ratios = [0.0] * len(norms)
        for g in GROUPS:
            values = sorted(n[g] for n in norms if g in n)
            if not values:
                continue
            mid = len(values) // 2
            median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
            for i, n in enumerate(norms):
                if g in n and median > 0:
                    ratios[i] = max(ratios[i], n[g] / median)
        out += ratios
    return out


def setting_of(run: Path) -> str:
    cfg = json.loads((run / CONFIG_FILE).read_text())
    alpha = "iid" if cfg.get("partitioner") == "iid" else f"{cfg['dirichlet-alpha']:g}"
    return f"{cfg['strategy']} alpha={alpha} mix={cfg['multimodal-ratio']:g}:{cfg['unimodal-split']:g}"


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--replay", type=float, action="append", help="step exponent to replay (repeatable)")
    parser.add_argument("--old", action="store_true", help="also replay the screen before issue 22 (raw norm, "
                        "round median)")
    parser.add_argument("--history", type=int, default=3, help="rounds of past replies in the reference")
    parser.add_argument("--multiple", type=float, default=10.0, help="the bound, for the over-bound count")
    parser.add_argument("--by", choices=("setting", "strategy", "all"), default="setting")
    args = parser.parse_args(argv)
    files = sorted({p for f in args.folders for p in ([f] if f.name == REPLIES_FILE else f.rglob(REPLIES_FILE))})
    if not files:
        parser.error(f"no {REPLIES_FILE} under the given folders")
    table: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for path in files:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        full = setting_of(path.parent)
        key = {"setting": full, "strategy": full.split()[0], "all": "all"}[args.by]
        t = table[key]
        t["runs"].append(1)
        t["recorded"] += [float(r["ratio"]) for r in rows]
        t["rejected"] += [r["verdict"] == "rejected" for r in rows]
        for p in args.replay or []:
            t[f"p={p:g}"] += replay(rows, p, args.history)
        if args.old:
            t["old"] += replay_old(rows)
    cols = ["recorded"] + [f"p={p:g}" for p in args.replay or []] + (["old"] if args.old else [])
    head = "| setting | runs | replies | rejected | " + " | ".join(
        f"{c}: max, p99.9, > {args.multiple:g}" for c in cols) + " |"
    print(head)
    print("|" + "---|" * (4 + len(cols)))
    for key in sorted(table):
        t = table[key]
        cells = [f"{max(t[c]):.2f}, {quantile(t[c], 0.999):.2f}, {sum(v > args.multiple for v in t[c])}"
                 for c in cols]
        print(f"| {key} | {len(t['runs'])} | {len(t['recorded'])} | {sum(t['rejected'])} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
