"""Label-skew remedies that combine with any local method (one file each):

* ``logit-adjust`` (tau; 0 = off): CE(z + tau log pi_local, y) in every cross-entropy term of the method;
* ``restricted-softmax`` (alpha; 1 = off): FedRS, missing classes' logits scaled by alpha in those terms;
* ``ntd-beta`` (0 = off): FedNTD, beta * not-true distillation from the frozen global model on the fused logits.

A method computes its cross-entropy terms with :meth:`LabelSkew.ce`; with every remedy off it is exactly
``F.cross_entropy``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fedcmi.methods.registry import REMEDY_KEYS
from fedcmi.methods.remedies.logit_adjustment import adjust, log_label_prior
from fedcmi.methods.remedies.not_true_distillation import ntd_loss
from fedcmi.methods.remedies.restricted_softmax import present_classes, restrict

if TYPE_CHECKING:
    from fedcmi.config import RunConfig

KEYS = REMEDY_KEYS  # their one home is the (light) method registry: the CLI lists them without torch


@dataclass
class LabelSkew:
    """The remedies of one client round; ``start`` reads the client's labels (and freezes the teacher)."""

    logit_adjust: float = 0.0
    restricted_alpha: float = 1.0
    ntd_beta: float = 0.0
    ntd_temperature: float = 1.0
    log_prior: torch.Tensor | None = field(default=None, repr=False)
    present: torch.Tensor | None = field(default=None, repr=False)
    teacher: nn.Module | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> LabelSkew:
        return cls(cfg.logit_adjust, cfg.restricted_softmax, cfg.ntd_beta, cfg.ntd_temperature)

    @property
    def active(self) -> bool:
        return self.logit_adjust > 0 or self.restricted_alpha < 1 or self.ntd_beta > 0

    def start(self, model: nn.Module, y: torch.Tensor, num_classes: int) -> None:
        if self.logit_adjust > 0:
            self.log_prior = log_label_prior(y, num_classes).to(y.device)
        if self.restricted_alpha < 1:
            self.present = present_classes(y, num_classes)
        if self.ntd_beta > 0:
            self.teacher = copy.deepcopy(model).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The cross-entropy a method trains with: plain, logit-adjusted and/or restricted."""
        if self.log_prior is not None:
            logits = adjust(logits, self.log_prior, self.logit_adjust)
        if self.present is not None:
            logits = restrict(logits, self.present, self.restricted_alpha)
        return F.cross_entropy(logits, y)

    def extra_terms(self, model: nn.Module, xa: torch.Tensor | None, xb: torch.Tensor | None,
                    y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Terms added to the method's loss: ``loss_ntd`` (already weighted into ``loss``)."""
        if self.teacher is None:
            return {}
        with torch.no_grad():
            teacher = self.teacher(xa, xb)
        return {"loss_ntd": ntd_loss(model(xa, xb), teacher, y, self.ntd_temperature)}


__all__ = ["KEYS", "LabelSkew"]
