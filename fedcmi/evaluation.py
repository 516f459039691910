"""Server-side evaluation on the held-out test set, every evaluation path of spec Part 0 §6."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def _predict(fn, xs: tuple[torch.Tensor | None, torch.Tensor | None], batch_size: int) -> np.ndarray:
    n = len(next(x for x in xs if x is not None))
    out = []
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        xa, xb = (x[sl] if x is not None else None for x in xs)
        out.append(fn(xa, xb).argmax(dim=1).cpu())
    return torch.cat(out).numpy()


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
    name_a, name_b = modality_names
    inputs = {"a": (xa, None), "b": (None, xb)}
    alone = {m: model if infiltration_path else model.forward_zero for m in ("a", "b")}

    def acc(fn, m_inputs) -> float:
        return float((_predict(fn, m_inputs, batch_size) == yn).mean())

    if len(use_modalities) == 1:
        pred_mm = _predict(model.forward_zero, inputs[use_modalities[0]], batch_size)
    else:
        pred_mm = _predict(model, (xa, xb), batch_size)
    per_class = per_class_accuracy(pred_mm, yn, num_classes)
    res: dict[str, float | list[float]] = {"acc_mm": float((pred_mm == yn).mean())}
    for m, name in (("a", name_a), ("b", name_b)):
        seen = m in use_modalities
        res[f"acc_{name}"] = acc(alone[m], inputs[m]) if seen else math.nan
    for m, name in (("a", name_a), ("b", name_b)):
        res[f"acc_{name}_zero"] = acc(model.forward_zero, inputs[m]) if m in use_modalities else math.nan
    res["worst_class_acc"] = float(np.nanmin(per_class))
    res["per_class_acc"] = [float(v) for v in per_class]
    model.train(was_training)
    return res
