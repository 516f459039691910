"""Server-side evaluation on the held-out test set, on every path: multimodal, each modality alone through its
infiltration path, and zero-filled."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fedcmi.metrics import ACC_MM, PER_CLASS, WORST_CLASS, acc_alone, acc_zero


@torch.no_grad()
def predict_paths(model: nn.Module, xa: torch.Tensor, xb: torch.Tensor, batch_size: int,
                  only: str | None = None) -> dict[str, np.ndarray]:
    """Predicted class of every test sample on every evaluation path (one encoder pass per modality); ``only``
    a modality: that modality's paths alone (a unimodal baseline never uses the other encoder)."""
    preds: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(xa), batch_size):
        sl = slice(start, start + batch_size)
        for path, logits in model.path_logits(xa[sl], xb[sl], only=only).items():
            preds.setdefault(path, []).append(logits.argmax(dim=1).cpu())
    return {path: torch.cat(p).numpy() for path, p in preds.items()}


def per_class_accuracy(pred: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy of each class (NaN for a class absent from ``y``)."""
    hits = np.bincount(y, weights=(pred == y).astype(np.float64), minlength=num_classes)
    counts = np.bincount(y, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / counts


def evaluate(model: nn.Module, xa: torch.Tensor, xb: torch.Tensor, y: torch.Tensor, num_classes: int,
             modality_names: tuple[str, str], batch_size: int = 512, use_modalities: tuple[str, ...] = ("a", "b"),
             infiltration_path: bool = True) -> dict[str, float | list[float]]:
    """Accuracies: ``acc_mm``; ``acc_<m>`` (m alone through its infiltration path, what a unimodal client
    sees; zero-filled where the model has no such path); ``acc_<m>_zero`` (other slot zeroed);
    ``per_class_acc`` and ``worst_class_acc`` of the multimodal path.

    A unimodal baseline (``use_modalities`` of one modality) is scored on that modality everywhere; the
    accuracies of the modality it never sees are NaN."""
    was_training = model.training
    model.eval()
    yn = y.cpu().numpy()
    only = use_modalities[0] if len(use_modalities) == 1 else None
    pred = predict_paths(model, xa, xb, batch_size, only)
    if not infiltration_path:
        for m in use_modalities:
            pred[m] = pred[f"{m}_zero"]
    if len(use_modalities) == 1:
        pred["mm"] = pred[f"{use_modalities[0]}_zero"]
    per_class = per_class_accuracy(pred["mm"], yn, num_classes)
    res: dict[str, float | list[float]] = {ACC_MM: float((pred["mm"] == yn).mean())}
    for column, suffix in ((acc_alone, ""), (acc_zero, "_zero")):
        for m, name in zip(("a", "b"), modality_names, strict=True):
            seen = m in use_modalities
            res[column(name)] = float((pred[f"{m}{suffix}"] == yn).mean()) if seen else math.nan
    res[WORST_CLASS] = float(np.nanmin(per_class))
    res[PER_CLASS] = [float(v) for v in per_class]
    model.train(was_training)
    return res
