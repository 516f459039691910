"""fedavg-la: FedAvg whose local cross-entropy is logit-adjusted by the client's own label prior.

CE(z + log pi_local, y) (Menon et al., ICLR 2021; FedLC-style calibration): FedAvg with the ``logit-adjust``
remedy on (``fedcmi.methods.remedies.logit_adjustment``), which any method can also switch on.
"""

from __future__ import annotations

from fedcmi.methods.base import POSITIVE, MethodSpec
from fedcmi.methods.fedavg import CrossEntropy

SPEC = MethodSpec("fedavg-la", "FedAvg with logit-adjusted local CE, CE(z + log pi_local, y) (FedLC-style)",
                  build=lambda cfg: CrossEntropy(), uses=("proximal-mu",),
                  defaults={"proximal-mu": 0.0, "logit-adjust": 1.0}, defining={"logit-adjust": POSITIVE})
