"""Node config -> a node's data: both modes, and one clear line for every misconfiguration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, DatasetDict

from clients.node_data import NodeConfigError, node_data
from fedcmi.data.partition import federation


def _prepared(path: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(0)

    def split(rows: int) -> Dataset:
        return Dataset.from_dict({"idx": np.arange(rows), "a": rng.normal(size=(rows, 1, 4, 4)).astype(np.float32),
                                  "b": rng.normal(size=(rows, 3, 2, 2)).astype(np.float32),
                                  "label": rng.integers(0, 3, rows)})

    DatasetDict({"train": split(n), "test": split(4)}).save_to_disk(str(path))
    (path / "fedcmi.json").write_text(json.dumps({"name": "toy", "modalities": ["audio", "visual"],
                                                  "num_classes": 3}))
    return path


def test_embedded_mode_matches_the_simulated_federation(tiny_cfg):
    node = node_data({"partition-id": 2, "num-partitions": 4}, tiny_cfg)
    spec = federation(tiny_cfg)[2]
    assert (node.partition_id, node.kind, node.num_examples) == (2, spec.kind, len(spec.indices))
    local = node.client_data(tiny_cfg)
    assert len(local) == len(spec.indices) and local.kind == spec.kind


@pytest.mark.parametrize(("node_config", "words"), [
    ({"num-partitions": 4}, ["'partition-id'", "--node-config"]),
    ({"partition-id": 0}, ["'num-partitions'"]),
    ({"partition-id": 0, "num-partitions": 3}, ["num-partitions=3", "num-clients=4"]),
    ({"partition-id": 4, "num-partitions": 4}, ["partition-id=4", "outside"]),
    ({"partition-id": "x", "num-partitions": 4}, ["partition-id='x'", "integer"]),
    ({"partition-id": 0, "data-dir": "/nonexistent/fedcmi"}, ["data-dir='/nonexistent/fedcmi'", "no such directory"]),
])
def test_bad_node_config_is_one_clear_line(tiny_cfg, node_config, words):
    with pytest.raises(NodeConfigError) as err:
        node_data(node_config, tiny_cfg)
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_prepared_mode_loads_only_the_held_modalities(tmp_path, tiny_cfg):
    path = _prepared(tmp_path / "prep")
    node = node_data({"partition-id": 7, "data-dir": str(path), "modalities": "visual"}, tiny_cfg)
    assert (node.partition_id, node.kind, node.num_examples) == (7, "b", 12)
    local = node.client_data(tiny_cfg)
    assert local.a is None and local.b is not None and tuple(local.b.shape) == (12, 3, 2, 2) and len(local) == 12
    both = node_data({"partition-id": 8, "data-dir": str(path), "modalities": "audio, visual"}, tiny_cfg)
    assert both.kind == "mm" and both.client_data(tiny_cfg).kind == "mm"


@pytest.mark.parametrize(("extra", "words"), [
    ({}, ["'modalities'"]),
    ({"modalities": "audio,depth"}, ["'depth'", "['audio', 'visual']"]),
])
def test_prepared_mode_errors(tmp_path, tiny_cfg, extra, words):
    path = _prepared(tmp_path / "prep")
    with pytest.raises(NodeConfigError) as err:
        node_data({"partition-id": 0, "data-dir": str(path), **extra}, tiny_cfg)
    for word in words:
        assert word in str(err.value)


def test_directory_without_manifest_is_refused(tmp_path, tiny_cfg):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NodeConfigError, match="fedcmi.json"):
        node_data({"partition-id": 0, "data-dir": str(tmp_path / "empty"), "modalities": "a"}, tiny_cfg)
