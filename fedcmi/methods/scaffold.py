"""SCAFFOLD's client half (Karimireddy et al., ICML 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning", Algorithm 1, option II): the corrected local gradient and the client's new control variate.

Why here: the correction changes every local step of every method, so it is a run option's client half
(``fedcmi.methods.client_option.ClientOption``, named by SCAFFOLD's line in ``fedcmi.methods.registry.OPTIONS``
with its records: c sent with the weights, delta c_i in the reply, c_i kept in the node's ``context.state``);
the loop in ``base.local_update`` calls it after the method's own gradient hook and the proximal term, before
SGD steps. The server half (the variate c, its update, its state) is ``fedcmi.federated.scaffold``.

Per local step, for every parameter ``p`` the client trains that has a gradient in this batch:

    g  <-  g + c - c_i                                  (the correction)

and after the round, for every parameter that moved at least once (K_p >= 1 steps):

    c_i+ = c_i - c + (x - y_i) / (K_p lr)               (option II)
    delta c_i = c_i+ - c_i

``(x - y_i) / (K_p lr)`` is the mean over the K_p steps of the direction plain SGD moved ``p`` along (the
corrected gradient plus weight decay). That mean is what this class accumulates and uses, so the update
equals option II exactly under plain SGD (``momentum=0``; tests/test_scaffold.py checks it against the
displacement). Under heavy-ball momentum beta the displacement would measure the momentum buffer, about
``1 / (1 - beta)`` times the gradient (10x at the default 0.9), and the correction would overshoot by as much;
the mean direction handed to SGD is the quantity option II estimates, whatever the momentum.

A parameter with no gradient in a batch (a modality the batch lacks: ``missing-a-rate``, or a projector a
method leaves idle) gets no correction and no step there, and K_p counts only its steps. A parameter that
never moved (K_p = 0: a modality the client does not hold, or one whose batches it never saw) keeps its
c_i and sends no delta, so it cannot drag the server's c (``fedcmi.federated.scaffold``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedcmi.methods.client_option import ClientOption

if TYPE_CHECKING:
    from fedcmi.config import RunConfig


class ControlVariates(ClientOption):
    """One client round's SCAFFOLD state: the correction c - c_i per parameter and the mean step direction.

    ``c``: the server's variate as received; ``c_i``: the node's own from its last round (both: parameter name
    -> tensor; an absent name is zero). ``weight_decay``: the SGD weight decay (part of the direction).
    """

    def __init__(self, c: Mapping[str, torch.Tensor], c_i: Mapping[str, torch.Tensor], weight_decay: float) -> None:
        self.c = dict(c)
        self.c_i = dict(c_i)
        self.weight_decay = weight_decay
        self.correction: dict[str, torch.Tensor | None] = {}
        self.sums: dict[str, torch.Tensor] = {}
        self.steps: dict[str, int] = {}

    def start(self, named: Sequence[tuple[str, nn.Parameter]]) -> None:
        """Before the first step: c - c_i on each trained parameter's device and dtype (None where both are 0)."""
        for name, p in named:
            c, ci = self.c.get(name), self.c_i.get(name)
            if c is None and ci is None:
                self.correction[name] = None
                continue
            diff = torch.zeros_like(p)
            if c is not None:
                diff += torch.as_tensor(c).to(p.device, p.dtype).reshape(p.shape)
            if ci is not None:
                diff -= torch.as_tensor(ci).to(p.device, p.dtype).reshape(p.shape)
            self.correction[name] = diff

    @torch.no_grad()
    def before_step(self, named: Sequence[tuple[str, nn.Parameter]]) -> None:
        """After backward, before the SGD step: add c - c_i to each gradient present and record the direction
        SGD will step along (gradient + weight decay)."""
        for name, p in named:
            if p.grad is None:
                continue  # no step for this parameter in this batch: no correction, not counted
            corr = self.correction.get(name)
            if corr is not None:
                p.grad.add_(corr)
            direction = p.grad + self.weight_decay * p if self.weight_decay else p.grad.clone()
            if name in self.sums:
                self.sums[name] += direction
            else:
                self.sums[name] = direction.detach().clone()
            self.steps[name] = self.steps.get(name, 0) + 1

    def finish(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(the node's new c_i: every parameter it ever held a variate for, delta c_i: only those it moved this
        round), CPU float32 tensors."""
        new = {k: torch.as_tensor(v).detach().cpu().float() for k, v in self.c_i.items()}
        delta: dict[str, torch.Tensor] = {}
        for name, total in self.sums.items():
            mean = (total / self.steps[name]).detach().cpu().float()
            c = self.c.get(name)
            c = torch.zeros_like(mean) if c is None else torch.as_tensor(c).cpu().float().reshape(mean.shape)
            ci = new.get(name)
            ci = torch.zeros_like(mean) if ci is None else ci.reshape(mean.shape)
            updated = ci - c + mean  # option II, with the mean direction for (x - y_i) / (K lr)
            delta[name] = updated - ci
            new[name] = updated
        return new, delta


def build_client(cfg: RunConfig, sent: Mapping[str, torch.Tensor] | None,
                 kept: Mapping[str, torch.Tensor]) -> ControlVariates | None:
    """One client round's variates when ``scaffold`` is on: c as received (absent before the server's first
    update: zero), the node's c_i from its last round (empty before its first)."""
    return ControlVariates(sent or {}, kept, cfg.training.weight_decay) if cfg.method.scaffold else None
