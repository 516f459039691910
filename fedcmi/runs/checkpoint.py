"""Checkpoints of a run: the global model (safetensors) and the server state (JSON), written atomically.

Nothing is unpickled on load: tensors come from safetensors, state from JSON, and the model file's SHA-256
is recorded in the state so a torn or swapped file is detected instead of silently resumed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from fedcmi.errors import ConfigError
from fedcmi.runs.files import atomic_write, save_tensors

CHECKPOINT_DIR = "checkpoint"


class CheckpointError(ConfigError):
    """A checkpoint is missing, corrupt or inconsistent (bad input: the CLI exits with code 2)."""


@dataclass
class Checkpoint:
    round: int
    tensors: dict[str, torch.Tensor]
    strategy: dict[str, Any]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(run_dir: str | Path, server_round: int, tensors: dict[str, torch.Tensor],
                    strategy_state: dict[str, Any]) -> None:
    """Model first, then the state that names it: a crash in between leaves the previous pair valid."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    model_path = save_tensors(folder / f"model-{server_round}.safetensors", tensors)
    state = {"round": server_round, "model": model_path.name, "sha256": _sha256(model_path),
             "strategy": strategy_state}
    atomic_write(folder / "state.json", json.dumps(state) + "\n")
    for old in folder.glob("model-*.safetensors"):
        if old != model_path:
            old.unlink(missing_ok=True)


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    folder = Path(run_dir) / CHECKPOINT_DIR
    state_path = folder / "state.json"
    if not state_path.is_file():
        raise CheckpointError(f"{run_dir}: no checkpoint ({CHECKPOINT_DIR}/state.json); the run never finished "
                              "a round, or the folder is not a fedcmi run directory")
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        server_round, model_name, digest = int(state["round"]), str(state["model"]), str(state["sha256"])
        strategy_state = dict(state["strategy"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{state_path}: corrupt checkpoint state ({exc})") from None
    model_path = folder / Path(model_name).name  # a name only: never a path from the file
    if not model_path.is_file():
        raise CheckpointError(f"{model_path}: checkpoint model file is missing")
    if _sha256(model_path) != digest:
        raise CheckpointError(f"{model_path}: checksum does not match {state_path.name}; the file is corrupt")
    try:
        tensors = load_file(str(model_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{model_path}: unreadable checkpoint model ({exc})") from None
    return Checkpoint(server_round, tensors, strategy_state)
