"""Label-skew remedies that combine with any local method, one file each, one ``RemedySpec`` line each in
``REMEDIES`` (``fedcmi/methods/registry.py``), switched on by their keys:

* ``logit-adjust`` (tau; 0 = off): CE(z + tau log pi_local, y) in every cross-entropy term of the method;
* ``restricted-softmax`` (alpha; 1 = off): FedRS, missing classes' logits scaled by alpha in those terms;
* ``ntd-beta`` (0 = off): FedNTD, beta * not-true distillation from the frozen global model on the fused logits.

:class:`Remedies` is what the local loop holds: the round's remedies that are on, called in registry order at
the fixed points of :class:`~fedcmi.methods.remedies.base.Remedy`. With none on, a method's cross-entropy is
exactly ``F.cross_entropy`` and its loss is its own.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedcmi.methods.registry import REMEDIES, REMEDY_KEYS
from fedcmi.methods.remedies.base import Remedy

if TYPE_CHECKING:
    from fedcmi.config import RunConfig

KEYS = REMEDY_KEYS  # their one home is the (light) method registry: the CLI lists them without torch


@dataclass(frozen=True)
class Remedies:
    """The remedies on in one client round, in registry order."""

    on: tuple[Remedy, ...] = ()

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Remedies:
        """Every registered remedy whose keys switch it on (a fresh object each: they keep round state)."""
        return cls(tuple(r for spec in REMEDIES.values() if (r := spec.build(cfg)) is not None))

    def start(self, model: nn.Module, y: torch.Tensor, num_classes: int) -> None:
        for remedy in self.on:
            remedy.start(model, y, num_classes)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        for remedy in self.on:
            z = remedy.logits(z)
        return z

    def add_terms(self, terms: MutableMapping[str, torch.Tensor], model: nn.Module, xa: torch.Tensor | None,
                  xb: torch.Tensor | None, y: torch.Tensor) -> None:
        """Each remedy's weighted terms into ``terms["loss"]``, each term also under its own name."""
        for remedy in self.on:
            for name, (weight, term) in remedy.loss_terms(model, xa, xb, y).items():
                terms[name] = term
                terms["loss"] = terms["loss"] + weight * term


__all__ = ["KEYS", "Remedies", "Remedy"]
