"""Checkpoints of a run: the global model (safetensors) and the server state (JSON), written atomically.

Nothing is unpickled on load: tensors come from safetensors, state from JSON, and the model file's SHA-256
is recorded in the state so a torn or swapped file is detected instead of silently resumed. The state must
name the configuration it was trained with (its hash). A checksum only says the files are the ones the state
names, so the content is checked too, field by field, before anything starts: :func:`load_checkpoint` checks
what a checkpoint holds on its own (round, RNG, screen, claims) and :func:`check_content` what the run's
model, classes and server side say (tensor names, shapes, dtypes, finite values; the server steps' state
through the run's :class:`~fedcmi.methods.server_step.ServerSide`, its one validator: FedCMI's guidance and
smoothed statistics, a server optimiser's moments).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from fedcmi.errors import ConfigError
from fedcmi.runs.files import atomic_write, save_tensors
from fedcmi.runs.layout import CHECKPOINT_DIR, CHECKPOINT_MODEL, CHECKPOINT_STATE

if TYPE_CHECKING:
    from fedcmi.methods.server_step import ServerSide

SHA256 = re.compile(r"[0-9a-f]{64}")


class CheckpointError(ConfigError):
    """A checkpoint is missing, corrupt or inconsistent (bad input: the CLI exits with code 2)."""


@dataclass
class Checkpoint:
    round: int
    tensors: dict[str, torch.Tensor]
    strategy: dict[str, Any]
    config_hash: str
    state_path: Path = Path(CHECKPOINT_DIR) / CHECKPOINT_STATE
    model_path: Path = Path(CHECKPOINT_DIR) / CHECKPOINT_MODEL


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(run_dir: str | Path, server_round: int, tensors: dict[str, torch.Tensor],
                    strategy_state: dict[str, Any], config_hash: str) -> None:
    """Model first, then the state that names it: a crash in between leaves the previous pair valid.

    ``config_hash`` (``fedcmi.runs.run_dir.config_hash``) ties the checkpoint to the effective configuration it
    was trained with; a checkpoint without one is never resumed."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    model_path = save_tensors(folder / f"model-{server_round}.safetensors", tensors)
    state = {"round": server_round, "model": model_path.name, "sha256": _sha256(model_path),
             "strategy": strategy_state, "config": config_hash}
    atomic_write(folder / CHECKPOINT_STATE, json.dumps(state) + "\n")
    for old in folder.glob("model-*.safetensors"):
        if old != model_path:
            old.unlink(missing_ok=True)


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    folder = Path(run_dir) / CHECKPOINT_DIR
    state_path = folder / CHECKPOINT_STATE
    if not state_path.is_file():
        raise CheckpointError(f"{run_dir}: no checkpoint ({CHECKPOINT_DIR}/{CHECKPOINT_STATE}); the run never finished "
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
    if not isinstance(config, str) or not SHA256.fullmatch(config):
        what = "has no" if config is None else "has a malformed"
        raise CheckpointError(f"{state_path}: {what} configuration hash (\"config\"); a checkpoint that does not "
                              "name the configuration it was trained with is not resumed")
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
    return Checkpoint(server_round, tensors, strategy_state, config, state_path, model_path)


def check_content(checkpoint: Checkpoint, expected: Mapping[str, torch.Tensor], num_classes: int,
                  server: ServerSide) -> None:
    """Refuse (one line) a checkpoint whose content does not fit the run that would resume it: the model's
    tensors must be exactly ``expected``'s names, shapes and dtypes (the model the run's config builds) with
    finite values, and the server steps' state must pass the run's ``server`` validator (e.g. one finite
    positive temperature per class). Called before anything starts (no Ray, no round)."""
    model, tensors = checkpoint.model_path, checkpoint.tensors
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"{model}: lacks {len(missing)} tensor(s) of the model this configuration builds "
                              f"(first {missing[0]!r})")
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise CheckpointError(f"{model}: holds {len(unknown)} tensor(s) the model this configuration builds does "
                              f"not have (first {unknown[0]!r})")
    for name, want in expected.items():
        got = tensors[name]
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(f"{model}: {name}: shape {tuple(got.shape)}, the model has {tuple(want.shape)}")
        if got.dtype != want.dtype:
            raise CheckpointError(f"{model}: {name}: dtype {got.dtype}, the model has {want.dtype}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise CheckpointError(f"{model}: {name}: holds NaN or Inf; a checkpoint with non-finite weights is "
                                  "not resumed")
    shapes = {k: tuple(v.shape) for k, v in expected.items()}
    reason = server.check_state(checkpoint.strategy, num_classes, shapes)
    if reason:
        raise CheckpointError(f"{checkpoint.state_path}: strategy state {reason}")


def _strategy_state_problem(state: dict[str, Any]) -> str | None:
    """Why the strategy's own state (sampling RNG, screen, claims) cannot be loaded, or None; the server
    steps' part is checked by the run's server side (:func:`check_content`)."""
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
    return None
