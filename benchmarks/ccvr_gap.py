"""Why in-run CCVR helps FedAvg more than FedCMI: which of its two approximations costs what.

In a run, the server calibrates the fusion head with the moments the **last round's sampled** multimodal
clients measured with the weights they **received** (one aggregation old). The CCVR paper pools every client's
moments of the final model. This script trains each (strategy, seed) for R - 1 rounds, keeps that model, resumes
to R rounds, then calibrates the round-R model post hoc four ways: moments of {the round-R participants, every
multimodal client} measured with {the round R-1 weights (as in a run), the round-R weights}, and reports
multimodal test accuracy for each against the uncalibrated model.

    python benchmarks/ccvr_gap.py --seeds 10-14 --out runs/ccvr-gap [key=value ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from fedcmi.bench.plan import BENCH_BASE, parse_seeds
from fedcmi.bench.stats import paired_difference, t_interval

VARIANTS = ("uncalibrated", "in-run (last round, stale)", "last round, fresh", "all clients, stale",
            "all clients, fresh")


def simulate(args: list[str]) -> None:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-m", "fedcmi.cli", "simulate", *args], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"fedcmi simulate {' '.join(args)} failed:\n{proc.stderr[-2000:]}")


def train(run: Path, keys: dict[str, object], rounds: int) -> tuple[Path, Path]:
    """(model after rounds - 1, model after rounds) of one run."""
    before, after = run / "model-before.safetensors", run / "model.safetensors"
    if after.is_file() and before.is_file():
        return before, after
    shutil.rmtree(run, ignore_errors=True)
    simulate(["--out", str(run), *(f"{k}={v}" for k, v in {**keys, "num-server-rounds": rounds - 1}.items())])
    shutil.copy(run / "model.safetensors", before)
    simulate(["--resume", str(run), f"num-server-rounds={rounds}"])
    return before, after


def scores(run: Path, before: Path, after: Path, rounds: int) -> dict[str, float]:
    import torch
    from safetensors.torch import load_file

    from fedcmi.config import effective
    from fedcmi.config.parse import META_KEYS
    from fedcmi.data import load_data
    from fedcmi.data.partition import client_data, federation
    from fedcmi.federated.calibration import FeatureStats, calibrated, feature_statistics
    from fedcmi.federated.evaluation import evaluate
    from fedcmi.methods.registry import method_spec
    from fedcmi.models import ModelSpec, model_for

    cfg = effective({k: v for k, v in json.loads((run / "config.json").read_text()).items()
                     if k not in META_KEYS})
    data = load_data(cfg)
    spec = method_spec(cfg.method.strategy)
    models = {}
    for name, path in (("before", before), ("after", after)):
        m = model_for(cfg.model, ModelSpec.of(data), spec.decomposed)
        m.load_state_dict(load_file(str(path)))
        models[name] = m.eval()
    with open(run / "replies.csv", newline="") as fh:
        last = {int(r["partition"]) for r in csv.DictReader(fh) if int(r["round"]) == rounds}
    clients = [c for c in federation(cfg) if c.kind == "mm"]
    k = data.num_classes

    def pooled(which: str, members: list) -> FeatureStats:
        stats = FeatureStats.zeros(k, 0)
        for c in members:
            s = feature_statistics(models[which], client_data(data, c), k)
            stats = s if stats.sums.shape[1] == 0 else stats + s
        return stats

    xa, xb, y = (torch.from_numpy(t) for t in data.arrays("test"))

    def acc(model) -> float:
        return float(evaluate(model, xa, xb, y, k, data.modalities, cfg.server.eval_batch_size,
                              infiltration_path=spec.infiltration_path)["acc_mm"])

    def cal(stats: FeatureStats) -> float:
        return acc(calibrated(models["after"], stats, samples=cfg.method.ccvr_samples, steps=100, lr=cfg.method.ccvr_lr,
                              seed=cfg.federation.seed))

    in_round = [c for c in clients if c.partition_id in last]
    out = {VARIANTS[0]: acc(models["after"]),
           VARIANTS[1]: cal(pooled("before", in_round)), VARIANTS[2]: cal(pooled("after", in_round)),
           VARIANTS[3]: cal(pooled("before", clients)), VARIANTS[4]: cal(pooled("after", clients))}
    out["classes in the last round"] = float(len({int(v) for c in in_round for v in np.unique(
        data.arrays("train")[2][c.indices])}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="10-14")
    ap.add_argument("--strategies", default="fedavg,fedcmi")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path("runs/ccvr-gap"))
    ap.add_argument("keys", nargs="*", help="extra key=value for every run (e.g. logit-adjust=1)")
    args = ap.parse_args()
    base = {**BENCH_BASE, "dirichlet-alpha": 0.1, "multimodal-ratio": 0.5, "unimodal-split": 0.5}
    base.update(dict(kv.split("=", 1) for kv in args.keys))
    results: dict[str, dict[int, dict[str, float]]] = {}
    for strategy in args.strategies.split(","):
        for seed in parse_seeds(args.seeds):
            run = args.out / f"{strategy}-seed{seed}"
            before, after = train(run, {**base, "strategy": strategy, "seed": seed}, args.rounds)
            results.setdefault(strategy, {})[seed] = scores(run, before, after, args.rounds)
            print(strategy, seed, {k: round(v, 3) for k, v in results[strategy][seed].items()}, flush=True)
    for strategy, per_seed in results.items():
        print(f"\n{strategy}: acc_mm after {args.rounds} rounds, mean ± 95 % t over seeds {args.seeds}; "
              "paired difference to the uncalibrated model")
        print("| variant | acc_mm | vs uncalibrated |\n|---|---|---|")
        base_scores = {s: r[VARIANTS[0]] for s, r in per_seed.items()}
        for v in VARIANTS:
            vals = {s: r[v] for s, r in per_seed.items()}
            diff = "–" if v == VARIANTS[0] else paired_difference(vals, base_scores).text()
            print(f"| {v} | {t_interval(vals.values()).text()} | {diff} |")
        cls = t_interval(r["classes in the last round"] for r in per_seed.values())
        print(f"classes held by the last round's multimodal clients: {cls.text(1)} of the data set's classes")


if __name__ == "__main__":
    main()
