"""Label skew: compare variants run by `fedcmi bench`, paired by seed, with 95 % t intervals.

Each variant is LABEL=BENCH_DIR:STRATEGY (the bench folder of one `fedcmi bench` command and one of its
strategies). A cell's score is the mean over its last 5 rounds (single rounds swing under label skew).

    python benchmarks/label_skew.py --baseline fedavg \
        fedavg=runs/plain:fedavg fedcmi=runs/plain:fedcmi fedavg+la=runs/la:fedavg fedcmi+la=runs/la:fedcmi
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fedcmi.bench.report import seed_text
from fedcmi.bench.stats import holm, paired_difference, paired_p_value, rules_out, t_interval, verdict
from fedcmi.runs.layout import COMPLETE, METRICS_JSON, run_status

LAST = 5


def scores(bench: Path, strategy: str, metric: str, setting: str = "") -> dict[int, float]:
    """seed -> mean of ``metric`` over the last rounds, for every finished cell of ``strategy`` (whose id
    contains ``setting``, e.g. ``alpha-0.1__mix-1-0.5``; several settings of one strategy would share seeds)."""
    out = {}
    for cell in sorted((bench / "cells").glob(f"{strategy}__*")):
        if setting not in cell.name:
            continue
        if run_status(cell) != COMPLETE:
            continue
        rows = json.loads((cell / METRICS_JSON).read_text())
        seed = int(cell.name.rsplit("seed-", 1)[1])
        if seed in out:
            raise SystemExit(f"{bench}: {strategy} has several settings for seed {seed}; pick one with --setting")
        vals = [r[metric] for r in rows[-LAST:] if r.get(metric) is not None]
        out[seed] = float(np.mean(vals))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", metavar="LABEL=DIR:STRATEGY")
    ap.add_argument("--baseline", required=True, help="label of the variant the others are compared with")
    ap.add_argument("--metrics", default="acc_mm,acc_visual,acc_audio")
    ap.add_argument("--setting", default="", help="only cells whose id contains this, e.g. alpha-0.1__mix-1-0.5")
    args = ap.parse_args()
    variants = {}
    for item in args.variants:
        label, _, rest = item.partition("=")
        folder, _, strategy = rest.rpartition(":")
        variants[label] = (Path(folder), strategy)
    for metric in args.metrics.split(","):
        per = {label: scores(folder, strategy, metric, args.setting) for label, (folder, strategy) in variants.items()}
        base = per[args.baseline]
        others = [label for label in per if label != args.baseline]
        adjusted = holm({label: paired_p_value(per[label], base) for label in others})
        seeds = sorted(set().union(*(set(s) for s in per.values())))
        print(f"\n{metric} (mean of the last {LAST} rounds; 95 % t interval over seeds {seed_text(seeds)}; paired "
              f"difference vs {args.baseline}; Holm-adjusted p over the {len(others)} comparisons of this table)")
        print(f"| variant | n | {metric} | vs {args.baseline} | the difference lies | verdict | Holm p |")
        print("|---|---|---|---|---|---|---|")
        for label, s in per.items():
            iv = t_interval(s.values())
            if label == args.baseline:
                print(f"| {label} | {iv.n} | {iv.text()} | – | – | – | – |")
                continue
            diff = paired_difference(s, base)
            p = adjusted[label]
            print(f"| {label} | {iv.n} | {iv.text()} | {diff.text()} | {rules_out(diff)} | {verdict(diff)} | "
                  f"{'–' if np.isnan(p) else f'{p:.3f}'} |")


if __name__ == "__main__":
    main()
