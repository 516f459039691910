"""Launch a Flower simulation (Ray backend) of a resolved config from Python, as ``fedcmi simulate`` does.

``flwr run .`` returns 0 even for a failed run and leaves a local SuperLink behind; here the ServerApp runs
in this process, its exceptions propagate, Ray is shut down at the end, and failure means a non-zero exit.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from fedcmi.config import ConfigError, RunConfig
from fedcmi.runs.run_dir import RunDirectory


class SimulationFailed(RuntimeError):
    """The simulation ended without completing its rounds."""


class _DropDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "run_simulation" not in msg and "DEPRECATED FEATURE" not in msg


class _DropClientTracebacks(logging.Filter):
    """Flower logs each failed ClientApp's whole traceback; the strategy already logs one line per fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.pathname.endswith("vce_api.py"))


def check_resources(cfg: RunConfig) -> dict[str, Any]:
    """Ray backend config for the client resources; refuses requests a local Ray cannot meet.

    ``ray-address`` joins an existing cluster (its resources are the cluster's, so nothing is checked
    here); otherwise ``address="local"`` always starts a fresh Ray, never one that ``ray start`` left running.
    """
    # max_restarts: Ray restarts a client actor whose process died, so one crashing client costs one failed
    # reply instead of a dead actor that fails every later message (Flower's pool never replaces actors).
    backend: dict[str, Any] = {"client_resources": {"num_cpus": cfg.client_num_cpus,
                                                    "num_gpus": cfg.client_num_gpus, "max_restarts": -1}}
    if cfg.ray_address:
        _check_reachable(cfg.ray_address)
        backend["init_args"] = {"address": cfg.ray_address}
        return backend
    cpus = os.cpu_count() or 1
    if cfg.client_num_cpus > cpus:
        raise ConfigError(f"client-num-cpus={cfg.client_num_cpus}: must be <= the {cpus} CPU(s) of this machine")
    init_args: dict[str, Any] = {"address": "local", "num_cpus": cpus}
    if cfg.client_num_gpus > 0:
        import torch

        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise ConfigError(f"client-num-gpus={cfg.client_num_gpus}: no CUDA GPU is visible on this machine")
        init_args["num_gpus"] = gpus
    backend["init_args"] = init_args
    return backend


def _check_reachable(address: str) -> None:
    """Fail in a second with one line, not after Ray's long connection retries, when nothing listens there."""
    if address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"ray-address={address!r}: must be host:port (the head's GCS address), or auto")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        raise ConfigError(f"ray-address={address!r}: no Ray head answers there ({exc.strerror or exc}); start one "
                          "with `ray start --head --port " + port + "`") from None


def run_app(server_app: Any, cfg: RunConfig, verbose: bool = False, client_app: Any = None) -> None:
    """Run a ServerApp with fedcmi's ClientApp (or ``client_app``) on ``cfg.num_clients`` simulated SuperNodes."""
    backend_config = check_resources(cfg)
    from flwr.simulation import run_simulation

    from fedcmi.runtime.flower_dispatch import install

    install()

    if client_app is None:
        from clients.app import app as client_app

    flwr_logger = logging.getLogger("flwr")
    filters: list[logging.Filter] = [_DropDeprecation()] + ([] if verbose else [_DropClientTracebacks()])
    for f in filters:
        flwr_logger.addFilter(f)
    old_level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    try:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=cfg.num_clients,
                       backend_config=backend_config)
    finally:
        for f in filters:
            flwr_logger.removeFilter(f)
        flwr_logger.setLevel(old_level)
        _shutdown_ray()


def simulate(cfg: RunConfig, reporter: Callable[[dict[str, Any]], None] | None = None,
             verbose: bool = False, resume: bool = False, client_app: Any = None) -> RunDirectory:
    """Run (or with ``resume``, continue) ``cfg`` on Flower's simulation engine; returns the run directory."""
    from server.app import make_server_app

    outcome: dict[str, Any] = {}
    run_app(make_server_app(cfg, reporter, outcome, resume), cfg, verbose, client_app)
    if "run_dir" not in outcome:
        raise SimulationFailed("the simulation ended before its last round (see the log above)")
    return outcome["run_dir"]


def _shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:  # pragma: no cover - ray comes with flwr[simulation]
        pass
