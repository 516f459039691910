"""Per-sample missing modalities, missing labels and label noise on one client's training data.

What real deployments have and a clean data set does not (FedMultimodal's robustness settings, here per
sample instead of per client). Applied after loading, to the tensors a node trains on, so it works on every
data set (embedded, prepared, features) and a SuperNode applies exactly what the simulation does: the choice
depends only on the run seed, the partition id and the client's sample count. Test data is never touched.

Exact counts for a client of ``n`` samples:

* multimodal clients: ``round(missing-a-rate * n)`` samples lose ``a``, then ``min(round(missing-b-rate * n),
  n - that)`` *other* samples lose ``b`` (so no sample loses both); unimodal clients keep their one modality;
* every client: ``min(round(missing-label-rate * n), n - 1)`` samples lose their label (one always keeps it,
  so every client still trains), then ``min(round(label-noise-rate * n), n - unlabeled)`` other samples get a
  wrong label (``label-noise-model``).

Each choice is a prefix of one seeded permutation, so a higher rate keeps the samples of a lower one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedcmi.config import RunConfig
from fedcmi.data.base import UNLABELED, ClientData
from fedcmi.modalities import MM

_MODALITY_STREAM, _LABEL_STREAM, _NOISE_STREAM = 0x6D6F64, 0x6C6162, 0x6E6F69  # independent seeded streams


@dataclass(frozen=True)
class Corruption:
    """Which of a client's samples (row positions) lose ``a``, lose ``b``, lose the label, get a wrong label."""

    missing_a: np.ndarray
    missing_b: np.ndarray
    unlabeled: np.ndarray
    noisy: np.ndarray

    def counts(self) -> dict[str, int]:
        return {"missing_a": len(self.missing_a), "missing_b": len(self.missing_b),
                "unlabeled": len(self.unlabeled), "noisy": len(self.noisy)}


def active(cfg: RunConfig) -> bool:
    """Whether the run corrupts anything (all rates 0: the data is used as loaded, no random draws)."""
    return any(r > 0 for r in (cfg.data.missing_a_rate, cfg.data.missing_b_rate, cfg.data.missing_label_rate,
                               cfg.data.label_noise_rate))


def _rng(cfg: RunConfig, partition_id: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([cfg.federation.seed, partition_id, stream])


def plan(n: int, kind: str, cfg: RunConfig, partition_id: int) -> Corruption:
    """The samples each corruption hits for a client of ``kind`` with ``n`` training samples."""
    none = np.zeros(0, dtype=np.int64)
    missing_a = missing_b = unlabeled = noisy = none
    if kind == MM and (cfg.data.missing_a_rate > 0 or cfg.data.missing_b_rate > 0):
        order = _rng(cfg, partition_id, _MODALITY_STREAM).permutation(n)
        n_a = min(round(cfg.data.missing_a_rate * n), n)
        n_b = min(round(cfg.data.missing_b_rate * n), n - n_a)
        missing_a, missing_b = np.sort(order[:n_a]), np.sort(order[n_a:n_a + n_b])
    if cfg.data.missing_label_rate > 0 or cfg.data.label_noise_rate > 0:
        order = _rng(cfg, partition_id, _LABEL_STREAM).permutation(n)
        n_u = max(0, min(round(cfg.data.missing_label_rate * n), n - 1))
        n_noisy = min(round(cfg.data.label_noise_rate * n), n - n_u)
        unlabeled, noisy = np.sort(order[:n_u]), np.sort(order[n_u:n_u + n_noisy])
    return Corruption(missing_a, missing_b, unlabeled, noisy)


def wrong_labels(y: np.ndarray, num_classes: int, model: str, rng: np.random.Generator) -> np.ndarray:
    """A label other than ``y`` for every entry: uniform over the other classes (symmetric) or ``y + 1`` (pair)."""
    if model == "pair":
        return (y + 1) % num_classes
    return (y + rng.integers(1, num_classes, size=len(y))) % num_classes


def corrupt(data: ClientData, cfg: RunConfig, partition_id: int, num_classes: int) -> ClientData:
    """The client's training data with the run's corruption applied (``data`` itself when there is none).

    A missing modality's rows are zeroed and marked absent in ``has_a``/``has_b`` (the zeros are storage, never
    data: see ``ClientData``); an unlabeled sample's label becomes ``UNLABELED``.
    """
    if not active(cfg):
        return data
    c = plan(len(data), data.kind, cfg, partition_id)
    a, b, y = data.a, data.b, data.y.clone()
    has_a = has_b = None
    if len(c.missing_a):
        a, has_a = _absent(a, c.missing_a)
    if len(c.missing_b):
        b, has_b = _absent(b, c.missing_b)
    if len(c.noisy):
        flipped = wrong_labels(y[c.noisy].cpu().numpy(), num_classes, cfg.data.label_noise_model,
                               _rng(cfg, partition_id, _NOISE_STREAM))
        y[torch.from_numpy(c.noisy)] = torch.from_numpy(flipped).to(y)
    if len(c.unlabeled):
        y[torch.from_numpy(c.unlabeled)] = UNLABELED
    return ClientData(a, b, y, has_a, has_b)


def _absent(x: torch.Tensor, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.from_numpy(rows)
    x = x.clone()
    x[idx] = 0
    mask = torch.ones(len(x), dtype=torch.bool)
    mask[idx] = False
    return x, mask.to(x.device)
