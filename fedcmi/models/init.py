"""Weight initialisation shared by every model (the authors' code: Xavier linears, Kaiming convs)."""

from __future__ import annotations

from torch import nn


def init_weights(module: nn.Module) -> None:
    """Xavier-normal linears, Kaiming-normal convs, BatchNorm at identity.

    Submodules marked ``keeps_weights`` (pretrained encoders) keep theirs.
    """
    kept = {id(sub) for m in module.modules() if getattr(m, "keeps_weights", False) for sub in m.modules()}
    for m in module.modules():
        if id(m) in kept:
            continue
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
