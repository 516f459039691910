"""The data containers every data set is turned into: a two-modality set and one client's tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # a client actor that never reads the Arrow tables never imports `datasets` (~0.2 GiB)
    from datasets import Dataset


@dataclass
class MultimodalData:
    """A two-modality classification set with a fixed split.

    Columns of ``train``/``test``: ``idx`` (row number), ``a`` and ``b`` (the two modalities' tensors, named by
    ``modalities``) and ``label``.
    """

    name: str
    modalities: tuple[str, str]
    num_classes: int
    train: Dataset
    test: Dataset
    _cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    cache_dir: Path | None = field(default=None, repr=False)  # its folder in the machine's data cache, if any

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x_a, x_b, y) of a split as numpy arrays, converted once and cached."""
        if split not in self._cache:
            ds = (self.train if split == "train" else self.test).with_format("numpy")[:]
            self._cache[split] = (ds["a"].astype(np.float32), ds["b"].astype(np.float32),
                                  ds["label"].astype(np.int64))
        return self._cache[split]

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        xa, xb, _ = self.arrays("test")
        return tuple(xa.shape[1:]), tuple(xb.shape[1:])


@dataclass
class ClientData:
    """What one client holds: only the tensors of its own modalities (the other is ``None``)."""

    a: torch.Tensor | None
    b: torch.Tensor | None
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.a is None and self.b is None:
            raise ValueError("a client must hold at least one modality")

    @property
    def kind(self) -> str:
        """``"mm"``, ``"a"`` or ``"b"``."""
        if self.a is not None and self.b is not None:
            return "mm"
        return "a" if self.a is not None else "b"

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> ClientData:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return ClientData(move(self.a), move(self.b), self.y.to(device, non_blocking=True))
