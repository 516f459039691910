"""SCAFFOLD's server half (``scaffold=true``, every method; Karimireddy et al., ICML 2020, Algorithm 1): the
server control variate c, the global step, and the check of the clients' delta c_i.

Why a step: c is server state a checkpoint must keep (``state()`` / ``check_state()`` / ``load_state()``), it
travels with the weights (``guidance``: ``Guidance.records["scaffold"]``, in the record SCAFFOLD's line in
``fedcmi.methods.registry.OPTIONS`` names), the clients' delta c_i is checked here (``check_reply``) and c moves
with the accepted replies (``after_aggregation``); the strategy never looks inside. The client half (the
corrected gradient, the node's c_i in its ``context.state``) is ``fedcmi.methods.scaffold``.

Per round, after the modality-aware aggregation (``fedcmi.federated.aggregation``: each modality's group
averaged over the clients holding it, the head over all):

    x  <-  x + eta_g (aggregate - x)                      (scaffold-lr = eta_g; 1 keeps the aggregate)
    c_p <- c_p + (1 / N_p) sum_{i in S_p} delta c_i,p      = c_p + (|S_p| / N_p) mean_{i in S_p} delta c_i,p

per parameter p, where S_p are the round's accepted clients that moved p (those that sent a delta for it)
and N_p the clients of the federation that train p's group under the method (p's modality for an
encoder or projector, any modality the method trains for the shared head). The paper writes the same with
one S and one N for all parameters; here a client that does not hold a modality is neither in S_p nor in
N_p for that modality's parameters. Why: c_p is meant to stay the mean of the c_i,p of the clients that
can train p (the paper's invariant c = mean_i c_i). Counting a client that never touches p (its c_i,p is 0
forever) in N_p would shrink c_p towards 0 by the share of such clients, and averaging its absent delta as
0 into the mean would do the same every round: the unimodal clients of the other modality would drag c
for parameters they never train. This is the modality-aware aggregation's rule (a group averaged over the
clients that hold it) applied to c, one step finer: a parameter a holder did not move this round (a
projector left idle, batches that all lacked the modality) is also left out, as its delta would be
undefined (K_p = 0).

N_p comes from the run configuration's federation (``num-clients``, ``multimodal-ratio``,
``unimodal-split``, the seed: the kinds ``fedcmi.data.partition`` assigns, which federation membership
vouches for). |S_p| / N_p is capped at 1 in case a deployment's nodes hold other kinds than the config says.

A reply the server rejects (screening, acceptance) moved its node's c_i but not c; as in the paper's
analysis of dropped clients, c is then no longer exactly the mean of the c_i until those clients are
sampled again. Integer buffers and parameters nobody moved keep c as it was (absent = 0).

Resume: c is in the checkpoint, so the server's half continues exactly; the c_i live in the nodes'
``context.state``, which Flower keeps for the run's lifetime only. Nodes whose state survives continue exactly
(tests/test_scaffold.py); a new Flower run resuming the checkpoint (``fedcmi simulate --resume``) starts every
node from c_i = 0 while c keeps its value, so the first rounds after it are not those of an uninterrupted run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcmi.dominance import Guidance
from fedcmi.methods.registry import OPTIONS
from fedcmi.methods.server_step import Arrays, Reply, ServerStep, corrupt
from fedcmi.modalities import SHARED, group_of, modalities_of
from fedcmi.npy import from_b64, to_b64

if TYPE_CHECKING:
    from fedcmi.config import RunConfig

NAME = STATE_KEY = "scaffold"  # the option's name (its registry line, its records) and its state key
_logger = logging.getLogger("fedcmi.server")


class Scaffold(ServerStep):
    """The server control variate c (float64, per parameter name; absent = 0) and its update.

    ``holders``: group (``"a"``, ``"b"``, ``"shared"``) -> N_g, the clients of the federation that train it;
    ``lr``: the global learning rate eta_g; ``group``: parameter name -> group.
    """

    name = NAME
    state_keys = (STATE_KEY,)

    def __init__(self, holders: Mapping[str, int], *, lr: float = 1.0,
                 group: Callable[[str], str] = group_of) -> None:
        self.holders, self.lr, self.group = dict(holders), lr, group
        self.c: dict[str, np.ndarray] = {}

    def guidance(self, server_round: int, guidance: Guidance) -> Guidance:
        """c travels with the weights (float32; an empty mapping before the first update: all zero)."""
        c = {k: v.astype(np.float32) for k, v in sorted(self.c.items())}
        return replace(guidance, records={**guidance.records, self.name: c})

    def check_reply(self, arrays: Mapping[str, np.ndarray] | None, current: Mapping[str, np.ndarray],
                    held: tuple[str, ...], group_of: Callable[[str], str]) -> str | None:
        """Every reply carries a delta c_i (:func:`check_control`)."""
        return check_control(arrays, current, held, group_of)

    def after_aggregation(self, server_round: int, current: Mapping[str, np.ndarray], new: Arrays,
                          updated: frozenset[str], replies: Sequence[Reply]) -> Arrays:
        out = dict(new)
        if self.lr != 1.0:
            for key in sorted(updated):
                old = np.asarray(current[key])
                if np.issubdtype(old.dtype, np.floating):
                    x = old.astype(np.float64)
                    out[key] = (x + self.lr * (np.asarray(new[key], np.float64) - x)).astype(old.dtype)
        self.c = update_control(self.c, [r.records[self.name] for r in replies if self.name in r.records],
                                self.holders, self.group)
        _logger.info("round %s: scaffold c over %s parameter(s), norm %.4g", server_round, len(self.c),
                     float(np.sqrt(sum(float((v * v).sum()) for v in self.c.values()))))
        return out

    # --- state: written, checked and read here only ------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {STATE_KEY: {"c": {k: to_b64(a) for k, a in sorted(self.c.items())}}}

    def check_state(self, state: Mapping[str, Any], num_classes: int | None = None,
                    shapes: Mapping[str, tuple[int, ...]] | None = None) -> str | None:
        s = state.get(STATE_KEY)
        if s is None:
            return None  # a run that had no step yet (or a checkpoint written before the key existed)
        if not isinstance(s, dict) or set(s) != {"c"} or not isinstance(s["c"], dict):
            return corrupt(f"{STATE_KEY}: not a mapping of c to parameter arrays")
        for key in sorted(s["c"]):
            c = from_b64(s["c"][key])
            if c is None:
                return corrupt(f"{STATE_KEY}: {key}: not a float64 array")
            if not np.all(np.isfinite(c)):
                return corrupt(f"{STATE_KEY}: {key}: not finite")
            if shapes is not None and key not in shapes:
                return corrupt(f"{STATE_KEY}: {key}: not a parameter of the model")
            if shapes is not None and tuple(shapes[key]) != c.shape:
                return corrupt(f"{STATE_KEY}: {key}: shape {c.shape}, the model has {tuple(shapes[key])}")
        return None

    def load_state(self, state: Mapping[str, Any]) -> None:
        s = state.get(STATE_KEY)
        self.c = {k: from_b64(a) for k, a in s["c"].items()} if s else {}


def update_control(c: Mapping[str, np.ndarray], deltas: Sequence[Mapping[str, np.ndarray]],
                   holders: Mapping[str, int], group: Callable[[str], str] = group_of) -> dict[str, np.ndarray]:
    """c_p + (1 / N_p) sum of the deltas sent for p, per parameter p (float64; replies in partition order).

    A parameter no reply sent a delta for keeps its c. N_p is at least the number of deltas (|S_p| / N_p <= 1).
    """
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for delta in deltas:
        for key, d in delta.items():
            sums[key] = sums.get(key, 0.0) + np.asarray(d, dtype=np.float64)
            counts[key] = counts.get(key, 0) + 1
    out = dict(c)
    for key in sorted(sums):
        n = max(holders.get(group(key), 0), counts[key])
        base = out.get(key)
        out[key] = (np.zeros_like(sums[key]) if base is None else base) + sums[key] / n
    return out


def check_control(delta: Mapping[str, np.ndarray] | None, current: Mapping[str, np.ndarray],
                  held: tuple[str, ...], group: Callable[[str], str] = group_of) -> str | None:
    """Why a reply's delta c_i is refused (one line), or None. Its declared shapes and dtypes were checked when
    it was read (``fedcmi.protocol.read_reply``); here: present, float parameters of groups the client trains,
    finite."""
    record = OPTIONS[NAME].reply
    if delta is None:
        return f"lacks its {record} record ({NAME} is on)"
    for key in sorted(delta):
        if not np.issubdtype(np.asarray(current[key]).dtype, np.floating):
            return f"{record} {key}: not a float parameter"
        g = group(key)
        if g != SHARED and g not in held:
            return f"{record} {key}: group {g}, which this client does not train"
        if not np.all(np.isfinite(delta[key])):
            return f"{record} {key}: not finite"
    return None


def federation_holders(kinds: Sequence[str], method_modalities: tuple[str, ...]) -> dict[str, int]:
    """N_g per group: the clients that train each modality's group under the method, and the shared head's
    (every client holding a modality the method trains)."""
    out = {m: 0 for m in method_modalities}
    out[SHARED] = 0
    for kind in kinds:
        held = [m for m in modalities_of(kind) if m in method_modalities]
        for m in held:
            out[m] += 1
        if held:
            out[SHARED] += 1
    return out


def build(cfg: RunConfig, num_classes: int) -> Scaffold | None:
    """The step when ``scaffold`` is on, else None."""
    if not cfg.method.scaffold:
        return None
    from fedcmi.data.partition import assign_modalities
    from fedcmi.methods.registry import method_spec

    fed = cfg.federation
    kinds = assign_modalities(fed.num_clients, fed.multimodal_ratio, fed.unimodal_split, fed.seed)
    return Scaffold(federation_holders(kinds, method_spec(cfg.method.strategy).modalities), lr=cfg.server.scaffold_lr)
