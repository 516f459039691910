"""CCVR (Luo et al., NeurIPS 2021): calibrate the fusion head on the server from class-conditional feature
statistics, because under label skew the head takes on the class prior of the last round's participants.

Multimodal clients report, for the fusion head's inputs (the two slot vectors, concatenated), per class: the
count, the sum and the sum of outer products. The server pools them into a mean and covariance per class,
draws virtual features from those Gaussians and trains a copy of the fusion head on them. Only these moments
leave a client, never a sample; they do reveal the client's class counts and the first two moments of its
features per class.

Which moments (``ccvr-moments``): ``fresh`` (default) has every admitted multimodal node measure them with the
weights the server just aggregated (Flower's evaluate phase, after each round), so the head is calibrated on
the features of the model it is put on, from every multimodal client. ``received`` pools what the round's
sampled clients measured with the weights they received, one aggregation old: the features drift between
rounds (FedCMI's most), and a handful of clients under label skew covers few classes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedcmi.data.base import ClientData
from fedcmi.methods.sgd import SGD

KEYS = ("ccvr-steps", "ccvr-samples", "ccvr-lr", "ccvr-moments")  # read by the server for every method


@dataclass(frozen=True)
class FeatureStats:
    """Per class: count (C), sum (C x D) and sum of outer products (C x D x D) of the head's inputs."""

    counts: np.ndarray
    sums: np.ndarray
    outer: np.ndarray

    def __add__(self, other: FeatureStats) -> FeatureStats:
        return FeatureStats(self.counts + other.counts, self.sums + other.sums, self.outer + other.outer)

    @classmethod
    def zeros(cls, num_classes: int, dim: int) -> FeatureStats:
        return cls(np.zeros(num_classes), np.zeros((num_classes, dim)), np.zeros((num_classes, dim, dim)))

    def moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(present classes, means, covariances) of the classes with at least two samples."""
        present = np.flatnonzero(self.counts >= 2)
        n = self.counts[present][:, None]
        means = self.sums[present] / n
        cov = self.outer[present] / n[:, :, None] - np.einsum("ci,cj->cij", means, means)
        return present, means, cov

    def check(self, num_classes: int) -> str | None:
        """None, or why these statistics cannot be pooled (shapes, finiteness, negative counts)."""
        c, d = self.sums.shape if self.sums.ndim == 2 else (-1, -1)
        if self.counts.shape != (num_classes,) or c != num_classes or self.outer.shape != (c, d, d):
            return "feature-stats: shapes do not match the model"
        if not all(np.all(np.isfinite(a)) for a in (self.counts, self.sums, self.outer)):
            return "feature-stats: contains NaN or Inf"
        if np.any(self.counts < 0) or np.any(self.counts != np.round(self.counts)):
            return "feature-stats counts: must be non-negative integers"
        return None


@torch.no_grad()
def feature_statistics(model: nn.Module, data: ClientData, num_classes: int, batch_size: int = 512) -> FeatureStats:
    """The moments of the head's inputs of a multimodal client (eval mode, the weights as they are).

    Only labeled samples holding both modalities: the multimodal path's slots need both.
    """
    data = data.labeled().complete()
    was_training = model.training
    model.eval()
    stats = None
    for start in range(0, len(data), batch_size):
        sl = slice(start, start + batch_size)
        feats = torch.cat(model.slots(data.a[sl], data.b[sl]), dim=1).double().cpu().numpy()
        y = data.y[sl].cpu().numpy()
        onehot = np.eye(num_classes)[y]
        part = FeatureStats(onehot.sum(0), onehot.T @ feats, np.einsum("nc,ni,nj->cij", onehot, feats, feats))
        stats = part if stats is None else stats + part
    model.train(was_training)
    return stats if stats is not None else FeatureStats.zeros(num_classes, 0)


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch ops on one intra-op thread, then the caller's count back: a matmul's rounding depends on how many
    threads split it (1 and 2 threads differ by ~1e-8 here), and the head must not depend on which thread
    calibrates it (the row's recorder thread, or the server thread saving the model of a resumed run)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def calibrated(model: nn.Module, stats: FeatureStats, *, samples: int, steps: int, lr: float,
               seed: int) -> nn.Module:
    """A copy of ``model`` whose fusion head is trained on virtual features drawn from ``stats`` (on one torch
    thread, so the same inputs give the same head wherever it runs)."""
    with one_thread():
        return _calibrated(model, stats, samples=samples, steps=steps, lr=lr, seed=seed)


def _calibrated(model: nn.Module, stats: FeatureStats, *, samples: int, steps: int, lr: float,
                seed: int) -> nn.Module:
    present, means, cov = stats.moments()
    out = copy.deepcopy(model)
    if len(present) == 0 or steps == 0:
        return out
    rng = np.random.default_rng(seed)
    dim = means.shape[1]
    feats, labels = [], []
    for c, mu, sigma in zip(present, means, cov, strict=True):
        sigma = (sigma + sigma.T) / 2 + 1e-6 * np.eye(dim)  # symmetric, positive definite
        feats.append(rng.multivariate_normal(mu, sigma, size=samples, method="eigh"))
        labels.append(np.full(samples, c))
    x = torch.as_tensor(np.concatenate(feats), dtype=torch.float32)
    y = torch.as_tensor(np.concatenate(labels), dtype=torch.int64)
    half = dim // 2
    head = out.fusion
    head.train()
    opt = SGD(head.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(x[:, :half], x[:, half:]), y).backward()
        opt.step()
    out.eval()
    return out
