"""Embedded data sets built once per machine, then memory-mapped by every process that needs them.

Why: a simulation builds its data set in the driver *and* in every Ray actor. Built in memory, each process
holds the whole training set twice (Arrow table + float32 arrays) and spends seconds generating it (the
sizes at 1,000 clients are in docs/scaling.md). From the disk cache each process maps the
files; only the rows it touches (the sampled clients' partitions, the test split) become resident.

The cache key covers the generator's parameters, the source of ``fedcmi/data/embedded.py`` and the torch and
numpy versions, so an edited generator never serves stale data. ``FEDCMI_DATA_CACHE`` sets the folder
(default ``~/.cache/fedcmi/embedded``); ``FEDCMI_DATA_CACHE=off`` builds in memory as before. A folder
that cannot be written falls back to building in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedcmi import npy
from fedcmi.data.base import MultimodalData

logger = logging.getLogger(__name__)

CACHE_ENV = "FEDCMI_DATA_CACHE"
DONE = "fedcmi-cache.json"
SPLITS = ("train", "test")


def cache_root() -> Path | None:
    """The cache folder, or None when caching is off."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() == "off":
        return None
    if value:
        return Path(value).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedcmi" / "embedded"


def cache_key(name: str, params: tuple) -> str:
    import torch

    source = hashlib.sha256(Path(__file__).with_name("embedded.py").read_bytes()).hexdigest()  # not imported
    text = json.dumps([name, list(params), source, torch.__version__, np.__version__])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached(name: str, params: tuple, build: Callable[[], MultimodalData]) -> MultimodalData:
    """``build()``'s data set, from the disk cache (built and written there first if missing)."""
    root = cache_root()
    if root is None:
        return build()
    path = root / f"{name}-{cache_key(name, params)}"
    if not (path / DONE).is_file():
        data = build()
        try:
            _save(data, path)
        except OSError as exc:
            logger.warning("data cache %s not writable (%s); building %s in memory", root, exc, name)
            return data
    return _open(path)


def _save(data: MultimodalData, path: Path) -> None:
    """Write into a private folder, then rename it into place: readers never see a half-written cache."""
    from datasets.utils import logging as ds_logging

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    bars = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()  # no "Saving the dataset" bars in the middle of a run's output
    try:
        for split in SPLITS:
            (data.train if split == "train" else data.test).save_to_disk(str(tmp / split))
            for column, array in zip(("a", "b", "y"), data.arrays(split), strict=True):
                np.save(tmp / f"{split}-{column}.npy", array)
        meta = {"name": data.name, "modalities": list(data.modalities), "num_classes": data.num_classes}
        (tmp / DONE).write_text(json.dumps(meta) + "\n", encoding="utf-8")
        try:
            tmp.rename(path)
        except OSError:
            if not (path / DONE).is_file():  # lost a race to another process: its copy is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bars:
            ds_logging.enable_progress_bar()


class LazyDataset:
    """A saved ``datasets.Dataset`` opened on first use. Why: a client actor needs only the memory-mapped
    arrays, and importing ``datasets`` (with pandas, pyarrow) costs each process seconds and memory
    (docs/scaling.md)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._ds: Any = None

    def _get(self) -> Any:
        if self._ds is None:
            from datasets import Dataset

            self._ds = Dataset.load_from_disk(str(self._path))
        return self._ds

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._get(), name)

    def __len__(self) -> int:
        return len(self._get())

    def __getitem__(self, key: Any) -> Any:
        return self._get()[key]

    def __iter__(self) -> Any:
        return iter(self._get())


def _open(path: Path) -> MultimodalData:
    """The cached data set; arrays are copy-on-write maps (writable, shared until written), the Arrow
    tables are opened when first read."""
    meta = json.loads((path / DONE).read_text(encoding="utf-8"))
    splits: dict[str, Any] = {s: LazyDataset(path / s) for s in SPLITS}
    data = MultimodalData(meta["name"], tuple(meta["modalities"]), int(meta["num_classes"]), splits["train"],
                          splits["test"], cache_dir=path)
    for split in SPLITS:
        xa, xb = (npy.load(path / f"{split}-{c}.npy", mmap_mode="c") for c in ("a", "b"))
        data._cache[split] = (xa, xb, npy.load(path / f"{split}-y.npy"))
    return data
