"""The ServerApp: build the strategy, run the rounds, evaluate centrally, write the run directory.

``app`` is what ``flwr run .`` loads (config from ``context.run_config``); ``make_server_app`` binds a
resolved config and a progress reporter for ``fedcmi simulate``.

The round loop is :func:`run_rounds` rather than ``Strategy.start``: it checkpoints after every round,
resumes from a checkpoint at the right round number, and skips rounds with too few good replies.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid, ServerApp

from fedcmi.config import ConfigError, RunConfig, effective, load_toml, set_by_flower_run
from fedcmi.config.run_config import FIELDS, section_of
from fedcmi.data import load_data
from fedcmi.data.partition import federation
from fedcmi.federated.aggregation import rule
from fedcmi.federated.evaluation import evaluate
from fedcmi.federated.membership import Known, Membership, load_registry
from fedcmi.federated.server_side import server_side
from fedcmi.methods.registry import method_spec
from fedcmi.methods.server_step import Calibrate
from fedcmi.metrics import round_line, round_row
from fedcmi.models import ModelSpec, model_for
from fedcmi.npy import record_state_dict
from fedcmi.runs.checkpoint import save_checkpoint
from fedcmi.runs.layout import COMPLETE, CONFIG_FILE, FAILED, INTERRUPTED, has_checkpoint, run_status
from fedcmi.runs.run_dir import RunDirectory, config_hash, default_run_dir, resumable
from fedcmi.runtime.interrupt import STOP, Interrupted, StoppableGrid, at_hard_exit
from server.pipeline import Recorder, RoundSnapshot
from server.report import RoundReport
from server.strategy import FedCMIStrategy

logger = logging.getLogger("fedcmi")

Reporter = Callable[[dict[str, Any]], None]
_MODEL_INIT = threading.Lock()


class RunAborted(RuntimeError):
    """Too many rounds in a row had too few good replies: the federation is not training."""


def _modality_name(data_modalities: tuple[str, str], code: str | None) -> str:
    if code is None:
        return ""
    return data_modalities[0] if code == "a" else data_modalities[1]


def log_round(row: dict[str, Any], total: int, names: tuple[str, str]) -> None:
    """One line per round through Flower's logger, as Flower's own strategies report (``flwr run --stream``
    shows it; ``fedcmi simulate`` prints its own line instead)."""
    flwr_log(INFO, "%s", round_line(row, total, names))


def membership_for(cfg: RunConfig) -> Membership:
    """What backs each node's claims (``membership=``): the federation this config builds, the operator's node
    registry, or nothing (claims capped per round)."""
    mode = cfg.reliability.membership
    if mode == "auto":
        mode = "registry" if cfg.reliability.node_registry else "federation"
    if mode == "registry":
        if not cfg.reliability.node_registry:
            raise ConfigError("membership=registry needs node-registry=FILE (the operator's node registry)")
        return Membership("registry", load_registry(cfg.reliability.node_registry))
    if mode == "federation":
        known = {s.partition_id: Known(s.partition_id, s.kind, len(s.indices)) for s in federation(cfg)}
        return Membership("federation", known)
    return Membership("claims")


def build_strategy(cfg: RunConfig, model_spec: ModelSpec, membership: Membership | None = None) -> FedCMIStrategy:
    """The run's strategy; ``membership`` None = claims mode (tests; ``run_server`` passes ``membership_for``)."""
    return FedCMIStrategy(membership=membership, clients_per_round=cfg.server.clients_per_round, model_spec=model_spec,
                          run_config=cfg.client_dict(), server=server_side(cfg, model_spec.num_classes),
                          seed=cfg.federation.seed, min_replies=cfg.reliability.min_replies,
                          max_update_norm=cfg.reliability.max_update_norm,
                          update_norm_multiple=cfg.reliability.update_norm_multiple,
                          use_modalities=method_spec(cfg.method.strategy).modalities, rule=rule(cfg.server.aggregation),
                          discovery_timeout=cfg.reliability.discovery_seconds)


