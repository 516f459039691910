"""Start-up and memory: the federation is stored beside the data cache, and a client process on embedded data
finds its partition without importing the Arrow stack (datasets, flwr-datasets, pandas)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from fedcmi.config import resolve
from fedcmi.data import load_data
from fedcmi.data.partition import build_federation, stored_federation

ROOT = Path(__file__).parents[1]
SMALL = {"num-clients": 7, "train-size": 420, "test-size": 60, "dirichlet-alpha": 0.5, "seed": 3}


def test_stored_federation_is_the_built_one(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCMI_DATA_CACHE", str(tmp_path))
    cfg = resolve(overrides=SMALL)
    data = load_data(cfg)
    assert data.cache_dir is not None and data.cache_dir.parent == tmp_path
    first = stored_federation(data, cfg)  # built and stored
    assert list((data.cache_dir / "federations").glob("*.npz"))
    again = stored_federation(data, cfg)  # read back
    built = build_federation(data, cfg)
    for a, b, c in zip(first, again, built, strict=True):
        assert a.partition_id == b.partition_id == c.partition_id and a.kind == b.kind == c.kind
        assert np.array_equal(a.indices, c.indices) and np.array_equal(b.indices, c.indices)
        assert b.indices.dtype == c.indices.dtype
    other = stored_federation(data, cfg.replace(seed=4))  # another key, another file
    assert any(not np.array_equal(x.indices, y.indices) for x, y in zip(other, built, strict=True))


def test_a_client_process_does_not_import_the_arrow_stack(tmp_path):
    env = {**os.environ, "FEDCMI_DATA_CACHE": str(tmp_path), "FLWR_TELEMETRY_ENABLED": "0",
           "PYTHONPATH": str(ROOT)}
    overrides = json.dumps(SMALL)
    warm = ("from fedcmi.config import resolve; from fedcmi.data.partition import federation; "
            f"federation(resolve(overrides={overrides}))")
    subprocess.run([sys.executable, "-c", warm], check=True, env=env, cwd=ROOT, timeout=600)
    client = (
        "import sys, json; import clients.app\n"
        "from clients.node_data import node_data\n"
        "from fedcmi.config import resolve\n"
        f"cfg = resolve(overrides={overrides})\n"
        "node = node_data({'partition-id': 2, 'num-partitions': 7}, cfg)\n"
        "data = node.client_data(cfg)\n"
        "print(json.dumps([len(data), [m for m in ('datasets', 'flwr_datasets', 'pandas') if m in sys.modules]]))\n")
    out = subprocess.run([sys.executable, "-c", client], check=True, env=env, cwd=ROOT, timeout=600,
                         capture_output=True, text=True).stdout
    size, heavy = json.loads(out.strip().splitlines()[-1])
    assert size > 0 and heavy == []
