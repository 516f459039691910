"""``fedcmi simulate`` with the product ClientApp wrapped in the attack mod (tests only).

    python tests/support/attacked_run.py --attacks 'sizelie:0, scale-group=a,-50:2' simulate ...
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import attacks  # noqa: E402
import ray.cloudpickle  # noqa: E402

from fedcmi.cli import run  # noqa: E402

ray.cloudpickle.register_pickle_by_value(attacks)  # Ray actors cannot import this test-only module

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--attacks", required=True, help="an attack spec (tests/support/attacks.py)")
    args, rest = parser.parse_known_args()
    spec = Path(tempfile.mkdtemp()) / "attack.txt"
    spec.write_text(args.attacks)
    run(rest, client_app=attacks.attacked_client_app(str(spec), 10.0))
