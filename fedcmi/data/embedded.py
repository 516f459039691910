"""Embedded data sets that need no download: ``synthetic-av`` and ``digits-cg``.

Both are built as Hugging Face ``datasets.Dataset`` objects with a fixed train/test split, so they partition
with flwr-datasets exactly like a prepared real data set would.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Array3D, ClassLabel, Dataset, Features, Value

from fedcmi.data.base import MultimodalData

AUDIO_SHAPE = (1, 20, 24)  # 1 x F x T, spectrogram-like
FRAME_SHAPE = (3, 16, 16)  # 3 x H x W, frame-like


def _features(shape_a: tuple[int, ...], shape_b: tuple[int, ...], num_classes: int) -> Features:
    return Features({
        "idx": Value("int64"),
        "a": Array3D(shape=shape_a, dtype="float32"),
        "b": Array3D(shape=shape_b, dtype="float32"),
        "label": ClassLabel(num_classes=num_classes),
    })


def _to_dataset(xa: np.ndarray, xb: np.ndarray, y: np.ndarray, num_classes: int) -> Dataset:
    feats = _features(xa.shape[1:], xb.shape[1:], num_classes)
    return Dataset.from_dict(
        {"idx": np.arange(len(y)), "a": xa, "b": xb, "label": y.astype(np.int64)}, features=feats)


def _smooth_templates(gen: torch.Generator, k: int, shape: tuple[int, ...]) -> torch.Tensor:
    """One smooth, unit-RMS random pattern per class: local structure a small CNN can pick up."""
    raw = torch.randn((k, *shape), generator=gen)
    smooth = F.avg_pool2d(raw, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    return smooth / smooth.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()


def _samples(gen: torch.Generator, templates: torch.Tensor, y: torch.Tensor, signal: float,
             noise: float, max_shift: int) -> torch.Tensor:
    """signal * amplitude * (class template, randomly shifted) + Gaussian noise."""
    n = len(y)
    amp = 0.7 + 0.6 * torch.rand((n, 1, 1, 1), generator=gen)
    x = templates[y] * amp
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen)
    for s in torch.unique(shifts, dim=0):
        rows = (shifts == s).all(dim=1)
        x[rows] = torch.roll(x[rows], shifts=(int(s[0]), int(s[1])), dims=(2, 3))
    return signal * x + noise * torch.randn(x.shape, generator=gen)


def synthetic_av(num_classes: int = 6, train_size: int = 3000, test_size: int = 1200,
                 signal_a: float = 0.8, signal_b: float = 0.25, noise: float = 1.0,
                 seed: int = 0) -> MultimodalData:
    """Paired audio-like and visual-like tensors; ``signal_a > signal_b`` makes audio the dominant modality.

    ``signal_*`` is the per-pixel amplitude of the class pattern against unit noise. With the defaults
    (0.8 vs 0.25) audio alone beats visual alone centrally, and visual loses most of its accuracy through a
    jointly trained concat model (docs/datasets.md, ``benchmarks/imbalance.py``), like CREMA-D where audio
    dominates one face frame.
    """
    gen = torch.Generator().manual_seed(10_007 + seed)
    tmpl_a = _smooth_templates(gen, num_classes, AUDIO_SHAPE)
    tmpl_b = _smooth_templates(gen, num_classes, FRAME_SHAPE)
    splits = []
    for n in (train_size, test_size):
        y = torch.randint(0, num_classes, (n,), generator=gen)
        xa = _samples(gen, tmpl_a, y, signal_a, noise, max_shift=2)
        xb = _samples(gen, tmpl_b, y, signal_b, noise, max_shift=2)
        splits.append(_to_dataset(xa.numpy(), xb.numpy(), y.numpy(), num_classes))
    return MultimodalData("synthetic-av", ("audio", "visual"), num_classes, splits[0], splits[1])


# Colour code of digits-cg: one RGB tint per class (after CG-MNIST's class-correlated colours).
_PALETTE = np.array([
    [1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0], [1.0, 1.0, 0.1], [1.0, 0.1, 1.0],
    [0.1, 1.0, 1.0], [1.0, 0.55, 0.1], [0.55, 0.1, 1.0], [0.1, 0.55, 0.3], [0.6, 0.6, 0.6],
], dtype=np.float32)


def digits_cg(seed: int = 0, colour_agreement: float = 0.8, test_fraction: float = 0.25) -> MultimodalData:
    """scikit-learn's 8x8 digits: the gray digit, and a colour-coded noisy view of it.

    The colour view tints the digit with its class colour with probability ``colour_agreement`` (else a
    random class's colour) and adds pixel noise. Centrally, the clean gray shape dominates and the noisy
    colour view is the weak modality, weaker still through a joint concat model (docs/datasets.md).
    The split is a fixed stratified one (seeded by 0, not by the run seed).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None]  # N x 1 x 8 x 8 in [0, 1]
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(20_231 + seed)
    agree = rng.random(len(labels)) < colour_agreement
    colour_cls = np.where(agree, labels, rng.integers(0, 10, len(labels)))
    colour = images * _PALETTE[colour_cls][:, :, None, None]  # N x 3 x 8 x 8
    colour = colour + 0.35 * rng.standard_normal(colour.shape).astype(np.float32)
    gray = (images - 0.3) / 0.4
    tr, te = train_test_split(np.arange(len(labels)), test_size=test_fraction, random_state=0,
                              stratify=labels)
    train = _to_dataset(gray[tr], colour[tr].astype(np.float32), labels[tr], 10)
    test = _to_dataset(gray[te], colour[te].astype(np.float32), labels[te], 10)
    return MultimodalData("digits-cg", ("gray", "colour"), 10, train, test)
