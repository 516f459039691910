"""Launch a Flower simulation (Ray backend) of a resolved config from Python, as ``fedcmi simulate`` does.

``flwr run .`` returns 0 even for a failed run and leaves a local SuperLink behind; here the ServerApp runs
in this process, its exceptions propagate, Ray is shut down at the end, and failure means a non-zero exit.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from fedcmi.config import ConfigError, RunConfig
from fedcmi.runtime.interrupt import LIVE_TOKENS, STOP, ProcessToken, handle_signals, our_handlers, reinstall

if TYPE_CHECKING:
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
    # max_task_retries: a message handed to that actor while it restarts waits for it (retried once it is
    # back) instead of failing at once ("The actor is restarting"), which on a loaded machine cost the next
    # round its clients; the message that crashed the process is retried once, then fails.
    backend: dict[str, Any] = {"client_resources": {"num_cpus": cfg.runtime.client_num_cpus,
                                                    "num_gpus": cfg.server.client_num_gpus, "max_restarts": -1,
                                                    "max_task_retries": 1}}
    if cfg.server.ray_address:
        _check_reachable(cfg.server.ray_address)
        backend["init_args"] = {"address": cfg.server.ray_address}
        return backend
    cpus = os.cpu_count() or 1
    if cfg.runtime.client_num_cpus > cpus:
        raise ConfigError(f"client-num-cpus={cfg.runtime.client_num_cpus}: must be <= the {cpus} CPU(s) of this "
                          "machine")
    init_args: dict[str, Any] = {"address": "local", "num_cpus": cpus}
    if cfg.server.client_num_gpus > 0:
        import torch

        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise ConfigError(f"client-num-gpus={cfg.server.client_num_gpus}: no CUDA GPU is visible on this machine")
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
    """Run a ServerApp with fedcmi's ClientApp (or ``client_app``) on num-clients simulated SuperNodes.

    Ctrl-C or SIGTERM (from here to the end) stops the run within seconds (``fedcmi.runtime.interrupt``):
    the ServerApp raises :class:`Interrupted` (its ``main`` decides what that means), busy client workers are
    freed, Ray is shut down and every process this run started is killed. A signal before the ServerApp
    starts raises :class:`Interrupted` here. Without a signal, leftover processes are killed all the same.
    """
    backend_config = check_resources(cfg)
    from flwr.simulation import run_simulation

    from fedcmi.runtime.flower_dispatch import install

    install()

    if client_app is None:
        from fedcmi.runtime.apps import client_app as fedcmi_client_app

        client_app = fedcmi_client_app()

    flwr_logger = logging.getLogger("flwr")
    filters: list[logging.Filter] = [_DropDeprecation()] + ([] if verbose else [_DropClientTracebacks()])
    for f in filters:
        flwr_logger.addFilter(f)
    old_level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    if not sys.stderr.isatty():  # Flower colours its log lines unconditionally
        from flwr.supercore.logger import update_console_handler

        update_console_handler(colored=False)
    token = ProcessToken()
    LIVE_TOKENS.add(token)
    with handle_signals(), _tracked_backends() as backends:
        try:
            STOP.check()
            warm = threading.Thread(target=_store_federation, args=(cfg,), daemon=True, name="fedcmi-federation")
            warm.start()
            _start_ray(backend_config, token, verbose)
            warm.join()
            STOP.check()
            threading.Thread(target=_free_workers_on_stop, args=(backends,), daemon=True,
                             name="fedcmi-stop-watch").start()
            run_simulation(server_app=server_app, client_app=client_app, num_supernodes=cfg.federation.num_clients,
                           backend_config=backend_config)
        except Exception:
            STOP.check()  # what broke while stopping is part of the stop, not a failure of its own
            raise
        finally:
            backends.close()
            for f in filters:
                flwr_logger.removeFilter(f)
            _shutdown_ray()
            flwr_logger.setLevel(old_level)
            left = token.kill_all()
            LIVE_TOKENS.discard(token)
            if left:
                logging.getLogger("fedcmi").info("killed %s process(es) left by Ray: %s", len(left), left)


def _store_federation(cfg: RunConfig) -> None:
    """Build the federation into the machine's data cache while Ray starts (a no-op when it is there), so
    no client actor imports flwr-datasets or reads the Arrow table to find its partition. A problem is left
    for the clients to report, as before."""
    from fedcmi.data.sources import is_prepared

    if is_prepared(cfg.data.dataset):
        return
    try:
        from fedcmi.data.partition import federation

        federation(cfg)
    except Exception as exc:  # noqa: BLE001 - the nodes report it in their replies
        logging.getLogger("fedcmi").debug("federation not stored ahead: %s: %s", type(exc).__name__, exc)


def _start_ray(backend_config: dict[str, Any], token: ProcessToken, verbose: bool) -> None:
    """``ray.init`` as Flower's Ray backend would call it (which then finds Ray running and keeps it), but
    here: with the run's process token in the environment Ray's processes inherit; with Ray's processes in
    their own session, so a terminal's Ctrl-C (sent to the whole foreground process group) reaches this
    process only, which then stops them in order (Ray's agents abort with a C++ stack dump on SIGINT);
    without Ray taking over SIGTERM; without colour codes when stderr is not a terminal."""
    import ray

    if ray.is_initialized():
        return
    init_args = dict(backend_config.get("init_args", {}))
    init_args.setdefault("include_dashboard", False)
    if not verbose:  # Flower's defaults for a non-verbose simulation
        init_args.setdefault("logging_level", "WARNING")
        init_args.setdefault("log_to_driver", True)
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    ours = our_handlers()
    utils = importlib.import_module("ray._private.utils")
    services = importlib.import_module("ray._private.services")
    original = getattr(utils, "set_sigterm_handler", None)
    if original is not None:  # ray.init would replace the SIGTERM handler with one that sys.exit()s mid-run
        utils.set_sigterm_handler = lambda handler: None
    popen = services.ConsolePopen

    class OwnSession(popen):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("start_new_session", True)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = OwnSession
    # A local Ray's workers inherit this environment (PYTHONPATH included) from the raylet it starts; a job
    # runtime_env would make every worker wait for Ray's runtime-env agent (its cost: docs/scaling.md, start-up).
    # A cluster's workers were started elsewhere and need it.
    local = init_args.get("address") == "local"
    runtime_env = {} if local else {"runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}}}
    try:
        with token.active():
            ray.init(**runtime_env, **init_args)
    finally:
        services.ConsolePopen = popen
        if original is not None:
            utils.set_sigterm_handler = original
        reinstall(ours)
    _filter_worker_logs()


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Flower's goodbye of every actor at the end of every run, and Ray's note that this goodbye (the actor exits
# on purpose) is "retried" under max_task_retries: neither is news to a user.
_NOISE = ("Manually terminating ClientAppActor", "Task ClientAppActor.terminate failed")


def is_noise(line: str) -> bool:
    """A line Ray forwards or prints that says nothing to a user: Flower's end-of-run goodbyes, and anything
    once a stop was requested (Ray's notes then are about the client actors the stop killed on purpose, e.g.
    "Task ClientAppActor.run failed ... killed by `ray.kill`")."""
    return STOP.is_set() or any(n in line for n in _NOISE)


def _filter_worker_logs() -> None:
    """What Ray forwards from the client actors, and Ray's own notes: without the noise (:func:`is_noise`) and,
    on a stream that is not a terminal, without colour codes (Flower colours its log lines in every process,
    Ray its prefixes)."""
    dispatcher = importlib.import_module("ray._private.worker").global_worker_stdstream_dispatcher
    with dispatcher._lock:
        named = [(name, handler) for name, handler in dispatcher.handlers if name == "ray_print_logs"]
    if named:  # else log_to_driver=False: nothing is forwarded
        forward = named[0][1]

        def filtered(data: dict[str, Any]) -> None:
            lines = [line for line in data.get("lines", []) if not is_noise(line)]
            if lines:
                forward({**data, "lines": lines})

        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", filtered)
    quiet_ray_printing()


class _PlainStream:
    """A text stream that drops ANSI escape codes from what is written to it."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(ANSI.sub("", text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def quiet_ray_printing() -> None:
    """Once per process: Ray's notes ("(raylet) ...": task retries, errors; printed by the driver's error
    listener through ``print_to_stdstream``, not through the dispatcher) without the noise, and every line Ray
    prints (forwarded logs and notes, through ``print_worker_logs``) without colour codes when its stream
    (stdout or stderr, each on its own: ``fedcmi simulate > log.txt``) is not a terminal."""
    worker = importlib.import_module("ray._private.worker")
    original = worker.print_to_stdstream
    if getattr(original, "_fedcmi_filtered", False):
        return

    def print_filtered(data: dict[str, Any], ignore_prefix: bool) -> None:
        lines = [line for line in data.get("lines", []) if not is_noise(line)]
        if lines:
            original({**data, "lines": lines}, ignore_prefix)

    print_logs = worker.print_worker_logs

    def print_plain(data: dict[str, Any], print_file: Any, ignore_prefix: bool = False) -> None:
        isatty = getattr(print_file, "isatty", None)
        print_logs(data, print_file if isatty is not None and isatty() else _PlainStream(print_file), ignore_prefix)

    print_filtered._fedcmi_filtered = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = print_filtered
    worker.print_worker_logs = print_plain


class _Backends:
    """The Ray backends Flower builds during a run (their actor pools), so a stop can free busy workers.

    ``lock`` keeps killing actors and shutting Ray down apart: Ray must not be shut down while another
    thread is in a Ray call."""

    def __init__(self) -> None:
        self.pools: list[Any] = []
        self.lock = threading.Lock()
        self.closed = False

    def close(self) -> None:
        with self.lock:
            self.closed = True


@contextlib.contextmanager
def _tracked_backends() -> Iterator[_Backends]:
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    tracked = _Backends()
    build, terminate = RayBackend.build, RayBackend.terminate

    def tracking_build(self: Any, app_fn: Any) -> None:
        self.actor_kwargs = {**self.actor_kwargs, "on_actor_init_fn": warm_actor}
        build(self, app_fn)
        tracked.pools.append(self.pool)

    def closing_terminate(self: Any) -> None:
        tracked.close()
        terminate(self)

    RayBackend.build, RayBackend.terminate = tracking_build, closing_terminate
    try:
        yield tracked
    finally:
        tracked.close()
        RayBackend.build, RayBackend.terminate = build, terminate


def warm_actor() -> None:
    """Runs in each client actor as Ray creates it, while the ServerApp loads its data and evaluates the
    initial model: the ClientApp's imports (torch, fedcmi; seconds per process) are then done before the
    discovery query arrives instead of after it. Not when Ray restarts a crashed actor: there the warm-up
    would only keep the actor unavailable longer (messages sent to it meanwhile wait for it)."""
    import warnings

    import ray

    with warnings.catch_warnings():  # Ray 2.55 warns about its own deprecated actor_id inside this call
        warnings.simplefilter("ignore")
        if ray.get_runtime_context().was_current_actor_reconstructed:
            return
    from fedcmi.runtime.apps import client_app

    client_app()  # imports the ClientApp's module


def _free_workers_on_stop(tracked: _Backends) -> None:
    """On a stop request, kill the client actors: a worker blocked on a client that is still training
    (Flower waits for its result before it looks at its stop event) gets an error at once instead. Runs
    until Ray is shut down, killing actors as they turn up (one may be handed a message meanwhile)."""
    while not STOP.wait(0.2):
        if tracked.closed:
            return
    logging.getLogger("flwr").setLevel(logging.CRITICAL)  # the killed actors' errors are expected
    import ray

    with contextlib.suppress(Exception):  # nor the workers' and raylet's last words about it
        importlib.import_module("ray._private.worker").global_worker_stdstream_dispatcher.remove_handler(
            "ray_print_logs")
    killed: set[str] = set()
    while True:
        with tracked.lock:
            if tracked.closed:
                break
            for pool in tracked.pools:
                for actor in [*list(pool.pool), *list(pool._future_to_actor.values())]:
                    key = actor._actor_id.hex()
                    if key not in killed:
                        killed.add(key)
                        with contextlib.suppress(Exception):  # already gone is fine
                            ray.kill(actor, no_restart=True)
        time.sleep(0.2)
    logging.getLogger("fedcmi").info("stop: %s client actor(s) killed", len(killed))


def simulate(cfg: RunConfig, reporter: Callable[[dict[str, Any]], None] | None = None,
             verbose: bool = False, resume: bool = False, client_app: Any = None) -> RunDirectory:
    """Run (or with ``resume``, continue) ``cfg`` on Flower's simulation engine; returns the run directory."""
    from fedcmi.runtime.apps import make_server_app

    outcome: dict[str, Any] = {}
    run_app(make_server_app(cfg, reporter, outcome, resume), cfg, verbose, client_app)
    if "interrupted" in outcome:
        raise outcome["interrupted"]
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
