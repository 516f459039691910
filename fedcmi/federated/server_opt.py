"""Adaptive server optimisers (``server-opt``): FedAdam, FedYogi, FedAdagrad (Reddi et al., ICLR 2021,
"Adaptive Federated Optimization", Algorithm 2).

Why: under label skew and partial participation the aggregated update is noisy; treating it as a
pseudo-gradient and stepping with per-parameter adaptive rates damps it. Here the step runs after the
modality-aware aggregation, per parameter, on the already-aggregated weights:

    delta = aggregated - current
    m = beta1 m + (1 - beta1) delta
    v = beta2 v + (1 - beta2) delta^2                     (adam)
    v = v - (1 - beta2) delta^2 sign(v - delta^2)         (yogi)
    v = v + delta^2                                       (adagrad)
    x = current + lr m / (sqrt(v) + tau)

As in the paper, without Adam's bias correction (Flower's ``FedAdam`` adds one; its ``FedAdagrad`` fixes
beta1 = 0: set ``server-beta1=0`` for that). A parameter no client updated this round (a modality group no
sampled client holds) keeps its value and its moments are not advanced; integer buffers (BatchNorm's
``num_batches_tracked``) take the aggregated value. Moments are float64 and start at zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcmi.methods.server_step import Arrays, Reply, ServerStep, corrupt
from fedcmi.npy import from_b64 as _decode
from fedcmi.npy import to_b64 as _encode

if TYPE_CHECKING:
    from fedcmi.config import RunConfig

RULES = ("adam", "yogi", "adagrad")
STATE_KEY = "server-opt"


def adaptive_step(rule: str, x: np.ndarray, delta: np.ndarray, m: np.ndarray, v: np.ndarray, *, lr: float,
                  beta1: float, beta2: float, tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One parameter's step: (new x, new m, new v), all float64."""
    d2 = delta * delta
    m = beta1 * m + (1 - beta1) * delta
    if rule == "adam":
        v = beta2 * v + (1 - beta2) * d2
    elif rule == "yogi":
        v = v - (1 - beta2) * d2 * np.sign(v - d2)
    elif rule == "adagrad":
        v = v + d2
    else:
        raise ValueError(f"server-opt={rule!r}: must be one of {', '.join(RULES)}")
    return x + lr * m / (np.sqrt(v) + tau), m, v


class ServerOptimiser(ServerStep):
    """The adaptive step on the aggregated weights; its moments are the checkpoint's ``server-opt`` state."""

    name = "server-opt"
    state_keys = (STATE_KEY,)

    def __init__(self, rule: str, *, lr: float, beta1: float, beta2: float, tau: float) -> None:
        if rule not in RULES:
            raise ValueError(f"server-opt={rule!r}: must be one of {', '.join(RULES)}")
        self.rule, self.lr, self.beta1, self.beta2, self.tau = rule, lr, beta1, beta2, tau
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def after_aggregation(self, server_round: int, current: Mapping[str, np.ndarray], new: Arrays,
                          updated: frozenset[str], replies: Sequence[Reply]) -> Arrays:
        out = dict(new)
        for key in sorted(updated):
            old = np.asarray(current[key])
            if not np.issubdtype(old.dtype, np.floating):
                continue
            x = old.astype(np.float64)
            delta = np.asarray(new[key], dtype=np.float64) - x
            zeros = np.zeros_like(x)
            stepped, self.m[key], self.v[key] = adaptive_step(
                self.rule, x, delta, self.m.get(key, zeros), self.v.get(key, zeros), lr=self.lr, beta1=self.beta1,
                beta2=self.beta2, tau=self.tau)
            out[key] = stepped.astype(old.dtype).reshape(old.shape)
        return out

    # --- state: written, checked and read here only ------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {STATE_KEY: {"rule": self.rule, "m": {k: _encode(a) for k, a in sorted(self.m.items())},
                            "v": {k: _encode(a) for k, a in sorted(self.v.items())}}}

    def check_state(self, state: Mapping[str, Any], num_classes: int | None = None,
                    shapes: Mapping[str, tuple[int, ...]] | None = None) -> str | None:
        s = state.get(STATE_KEY)
        if s is None:
            return None  # a run that had no step yet (or a checkpoint written before the key existed)
        if not isinstance(s, dict) or set(s) != {"rule", "m", "v"}:
            return corrupt(f"{STATE_KEY}: not a mapping of rule, m, v")
        if s["rule"] != self.rule:
            return corrupt(f"{STATE_KEY}: moments of server-opt={s['rule']!r}, the run has {self.rule!r}")
        if not isinstance(s["m"], dict) or not isinstance(s["v"], dict) or set(s["m"]) != set(s["v"]):
            return corrupt(f"{STATE_KEY}: m and v must map the same parameter names to arrays")
        for key in sorted(s["m"]):
            m, v = _decode(s["m"][key]), _decode(s["v"][key])
            if m is None or v is None:
                return corrupt(f"{STATE_KEY}: {key}: not a float64 array")
            if m.shape != v.shape or not (np.all(np.isfinite(m)) and np.all(np.isfinite(v))) or np.any(v < 0):
                return corrupt(f"{STATE_KEY}: {key}: m and v must be finite arrays of one shape, v >= 0")
            if shapes is not None and key not in shapes:
                return corrupt(f"{STATE_KEY}: {key}: not a parameter of the model")
            if shapes is not None and tuple(shapes[key]) != m.shape:
                return corrupt(f"{STATE_KEY}: {key}: shape {m.shape}, the model has {tuple(shapes[key])}")
        return None

    def load_state(self, state: Mapping[str, Any]) -> None:
        s = state.get(STATE_KEY)
        self.m = {k: _decode(a) for k, a in s["m"].items()} if s else {}
        self.v = {k: _decode(a) for k, a in s["v"].items()} if s else {}


def build(cfg: RunConfig, num_classes: int) -> ServerOptimiser | None:
    """The step of ``server-opt`` (None for ``none``)."""
    server = cfg.server
    if server.server_opt == "none":
        return None
    return ServerOptimiser(server.server_opt, lr=server.server_lr, beta1=server.server_beta1, beta2=server.server_beta2,
                           tau=server.server_tau)
