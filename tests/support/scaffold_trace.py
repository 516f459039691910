"""``fedcmi simulate`` with the product ClientApp behind a mod that traces SCAFFOLD's node state (tests only).

    python tests/support/scaffold_trace.py --trace FILE simulate ... scaffold=true

Every TRAIN message appends one JSON line: the round, the partition, the parameters of the node's c_i in its
``context.state`` before and after the round, and the norm of the correction c - c_i it trained with. It shows
that Flower keeps the state between a node's rounds (a node's second round starts from its first's c_i).
Run as a script, the mod is defined in ``__main__``, which Ray's pickler sends by value to the actors.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import numpy as np
from flwr.app import Context, Message, MessageType
from flwr.clientapp import ClientApp

from fedcmi import protocol
from fedcmi.cli import run
from fedcmi.methods.registry import OPTIONS
from fedcmi.npy import record_arrays

SCAFFOLD = OPTIONS["scaffold"]  # its records: sent (c), reply (delta c_i), kept (the node's c_i)


def _variate(record) -> dict[str, np.ndarray]:  # noqa: ANN001 - a Flower ArrayRecord or None
    return record_arrays(record) if record is not None else {}


def _kept(context: Context) -> dict[str, np.ndarray]:
    """The node's c_i (one run here, so one run scope: ``fedcmi.protocol.run_scope``)."""
    scoped = [r for k, r in context.state.array_records.items() if k.startswith(f"{SCAFFOLD.kept}@")]
    assert len(scoped) <= 1, "one simulation, one run scope"
    return _variate(scoped[0] if scoped else None)


def trace_mod(trace_file: str) -> Callable[[Message, Context, Callable], Message]:
    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        before = _kept(context)
        c = _variate(msg.content.array_records.get(SCAFFOLD.sent))
        keys = set(before) | set(c)
        zero = np.float32(0)
        correction = float(np.sqrt(sum(float(np.sum((c.get(k, zero) - before.get(k, zero)) ** 2)) for k in keys)))
        reply = call_next(msg, context)
        after = _kept(context)
        line = {"round": protocol.server_round_of(msg.content), "partition": int(context.node_config["partition-id"]),
                "before": len(before), "after": len(after), "c": len(c), "correction": correction,
                "delta": len(reply.content.array_records.get(SCAFFOLD.reply) or {})}
        with open(trace_file, "a") as f:  # one short write per line (O_APPEND): lines do not interleave
            f.write(json.dumps(line) + "\n")
        return reply

    return mod


def traced_client_app(trace_file: str) -> ClientApp:
    import clients.app as product

    app = ClientApp(mods=[trace_mod(trace_file)])
    app.query()(product.describe)
    app.train()(product.train)
    app.evaluate()(product.moments)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--trace", required=True)
    args, rest = parser.parse_known_args()
    run(rest, client_app=traced_client_app(args.trace))
