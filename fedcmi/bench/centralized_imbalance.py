"""Centralized reference training, used to show that a data set's modality imbalance is real.

Joint training with concat fusion lets the dominant modality take over; the weak modality's accuracy through
the joint model (other slot zeroed) then falls below the same encoder trained alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedcmi.data.base import MultimodalData
from fedcmi.federated.evaluation import evaluate
from fedcmi.methods.sgd import SGD
from fedcmi.metrics import ACC_MM, acc_zero
from fedcmi.models.concat_model import ConcatModel
from fedcmi.models.init import init_weights
from fedcmi.models.registry import EncoderOptions, encoder_spec


class UnimodalModel(nn.Module):
    """One encoder and a linear head: the 'trained alone' reference."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.enc = encoder
        self.head = nn.Linear(encoder.out_dim, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x))


def _fit(model: nn.Module, step_inputs, y: torch.Tensor, epochs: int, batch_size: int, lr: float,
         seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(model(*step_inputs(idx)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


@dataclass
class ImbalanceReport:
    modalities: tuple[str, str]
    alone: dict[str, float]      # each encoder trained alone
    in_joint: dict[str, float]   # each modality through the joint concat model, other slot zeroed
    joint_mm: float

    @property
    def weak(self) -> str:
        """The modality that loses most by joint training."""
        return max(self.modalities, key=lambda m: self.alone[m] - self.in_joint[m])


def imbalance_report(data: MultimodalData, epochs: int = 8, batch_size: int = 64, lr: float = 0.05,
                     feature_dim: int = 64, seed: int = 0, encoder: str = "cnn") -> ImbalanceReport:
    """Train the joint concat model and each encoder alone on the whole training set; test accuracies.

    ``encoder`` names a registry entry (``encoder=`` of a run), so the probe judges the encoder a run trains.
    """
    build = encoder_spec(encoder).load()
    options = EncoderOptions(feature_dim)
    torch.manual_seed(seed)
    # np.asarray: a prepared data set's training columns are lazy views (fedcmi.data.prepared.LazyColumn)
    xa, xb, y = (torch.from_numpy(np.asarray(t)) for t in data.arrays("train"))
    ta, tb, ty = (torch.from_numpy(np.asarray(t)) for t in data.arrays("test"))
    (sa, sb) = data.shapes()
    joint = ConcatModel(build(tuple(sa), options), build(tuple(sb), options), data.num_classes)
    _fit(joint, lambda i: (xa[i], xb[i]), y, epochs, batch_size, lr, seed)
    res = evaluate(joint, ta, tb, ty, data.num_classes, data.modalities)
    alone = {}
    for m, x, t, shape in ((data.modalities[0], xa, ta, sa), (data.modalities[1], xb, tb, sb)):
        uni = UnimodalModel(build(tuple(shape), options), data.num_classes)
        _fit(uni, lambda i, x=x: (x[i],), y, epochs, batch_size, lr, seed)
        uni.eval()
        with torch.no_grad():
            alone[m] = float((uni(t).argmax(1) == ty).float().mean())
    in_joint = {m: float(res[acc_zero(m)]) for m in data.modalities}
    return ImbalanceReport(data.modalities, alone, in_joint, float(res[ACC_MM]))
