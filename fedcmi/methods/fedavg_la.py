"""fedavg-la: FedAvg whose local cross-entropy is logit-adjusted by the client's own label prior.

CE(z + log pi_local, y) (Menon et al., ICLR 2021; the calibration of FedLC, Zhang et al., ICML 2022): a
client that sees few examples of a class no longer pushes the shared head away from that class. pi_local is
the client's label frequency; a class the client does not hold gets ``TINY_COUNT`` samples so its log-prior
stays finite. Prediction (evaluation) uses the plain logits z.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedcmi.data.base import ClientData
from fedcmi.federated.dominance import Guidance
from fedcmi.methods.base import LocalMethod, MethodSpec

TINY_COUNT = 1e-2  # the count given to a class absent from the client's data


def log_label_prior(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """log pi_c of the labels ``y``, absent classes counted as ``TINY_COUNT``."""
    counts = torch.bincount(y, minlength=num_classes).to(torch.float32).clamp_min(TINY_COUNT)
    return torch.log(counts / counts.sum())


def logit_adjusted_ce(logits: torch.Tensor, y: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """CE(z + log pi, y)."""
    return F.cross_entropy(logits + log_prior, y)


class LogitAdjustedCE(LocalMethod):
    def __init__(self) -> None:
        self.log_prior: torch.Tensor | None = None

    def start(self, model: nn.Module, data: ClientData, guidance: Guidance, num_classes: int) -> None:
        self.log_prior = log_label_prior(data.y, num_classes).to(data.y.device)

    def batch_loss(self, model: nn.Module, xa: torch.Tensor | None, xb: torch.Tensor | None,
                   y: torch.Tensor) -> dict[str, torch.Tensor]:
        fused = logit_adjusted_ce(model(xa, xb), y, self.log_prior)
        return {"loss": fused, "loss_fused": fused}


SPEC = MethodSpec("fedavg-la", "FedAvg with logit-adjusted local CE, CE(z + log pi_local, y) (FedLC-style)",
                  build=lambda cfg: LogitAdjustedCE(), uses=("proximal-mu",), defaults={"proximal-mu": 0.0})
