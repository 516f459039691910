"""The run directory: resolved config, per-round metrics (CSV + JSON, TensorBoard, W&B), final model, accuracy plot.

Every file is written atomically (temporary file + rename) after each round, so an interrupted run keeps
every finished round.

A run directory is written once: a new run claims an empty (or absent) folder by creating its marker file
``.fedcmi-run`` exclusively, and every process that writes it (a run, a resume) holds an exclusive ``flock``
on ``.fedcmi-run`` while it does, so two resumes of one folder cannot race and a folder fedcmi did not create
is never written into.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedcmi.config import META_KEYS, RunConfig, unused_keys
from fedcmi.errors import ConfigError
from fedcmi.metrics import ROUND, accuracy_columns, column_labels
from fedcmi.runs.files import atomic_write, csv_text, save_tensors
from fedcmi.runs.layout import (
    COMPLETE,
    CONFIG_FILE,
    MARKER,
    METRICS_CSV,
    METRICS_JSON,
    MODEL_FILE,
    PLOT_FILE,
    REPLIES_FILE,
    RUNNING,
    STATUS_FILE,
    has_checkpoint,
)

if TYPE_CHECKING:  # torch and safetensors load when a checkpoint is read or a model saved, not to name a folder
    import torch

    from fedcmi.runs.checkpoint import Checkpoint
    from fedcmi.runs.tensorboard import TensorBoardLog
    from fedcmi.runs.wandb_log import WandbLog

# keys that may differ between a checkpoint and its resume (more rounds; the folder's own path)
# keys that never change a result: a resume may change them, and checkpoints from before a key existed still match
RESUMABLE_KEYS = ("num-server-rounds", "out-dir", "pipelined-eval", "discovery-timeout", "tensorboard",
                  "wandb", "wandb-project")


def default_run_dir(cfg: RunConfig, root: str | Path = "runs") -> Path:
    path = Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.name}"
    if path.resolve().parent != Path(root).resolve():
        raise ConfigError(f"run-name={cfg.output.run_name!r}: the run directory must lie in {root}")
    return path


def config_hash(cfg: RunConfig, keys: Collection[str] | None = None) -> str:
    """SHA-256 of the effective configuration a checkpoint was trained with (less the keys a resume may change);
    with ``keys``, of those keys only (the ones a run's config.json had when the run started)."""
    values = {k: v for k, v in cfg.to_dict().items()
              if k not in RESUMABLE_KEYS and (keys is None or k in keys)}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def same_config(path: Path, cfg: RunConfig, digest: str | None) -> bool:
    """Whether ``cfg`` is the configuration a checkpoint of ``path`` was trained with: the same hash, or, for a
    run started before some keys existed, the same hash over the keys its config.json has while every newer key
    is at its default (a new key's default keeps the old behaviour)."""
    if digest == config_hash(cfg):
        return True
    try:
        old = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(old, dict):
        return False
    from fedcmi.config import defaults

    values, default = cfg.to_dict(), defaults()
    newer = [k for k in values if k not in old and k not in RESUMABLE_KEYS]
    return bool(newer) and all(values[k] == default[k] for k in newer) and digest == config_hash(cfg, set(old))


def is_run_dir(path: Path) -> bool:
    """A folder fedcmi created (older runs, from before the marker, by their config.json and checkpoint)."""
    return (path / MARKER).is_file() or ((path / CONFIG_FILE).is_file() and has_checkpoint(path))


def claim(path: Path, resume: bool) -> int:
    """Claim ``path`` for this process; returns the descriptor holding its lock (closed by :meth:`release`).

    A new run needs an absent or empty folder and creates the marker exclusively (two runs started at once
    on one folder: one of them is refused); a resume needs a folder fedcmi created. Either way the lock must
    be free: a folder another process is writing is refused.
    """
    if resume:
        if not path.is_dir() or not is_run_dir(path):
            raise ConfigError(f"{path}: not a fedcmi run directory; refusing to write into it")
        flags = os.O_RDWR | os.O_CREAT
    else:
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ConfigError(f"{path}: exists and is not empty; a run directory is written once (choose another, "
                              "or continue it with --resume)")
        path.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path / MARKER, flags, 0o644)
    except FileExistsError:
        raise ConfigError(f"{path}: another run claimed this folder first") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"{path}: another process is writing this run directory") from None
    if not resume:
        os.write(fd, json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid()}).encode())
    return fd


