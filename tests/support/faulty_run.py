"""``fedcmi simulate`` with the product ClientApp wrapped in the fault-injection mod (tests only).

    python tests/support/faulty_run.py --faults raise:0@1,nan:3@1 [--hang-seconds 10] [--restart-delay 0] simulate ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import faults  # noqa: E402
import ray.cloudpickle  # noqa: E402

from fedcmi.cli import run  # noqa: E402

ray.cloudpickle.register_pickle_by_value(faults)  # Ray actors cannot import this test-only module

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--faults", required=True)
    parser.add_argument("--hang-seconds", type=float, default=10.0)
    parser.add_argument("--trace", default=None, help="append every EVALUATE message's round and partition here")
    parser.add_argument("--restart-delay", type=float, default=0.0, help="seconds a restarted actor takes to start")
    args, rest = parser.parse_known_args()
    if args.restart_delay:
        import fedcmi.runtime.simulation as simulation

        simulation.warm_actor = faults.slow_restart(args.restart_delay, simulation.warm_actor)
    run(rest, client_app=faults.faulty_client_app(args.faults, args.hang_seconds, args.trace))
