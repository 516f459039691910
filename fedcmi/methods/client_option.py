"""The client half of a run option (:class:`ClientOption`): state a node keeps from round to round, arrays the
server sends it and arrays it sends back, and a hook on every local gradient.

Why a seam: an option such as SCAFFOLD changes every local step of every method and keeps per-node state,
yet the local loop (``base.local_update``), the client round (``fedcmi.federated.client_step``), the
ClientApp and the message format must not name it. Its registry line (``OptionSpec`` in
``fedcmi.methods.registry.OPTIONS``) names its builder and its records; everything here is generic:
:func:`client_options` builds the round's options from what the server sent and what the node kept, the
loop calls :meth:`ClientOption.start` and :meth:`ClientOption.before_step`, and :func:`finish_options`
collects what to keep and what to send back, each keyed by the option's name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedcmi.methods.registry import OPTIONS

if TYPE_CHECKING:
    import numpy as np

    from fedcmi.config import RunConfig

Tensors = dict[str, torch.Tensor]  # parameter name -> tensor


class ClientOption:
    """One client round of an option; every hook does nothing by default, an option overrides what it needs.

    Built fresh for each client round by the option's builder ``(RunConfig, sent, kept)``, so it may keep
    round state between :meth:`start` and :meth:`finish`.
    """

    def start(self, named: Sequence[tuple[str, nn.Parameter]]) -> None:
        """Before the first local step, with the parameters the client trains (name, parameter)."""

    def before_step(self, named: Sequence[tuple[str, nn.Parameter]]) -> None:
        """After backward, the method's gradient hook and the proximal gradient, before each SGD step: the
        gradients are final except for what this hook changes (a parameter without one takes no step)."""

    def finish(self) -> tuple[Tensors | None, Tensors | None]:
        """After the round: (what the node keeps in its ``context.state`` for its next round, what the reply
        carries to the option's server step), CPU tensors; None leaves the state as it is / sends nothing."""
        return None, None


def client_options(cfg: RunConfig, sent: Mapping[str, Mapping[str, np.ndarray]],
                   kept: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, ClientOption]:
    """The round's options that are on, by name, in registry order: each built from the arrays the server sent
    under its name (as tensors; None when none came) and those the node kept under its name (empty if none)."""
    out: dict[str, ClientOption] = {}
    for name, spec in OPTIONS.items():
        arrays = sent.get(name)
        option = spec.build_client(cfg, None if arrays is None else {k: torch.as_tensor(v) for k, v in arrays.items()},
                                   kept.get(name, {}))
        if option is not None:
            out[name] = option
    return out


def finish_options(options: Mapping[str, ClientOption]) -> tuple[dict[str, Tensors], dict[str, Tensors]]:
    """(option name -> arrays to keep in the node's state, option name -> arrays for the reply)."""
    keep: dict[str, Tensors] = {}
    reply: dict[str, Tensors] = {}
    for name, option in options.items():
        kept, sent = option.finish()
        if kept is not None:
            keep[name] = dict(kept)
        if sent is not None:
            reply[name] = dict(sent)
    return keep, reply