def run_rounds(strategy: FedCMIStrategy, grid: Grid, arrays: ArrayRecord, rounds: range, timeout: float,
               max_consecutive_skips: int, on_round_end: Callable[[int, ArrayRecord], None]) -> ArrayRecord:
    """Train the given rounds; ``on_round_end`` evaluates and checkpoints after each (skipped ones too).

    Each round runs in Flower's order (``Strategy.start``): train, aggregate, then the evaluate phase with the
    new weights (CCVR's fresh moments), and only then the round's record.
    A stop request (``fedcmi.runtime.interrupt.STOP``) raises :class:`Interrupted` before a round's replies
    are aggregated or while its evaluate phase waits: a round is aggregated and recorded whole or not at all
    (resuming repeats it from the previous checkpoint)."""
    skips = 0
    for server_round in rounds:
        STOP.check()
        logger.info("round %s/%s", server_round, rounds.stop - 1)
        messages = strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
        replies = grid.send_and_receive(messages, timeout=timeout)
        STOP.check()
        new_arrays, _ = strategy.aggregate_train(server_round, replies)
        skips = skips + 1 if new_arrays is None else 0
        if new_arrays is not None:
            arrays = new_arrays
        evaluate_phase(strategy, grid, server_round, arrays, timeout)
        on_round_end(server_round, arrays)
        if skips >= max_consecutive_skips:
            report = strategy.reports.get(server_round)
            faults = (report.faults if report else []) or ["no reply"]
            raise RunAborted(f"{skips} rounds in a row without min-replies good replies (round {server_round}: "
                             f"{faults[0]})")
    return arrays


def evaluate_phase(strategy: FedCMIStrategy, grid: Grid, server_round: int, arrays: ArrayRecord,
                   timeout: float) -> None:
    """Flower's evaluate phase with the round's new weights: with ``ccvr-moments=fresh`` it gathers the
    multimodal nodes' CCVR moments (``FedCMIStrategy.configure_evaluate``); otherwise it sends nothing."""
    messages = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
    if not messages:
        return
    replies = grid.send_and_receive(messages, timeout=timeout)
    strategy.aggregate_evaluate(server_round, replies)


