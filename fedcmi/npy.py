"""Every ``.npy`` read in fedcmi (Flower arrays, cached data), one thread at a time.

Why: numpy parses each ``.npy`` header with ``ast.literal_eval``, and CPython 3.11 keeps the AST
constructor's recursion depth in interpreter-wide state, so two threads parsing at once can fail with
``SystemError: AST constructor recursion depth mismatch`` (python/cpython#106905). A server process reads
arrays from several threads: the round loop (aggregation), the evaluation thread (pipelined evaluation),
every cell of ``fedcmi bench --jobs``, and in-process clients; a CI-style test run lost a test to it. The
lock costs little: parsing a model's headers takes well under a millisecond.
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from flwr.app import ArrayRecord

NPY_LOCK = threading.Lock()


def record_arrays(record: ArrayRecord, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """A Flower ArrayRecord (or only its ``keys``) as numpy arrays: ``{k: v.numpy() ...}``, thread-safe."""
    with NPY_LOCK:
        return {k: record[k].numpy() for k in (record.keys() if keys is None else keys)}


def record_state_dict(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """A Flower ArrayRecord as a torch state dict (what ``to_torch_state_dict()`` gives, thread-safe)."""
    with NPY_LOCK:
        return record.to_torch_state_dict()


def load(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """One ``.npy`` file (``np.load``; with ``mmap_mode`` a memory map)."""
    with NPY_LOCK:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read now (an open NpzFile would parse each header when indexed)."""
    with NPY_LOCK, np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def to_b64(a: np.ndarray) -> str:
    """An array as base64 of its float64 ``.npy`` bytes: exact, and JSON (a checkpoint's state file)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a, dtype=np.float64), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def from_b64(text: Any) -> np.ndarray | None:
    """The array :func:`to_b64` wrote, or None if ``text`` is not one (float64, no objects)."""
    if not isinstance(text, str):
        return None
    try:
        raw = base64.b64decode(text, validate=True)
        with NPY_LOCK:
            a = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    return a if a.dtype == np.float64 else None