def resumable(path: Path, cfg: RunConfig, expected: Mapping[str, torch.Tensor] | None = None,
              num_classes: int | None = None) -> Checkpoint:
    """The checkpoint of ``path`` if ``cfg`` may resume it: readable, trained with this configuration (its hash
    is mandatory; only num-server-rounds may grow), its content fitting the model ``cfg`` builds (``expected``
    and ``num_classes``, built here when not given: :func:`expected_model`), its metrics all present. Checked
    before anything starts; one-line errors."""
    from fedcmi.runs.checkpoint import CheckpointError, check_content, load_checkpoint

    checkpoint = load_checkpoint(path)
    if not same_config(path, cfg, checkpoint.config_hash):
        raise CheckpointError(f"{path / 'config.json'}: differs from the configuration the checkpoint was trained "
                              "with (edited after the run started?); refusing to resume a different run")
    if expected is None or num_classes is None:
        expected, num_classes = expected_model(cfg)
    from fedcmi.federated.server_side import server_side

    check_content(checkpoint, expected, num_classes, server_side(cfg, num_classes))
    if checkpoint.round > cfg.server.num_server_rounds:
        raise CheckpointError(f"{path}: the checkpoint is at round {checkpoint.round}, beyond num-server-rounds="
                              f"{cfg.server.num_server_rounds}")
    check_metrics(path, checkpoint.round)
    return checkpoint


def expected_model(cfg: RunConfig) -> tuple[dict[str, torch.Tensor], int]:
    """The state dict of the model ``cfg`` builds (what a checkpoint of its run must hold) and its classes.

    Built on the CPU with torch's global RNG left as it was (the run seeds its own initial model)."""
    import torch

    from fedcmi.data import load_data
    from fedcmi.methods.registry import method_spec
    from fedcmi.models import ModelSpec, model_for

    data = load_data(cfg)
    with torch.random.fork_rng(devices=[]):
        model = model_for(cfg.model, ModelSpec.of(data), method_spec(cfg.method.strategy).decomposed)
    return model.state_dict(), data.num_classes


