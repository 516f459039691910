"""Prepared real data sets on disk (written by ``fedcmi prepare``) as :class:`MultimodalData`.

A prepared directory holds a ``datasets.DatasetDict`` saved with ``save_to_disk`` (splits ``train`` and
``test``; columns ``idx``, ``a``, ``b``, ``label``) and ``fedcmi.json`` beside it (name, modalities,
num_classes, and how it was prepared). Arrow files are memory-mapped, so opening one is cheap; the training
split is read row-subset by row-subset (a client's partition), never copied whole into memory, because a
real audio-visual training set is many gigabytes of float32.

Token ids (text modality) are stored as int32 and read back as float32 like every other column; the text
encoder rounds them back to integers (ids < 2**24 are exact in float32).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported where used: a process on embedded data never loads `datasets`
    from datasets import Dataset

from fedcmi.config import ConfigError
from fedcmi.data.base import MultimodalData

logger = logging.getLogger(__name__)

MANIFEST = "fedcmi.json"
PREPARED_SUBDIR = "fedcmi-prepared"  # default output folder of `fedcmi prepare` inside the raw root


class LazyColumn:
    """One array column of a split; ``col[rows]`` reads only those rows (as float32 numpy)."""

    def __init__(self, ds: Dataset, column: str) -> None:
        self._ds = ds.select_columns([column]).with_format("numpy")
        self._column = column
        first = np.asarray(self._ds[0][column]) if len(ds) else np.zeros(0)
        self.shape: tuple[int, ...] = (len(ds), *first.shape)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        if isinstance(rows, (int, np.integer)):
            return np.asarray(self._ds[int(rows)][self._column], dtype=np.float32)
        if isinstance(rows, slice):
            rows = np.arange(len(self))[rows]
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0, *self.shape[1:]), dtype=np.float32)
        return np.asarray(self._ds[rows.tolist()][self._column], dtype=np.float32).reshape(len(rows), *self.shape[1:])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[:], dtype=dtype or np.float32)


@dataclass
class PreparedData(MultimodalData):
    """A prepared data set: the test split is loaded into memory, the training split read lazily."""

    path: Path = field(default=Path("."))
    manifest: dict[str, Any] = field(default_factory=dict)

    def arrays(self, split: str) -> tuple[Any, Any, np.ndarray]:
        """(x_a, x_b, y). ``test``: numpy arrays. ``train``: :class:`LazyColumn` views (index them by rows)."""
        if split not in self._cache:
            ds = self.train if split == "train" else self.test
            y = np.asarray(ds.with_format("numpy")["label"], dtype=np.int64)
            if split == "train":
                self._cache[split] = (LazyColumn(ds, "a"), LazyColumn(ds, "b"), y)
            else:
                cols = ds.select_columns(["a", "b"]).with_format("numpy")[:]
                self._cache[split] = (np.asarray(cols["a"], dtype=np.float32),
                                      np.asarray(cols["b"], dtype=np.float32), y)
        return self._cache[split]


def resolve_prepared_dir(path: str | Path) -> Path:
    """``path`` itself if it is a prepared directory, else ``path/fedcmi-prepared`` (a raw root)."""
    p = Path(path).expanduser()
    if (p / MANIFEST).is_file():
        return p
    if (p / PREPARED_SUBDIR / MANIFEST).is_file():
        return p / PREPARED_SUBDIR
    if not p.exists():
        raise ConfigError(f"data-root={str(p)!r}: no such directory")
    raise ConfigError(f"data-root={str(p)!r}: not a prepared data set (no {MANIFEST} in it or in "
                      f"{PREPARED_SUBDIR}/); run `fedcmi prepare <dataset> --root {p}` first")


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a prepared (or features) directory, checked field by field: a hand-edited or damaged
    one is one line naming the file and the field, never a later failure."""
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"{file}: unreadable manifest ({type(exc).__name__})") from None
    if not isinstance(manifest, dict):
        raise ConfigError(f"{file}: manifest is not a JSON object")
    missing = [k for k in ("name", "modalities", "num_classes") if k not in manifest]
    if missing:
        raise ConfigError(f"{file}: manifest needs name, two modalities and num_classes (missing {missing})")
    problem = manifest_problem(manifest)
    if problem:
        raise ConfigError(f"{file}: {problem}")
    return manifest


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
MAX_CLASSES = 10_000


