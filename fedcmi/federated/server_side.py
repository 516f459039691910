"""A run's server side: the method's server steps (its spec's ``server``), then the server options that any
method can switch on (CCVR, the adaptive server optimiser), in the order the strategy calls them.

Why one builder: the ServerApp (``server/app.py``) and the checkpoint check (``fedcmi.runs``) must agree on
which steps a run has, so both validate and load the same state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedcmi.federated import ccvr, scaffold, server_opt
from fedcmi.methods.registry import method_spec
from fedcmi.methods.server_step import ServerSide

if TYPE_CHECKING:
    from fedcmi.config import RunConfig

# Server options, after the method's own steps: SCAFFOLD moves its control variate (and with scaffold-lr the
# weights); CCVR pools moments and calibrates the evaluated copy only; the optimiser steps the global weights.
OPTIONS = (scaffold.build, ccvr.build, server_opt.build)


def server_side(cfg: RunConfig, num_classes: int) -> ServerSide:
    """The steps of ``cfg``'s method and options for a model of ``num_classes`` classes."""
    steps = method_spec(cfg.method.strategy).server_steps(cfg, num_classes)
    steps += [s for s in (option(cfg, num_classes) for option in OPTIONS) if s is not None]
    return ServerSide(steps)
