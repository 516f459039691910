"""One client's local update: the FedCMI objective (spec Part 0 §3, A.6-A.8) or the baselines' plain CE.

The path of a batch: ``_batch_loss`` picks the loss for the client's kind (multimodal / unimodal) and model
(decomposed / concat); ``local_update`` loops over epochs and batches and applies the proximal gradient.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedcmi.config import RunConfig
from fedcmi.data.base import ClientData
from fedcmi.dominance import ClassStats, class_temperatures
from fedcmi.imbalance import class_prototypes, ogm_coefficients, ogm_modulate, pmr_loss, split_head_logits
from fedcmi.losses import add_proximal_gradient, infiltration_distillation, true_class_probability
from fedcmi.models import group_of
from fedcmi.strategies import preset


@dataclass(frozen=True)
class Objective:
    """Which terms of the local objective are on, and their weights. A weight of 0 switches a term off."""

    decomposed: bool
    lambda_self: float = 2.0
    lambda_cmi: float = 1.0
    proximal_mu: float = 0.0
    class_wise_temperature: bool = True
    temperature: float = 1.0
    gamma: float = 2.0
    dominance: str = "global"
    single_projector: bool = False  # ablation: distil into the weak self projector, unimodal clients zero-fill
    lambda_cross: float = 0.0  # fedcmi-plus: multimodal clients also train F(self, infiltration) paths
    local_method: str = "none"  # "ogm-ge" | "pmr" on multimodal clients of the concat model
    ogm_alpha: float = 0.8
    pmr_alpha: float = 1.0
    pmr_momentum: float = 0.2
    use_modalities: tuple[str, ...] = ("a", "b")  # unimodal baselines train one modality

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Objective:
        """Run-config values, then what the strategy preset fixes (``fedcmi.strategies``)."""
        p = preset(cfg.strategy)
        values = dict(decomposed=p.decomposed, lambda_self=cfg.lambda_self if p.decomposed else 0.0,
                      lambda_cmi=cfg.lambda_cmi if p.decomposed else 0.0, proximal_mu=cfg.proximal_mu,
                      class_wise_temperature=cfg.class_wise_temperature, temperature=cfg.temperature,
                      gamma=cfg.gamma, dominance=cfg.dominance,
                      lambda_cross=cfg.lambda_cross if p.decomposed else 0.0, ogm_alpha=cfg.ogm_alpha,
                      pmr_alpha=cfg.pmr_alpha, pmr_momentum=cfg.pmr_momentum, use_modalities=p.modalities)
        values.update(p.objective)
        return cls(**values)


@dataclass(frozen=True)
class Guidance:
    """What the server sends besides the weights: infiltration on/off, dominant modality, tau_c."""

    infiltrate: bool = False
    dominant: str | None = None
    tau: np.ndarray | None = None


@dataclass
class TrainResult:
    num_examples: int
    losses: dict[str, float] = field(default_factory=dict)


def self_logits(model: nn.Module, x: torch.Tensor, m: str) -> torch.Tensor:
    """Modality ``m`` alone through its own path: the self branch (decomposed) or zero-filled (concat)."""
    if getattr(model, "decomposed", False):
        return model.classify(model.branches(x, m)[0], m)
    return model.forward_zero(**{f"x{m}": x})


@torch.no_grad()
def class_statistics(model: nn.Module, data: ClientData, num_classes: int, batch_size: int = 512) -> ClassStats:
    """Per-class sums of each self branch's true-class probability (multimodal clients; spec Part 0 §4)."""
    stats = ClassStats.zeros(num_classes)
    if data.kind != "mm" or len(data) == 0:
        return stats
    was_training = model.training
    model.eval()
    for start in range(0, len(data), batch_size):
        sl = slice(start, start + batch_size)
        y = data.y[sl]
        pa = true_class_probability(self_logits(model, data.a[sl], "a"), y).double().cpu().numpy()
        pb = true_class_probability(self_logits(model, data.b[sl], "b"), y).double().cpu().numpy()
        yc = y.cpu().numpy()
        stats = stats + ClassStats(np.bincount(yc, pa, num_classes), np.bincount(yc, pb, num_classes),
                                   np.bincount(yc, minlength=num_classes).astype(np.float64))
    model.train(was_training)
    return stats


