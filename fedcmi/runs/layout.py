"""What a run directory holds, by name, and the states ``status.json`` names: spelled here only.

Light on purpose (no torch, no config): the CLI, the bench, the ServerApp and the loopback demo read a run's
files through these names, so a file renamed here is renamed everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_FILE = "config.json"  # the effective configuration (+ modalities, unused keys)
METRICS_JSON, METRICS_CSV = "metrics.json", "metrics.csv"  # one row per recorded round (fedcmi.metrics)
REPLIES_FILE = "replies.csv"  # one row per screened reply: its norms, local steps, weight, ratio and verdict
MODEL_FILE = "model.safetensors"  # the final (served) model, written before the status turns complete
PLOT_FILE = "accuracy.png"
STATUS_FILE = "status.json"  # {"status": one of STATUSES, "rounds": last recorded round, ...}
MARKER = ".fedcmi-run"  # marks a folder as a run directory (only these are ever resumed or overwritten)
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_STATE = "state.json"  # in CHECKPOINT_DIR: round, strategy state, hashes
CHECKPOINT_MODEL = MODEL_FILE  # in CHECKPOINT_DIR: the global model of that round
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # what wandb.init(dir=<run>) creates (wandb=true)
WANDB_STATE = "wandb-run.json"  # {"id": the W&B run id, "round": the last round logged}

RUNNING, COMPLETE, INTERRUPTED, FAILED = "running", "complete", "interrupted", "failed"
STATUSES = (RUNNING, COMPLETE, INTERRUPTED, FAILED)


def run_status(path: Path) -> str | None:
    """``status`` of ``status.json``, or None when unreadable or "complete" without the final model."""
    try:
        status = json.loads((path / STATUS_FILE).read_text(encoding="utf-8"))["status"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return status if (path / MODEL_FILE).is_file() or status != COMPLETE else None


def has_checkpoint(path: Path) -> bool:
    """Whether the run in ``path`` wrote a checkpoint (it can be resumed, or checked for it)."""
    return (path / CHECKPOINT_DIR / CHECKPOINT_STATE).is_file()
