"""FedProx (Li et al., 2020): FedAvg's objective plus the proximal term mu/2 ||w - w_global||^2."""

from __future__ import annotations

from fedcmi.methods.base import POSITIVE, MethodSpec
from fedcmi.methods.fedavg import CrossEntropy

SPEC = MethodSpec("fedprox", "FedProx: FedAvg plus the proximal term (proximal-mu)",
                  build=lambda cfg: CrossEntropy(), uses=("proximal-mu",), defining={"proximal-mu": POSITIVE})
