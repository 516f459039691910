"""Logit adjustment by the client's own label prior: CE(z + tau * log pi_local, y).

Menon et al., ICLR 2021; the calibration of FedLC (Zhang et al., ICML 2022) and the balanced softmax family.
A client that sees few examples of a class no longer pushes the shared head away from that class.
pi_local is the client's label frequency; a class the client does not hold gets ``TINY_COUNT`` samples so
its log-prior stays finite. Prediction (evaluation) uses the plain logits z.
"""

from __future__ import annotations

import torch

TINY_COUNT = 1e-2  # the count given to a class absent from the client's data


def log_label_prior(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """log pi_c of the labels ``y``, absent classes counted as ``TINY_COUNT``."""
    counts = torch.bincount(y, minlength=num_classes).to(torch.float32).clamp_min(TINY_COUNT)
    return torch.log(counts / counts.sum())


def adjust(logits: torch.Tensor, log_prior: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """z + tau * log pi: what the cross-entropy sees during local training."""
    return logits + tau * log_prior.to(logits.dtype)
