"""The local-method protocol and the local update loop (written once, for every method; the spec: spec.py).

The path of a batch: :func:`local_update` shuffles the client's data, asks the method for the loss terms of
each batch (:meth:`LocalMethod.batch_loss`, whose cross-entropy terms see the logits as the round's remedies
adjust them), adds the remedies' loss terms (:meth:`Remedies.add_terms`), back-propagates ``terms["loss"]``,
lets the method touch the gradients (:meth:`LocalMethod.after_backward`), adds the proximal gradient, lets the
round's run options touch them (:meth:`ClientOption.before_step`) and steps SGD. No remedy and no option is
named here: they are registry entries (``fedcmi.methods.remedies``, ``fedcmi.methods.client_option``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fedcmi.data.base import ClientData
from fedcmi.dominance import Guidance
from fedcmi.methods.client_option import ClientOption
from fedcmi.methods.losses import add_proximal_gradient
from fedcmi.methods.remedies import Remedies
from fedcmi.methods.sgd import SGD
from fedcmi.modalities import MODALITIES, A, B, group_of, modalities_of

if TYPE_CHECKING:
    from fedcmi.config import RunConfig
    from fedcmi.methods.spec import MethodSpec


class LocalMethod:
    """One client's local objective for one round. Subclasses override ``batch_loss`` and any hook.

    A fresh object is built for every client round (``MethodSpec.build``, spec.py), so it may keep round state
    (a frozen teacher, prototypes) between :meth:`start` and the end of the round. Its cross-entropy terms use
    :meth:`ce`, which applies the round's label-skew remedies (plain cross-entropy when none is on).
    """

    remedies: Remedies = Remedies()  # the round's, set by local_update

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The cross-entropy a method trains with: of the logits as the remedies on adjust them."""
        return F.cross_entropy(self.remedies.logits(logits), y)

    def start(self, model: nn.Module, data: ClientData, guidance: Guidance, num_classes: int) -> None:
        """Before the first epoch, with the received global weights loaded."""

    def before_epoch(self, model: nn.Module, data: ClientData) -> None:
        """At the start of every local epoch."""

    def batch_loss(self, model: nn.Module, xa: torch.Tensor | None, xb: torch.Tensor | None,
                   y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms of one batch; ``"loss"`` is back-propagated, every term is averaged into the metrics."""
        raise NotImplementedError

    def after_backward(self, model: nn.Module, terms: Mapping[str, torch.Tensor],
                       generator: torch.Generator | None) -> None:
        """After ``backward()``, before the proximal gradient and the optimiser step."""


@dataclass(frozen=True)
class TrainSettings:
    """The optimiser settings of a local update (from the run config)."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 1e-4
    proximal_mu: float = 0.0

    @classmethod
    def of(cls, cfg: RunConfig, spec: MethodSpec) -> TrainSettings:
        mu = cfg.method.proximal_mu if "proximal-mu" in spec.uses else 0.0
        t = cfg.training
        return cls(t.local_epochs, t.batch_size, t.lr, t.momentum, t.weight_decay, mu)


@dataclass
class TrainResult:
    num_examples: int
    losses: dict[str, float] = field(default_factory=dict)


def trainable_parameters(model: nn.Module, kind: str) -> list[tuple[str, nn.Parameter]]:
    """Parameters of the groups a client of this kind trains: its modalities' groups and the fusion head."""
    held = modalities_of(kind)
    return [(n, p) for n, p in model.named_parameters() if group_of(n) in (*held, "shared")]


def only(data: ClientData, modalities: tuple[str, ...]) -> ClientData:
    """The client's data restricted to the modalities a method trains (unimodal baselines see one)."""
    return data.holding(modalities)


def batches(data: ClientData, batch_size: int,
            generator: torch.Generator | None) -> Iterator[tuple[torch.Tensor, tuple[str, ...]]]:
    """One epoch's mini-batches: (sample indices, the modalities every one of them holds).

    A seeded permutation cut into batches. When some samples lack a modality (``ClientData.partial``) the
    permutation is first split by presence (both, only ``a``, only ``b``), each part cut into batches, and the
    batches visited in a seeded random order: every batch is homogeneous, so a sample with only ``a`` trains
    exactly as a sample of a client holding only ``a`` does, and the missing modality's encoder and projectors
    get no gradient from it. Without missing modalities this is the plain permutation (same random draws).
    """
    n = len(data)
    order = torch.randperm(n, generator=generator).to(data.y.device)
    if not data.partial:
        held = tuple(m for m in MODALITIES if getattr(data, m) is not None)
        for start in range(0, n, batch_size):
            yield order[start:start + batch_size], held
        return
    has_a, has_b = data.present(A)[order], data.present(B)[order]
    parts = ((has_a & has_b, (A, B)), (has_a & ~has_b, (A,)), (~has_a & has_b, (B,)))
    chunks = []
    for mask, held in parts:
        rows = order[mask]
        chunks += [(rows[start:start + batch_size], held) for start in range(0, len(rows), batch_size)]
    for i in torch.randperm(len(chunks), generator=generator).tolist():
        yield chunks[i]


def local_update(model: nn.Module, data: ClientData, method: LocalMethod, guidance: Guidance,
                 settings: TrainSettings, *, num_classes: int, generator: torch.Generator | None = None,
                 remedies: Remedies | None = None, options: Sequence[ClientOption] = ()) -> TrainResult:
    """Train ``model`` in place on one client's labeled data; returns the mean of each loss term.

    ``remedies``: the round's label-skew remedies (``Remedies.from_config``; none by default). ``options``: the
    round's run options with a client half (``client_option.client_options``), started with the trained
    parameters and called before every SGD step, in order (their ``finish`` is the caller's).

    Unlabeled samples (``missing-label-rate``) are left out: no method has an unsupervised term.
    """
    data = data.labeled()
    named = trainable_parameters(model, data.kind)
    params = [p for _, p in named]
    anchors = [p.detach().clone() for p in params] if settings.proximal_mu > 0 else []
    remedies = remedies if remedies is not None else Remedies()
    remedies.start(model, data.y, num_classes)
    method.remedies = remedies
    method.start(model, data, guidance, num_classes)
    for option in options:
        option.start(named)
    opt = SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    model.train()
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}  # per term: a term only some batches have (multimodal ones) is their mean
    n = len(data)
    for _ in range(settings.epochs):
        method.before_epoch(model, data)
        for idx, held in batches(data, settings.batch_size, generator):
            if len(idx) < 2:  # BatchNorm needs two samples; a lone leftover is dropped
                continue
            xa = data.a[idx] if A in held else None
            xb = data.b[idx] if B in held else None
            terms = method.batch_loss(model, xa, xb, data.y[idx])
            remedies.add_terms(terms, model, xa, xb, data.y[idx])
            opt.zero_grad()
            terms["loss"].backward()
            method.after_backward(model, terms, generator)
            if anchors:
                add_proximal_gradient(params, anchors, settings.proximal_mu)
            for option in options:
                option.before_step(named)
            opt.step()
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach())
                counts[k] = counts.get(k, 0) + 1
    return TrainResult(n, {k: v / counts[k] for k, v in totals.items()})
