"""Test-only attackers (issue 12): a Flower mod around fedcmi's ClientApp that turns chosen partitions into
adversaries. Nothing of it ships in the product; ``benchmarks/attacks.py`` and the tests use it.

A spec is ``kind:partition[,kind:partition...]``; kinds:

* ``noise``: the trained arrays are replaced by the global model plus Gaussian noise whose L2 norm, per
  parameter group, aims just under the server's relative bound: ``0.5 x multiple x`` the attacker's own honest
  update norm of that group (its best guess of the round's median; the margin because its own norm can be
  up to twice the median, and an attacker above the bound is simply rejected);
* ``count``: the sample count is 1e9 (it would take all the weight of a sample-weighted mean);
* ``stats``: forged class statistics claiming the second modality is always right and the first never
  (counts kept at the attacker's real ones, so they pass the caps), to force the dominant modality;
* ``metrics``: a list where the loss belongs.

The spec is read from a file on every message, so one simulation can run several scenarios in turn.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType

from fedcmi import protocol
from fedcmi.models.modalities import group_of
from fedcmi.npy import record_arrays

KINDS = ("noise", "count", "stats", "metrics")


def parse(spec: str) -> dict[int, str]:
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, part = item.partition(":")
        if kind not in KINDS:
            raise ValueError(f"{item!r}: kind must be one of {', '.join(KINDS)}")
        out[int(part)] = kind
    return out


def attack(content, kind: str, sent: ArrayRecord, multiple: float, seed: int) -> None:  # noqa: ANN001
    """Turn an honest training reply (``content``, changed in place) into the attack ``kind``."""
    if kind == "noise":
        rng = np.random.default_rng(seed)
        arrays = record_arrays(content[protocol.ARRAYS])
        glob = record_arrays(sent, arrays)
        groups: dict[str, list[str]] = {}
        for k, v in arrays.items():
            if np.issubdtype(v.dtype, np.floating):
                groups.setdefault(group_of(k), []).append(k)
        for keys in groups.values():
            honest = np.sqrt(sum(float(np.sum((arrays[k].astype(np.float64) - glob[k]) ** 2)) for k in keys))
            noise = {k: rng.standard_normal(arrays[k].shape) for k in keys}
            scale = 0.5 * multiple * honest / max(np.sqrt(sum(float(np.sum(n ** 2)) for n in noise.values())), 1e-12)
            for k in keys:
                arrays[k] = (glob[k] + scale * noise[k]).astype(arrays[k].dtype)
        content[protocol.ARRAYS] = ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()})
    elif kind == "count":
        content[protocol.METRICS][protocol.NUM_EXAMPLES] = 1e9
    elif kind == "stats":
        counts = record_arrays(content[protocol.CLASS_STATS], [protocol.COUNTS])[protocol.COUNTS]
        content[protocol.CLASS_STATS] = ArrayRecord({protocol.SUM_PA: Array(np.zeros_like(counts)),
                                                     protocol.SUM_PB: Array(counts.copy()),
                                                     protocol.COUNTS: Array(counts.copy())})
    elif kind == "metrics":
        content[protocol.METRICS]["loss"] = [1.0, 2.0]


def attack_mod(spec_file: str, multiple: float) -> Callable[[Message, Context, Callable], Message]:
    """A Flower mod: the partitions named in ``spec_file`` (read per message) attack their TRAIN replies."""

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        pid = int(context.node_config["partition-id"])
        path = Path(spec_file)
        kind = parse(path.read_text()).get(pid) if path.is_file() else None
        sent = msg.content[protocol.ARRAYS]
        reply = call_next(msg, context)
        if kind and not reply.has_error():
            attack(reply.content, kind, sent, multiple, seed=1000 * protocol.server_round_of(msg.content) + pid)
        return reply

    return mod


def attacked_client_app(spec_file: str, multiple: float):  # noqa: ANN201 - a flwr ClientApp
    from flwr.clientapp import ClientApp

    import clients.app as product

    app = ClientApp(mods=[attack_mod(spec_file, multiple)])
    app.query()(product.describe)
    app.train()(product.train)
    return app
