"""The data containers every data set is turned into: a two-modality set and one client's tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedcmi.modalities import MM, MODALITIES, A, B

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
            self._cache[split] = (ds[A].astype(np.float32), ds[B].astype(np.float32),
                                  ds["label"].astype(np.int64))
        return self._cache[split]

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        xa, xb, _ = self.arrays("test")
        return tuple(xa.shape[1:]), tuple(xb.shape[1:])


UNLABELED = -1  # the label of a sample that has none (``missing-label-rate``): no loss may read it


@dataclass
class ClientData:
    """What one client holds: only the tensors of its own modalities (the other is ``None``).

    ``has_a``/``has_b``: per-sample presence of a held modality (``missing-a-rate``/``missing-b-rate``); ``None``
    means every sample holds it. An absent sample's row is zeros that nothing may read as data: training
    batches are split by presence (``fedcmi.methods.base.batches``) and statistics use present rows only.
    A sample always holds at least one modality. ``y`` is ``UNLABELED`` for a sample without a label.
    """

    a: torch.Tensor | None
    b: torch.Tensor | None
    y: torch.Tensor
    has_a: torch.Tensor | None = None
    has_b: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.a is None and self.b is None:
            raise ValueError("a client must hold at least one modality")
        for x, mask, m in ((self.a, self.has_a, A), (self.b, self.has_b, B)):
            if mask is not None and (x is None or mask.dtype != torch.bool or mask.shape != (len(self.y),)):
                raise ValueError(f"has_{m} must be a boolean mask over the samples of a held modality")
        if self.has_a is not None or self.has_b is not None:
            if not bool((self.present(A) | self.present(B)).all()):
                raise ValueError("every sample must hold at least one modality")

    @property
    def kind(self) -> str:
        """``"mm"``, ``"a"`` or ``"b"`` (``fedcmi.modalities.KINDS``)."""
        if self.a is not None and self.b is not None:
            return MM
        return A if self.a is not None else B

    @property
    def partial(self) -> bool:
        """Whether some sample lacks a modality the client holds."""
        return self.has_a is not None or self.has_b is not None

    def present(self, m: str) -> torch.Tensor:
        """Boolean mask of the samples holding modality ``m`` (all False when the client does not hold it)."""
        x, mask = (self.a, self.has_a) if m == A else (self.b, self.has_b)
        if x is None:
            return torch.zeros(len(self.y), dtype=torch.bool, device=self.y.device)
        return mask if mask is not None else torch.ones(len(self.y), dtype=torch.bool, device=self.y.device)

    def subset(self, idx: torch.Tensor) -> ClientData:
        """The samples ``idx`` (indices or a boolean mask), masks kept."""
        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[idx]

        return ClientData(pick(self.a), pick(self.b), self.y[idx], pick(self.has_a), pick(self.has_b))

    def labeled(self) -> ClientData:
        """The samples that have a label (itself when all have): what supervised losses and statistics use."""
        keep = self.y != UNLABELED
        return self if bool(keep.all()) else self.subset(keep)

    def complete(self) -> ClientData:
        """The samples holding both modalities (itself when none lacks one), without masks."""
        if not self.partial:
            return self
        both = self.present(A) & self.present(B)
        return ClientData(self.a[both], self.b[both], self.y[both]) if self.kind == MM else self.subset(both)

    def holding(self, modalities: tuple[str, ...]) -> ClientData:
        """Only ``modalities`` (unimodal baselines see one) and only the samples holding at least one of them."""
        if set(modalities) == set(MODALITIES):
            return self
        (m,) = modalities  # one modality
        x = getattr(self, m)
        if x is None or not self.partial:
            return ClientData(x if m == A else None, x if m == B else None, self.y)
        keep = self.present(m)  # the samples holding it; every one of them does
        return ClientData(x[keep] if m == A else None, x[keep] if m == B else None, self.y[keep])

    def __len__(self) -> int:
        return len(self.y)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ClientData:
        """``fn`` applied to every tensor (data, labels, masks)."""
        def apply(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else fn(t)

        return ClientData(apply(self.a), apply(self.b), fn(self.y), apply(self.has_a), apply(self.has_b))

    def to(self, device: torch.device | str) -> ClientData:
        return self.map(lambda t: t.to(device, non_blocking=True))
