"""A deployed client learns everything from its own prepared data and the message, never from the server's
data set: each node holds only its own training directory, the server only the test split.

The rounds run in-process through the real ClientApp handlers (``clients.app``), the real Strategy and
the real evaluation, with a grid that hands each message to the node it is addressed to and gives every
node its own ``node_config`` (``partition-id``, ``data-dir``, ``modalities``), as ``flower-supernode
--node-config`` does.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from flwr.app import ArrayRecord, ConfigRecord, Message
from support.grid import FakeGrid, client_app
from support.members import admit

from fedcmi.config import effective
from fedcmi.data import load_data
from fedcmi.data.embedded import synthetic_av
from fedcmi.data.prepared import MANIFEST
from fedcmi.federated.evaluation import evaluate
from fedcmi.methods.registry import method_spec
from fedcmi.models import ModelSpec, model_for
from server.app import build_strategy

NODES = {101: (0, "audio,visual"), 102: (1, "audio"), 103: (2, "visual"), 104: (3, "audio,visual")}


def _write(path, name, splits: dict[str, dict]) -> None:
    DatasetDict({s: Dataset.from_dict(cols) for s, cols in splits.items()}).save_to_disk(str(path))
    (path / MANIFEST).write_text(json.dumps({"name": name, "modalities": ["audio", "visual"], "num_classes": 4}))


def _columns(xa, xb, y, rows) -> dict:
    return {"idx": list(map(int, rows)), "a": xa[rows], "b": xb[rows], "label": y[rows]}


def test_nodes_train_on_their_own_prepared_data_and_the_server_holds_only_the_test_split(tmp_path):
    data = synthetic_av(num_classes=4, train_size=800, test_size=300, signal_a=1.2, signal_b=0.8)
    xa, xb, y = data.arrays("train")
    ta, tb, ty = data.arrays("test")
    server_dir = tmp_path / "server"
    _write(server_dir, "crema-d", {"test": _columns(ta, tb, ty, np.arange(len(ty)))})
    node_configs = {}
    for node, (pid, modalities) in NODES.items():
        own = tmp_path / f"node-{pid}"
        _write(own, "crema-d", {"train": _columns(xa, xb, y, np.arange(pid, len(y), len(NODES)))})
        node_configs[node] = {"partition-id": pid, "data-dir": str(own), "modalities": modalities}

    cfg = effective({"dataset": "crema-d", "data-root": str(server_dir), "num-clients": 4, "clients-per-round": 4,
                     "local-epochs": 1, "lr": 0.05, "feature-dim": 16, "num-server-rounds": 4}).check_run()
    server_data = load_data(cfg)
    assert len(server_data.train) == 0 and len(server_data.test) == 300
    spec = ModelSpec.of(server_data)
    strategy = build_strategy(cfg, spec)
    torch.manual_seed(0)
    model = model_for(cfg.model, spec, method_spec(cfg.method.strategy).decomposed)
    arrays = ArrayRecord(model.state_dict())
    server_dir.rename(tmp_path / "moved")  # a client that opened the server's data-root would fail now

    def accuracy(arrs: ArrayRecord) -> float:
        model.load_state_dict(arrs.to_torch_state_dict())
        return evaluate(model, torch.from_numpy(ta), torch.from_numpy(tb), torch.from_numpy(ty), 4,
                        ("audio", "visual"))["acc_mm"]

    grid = FakeGrid(node_configs, reply=client_app)  # each message to its node's handler, with its node config
    first = accuracy(arrays)
    for rnd in range(1, 5):
        arrays, metrics = strategy.aggregate_train(rnd, grid.send_and_receive(
            list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))))
        assert arrays is not None and metrics["clients_ok"] == 4 and metrics["clients_failed"] == 0, rnd
    assert {m.partition_id: m.kind for m in strategy.nodes.values()} == {0: "mm", 1: "a", 2: "b", 3: "mm"}
    last = accuracy(arrays)
    assert last > first + 0.2 and last > 0.5, (first, last)


def test_the_training_message_carries_classes_and_shapes_not_the_servers_paths():
    cfg = effective({"num-clients": 2, "clients-per-round": 2, "out-dir": "/srv/secret", "round-timeout": 5.0})
    strategy = build_strategy(cfg, ModelSpec(6, (1, 20, 24), (3, 16, 16)))
    admit(strategy, {1: (0, "mm"), 2: (1, "a")})

    grid = FakeGrid({1: (0, "mm"), 2: (1, "a")})
    msg = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid))[0]
    assert grid.sent == []  # both nodes were admitted already: nothing was asked of them
    sent = msg.content["config"]
    assert (sent["num-classes"], list(sent["shape-a"]), list(sent["shape-b"])) == (6, [1, 20, 24], [3, 16, 16])
    assert not {"out-dir", "round-timeout", "ray-address", "max-update-norm", "clients-per-round"} & set(sent)
    assert isinstance(msg, Message)
