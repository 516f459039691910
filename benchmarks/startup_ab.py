"""Start-up and peak memory of one source tree at the make-run setting (3 rounds), for old/new pairs.

Runs that tree's own ``benchmarks/overhead.run_flower`` (so an older checkout measures itself) and prints one
``RESULT {json}`` line: start-up to the end of round 1, the discovery query, peak RSS and PSS, the load.

    TREE=/path/to/checkout PYTHONPATH=$TREE python benchmarks/startup_ab.py
"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.environ["TREE"] + "/benchmarks")
sys.path.insert(0, os.environ["TREE"])

import overhead  # noqa: E402  (its T0 is set first thing, before the heavy imports)
from procmem import GIB, PeakMemory  # noqa: E402

from fedcmi.config import resolve  # noqa: E402

cfg = resolve(overrides={"num-server-rounds": 3}).replace(out_dir=tempfile.mkdtemp(prefix="su-") + "/run")
mem = PeakMemory().start()
a = overhead.run_flower(cfg)
mem.stop()
print("RESULT", json.dumps({"tree": os.environ["TREE"], "startup": round(a["startup"], 1),
                            "discovery": round(sum(a["timers"].seconds["discovery"].values()), 2),
                            "rss": round(mem.peak_rss / GIB, 2), "pss": round(mem.peak_pss / GIB, 2),
                            "load": os.getloadavg()[0]}), flush=True)
