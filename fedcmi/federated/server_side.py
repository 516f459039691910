"""A run's server side: the method's server steps (its spec's ``server``), then the steps of the run options
that any method can switch on (``fedcmi.methods.registry.OPTIONS``: SCAFFOLD, CCVR, the adaptive server
optimiser), in the order the strategy calls them.

Why one builder: the ServerApp (``server/app.py``) and the checkpoint check (``fedcmi.runs``) must agree on
which steps a run has, so both validate and load the same state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedcmi.methods.registry import OPTIONS, method_spec
from fedcmi.methods.server_step import ServerSide

if TYPE_CHECKING:
    from fedcmi.config import RunConfig


def server_side(cfg: RunConfig, num_classes: int) -> ServerSide:
    """The steps of ``cfg``'s method and options for a model of ``num_classes`` classes."""
    steps = method_spec(cfg.method.strategy).server_steps(cfg, num_classes)
    for name, spec in OPTIONS.items():
        step = spec.build_server(cfg, num_classes)
        if step is not None:
            if step.name != name:  # records and replies find an option's step by its name
                raise ValueError(f"option {name!r} built a server step named {step.name!r}")
            steps.append(step)
    return ServerSide(steps)