def trainable_parameters(model: nn.Module, kind: str) -> list[tuple[str, nn.Parameter]]:
    """Parameters of the groups a client of this kind trains: its modalities' groups and the fusion head."""
    held = ("a", "b") if kind == "mm" else (kind,)
    return [(n, p) for n, p in model.named_parameters() if group_of(n) in (*held, "shared")]


class _Distiller:
    """Infiltration distillation for one multimodal client and round: teacher, direction and temperatures."""

    def __init__(self, model: nn.Module, data: ClientData, objective: Objective, guidance: Guidance,
                 num_classes: int) -> None:
        self.teacher = copy.deepcopy(model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.local = objective.dominance == "local"
        self.dominant = guidance.dominant
        device = data.y.device
        if not objective.class_wise_temperature:
            tau = np.full(num_classes, objective.temperature)
        elif self.local:  # the authors' rule: the client's own statistics with the received weights
            tau, _ = class_temperatures(*class_statistics(model, data, num_classes).means(), objective.gamma)
        else:
            tau = guidance.tau if guidance.tau is not None else np.ones(num_classes)
        self.tau = torch.as_tensor(tau, dtype=torch.float32, device=device)

    def loss(self, model: nn.Module, xa: torch.Tensor, xb: torch.Tensor, y: torch.Tensor,
             z_aa: torch.Tensor, z_bb: torch.Tensor, students: dict[str, torch.Tensor]) -> torch.Tensor:
        """Teacher: the frozen global dominant self branch. Student: ``students[weak]`` through cls_weak."""
        dominant = self.dominant
        if self.local or dominant is None:  # per batch: rho = sum p_aa[y] / sum p_bb[y] (spec A.5)
            with torch.no_grad():
                rho = true_class_probability(z_aa, y).sum() / true_class_probability(z_bb, y).sum()
            dominant = "a" if rho > 1 else "b"
        with torch.no_grad():
            x_dom = xa if dominant == "a" else xb
            teacher = self.teacher.classify(self.teacher.branches(x_dom, dominant)[0], dominant)
        weak = "b" if dominant == "a" else "a"
        return infiltration_distillation(model.classify(students[weak], weak), teacher, self.tau[y])


class _Prototypes:
    """PMR's per-class prototypes of each encoder, refreshed at the start of every local epoch."""

    def __init__(self, num_classes: int, momentum: float) -> None:
        self.num_classes, self.momentum = num_classes, momentum
        self.a: torch.Tensor | None = None
        self.b: torch.Tensor | None = None

    @torch.no_grad()
    def refresh(self, model: nn.Module, data: ClientData, batch_size: int = 512) -> None:
        was_training = model.training
        model.eval()
        ha = torch.cat([model.enc_a(data.a[i:i + batch_size]) for i in range(0, len(data), batch_size)])
        hb = torch.cat([model.enc_b(data.b[i:i + batch_size]) for i in range(0, len(data), batch_size)])
        self.a = class_prototypes(ha, data.y, self.num_classes, self.a, self.momentum)
        self.b = class_prototypes(hb, data.y, self.num_classes, self.b, self.momentum)
        model.train(was_training)


def _baseline_loss(model: nn.Module, xa: torch.Tensor | None, xb: torch.Tensor | None, y: torch.Tensor,
                   objective: Objective, protos: _Prototypes | None) -> dict[str, torch.Tensor]:
    """Concat model: CE with the missing modality zero-filled; OGM-GE / PMR on multimodal batches."""
    if xa is None or xb is None or objective.local_method == "none":
        fused = F.cross_entropy(model(xa, xb), y)
        return {"loss": fused, "loss_fused": fused}
    h_a, h_b = model.enc_a(xa), model.enc_b(xb)
    fused = F.cross_entropy(model.fusion(h_a, h_b), y)
    if objective.local_method == "ogm-ge":
        out_a, out_b = split_head_logits(model.fusion.fc, h_a, h_b)
        coeff_a, coeff_b = ogm_coefficients(out_a, out_b, y, objective.ogm_alpha)
        return {"loss": fused, "loss_fused": fused, "ogm_coeff_a": torch.tensor(coeff_a),
                "ogm_coeff_b": torch.tensor(coeff_b)}
    proto = pmr_loss(h_a, h_b, y, protos.a, protos.b, objective.pmr_alpha)
    return {"loss": fused + proto, "loss_fused": fused, "loss_proto": proto}


def _batch_loss(model: nn.Module, xa: torch.Tensor | None, xb: torch.Tensor | None, y: torch.Tensor,
                objective: Objective, distiller: _Distiller | None,
                protos: _Prototypes | None = None) -> dict[str, torch.Tensor]:
    """The loss terms of one batch for this client's kind and model."""
    if not objective.decomposed:
        return _baseline_loss(model, xa, xb, y, objective, protos)
    if xa is None or xb is None:  # unimodal client: F(self, infiltration) (spec A.6), or zero-filled
        logits = model.forward_zero(xa, xb) if objective.single_projector else model(xa, xb)
        fused = F.cross_entropy(logits, y)
        return {"loss": fused, "loss_fused": fused}
    h_sa, h_ia = model.branches(xa, "a")
    h_sb, h_ib = model.branches(xb, "b")
    fused = F.cross_entropy(model.fuse(h_sa, h_sb), y)
    z_aa, z_bb = model.classify(h_sa, "a"), model.classify(h_sb, "b")
    terms = {"loss_fused": fused}
    total = fused
    if objective.lambda_self > 0:
        terms["loss_self"] = F.cross_entropy(z_aa, y) + F.cross_entropy(z_bb, y)
        total = total + objective.lambda_self * terms["loss_self"]
    if distiller is not None:
        students = {"a": h_sa, "b": h_sb} if objective.single_projector else {"a": h_ia, "b": h_ib}
        terms["loss_cmi"] = distiller.loss(model, xa, xb, y, z_aa, z_bb, students)
        total = total + objective.lambda_cmi * terms["loss_cmi"]
    if objective.lambda_cross > 0:  # fedcmi-plus: the unimodal inference paths, trained on multimodal data
        terms["loss_cross"] = (F.cross_entropy(model.fuse(h_sa, h_ia), y)
                               + F.cross_entropy(model.fuse(h_ib, h_sb), y))
        total = total + objective.lambda_cross * terms["loss_cross"]
    terms["loss"] = total
    return terms


def local_update(model: nn.Module, data: ClientData, objective: Objective, guidance: Guidance, *,
                 num_classes: int, epochs: int, batch_size: int, lr: float, momentum: float = 0.9,
                 weight_decay: float = 1e-4, generator: torch.Generator | None = None) -> TrainResult:
    """Train ``model`` in place on one client's data; returns the mean of each loss term."""
    if set(objective.use_modalities) != {"a", "b"}:  # unimodal baselines see one modality only
        data = ClientData(data.a if "a" in objective.use_modalities else None,
                          data.b if "b" in objective.use_modalities else None, data.y)
    named = trainable_parameters(model, data.kind)
    params = [p for _, p in named]
    anchors = [p.detach().clone() for p in params] if objective.proximal_mu > 0 else []
    use_cmi = (objective.decomposed and data.kind == "mm" and objective.lambda_cmi > 0 and guidance.infiltrate)
    distiller = _Distiller(model, data, objective, guidance, num_classes) if use_cmi else None
    use_pmr = objective.local_method == "pmr" and not objective.decomposed and data.kind == "mm"
    protos = _Prototypes(num_classes, objective.pmr_momentum) if use_pmr else None
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    totals: dict[str, float] = {}
    steps = 0
    n = len(data)
    for _ in range(epochs):
        if protos is not None:
            protos.refresh(model, data)
        order = torch.randperm(n, generator=generator).to(data.y.device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples; a lone leftover is dropped
                continue
            xa = data.a[idx] if data.a is not None else None
            xb = data.b[idx] if data.b is not None else None
            terms = _batch_loss(model, xa, xb, data.y[idx], objective, distiller, protos)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            if "ogm_coeff_a" in terms:
                ogm_modulate(model, (float(terms["ogm_coeff_a"]), float(terms["ogm_coeff_b"])), generator)
            if anchors:
                add_proximal_gradient(params, anchors, objective.proximal_mu)
            opt.step()
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach())
            steps += 1
    return TrainResult(n, {k: v / max(steps, 1) for k, v in totals.items()})