def _count(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def manifest_problem(m: dict[str, Any]) -> str | None:
    """Why a manifest's fields are unusable, or None."""
    if not isinstance(m["name"], str) or not NAME.fullmatch(m["name"]):
        return f"name {m['name']!r} is not a data set name"
    mods = m["modalities"]
    if (not isinstance(mods, list) or len(mods) != 2 or not all(isinstance(x, str) and NAME.fullmatch(x) for x in mods)
            or mods[0] == mods[1]):
        return f"modalities {str(mods)[:80]} must be two different names"
    n = m["num_classes"]
    if not _count(n, 2) or n > MAX_CLASSES:
        return f"num_classes {str(n)[:40]!r} must be an integer in [2, {MAX_CLASSES}]"
    names = m.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != n
                              or not all(isinstance(c, str) for c in names)):
        return f"class_names must be {n} names (num_classes)"
    rows = m.get("rows")
    if rows is not None and (not isinstance(rows, dict) or not all(isinstance(k, str) and _count(v)
                                                                   for k, v in rows.items())):
        return "rows must map split names to row counts"
    if not isinstance(m.get("settings", {}), dict):
        return "settings must be a JSON object"
    if "features" in m:  # what marks a features directory (fedcmi.data.features.is_features)
        feat = m["features"]
        shapes = feat.get("shapes") if isinstance(feat, dict) else None
        if (not isinstance(shapes, dict) or set(shapes) != {"a", "b"}
                or not all(isinstance(s, list) and len(s) == 2 and all(_count(d, 1) for d in s)
                           for s in shapes.values())):
            return "features must record the token shapes of a and b (features.shapes: {a: [T, D], b: [T, D]})"
        if not isinstance(feat.get("settings", {}), dict):
            return "features.settings must be a JSON object"
    return None


def _check_labels(p: Path, ds: Dataset, split: str, num_classes: int) -> None:
    """The label column must hold ``num_classes`` classes, as the manifest says."""
    from datasets import ClassLabel

    label = ds.features["label"]
    if isinstance(label, ClassLabel):
        if label.num_classes != num_classes:
            raise ConfigError(f"{p / MANIFEST}: num_classes {num_classes} does not match split {split!r}, whose "
                              f"label column has {label.num_classes} classes")
        return
    if len(ds):
        y = np.asarray(ds.with_format("numpy")["label"])
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
            raise ConfigError(f"{p}: split {split!r} has labels outside 0..{num_classes - 1} (num_classes of "
                              f"{MANIFEST})")


@lru_cache(maxsize=4)
def _load(path: str) -> PreparedData:
    from datasets import DatasetDict, load_from_disk

    p = Path(path)
    manifest = read_manifest(p)
    try:
        dd = load_from_disk(str(p))
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"{p}: not a saved data set ({exc})") from None
    if not isinstance(dd, DatasetDict) or not {"train", "test"} & set(dd):
        raise ConfigError(f"{p}: needs a DatasetDict with a 'train' or a 'test' split")
    # A deployed node may hold only its training rows, a server only the test split: the other is empty.
    present = next(s for s in ("train", "test") if s in dd)
    dd = DatasetDict({s: dd[s] if s in dd else dd[present].select([]) for s in ("train", "test")})
    for split in ("train", "test"):
        lacking = {"idx", "a", "b", "label"} - set(dd[split].column_names)
        if lacking:
            raise ConfigError(f"{p}: split {split!r} lacks column(s) {sorted(lacking)}")
        _check_labels(p, dd[split], split, int(manifest["num_classes"]))
    logger.info("loaded %s from %s: %d train, %d test", manifest["name"], p, len(dd["train"]), len(dd["test"]))
    return PreparedData(name=str(manifest["name"]), modalities=tuple(manifest["modalities"]),
                        num_classes=int(manifest["num_classes"]), train=dd["train"], test=dd["test"],
                        path=p, manifest=manifest)


def load_prepared(path: str | Path) -> PreparedData:
    """Open a prepared data set directory (or a raw root holding ``fedcmi-prepared/``); cached per path."""
    return _load(str(resolve_prepared_dir(path).resolve()))
