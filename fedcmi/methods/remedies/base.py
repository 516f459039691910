"""What a label-skew remedy is to the local loop: three fixed points, each a no-op unless overridden.

1. :meth:`Remedy.start`: once per client round, before the first batch, with the received global weights
   loaded (read the client's labels, freeze a teacher);
2. :meth:`Remedy.logits`: every cross-entropy term of the method sees the logits as the remedies on adjust
   them (``LocalMethod.ce``); prediction never does;
3. :meth:`Remedy.loss_terms`: terms added to the method's loss of a batch, each with its weight.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class Remedy:
    """One remedy of one client round (built fresh each round by its registry line's builder)."""

    def start(self, model: nn.Module, y: torch.Tensor, num_classes: int) -> None:
        """Before the first epoch: ``y`` are the client's training labels."""

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """The logits a cross-entropy term of the method sees."""
        return z

    def loss_terms(self, model: nn.Module, xa: torch.Tensor | None, xb: torch.Tensor | None,
                   y: torch.Tensor) -> Mapping[str, tuple[float, torch.Tensor]]:
        """Name -> (weight, term): ``loss += weight * term``; the term is reported in the metrics by its name."""
        return {}
