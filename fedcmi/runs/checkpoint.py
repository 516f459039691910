"""Checkpoints of a run: the global model (safetensors) and the server state (JSON), written atomically.

Nothing is unpickled on load: tensors come from safetensors, state from JSON, and the model file's SHA-256
is recorded in the state so a torn or swapped file is detected instead of silently resumed.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
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
    config_hash: str | None = None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(run_dir: str | Path, server_round: int, tensors: dict[str, torch.Tensor],
                    strategy_state: dict[str, Any], config_hash: str | None = None) -> None:
    """Model first, then the state that names it: a crash in between leaves the previous pair valid.

    ``config_hash`` ties the checkpoint to the effective configuration it was trained with."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    model_path = save_tensors(folder / f"model-{server_round}.safetensors", tensors)
    state = {"round": server_round, "model": model_path.name, "sha256": _sha256(model_path),
             "strategy": strategy_state}
    if config_hash is not None:
        state["config"] = config_hash
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
        server_round, model_name, digest = state["round"], str(state["model"]), str(state["sha256"])
        strategy_state = dict(state["strategy"])
        config = state.get("config")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{state_path}: corrupt checkpoint state ({type(exc).__name__}: {exc})") from None
    if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 0:
        raise CheckpointError(f"{state_path}: round {server_round!r} is not a round number")
    reason = _strategy_state_problem(strategy_state)
    if reason:
        raise CheckpointError(f"{state_path}: corrupt strategy state ({reason})")
    model_path = folder / Path(model_name).name  # a name only: never a path from the file
    if not model_path.is_file():
        raise CheckpointError(f"{model_path}: checkpoint model file is missing")
    if _sha256(model_path) != digest:
        raise CheckpointError(f"{model_path}: checksum does not match {state_path.name}; the file is corrupt")
    try:
        tensors = load_file(str(model_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{model_path}: unreadable checkpoint model ({exc})") from None
    return Checkpoint(server_round, tensors, strategy_state, config if isinstance(config, str) else None)


def _strategy_state_problem(state: dict[str, Any]) -> str | None:
    """Why the strategy state (sampling RNG, guidance) cannot be loaded, or None."""
    rng = state.get("rng")
    if not isinstance(rng, (list, tuple)) or len(rng) != 3 or not isinstance(rng[1], (list, tuple)):
        return "rng missing or malformed"
    try:
        random.Random().setstate((rng[0], tuple(rng[1]), rng[2]))
    except (TypeError, ValueError, OverflowError) as exc:
        return f"rng: {exc}"
    if "screen" in state:
        from fedcmi.federated.screening import check_screen_state

        reason = check_screen_state(state["screen"])
        if reason:
            return reason
    claims = state.get("claims", {})
    if not isinstance(claims, dict) or not all(str(k).isdigit() and isinstance(v, int) and not isinstance(v, bool)
                                               and v >= 1 for k, v in claims.items()):
        return "claims: not a mapping of partition ids to sample counts"
    g = state.get("guidance", "missing")
    if g is None:
        return None
    if not isinstance(g, dict) or g.get("dominant") not in ("a", "b"):
        return "guidance missing or malformed"
    ratio, tau = g.get("ratio"), g.get("tau")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        return "guidance ratio is not a number"
    if not isinstance(tau, list) or not all(isinstance(t, (int, float)) and not isinstance(t, bool)
                                            and math.isfinite(t) for t in tau):
        return "guidance tau is not a list of numbers"
    return None
