"""The SGD of every local update and of CCVR's calibration: torch's own update rule without its Optimizer class.

Why: ``torch.optim.Optimizer`` wraps its methods so that torch's compiler stays out of them, and that wrapper
imports ``torch._dynamo`` (sympy included) the first time one is called: seconds of CPU in every fresh
process (docs/scaling.md); in a simulation every client actor would pay it in its first training step of round 1,
on the critical path of start-up (``benchmarks/startup_timeline.py``). :class:`SGD` keeps the momentum buffers and calls
``torch.optim.sgd.sgd``, the functional update ``torch.optim.SGD.step`` runs (per tensor on the CPU, foreach
on CUDA), so the numbers are ``torch.optim.SGD``'s bit for bit (``tests/test_sgd.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.sgd import sgd


class SGD:
    """``torch.optim.SGD(params, lr, momentum, weight_decay)`` (no dampening, no Nesterov): step and zero_grad."""

    def __init__(self, params: Iterable[torch.nn.Parameter], *, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        """Drop every gradient (``set_to_none=True``, torch's default)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of the parameters that have a gradient; the others and their momentum stay as they are."""
        held = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not held:
            return
        params = [self.params[i] for i in held]
        buffers = [self.buffers[i] for i in held]
        sgd(params, [p.grad for p in params], buffers, weight_decay=self.weight_decay, momentum=self.momentum,
            lr=self.lr, dampening=0.0, nesterov=False, maximize=False)
        if self.momentum != 0:
            for i, buf in zip(held, buffers, strict=True):
                self.buffers[i] = buf
