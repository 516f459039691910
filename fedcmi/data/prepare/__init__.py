"""``fedcmi prepare``: read a real data set in its distributed layout, write a prepared directory.

The prepared directory is what :func:`fedcmi.data.prepared.load_prepared` opens: a ``DatasetDict`` (splits
``train``/``test``; columns ``idx``, ``key``, ``a``, ``b``, ``label``), ``fedcmi.json`` and
``prepare-report.txt`` (the samples that were skipped, with the file and the reason).
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from fedcmi.data.prepare.writer import Outcome, Source, write_prepared
from fedcmi.data.prepared import PREPARED_SUBDIR
from fedcmi.data.sources import PREPARED_SOURCES
from fedcmi.errors import ConfigError

PREPARABLE = tuple(PREPARED_SOURCES)


def build_source(name: str, root: Path, **options: Any) -> Source:
    """The :class:`Source` of a data set; ``options`` are its keyword arguments (frames, image_size, ...)."""
    if not root.is_dir():
        raise ConfigError(f"{name}: root {str(root)!r} does not exist")
    opts = {k: v for k, v in options.items() if v is not None}
    if name not in PREPARED_SOURCES:
        raise ConfigError(f"unknown data set {name!r}: must be one of {', '.join(PREPARABLE)}")
    source = importlib.import_module(PREPARED_SOURCES[name]).source
    takes = [p for p in inspect.signature(source).parameters if p != "root"]
    unknown = sorted(set(opts) - set(takes))
    if unknown:
        raise ConfigError(f"{name}: option(s) {', '.join(unknown)} do not apply (it takes {', '.join(takes)})")
    return source(root, **opts)


def prepare(name: str, root: str | Path, out: str | Path | None = None, show_progress: bool = True,
            shard_size: int = 256, **options: Any) -> Outcome:
    """Prepare ``name`` from ``root`` into ``out`` (default ``<root>/fedcmi-prepared``); resumable."""
    root_path = Path(root).expanduser()
    src = build_source(name, root_path, **options)
    target = Path(out).expanduser() if out else root_path / PREPARED_SUBDIR
    return write_prepared(src, target, shard_size=shard_size, show_progress=show_progress)


__all__ = ["PREPARABLE", "Outcome", "build_source", "prepare"]
