"""Shared fixtures: Flower's TaskIdentity for building Messages outside a running app; small configs."""

from __future__ import annotations

import gc

import pytest
import torch

from fedcmi.config import RunConfig


@pytest.fixture(autouse=True)
def _task_identity():
    """``Message(...)`` outside a running app needs these ids (Flower 1.42: flwr.supercore.task_identity)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture
def tiny_cfg() -> RunConfig:
    return RunConfig(num_clients=4, clients_per_round=2, train_size=400, test_size=200, min_partition_size=10)


def pytest_unconfigure(config):
    """The suite is over: no last full garbage collection over everything torch and Flower loaded into this
    process (about 2 CPU-seconds; ``fedcmi.cli.run`` does the same)."""
    gc.freeze()
