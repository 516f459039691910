"""The Flower apps (``server/``, ``clients/``) by reference: they import the core, the core never imports them.

``fedcmi simulate`` and ``fedcmi bench`` still have to start the apps. Like Flower, which loads the apps
that ``[tool.flwr.app.components]`` names (``"clients.app:app"``), the core loads them by name when a
command runs, through this module only; tests/test_layers.py checks that no other import reaches them and
that the names here are pyproject's.
"""

from __future__ import annotations

import importlib
from typing import Any

CLIENT_APP = "clients.app:app"  # = clientapp in [tool.flwr.app.components]
SERVER_APP = "server.app:app"  # = serverapp in [tool.flwr.app.components]
MAKE_SERVER_APP = "server.app:make_server_app"  # a ServerApp bound to a resolved config (fedcmi simulate)
RUN_SERVER = "server.app:run_server"  # the ServerApp's round loop, on any grid
MAKE_BENCH_APP = "server.bench_app:make_bench_app"  # the ServerApp of a bench grid (fedcmi bench)
CLIENT_WORKER = "clients.worker"  # the long-lived ClientApp process, started as ``python -m`` (loopback demo)


def load(reference: str) -> Any:
    """The object a ``"module:attribute"`` reference names (the module alone without ``:attribute``)."""
    module, _, attribute = reference.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attribute) if attribute else loaded


def client_app() -> Any:
    """fedcmi's ClientApp."""
    return load(CLIENT_APP)


def make_server_app(*args: Any, **kwargs: Any) -> Any:
    """``server.app.make_server_app``: a ServerApp bound to a resolved config and a progress reporter."""
    return load(MAKE_SERVER_APP)(*args, **kwargs)


def run_server(*args: Any, **kwargs: Any) -> Any:
    """``server.app.run_server``: run (or resume) a config's rounds on a grid; returns the run directory."""
    return load(RUN_SERVER)(*args, **kwargs)


def make_bench_app(*args: Any, **kwargs: Any) -> Any:
    """``server.bench_app.make_bench_app``: the ServerApp that runs a bench grid's cells."""
    return load(MAKE_BENCH_APP)(*args, **kwargs)
