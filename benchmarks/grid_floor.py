"""The least wall time a bench grid can take here: the compute of its cells alone, spread over every core.

Runs each cell of a ``fedcmi bench`` grid in the plain loop of ``overhead.py`` (the same client steps,
aggregation and central evaluation, without Flower, Ray, messages or files), in worker processes of one torch
thread each, and sums the seconds of the cells' rounds (data loading left out). With the machine otherwise
idle and at most one worker per core those seconds are CPU seconds, and ``sum / cores`` is a floor for the
grid's wall time: what a bench with no overhead at all, keeping every core busy, would still need. Compare
it with the bench's own "in N s" line for the same grid.

    python benchmarks/grid_floor.py --preset default --alphas 1 --mixes 0.5:0.5 --seeds 1 [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fedcmi.bench.plan import make_plan  # noqa: E402
from fedcmi.config import RunConfig, parse_overrides  # noqa: E402


def cell_seconds(cfg: RunConfig) -> tuple[str, float, float]:
    """(run name, seconds of the cell's rounds, final multimodal accuracy), on one torch thread."""
    import torch
    from overhead import run_plain

    torch.set_num_threads(1)
    out = run_plain(cfg, 1)
    return cfg.output.run_name, sum(out["total"]), out["acc_mm"][-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--strategies")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--alphas")
    parser.add_argument("--mixes")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (at most the cores)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores the floor divides by")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    if min(args.jobs, args.cores) < 1:
        parser.error("--jobs and --cores must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        plan = make_plan(args.preset, Path(tmp) / "bench", parse_overrides(args.overrides), args.strategies,
                         args.seeds, args.alphas, args.mixes)
        configs = [plan.cell_config(cell) for cell in plan.cells()]
    start = time.perf_counter()
    total = 0.0
    with ProcessPoolExecutor(args.jobs) as pool:
        for name, seconds, acc in pool.map(cell_seconds, configs):
            total += seconds
            print(f"{name:50s} {seconds:7.2f} s   acc_mm {acc:.4f}", flush=True)
    print(f"{len(configs)} cells: {total:.1f} s of rounds on one thread each ({time.perf_counter() - start:.1f} s wall "
          f"with {args.jobs} worker(s)); floor on {args.cores} cores: {total / args.cores:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
