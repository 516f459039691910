"""The CLI answers before anything heavy loads: --version, --help, `methods` and every configuration error run
without importing torch, Flower, Ray or `datasets` (a subprocess reads its own sys.modules; no timing here:
benchmarks/cli_startup.py times these calls). The light lists of names those paths read match the real
registries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
HEAVY = ("torch", "flwr", "ray", "datasets", "wandb")

# (argv, exit code, what stderr's one line holds; None: no error line)
CALLS = [
    (["--version"], 0, None),
    (["--help"], 0, None),
    (["simulate", "--help"], 0, None),
    (["partitions", "--help"], 0, None),
    (["bench", "--help"], 0, None),
    (["methods"], 0, None),
    (["methods", "fedcmi-noinf"], 0, None),
    (["simulate", "lr=-1"], 2, "lr=-1.0: must be > 0"),
    (["simulate", "num-round=5"], 2, "unknown key 'num-round'; did you mean 'num-server-rounds'?"),
    (["simulate", "strategy=fedcmy"], 2, "did you mean 'fedcmi'?"),
    (["simulate", "strategy=fedcmi-noinf", "lambda-cmi=3"], 2, "contradicts it"),
    (["simulate", "aggregation=medain"], 2, "did you mean 'median'?"),
    (["simulate", "dataset=crema"], 2, "did you mean 'crema-d'?"),
    (["simulate", "num-clients=8"], 2, "clients-per-round=10: must be <= num-clients (8)"),
    (["simulate", "client-num-cpus=100000"], 2, "client-num-cpus="),
    (["simulate", "--preset", "nope"], 2, "--preset 'nope': must be one of paper"),
    (["simulate", "--resume", "/nonexistent"], 2, "--resume /nonexistent: no such directory"),
    (["partitions", "num-clients=0"], 2, "num-clients=0: must be >= 1"),
    (["bench", "--preset", "nope"], 2, "--preset 'nope': must be one of quick"),
    (["bench", "--strategies", "fedavg,fedcmy"], 2, "did you mean 'fedcmi'?"),
    # a key after an option is still a key (was: "unrecognized arguments"), and checked like the others
    (["bench", "--seeds", "2", "lr=0.1", "--strategies", "fedavg", "lr=-1"], 2, "lr=-1.0: must be > 0"),
    (["simulate", "--preset", "paper", "num-round=5"], 2, "did you mean 'num-server-rounds'?"),
    (["methods", "fedcmy"], 2, "did you mean 'fedcmi'?"),
    (["simulat"], 2, "did you mean 'simulate'?"),
    (["prepare", "crema", "--root", "x"], 2, "did you mean 'crema-d'?"),
]

# Runs every call in one process, one after the other, and says after each which heavy modules are loaded.
PROBE = """
import contextlib, io, json, sys
from fedcmi.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    out.append({"argv": argv, "code": code, "err": err.getvalue(),
                "heavy": [m for m in HEAVY if m in sys.modules]})
print(json.dumps(out))
""".replace("HEAVY", repr(HEAVY))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cli")  # nothing here: a run directory would land in it
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps([argv for argv, _, _ in CALLS])], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300, check=True)
    return {tuple(r["argv"]): r for r in json.loads(proc.stdout.strip().splitlines()[-1])}


@pytest.mark.parametrize("argv, code, needle", CALLS, ids=[" ".join(c[0]) for c in CALLS])
def test_answers_without_importing_torch_flower_ray_or_datasets(results, argv, code, needle):
    r = results[tuple(argv)]
    assert r["heavy"] == [], f"fedcmi {' '.join(argv)} imported {r['heavy']}"
    assert r["code"] == code
    if needle is not None:  # one line, in the one style of every command
        assert len(r["err"].strip().splitlines()) == 1 and r["err"].startswith("fedcmi: error: ")
        assert needle in r["err"]


def test_the_light_name_lists_match_the_registries():
    """Aggregation rules and CCVR keys live in fedcmi/federated (torch); the copies the CLI reads are the same."""
    from fedcmi.config.run_config import AGGREGATION_NAMES
    from fedcmi.federated.aggregation import RULE_NAMES
    from fedcmi.federated.calibration import KEYS as CCVR_KEYS
    from fedcmi.methods.registry import CCVR_KEYS as LIGHT_CCVR_KEYS

    assert AGGREGATION_NAMES == RULE_NAMES
    assert LIGHT_CCVR_KEYS == CCVR_KEYS


def test_every_method_spec_builds_its_method():
    """The specs name their code by a "module:function" string (imported on first build): each one resolves."""
    from fedcmi.config import resolve
    from fedcmi.methods.base import LocalMethod
    from fedcmi.methods.registry import METHODS

    for name, spec in METHODS.items():
        assert isinstance(spec.build(resolve(overrides={"strategy": name})), LocalMethod), name
