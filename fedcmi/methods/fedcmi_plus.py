"""fedcmi-plus (ours): FedCMI whose multimodal clients also train the fusion head on the unimodal
(self, infiltration) pairs, so the head accepts infiltration features in the missing slot."""

from __future__ import annotations

from fedcmi.methods.base import POSITIVE, MethodSpec
from fedcmi.methods.fedcmi import USES, FedCMI

SPEC = MethodSpec("fedcmi-plus", "FedCMI + multimodal clients also train the fusion head on the unimodal (self, "
                  "infiltration) pairs, so infiltration features are accepted in the missing slot (lambda-cross)",
                  build=FedCMI.from_config, model="fedcmi", uses=USES, defining={"lambda-cross": POSITIVE},
                  infiltration_path=True)
