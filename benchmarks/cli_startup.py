"""Wall time of the `fedcmi` calls that should answer at once: --version, --help, simulate --help, methods,
methods NAME, and config errors (a bad value, an unknown key, an unknown preset, a missing --resume folder).

Each command runs as a fresh ``python -m fedcmi.cli`` process (what the console script does), ``--repeat``
times, the commands interleaved so that a drift in the machine's load reaches them all alike; the median and
the range are printed per command, with the exit code and the modules among torch, flwr, ray and datasets that
the command had imported (none, on these paths: tests/test_cli_startup.py asserts it).

    python benchmarks/cli_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMANDS: list[list[str]] = [
    ["--version"],
    ["--help"],
    ["simulate", "--help"],
    ["methods"],
    ["methods", "fedcmi"],
    ["simulate", "lr=-1"],
    ["simulate", "num-round=5"],
    ["simulate", "strategy=fedcmy"],
    ["simulate", "--preset", "nope"],
    ["simulate", "--resume", "/nonexistent"],
    ["bench", "--preset", "nope"],
]

HEAVY = ("torch", "flwr", "ray", "datasets")
# Runs the CLI, then (at exit, however it ended: return or SystemExit) writes the heavy modules it imported.
PROBE = ("import atexit, sys\n"
         "atexit.register(lambda: sys.stderr.write('HEAVY:' + ','.join(m for m in {heavy!r} if m in sys.modules) "
         "+ '\\n'))\n"
         "from fedcmi.cli import main\n"
         "sys.exit(main(sys.argv[1:]))\n")


def run(args: list[str], probe: bool) -> tuple[float, int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0"}
    cmd = [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args] if probe else [sys.executable, "-m", "fedcmi.cli",
                                                                                   *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    took = time.perf_counter() - start
    heavy = next((line[6:] for line in proc.stderr.splitlines() if line.startswith("HEAVY:")), "?")
    return took, proc.returncode, heavy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (default 5)")
    args = parser.parse_args()
    times: dict[int, list[float]] = {i: [] for i in range(len(COMMANDS))}
    codes: dict[int, int] = {}
    heavy: dict[int, str] = {}
    for i, cmd in enumerate(COMMANDS):  # once with the import probe (not timed), then the timed runs
        _, codes[i], heavy[i] = run(cmd, probe=True)
    for _ in range(args.repeat):
        for i, cmd in enumerate(COMMANDS):
            times[i].append(run(cmd, probe=False)[0])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"fedcmi CLI start-up, {args.repeat} runs each, {os.cpu_count()} CPUs, load average {load:.2f}")
    print(f"{'command':<36} {'median s':>9} {'min s':>7} {'max s':>7} {'exit':>5}  heavy modules imported")
    for i, cmd in enumerate(COMMANDS):
        t = times[i]
        print(f"{'fedcmi ' + ' '.join(cmd):<36} {statistics.median(t):>9.2f} {min(t):>7.2f} {max(t):>7.2f} "
              f"{codes[i]:>5}  {heavy[i] or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