def check_metrics(path: Path, rounds: int) -> None:
    """``metrics.json`` of a run to resume holds rounds 0..``rounds`` (checked before anything starts)."""
    file = path / METRICS_JSON
    try:
        rows = json.loads(file.read_text(encoding="utf-8"))
        present = [int(r[ROUND]) for r in rows]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{file}: unreadable or truncated ({type(exc).__name__}); cannot resume") from None
    if present[:rounds + 1] != list(range(rounds + 1)):
        raise ConfigError(f"{file}: rounds 0..{rounds} of the checkpoint are not all present; cannot resume")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class RunDirectory:
    """One run's output folder; ``add_round`` rewrites ``metrics.csv``/``metrics.json`` each round."""

    def __init__(self, path: str | Path, cfg: RunConfig, modality_names: tuple[str, str],
                 resume_after: int | None = None) -> None:
        """A new run directory, or (``resume_after=k``) an existing one keeping its rows of rounds 0..k."""
        self.path = Path(path)
        self.lock = claim(self.path, resume=resume_after is not None)
        self.cfg = cfg
        self.modality_names = modality_names
        self.rows: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        self.tensorboard: TensorBoardLog | None = None
        self.wandb: WandbLog | None = None
        self.status = RUNNING
        if resume_after is not None:
            check_metrics(self.path, resume_after)
        self.write_config(cfg)  # on a resume too: an extended run records its new num-server-rounds
        self.finish(RUNNING, rounds=resume_after)  # None: no round recorded yet; add_round updates it
        if resume_after is None:
            self._open_trackers()
            return
        rows = json.loads((self.path / METRICS_JSON).read_text(encoding="utf-8"))
        for row in rows:
            if row[ROUND] <= resume_after:
                self.rows.append({k: (math.nan if v is None and k == "ratio" else v) for k, v in row.items()})
        if [r[ROUND] for r in self.rows] != list(range(resume_after + 1)):
            raise ValueError(f"{self.path / METRICS_JSON}: rounds 0..{resume_after} are not all present")
        self.add_round(self.rows.pop())  # rewrite both files without rows past the checkpoint
        replies = self.path / REPLIES_FILE
        if replies.is_file():
            with replies.open(newline="", encoding="utf-8") as f:
                self.add_replies([r for r in csv.DictReader(f) if int(r["round"]) <= resume_after])
        self._open_trackers()  # after the rewrite above: the kept rows are not logged again

    def _open_trackers(self) -> None:
        """TensorBoard and W&B, each when its key is on; ``self.rows``: the rows a resume keeps."""
        if self.cfg.output.tensorboard:
            from fedcmi.runs.tensorboard import TensorBoardLog

            modalities, _ = META_KEYS
            self.tensorboard = TensorBoardLog.open(self.path, {**self.cfg.to_dict(),
                                                               modalities: list(self.modality_names)},
                                                   self.modality_names, self.rows)
        if self.cfg.output.wandb:
            from fedcmi.runs.wandb_log import WandbLog

            self.wandb = WandbLog.open(self.path, self.config_dict(self.cfg), self.modality_names,
                                       self.cfg.output.wandb_project, self.rows)

    def config_dict(self, cfg: RunConfig) -> dict[str, Any]:
        """What config.json holds: the effective configuration, the modality names, the unused method keys."""
        modalities, unused = META_KEYS
        return {**cfg.to_dict(), modalities: list(self.modality_names), unused: unused_keys(cfg)}

    def write_config(self, cfg: RunConfig) -> None:
        """config.json: the effective configuration (exactly the values that ran), the data set's modality
        names and the method keys the chosen strategy does not read."""
        atomic_write(self.path / CONFIG_FILE, json.dumps(self.config_dict(cfg), indent=2) + "\n")

    def add_round(self, row: Mapping[str, Any]) -> None:
        """Record a round: metrics.json and metrics.csv rewritten with it, then status.json says it is the last
        recorded round (``running``, until the run ends and :meth:`finish` writes how it ended)."""
        self.rows.append(dict(row))
        atomic_write(self.path / METRICS_JSON, json.dumps(
            [{k: _json_safe(v) for k, v in r.items()} for r in self.rows], indent=1) + "\n")
        atomic_write(self.path / METRICS_CSV, self._csv())
        if self.tensorboard is not None:
            self.tensorboard.add_round(row)
        if self.wandb is not None:
            self.wandb.add_round(row)
        self.finish(RUNNING, rounds=int(row[ROUND]))

    def add_replies(self, rows: list[Mapping[str, Any]]) -> None:
        """Append a round's screened replies to replies.csv (rewritten whole, atomically)."""
        if not rows:
            return
        self.replies += [dict(r) for r in rows]
        atomic_write(self.path / REPLIES_FILE, csv_text(self.replies))

    def _csv(self) -> str:
        flat = []
        for r in self.rows:
            out = {}
            for k, v in r.items():
                if isinstance(v, list):
                    out.update({f"{k}_{i}": x for i, x in enumerate(v)})
                else:
                    out[k] = v
            flat.append(out)
        return csv_text(flat)

    def save_model(self, state_dict: Mapping[str, torch.Tensor]) -> Path:
        return save_tensors(self.path / MODEL_FILE, state_dict,
                            metadata={"dataset": self.cfg.data.dataset, "strategy": self.cfg.method.strategy})

    def plot(self) -> Path:
        """accuracy.png: two panels. Left: multimodal and each modality alone (the numbers that matter);
        right: each alone with the other slot zeroed, over the worst class (thin, grey, underneath)."""
        from matplotlib.figure import Figure  # not pyplot: its global state is not thread-safe (bench --jobs)
        from matplotlib.ticker import MaxNLocator

        a, b = self.modality_names
        labels = column_labels(self.modality_names)
        mm, alone_a, alone_b, zero_a, zero_b, worst = accuracy_columns(self.modality_names)
        colour = {mm: "black", alone_a: "tab:blue", alone_b: "tab:orange", zero_a: "tab:blue", zero_b: "tab:orange"}
        rounds = [r[ROUND] for r in self.rows]

        def series(key: str) -> list[float]:
            return [math.nan if r.get(key) is None else float(r[key]) for r in self.rows]

        fig = Figure(figsize=(11, 4.8))
        left, right = fig.subplots(1, 2, sharey=True)
        for key in (mm, alone_a, alone_b):
            left.plot(rounds, series(key), color=colour[key], lw=2 if key == mm else 1.5, label=labels[key])
        right.plot(rounds, series(worst), color="0.6", lw=1, zorder=1, label=labels[worst])
        for key in (zero_a, zero_b):
            right.plot(rounds, series(key), "--", color=colour[key], lw=1.5, zorder=2, label=labels[key])
        left.set_title("multimodal and each modality alone", fontsize=10)
        right.set_title("alone with the other slot zeroed; worst class", fontsize=10)
        for ax in (left, right):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("round")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
        left.set_ylabel("test accuracy")
        fig.suptitle(f"{self.cfg.data.dataset} / {self.cfg.method.strategy} ({a} + {b})", fontsize=11)
        fig.tight_layout()
        path = self.path / PLOT_FILE
        buf = io.BytesIO()
        fig.savefig(buf, dpi=100)
        atomic_write(path, buf.getvalue())
        return path

    def finish(self, status: str, **extra: Any) -> None:
        self.status = status
        atomic_write(self.path / STATUS_FILE, json.dumps({"status": status, **extra}, indent=2) + "\n")

    def release(self) -> None:
        """Close the TensorBoard and W&B logs (W&B's run marked failed unless the run completed) and give up the
        folder's lock (a process that exits releases it anyway)."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb is not None:
            self.wandb.close(exit_code=0 if self.status == COMPLETE else 1)
            self.wandb = None
        if self.lock >= 0:
            os.close(self.lock)
            self.lock = -1
