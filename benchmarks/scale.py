"""Time per round and peak memory as the federation grows and the sampled clients per round stay fixed.

Each size runs in its own process (so its peak memory is its own): ``fedcmi.runtime.simulation.simulate`` with
``num-clients`` N, ``clients-per-round`` fixed, IID partitions of ``--per-client`` samples each (so a
sampled client's work does not change with N; ``train-size`` = N x per-client), the default model and
local epochs. Per size it prints the steady-state seconds per round (mean of rounds 2..R), the discovery
query (the server asks every node once which partition and modalities it holds; once per run, kept out of
the per-round figure), start-up, and the peak RSS/PSS summed over the driver, Ray's daemons and workers.

    python benchmarks/scale.py                    # 100, 300, 1000 clients, 10 per round, 5 rounds
    python benchmarks/scale.py --sizes 1000 --stock   # Flower's own message dispatch
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

GIB = 1024 ** 3


def one(n: int, per_round: int, rounds: int, per_client: int, extra: list[str]) -> dict:
    """One federation size, in this process: the figures as a dict."""
    t0 = time.monotonic()
    from overhead import instrument
    from procmem import PeakMemory

    from fedcmi.config import parse_overrides, resolve
    from fedcmi.runtime.simulation import simulate

    mem = PeakMemory().start()
    timers = instrument()
    rows: list[dict] = []
    ends: dict[int, float] = {}

    def reporter(row: dict) -> None:
        ends[row["round"]] = time.monotonic()
        rows.append(row)

    with tempfile.TemporaryDirectory(prefix="fedcmi-scale-") as tmp:
        cfg = resolve(overrides={
            "num-clients": n, "clients-per-round": per_round, "num-server-rounds": rounds, "partitioner": "iid",
            "train-size": n * per_client, **parse_overrides(extra), "out-dir": str(Path(tmp) / "run")})
        simulate(cfg, reporter)
    mem.stop()
    steady = [r["wall_s"] for r in rows if r["round"] >= 2]
    return {"clients": n, "per_round": per_round, "s_per_round": statistics.fmean(steady),
            "s_per_round_median": statistics.median(steady), "discovery_s": sum(timers.seconds["discovery"].values()),
            "startup_s": ends[1] - t0, "peak_rss": mem.peak_rss, "peak_pss": mem.peak_pss,
            "processes": mem.peak_procs, "final_acc_mm": rows[-1]["acc_mm"], "at_peak": mem.roles()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="extra key=value run-config overrides")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--per-round", type=int, default=10, help="clients sampled per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-client", type=int, default=30, help="training samples per client")
    parser.add_argument("--stock", action="store_true", help="Flower's stock message dispatch (FEDCMI_STOCK_VCE=1)")
    parser.add_argument("--verbose", action="store_true", help="processes at the memory peak")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        res = one(args.one, args.per_round, args.rounds, args.per_client, args.overrides)
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", **({"FEDCMI_STOCK_VCE": "1"} if args.stock else {})}
    results = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--per-round", str(args.per_round), "--rounds",
               str(args.rounds), "--per-client", str(args.per_client), *args.overrides]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{n} clients: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
            return 1
        r = json.loads(lines[-1][len("RESULT "):])
        results.append(r)
        print(f"{n:>5} clients, {r['per_round']} per round: {r['s_per_round']:.3f} s/round (median "
              f"{r['s_per_round_median']:.3f}), discovery {r['discovery_s']:.1f} s, start-up {r['startup_s']:.1f} s, "
              f"peak RSS {r['peak_rss'] / GIB:.2f} GiB, peak PSS {r['peak_pss'] / GIB:.2f} GiB "
              f"({r['processes']} processes)", flush=True)
        if args.verbose:
            print(r["at_peak"], flush=True)
    load = os.getloadavg()
    times = [r["s_per_round"] for r in results]
    dispatch = "stock Flower" if args.stock else "fedcmi.runtime.flower_dispatch"
    print(f"dispatch: {dispatch}; {os.cpu_count()} CPUs, load average "
          f"now {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"flatness={max(times) / min(times):.3f}  (slowest / fastest s/round; target <= 1.20)")
    print(f"peak_rss_gib_at_{results[-1]['clients']}={results[-1]['peak_rss'] / GIB:.2f}  (target < 4)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