def run_server(grid: Grid, cfg: RunConfig, reporter: Reporter | None = None, resume: bool = False) -> RunDirectory:
    """Run (or resume) the rounds of ``cfg`` on ``grid``; every finished round is on disk when it ends.

    On a stop request it raises :class:`Interrupted` within a poll interval (while waiting for nodes or
    replies) or at the next step, after writing ``status.json`` as ``interrupted`` with the last complete
    round; ``--resume`` continues from there exactly."""
    grid = StoppableGrid(grid)
    data = load_data(cfg)
    method = method_spec(cfg.method.strategy)
    model_spec = ModelSpec.of(data)
    with _MODEL_INIT:  # torch's global RNG draws the initial model: one seeded draw at a time (fedcmi bench --jobs)
        torch.manual_seed(cfg.federation.seed)
        model = model_for(cfg.model, model_spec, method.decomposed)
    out = Path(cfg.output.out_dir) if cfg.output.out_dir else default_run_dir(cfg)
    cfg = cfg.replace(out_dir=str(out))
    strategy = build_strategy(cfg, model_spec, membership_for(cfg))
    checkpoint = resumable(out, cfg, model.state_dict(), data.num_classes) if resume else None
    run_dir = RunDirectory(out, cfg, data.modalities, resume_after=checkpoint.round if checkpoint else None)
    digest = config_hash(cfg)
    logger.info("writing results to %s", out)
    xa, xb, y = (torch.from_numpy(t) for t in data.arrays("test"))
    clock = {"t": time.monotonic()}

    def served(server_round: int, calibrate: Calibrate | None) -> torch.nn.Module:
        """The model as evaluated and saved: calibrated by the server side when it has a calibration (CCVR's
        fusion head, with ccvr-steps)."""
        return model if calibrate is None else calibrate(model, server_round)

    def snapshot(server_round: int, arrays: ArrayRecord) -> RoundSnapshot:
        """The round as it ended: what its record reads, before the next round changes the strategy."""
        now = time.monotonic()
        wall, clock["t"] = now - clock["t"], now
        return RoundSnapshot(server_round, arrays, dict(strategy.train_metrics.get(server_round, {})),
                             strategy.guidance, copy.copy(strategy.reports.get(server_round, RoundReport())),
                             strategy.server.calibration(), strategy.state(), wall)

    def record(snap: RoundSnapshot) -> None:
        """Evaluate centrally, write the metrics row, then the checkpoint that names it."""
        state = record_state_dict(snap.arrays)  # read once: load_state_dict copies it, the checkpoint saves it
        model.load_state_dict(state)
        res = evaluate(served(snap.server_round, snap.calibrate), xa, xb, y, data.num_classes, data.modalities,
                       cfg.server.eval_batch_size, use_modalities=method.modalities,
                       infiltration_path=method.infiltration_path)
        guidance = snap.guidance  # what this round's statistics say (sent with the next round)
        wall = snap.wall_s if cfg.server.pipelined_eval else time.monotonic() - clock["t"] + snap.wall_s
        row = round_row(snap.server_round, res, {k: v for k, v in snap.train_metrics.items() if k.startswith("loss")},
                        _modality_name(data.modalities, guidance.dominant if guidance else None),
                        guidance.ratio if guidance else math.nan, snap.report.columns(), wall,
                        guidance.tau if guidance else None)
        if not cfg.server.pipelined_eval:
            clock["t"] = time.monotonic()
            STOP.check()  # from here the row and its checkpoint are written together
        run_dir.add_round(row)
        run_dir.add_replies(snap.report.screened)
        log_round(row, cfg.server.num_server_rounds, data.modalities)
        if reporter is not None:
            reporter(row)
        save_checkpoint(out, snap.server_round, state, snap.strategy_state, digest)

    # Sequential: the round is recorded before the next starts, and a stop request during its evaluation
    # leaves it unrecorded. Pipelined: recorded while the next round trains; a round that was aggregated is
    # always recorded (close() finishes it), so either way the checkpoint and metrics.json agree.
    recorder = Recorder(record, background=cfg.server.pipelined_eval)

    def end_of_round(server_round: int, arrays: ArrayRecord) -> None:
        STOP.check()
        recorder.submit(snapshot(server_round, arrays))

    def hard_exit(signum: int) -> None:
        """A second Ctrl-C leaves at once: the folder still says where it stopped."""
        done = len(run_dir.rows) - 1
        run_dir.finish(INTERRUPTED, rounds=done if done >= 0 else None, signal=signal.Signals(signum).name)

    try:
        if checkpoint is None:
            arrays = ArrayRecord(model.state_dict())
            end_of_round(0, arrays)
            first = 1
        else:
            arrays = ArrayRecord(checkpoint.tensors)
            strategy.load_state(checkpoint.strategy)
            first = checkpoint.round + 1
            logger.info("resuming %s after round %s", out, checkpoint.round)
        with at_hard_exit(hard_exit):
            arrays = run_rounds(strategy, grid, arrays, range(first, cfg.server.num_server_rounds + 1),
                                cfg.reliability.round_timeout, cfg.reliability.max_consecutive_skips, end_of_round)
        recorder.drain()
        STOP.check()
        model.load_state_dict(record_state_dict(arrays))
        run_dir.save_model(served(cfg.server.num_server_rounds, strategy.server.calibration()).state_dict())
        run_dir.plot()
    except Interrupted as exc:
        recorder.close()
        done = len(run_dir.rows) - 1
        run_dir.finish(INTERRUPTED, rounds=done if done >= 0 else None, signal=exc.name)
        run_dir.release()
        flwr_log(INFO, "interrupted (%s) after round %s of %s; continue with: fedcmi simulate --resume %s",
                 exc.name, done, cfg.server.num_server_rounds, out)
        raise
    except BaseException as exc:
        recorder.close()
        run_dir.finish(FAILED, error=f"{type(exc).__name__}: {exc}", rounds=len(run_dir.rows) - 1)
        run_dir.release()
        raise
    recorder.close()
    run_dir.finish(COMPLETE, rounds=cfg.server.num_server_rounds)
    run_dir.release()
    return run_dir


