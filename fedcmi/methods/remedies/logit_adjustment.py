"""Logit adjustment by the client's own label prior: CE(z + tau * log pi_local, y).

Menon et al., ICLR 2021; the calibration of FedLC (Zhang et al., ICML 2022) and the balanced softmax family.
A client that sees few examples of a class no longer pushes the shared head away from that class.
pi_local is the client's label frequency; a class the client does not hold gets ``TINY_COUNT`` samples so
its log-prior stays finite. Prediction (evaluation) uses the plain logits z.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from fedcmi.methods.remedies.base import Remedy

if TYPE_CHECKING:
    from fedcmi.config import RunConfig

TINY_COUNT = 1e-2  # the count given to a class absent from the client's data


def log_label_prior(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """log pi_c of the labels ``y``, absent classes counted as ``TINY_COUNT``."""
    counts = torch.bincount(y, minlength=num_classes).to(torch.float32).clamp_min(TINY_COUNT)
    return torch.log(counts / counts.sum())


def adjust(logits: torch.Tensor, log_prior: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """z + tau * log pi: what the cross-entropy sees during local training."""
    return logits + tau * log_prior.to(logits.dtype)


class LogitAdjustment(Remedy):
    """``logit-adjust=tau``: every CE term sees z + tau * log pi_local."""

    def __init__(self, tau: float) -> None:
        self.tau = tau
        self.log_prior: torch.Tensor | None = None

    def start(self, model: nn.Module, y: torch.Tensor, num_classes: int) -> None:
        self.log_prior = log_label_prior(y, num_classes).to(y.device)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        assert self.log_prior is not None, "start() reads the client's labels first"
        return adjust(z, self.log_prior, self.tau)


def build(cfg: RunConfig) -> LogitAdjustment | None:
    return LogitAdjustment(cfg.method.logit_adjust) if cfg.method.logit_adjust > 0 else None
