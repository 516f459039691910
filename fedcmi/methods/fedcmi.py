"""FedCMI (arXiv 2401.00894): self and infiltration projectors, infiltration distillation with class-wise
temperatures, and the ablations of the method as parameters of the same objective.

Multimodal client, per batch: CE of F(self_a, self_b) + lambda_self * (CE(cls_a(self_a)) + CE(cls_b(self_b)))
+ lambda_cmi * distillation of the frozen global dominant self branch into the weak modality's infiltration
projector (temperature tau of each sample's class) [+ lambda_cross * the unimodal paths, fedcmi-plus].
Unimodal client: CE of F(self, infiltration) (the infiltration output fills the missing slot).
The proximal term is added by the local loop (``proximal-mu``).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from fedcmi.data.base import ClientData
from fedcmi.dominance import Guidance, class_temperatures
from fedcmi.methods.base import LocalMethod
from fedcmi.methods.losses import infiltration_distillation, true_class_probability
from fedcmi.methods.statistics import class_statistics
from fedcmi.modalities import MM


class Distiller:
    """Infiltration distillation for one multimodal client and round: teacher, direction and temperatures."""

    def __init__(self, model: nn.Module, data: ClientData, method: FedCMI, guidance: Guidance,
                 num_classes: int) -> None:
        self.teacher = copy.deepcopy(model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.local = method.dominance == "local"
        self.dominant = guidance.dominant
        device = data.y.device
        if not method.class_wise_temperature:
            tau = np.full(num_classes, method.temperature)
        elif self.local:  # the authors' rule: the client's own statistics with the received weights
            tau, _ = class_temperatures(*class_statistics(model, data, num_classes).means(), method.gamma,
                                        geometric=method.ratio_mean == "geometric")
        else:  # the server's, decided with the dominant modality (``start`` builds no distiller before that)
            tau = guidance.tau if guidance.tau is not None else np.ones(num_classes)
        self.tau = torch.as_tensor(tau, dtype=torch.float32, device=device)

    def loss(self, model: nn.Module, xa: torch.Tensor, xb: torch.Tensor, y: torch.Tensor,
             z_aa: torch.Tensor, z_bb: torch.Tensor, students: dict[str, torch.Tensor]) -> torch.Tensor:
        """Teacher: the frozen global dominant self branch. Student: ``students[weak]`` through cls_weak."""
        dominant = self.dominant
        if self.local:  # per batch: rho = sum p_aa[y] / sum p_bb[y] (authors' code)
            with torch.no_grad():
                rho = true_class_probability(z_aa, y).sum() / true_class_probability(z_bb, y).sum()
            dominant = "a" if rho > 1 else "b"
        with torch.no_grad():
            x_dom = xa if dominant == "a" else xb
            teacher = self.teacher.classify(self.teacher.branches(x_dom, dominant)[0], dominant)
        weak = "b" if dominant == "a" else "a"
        return infiltration_distillation(model.classify(students[weak], weak), teacher, self.tau[y])


class FedCMI(LocalMethod):
    """The FedCMI objective; ``single_projector`` is the ablation that distils into the weak self projector
    and zero-fills a unimodal client's missing slot."""

    def __init__(self, *, lambda_self: float, lambda_cmi: float, lambda_cross: float, class_wise_temperature: bool,
                 temperature: float, gamma: float, dominance: str, single_projector: bool = False,
                 unimodal_zero_fill: float = 0.0, normalize_loss: bool = False, ratio_mean: str = "arithmetic") -> None:
        self.lambda_self, self.lambda_cmi, self.lambda_cross = lambda_self, lambda_cmi, lambda_cross
        self.class_wise_temperature, self.temperature, self.gamma = class_wise_temperature, temperature, gamma
        self.dominance, self.single_projector = dominance, single_projector
        self.unimodal_zero_fill, self.normalize_loss = unimodal_zero_fill, normalize_loss
        self.ratio_mean = ratio_mean
        self.distiller: Distiller | None = None

    @classmethod
    def from_config(cls, cfg, single_projector: bool = False) -> FedCMI:  # noqa: ANN001 - RunConfig
        m = cfg.method
        return cls(lambda_self=m.lambda_self, lambda_cmi=m.lambda_cmi, lambda_cross=m.lambda_cross,
                   class_wise_temperature=m.class_wise_temperature, temperature=m.temperature,
                   gamma=m.gamma, dominance=m.dominance, single_projector=single_projector,
                   unimodal_zero_fill=m.unimodal_zero_fill, normalize_loss=m.normalize_loss,
                   ratio_mean=m.ratio_mean)

    def start(self, model: nn.Module, data: ClientData, guidance: Guidance, num_classes: int) -> None:
        """Distil this round when the warm-up is over and, with ``dominance=global``, the server has decided the
        dominant modality (it has not before it has statistics of a trained model: no infiltration then, rather
        than a silent switch to the per-batch rule)."""
        decided = self.dominance == "local" or guidance.dominant is not None
        if data.kind == MM and self.lambda_cmi > 0 and guidance.infiltrate and decided:
            self.distiller = Distiller(model, data, self, guidance, num_classes)

    def batch_loss(self, model: nn.Module, xa: torch.Tensor | None, xb: torch.Tensor | None,
                   y: torch.Tensor) -> dict[str, torch.Tensor]:
        if xa is None or xb is None:
            return self._unimodal_loss(model, xa, xb, y)
        h_sa, h_ia = model.branches(xa, "a")
        h_sb, h_ib = model.branches(xb, "b")
        fused = self.ce(model.fuse(h_sa, h_sb), y)
        z_aa, z_bb = model.classify(h_sa, "a"), model.classify(h_sb, "b")
        terms = {"loss_fused": fused}
        total, weights = fused, 1.0
        if self.lambda_self > 0:
            terms["loss_self"] = self.ce(z_aa, y) + self.ce(z_bb, y)
            total = total + self.lambda_self * terms["loss_self"]
            weights += 2 * self.lambda_self
        if self.distiller is not None:
            students = {"a": h_sa, "b": h_sb} if self.single_projector else {"a": h_ia, "b": h_ib}
            terms["loss_cmi"] = self.distiller.loss(model, xa, xb, y, z_aa, z_bb, students)
            total = total + self.lambda_cmi * terms["loss_cmi"]
            weights += self.lambda_cmi
        if self.lambda_cross > 0:  # fedcmi-plus: the unimodal inference paths, trained on multimodal data
            terms["loss_cross"] = self.ce(model.fuse(h_sa, h_ia), y) + self.ce(model.fuse(h_ib, h_sb), y)
            total = total + self.lambda_cross * terms["loss_cross"]
            weights += 2 * self.lambda_cross
        terms["loss"] = total / weights if self.normalize_loss else total
        return terms

    def _unimodal_loss(self, model: nn.Module, xa: torch.Tensor | None, xb: torch.Tensor | None,
                       y: torch.Tensor) -> dict[str, torch.Tensor]:
        """F(self, infiltration), or zero-filled (single projector); optionally also F(self, 0)."""
        logits = model.forward_zero(xa, xb) if self.single_projector else model(xa, xb)
        fused = self.ce(logits, y)
        terms = {"loss_fused": fused}
        total, weights = fused, 1.0
        if self.unimodal_zero_fill > 0 and not self.single_projector:
            terms["loss_zero"] = self.ce(model.forward_zero(xa, xb), y)
            total = total + self.unimodal_zero_fill * terms["loss_zero"]
            weights += self.unimodal_zero_fill
        terms["loss"] = total / weights if self.normalize_loss else total
        return terms


def build(cfg) -> FedCMI:  # noqa: ANN001 - RunConfig
    """fedcmi, fedcmi-plus and the ablations but fedcmi-single (fedcmi.methods.registry)."""
    return FedCMI.from_config(cfg)


def build_single_projector(cfg) -> FedCMI:  # noqa: ANN001 - RunConfig
    """fedcmi-single: one projector per modality."""
    return FedCMI.from_config(cfg, single_projector=True)