def make_server_app(cfg: RunConfig, reporter: Reporter | None = None, outcome: dict[str, Any] | None = None,
                    resume: bool = False) -> ServerApp:
    """A ServerApp bound to a resolved config (for ``fedcmi simulate``)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_dir = run_server(grid, cfg, reporter, resume=resume)
        except Interrupted as exc:  # not an error of the app: the caller (fedcmi simulate) reports it
            if outcome is None:
                raise
            outcome["interrupted"] = exc
            return
        if outcome is not None:
            outcome["run_dir"] = run_dir

    return server_app


app = ServerApp()

# A submitted run (``flwr run``, anyone holding the CA certificate) may set only these keys: what to train
# and how. Paths, the runtime, the server's reliability policy and its defences come from the server's own
# configuration: RUNS_DIR_ENV (the folder of run directories, default ``runs``) and SERVER_CONFIG_ENV (a TOML
# file of server-side keys, e.g. data-root, round-timeout, update-norm-multiple), set where the SuperLink (or
# the ServerApp's SuperExec container) is started.
RUNS_DIR_ENV = "FEDCMI_RUNS_DIR"
SERVER_CONFIG_ENV = "FEDCMI_SERVER_CONFIG"
SERVER_PATH_KEYS = ("data-root", "text-encoder", "encoder-weights", "out-dir", "ray-address", "node-registry")
SUBMITTABLE = tuple(k for k in FIELDS if section_of(k) in ("data", "federation", "training", "method", "model")
                    and k not in SERVER_PATH_KEYS) + (
    "device", "bf16", "num-server-rounds", "clients-per-round", "aggregation", "server-opt", "server-lr",
    "server-beta1", "server-beta2", "server-tau", "eval-batch-size", "run-name",
    "tensorboard")

# What a submitted run may ask the server to pay for: upper bounds of its size keys (docs/deployment.md). The
# operator changes them, or bounds another numeric submittable key, in the [limits] table of SERVER_CONFIG_ENV.
# A key the server's own file sets is the operator's choice and not held to them.
SUBMIT_LIMITS: dict[str, float] = {
    "train-size": 100_000, "test-size": 50_000, "num-clients": 1_000, "clients-per-round": 1_000,
    "num-server-rounds": 1_000, "local-epochs": 100, "batch-size": 4_096, "eval-batch-size": 4_096,
    "feature-dim": 1_024, "sgmft-tokens": 64, "sgmft-heads": 64, "sgmft-layers": 8, "ccvr-steps": 10_000,
    "ccvr-samples": 10_000,
}
LIMITS_TABLE = "limits"
# Complete runs are final: a submitter continues an unfinished run with the rounds it was started with. Only
# the runs the operator names here may get another num-server-rounds (more rounds for a complete one).
EXTEND_KEY = "extend-runs"


def server_settings() -> tuple[dict[str, Any], dict[str, float], frozenset[str]]:
    """The server's own configuration ($FEDCMI_SERVER_CONFIG): its run keys, the limits on submitted runs
    (the defaults with the file's [limits] over them) and the run names it lets submitters extend."""
    server_file = os.environ.get(SERVER_CONFIG_ENV)
    keys = load_toml(server_file) if server_file else {}
    where = f"${SERVER_CONFIG_ENV}"
    table = keys.pop(LIMITS_TABLE, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: {LIMITS_TABLE} must be a table ([{LIMITS_TABLE}] key = maximum)")
    limits = dict(SUBMIT_LIMITS)
    for key, value in table.items():
        if key not in SUBMITTABLE or FIELDS[key].type not in ("int", "float"):
            raise ConfigError(f"{where}: [{LIMITS_TABLE}] {key}: not a numeric key a submitted run can set")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{where}: [{LIMITS_TABLE}] {key}={value!r}: must be a number > 0")
        limits[key] = value
    extend = keys.pop(EXTEND_KEY, [])
    if not isinstance(extend, list) or not all(isinstance(n, str) and n for n in extend):
        raise ConfigError(f"{where}: {EXTEND_KEY} must be a list of run names (e.g. {EXTEND_KEY} = [\"run1\"])")
    bad = sorted(k for k in keys if k in ("out-dir", "run-name"))
    if bad:
        raise ConfigError(f"{where}: {bad[0]} is chosen per run (the folder is ${RUNS_DIR_ENV})")
    return keys, limits, frozenset(extend)


def submitted_config(run_config: dict[str, Any]) -> tuple[RunConfig, bool]:
    """The effective config of a submitted run and whether it resumes, from the submitted keys (allowlisted,
    bounded by the server's limits) and the server's own configuration; refuses a key a submitter may not set,
    a value above its limit, and another num-server-rounds for an existing run the operator did not open."""
    submitted = set_by_flower_run(run_config)
    refused = sorted(k for k in submitted if k not in SUBMITTABLE)
    if refused:
        raise ConfigError(f"{refused[0]}: a submitted run cannot set it (server-side; set it in "
                          f"${SERVER_CONFIG_ENV} on the server)")
    server_keys, limits, extendable = server_settings()
    cfg = effective({**submitted, **server_keys})
    operator, values = {k.replace("_", "-") for k in server_keys}, cfg.to_dict()
    for key, limit in limits.items():
        value = values[key]
        if key not in operator and value > limit:
            raise ConfigError(f"{key}={value}: above the server's limit for submitted runs ({limit:g}; the "
                              f"operator sets it in [{LIMITS_TABLE}] of ${SERVER_CONFIG_ENV})")
    cfg.check_run()
    root = Path(os.environ.get(RUNS_DIR_ENV, "runs"))
    out = root / cfg.output.run_name if cfg.output.run_name else default_run_dir(cfg, root)
    # A deployed run resumes when its run-name names an unfinished run of the same configuration (run_server
    # checks the checkpoint's config hash and content and refuses anything else), or a run the operator opened.
    resume = False
    if cfg.output.run_name and has_checkpoint(out):
        resume = _continues(out, cfg, cfg.output.run_name in extendable)
    return cfg.replace(out_dir=str(out)), resume


def _continues(out: Path, cfg: RunConfig, extendable: bool) -> bool:
    """Whether a submission of an existing run's name continues it; refuses another num-server-rounds (an
    extension of a complete run, or a change of an unfinished one) unless the operator opened the run."""
    done, started = _rounds_done(out), _rounds_started(out)
    how = (f"only the operator can let it have another (list it in {EXTEND_KEY} of ${SERVER_CONFIG_ENV} on the "
           "server)")
    if run_status(out) == COMPLETE:
        if cfg.server.num_server_rounds <= done:
            return False  # the same or fewer rounds: a new run under a taken name, refused by the run directory
        if not extendable:
            raise ConfigError(f"run-name={cfg.output.run_name!r}: that run is complete ({done} rounds) and complete "
                              f"runs are final; num-server-rounds={cfg.server.num_server_rounds} would extend it: "
                              f"{how}")
        return True
    if cfg.server.num_server_rounds != started and not extendable:
        raise ConfigError(f"run-name={cfg.output.run_name!r}: continues an unfinished run of "
                          f"num-server-rounds={started}, not {cfg.server.num_server_rounds}; {how}")
    return True


def _rounds_done(out: Path) -> int:
    from fedcmi.runs.checkpoint import load_checkpoint

    return load_checkpoint(out).round


def _rounds_started(out: Path) -> int:
    """num-server-rounds of the run in ``out`` (its config.json)."""
    import json

    file = out / CONFIG_FILE
    try:
        rounds = json.loads(file.read_text(encoding="utf-8"))["num-server-rounds"]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{file}: unreadable ({type(exc).__name__}); cannot continue this run") from None
    if isinstance(rounds, bool) or not isinstance(rounds, int):
        raise ConfigError(f"{file}: num-server-rounds {rounds!r} is not a number of rounds; cannot continue this run")
    return rounds


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run .``: config from ``[tool.flwr.app.config]`` and ``--run-config``.

    Keys whose value differs from the built-in default count as set by the user; the method's defaults fill
    the rest (``fedcmi.config.parse.set_by_flower_run``). Only ``SUBMITTABLE`` keys may be set."""
    cfg, resume = submitted_config(dict(context.run_config))
    run_server(grid, cfg, resume=resume)
