"""Test-only fault injection: a Flower mod wrapped around fedcmi's ClientApp that makes clients misbehave.

Syntax: comma-separated ``kind:partition`` or ``kind:partition@round`` (every round when no round is given),
e.g. ``raise:1,hang:2@3,nan:0``. Kinds that act before training: ``raise`` (the ClientApp raises), ``hang``
(it sleeps ``hang_seconds``), ``exit`` (its process dies). Kinds that corrupt the reply: ``nan``, ``inf``,
``shape``, ``dtype``, ``missing`` (a parameter group left out), ``stats`` (class statistics out of range),
``norm`` (a huge update); ``moments`` makes the ClientApp raise on an EVALUATE (CCVR moments) request. With
``trace_file`` every EVALUATE message's round and partition is appended there. The reliability tests use it
to show a run survives each fault; nothing of it ships in the product.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType
from flwr.clientapp import ClientApp

from fedcmi import protocol
from fedcmi.npy import record_arrays

BEFORE_TRAINING = ("raise", "hang", "exit")
MOMENTS = "moments"  # the ClientApp raises on an EVALUATE (CCVR moments) message
CORRUPTIONS = ("nan", "inf", "shape", "dtype", "missing", "stats", "norm")
KINDS = (*BEFORE_TRAINING, *CORRUPTIONS, MOMENTS)

logger = logging.getLogger("fedcmi.tests.faults")


@dataclass(frozen=True)
class Fault:
    kind: str
    partition: int
    round: int | None = None


def parse_faults(spec: str) -> list[Fault]:
    """Parse a fault spec; raises ValueError naming the bad item."""
    faults = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, sep, rest = item.partition(":")
        if not sep or kind not in KINDS:
            raise ValueError(f"{item!r}: expected kind:partition[@round] with kind one of {', '.join(KINDS)}")
        part, _, rnd = rest.partition("@")
        try:
            faults.append(Fault(kind, int(part), int(rnd) if rnd else None))
        except ValueError:
            raise ValueError(f"{item!r}: partition and round must be integers") from None
    return faults


def faults_for(faults: list[Fault], partition: int, server_round: int) -> set[str]:
    """The fault kinds that apply to this client in this round."""
    return {f.kind for f in faults if f.partition == partition and (f.round is None or f.round == server_round)}


def corrupt(content, kinds: set[str]) -> None:  # noqa: ANN001 - a Flower RecordDict, changed in place
    """Damage a training reply in the ways the server must reject."""
    arrays = record_arrays(content[protocol.ARRAYS])
    first = next(k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating))
    if "nan" in kinds:
        arrays[first] = np.full_like(arrays[first], np.nan)
    if "inf" in kinds:
        arrays[first] = np.full_like(arrays[first], np.inf)
    if "shape" in kinds:
        arrays[first] = np.zeros(arrays[first].size + 1, dtype=arrays[first].dtype)
    if "dtype" in kinds:
        arrays[first] = arrays[first].astype(np.float64)
    if "norm" in kinds:
        arrays[first] = arrays[first] + 1e6
    if "missing" in kinds:
        group = first.split(".", 1)[0]
        arrays = {k: v for k, v in arrays.items() if k.split(".", 1)[0] != group}
    content[protocol.ARRAYS] = ArrayRecord({k: Array(np.array(v, order="C")) for k, v in arrays.items()})  # keeps 0-d
    if "stats" in kinds:
        stats = content[protocol.CLASS_STATS]
        counts = record_arrays(stats, [protocol.COUNTS])[protocol.COUNTS]
        content[protocol.CLASS_STATS] = ArrayRecord({
            protocol.SUM_PA: Array(counts + 5.0), protocol.SUM_PB: stats[protocol.SUM_PB],
            protocol.COUNTS: Array(np.maximum(counts, 1.0) * -1.0)})


def fault_mod(spec: str, hang_seconds: float = 10.0,
              trace_file: str | None = None) -> Callable[[Message, Context, Callable], Message]:
    """A Flower mod injecting the faults of ``spec`` into TRAIN (and ``moments`` into EVALUATE) messages."""
    faults = parse_faults(spec)

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        if msg.metadata.message_type == MessageType.EVALUATE:
            return _moments(msg, context, call_next, faults, trace_file)
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        pid = int(context.node_config["partition-id"])
        kinds = faults_for(faults, pid, protocol.server_round_of(msg.content))
        if "raise" in kinds:
            raise RuntimeError("injected fault: client raised")
        if "exit" in kinds:
            logger.warning("injected fault: client process exits")
            os._exit(17)
        if "hang" in kinds:
            time.sleep(hang_seconds)
        reply = call_next(msg, context)
        if kinds & set(CORRUPTIONS) and not reply.has_error():
            corrupt(reply.content, kinds)
        return reply

    return mod


def _moments(msg: Message, context: Context, call_next: Callable[[Message, Context], Message], faults: list[Fault],
             trace_file: str | None) -> Message:
    pid = int(context.node_config["partition-id"])
    server_round = protocol.server_round_of(msg.content)
    if trace_file:
        with open(trace_file, "a") as f:  # one short write per line (O_APPEND): lines do not interleave
            f.write(f"evaluate round {server_round} partition {pid}\n")
    if MOMENTS in faults_for(faults, pid, server_round):
        raise RuntimeError("injected fault: moments request failed")
    return call_next(msg, context)


def faulty_client_app(spec: str, hang_seconds: float = 10.0, trace_file: str | None = None) -> ClientApp:
    """fedcmi's ClientApp handlers behind the fault mod."""
    import clients.app as product

    app = ClientApp(mods=[fault_mod(spec, hang_seconds, trace_file)])
    app.query()(product.describe)
    app.train()(product.train)
    app.evaluate()(product.moments)
    return app


def slow_restart(seconds: float, warm: Callable[[], None]) -> Callable[[], None]:
    """An actor init function that first sleeps ``seconds`` in an actor Ray restarted after its process died:
    a loaded machine's slow restart, so that the next round's messages reach the actor while it restarts."""

    def init() -> None:
        import warnings

        import ray

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if ray.get_runtime_context().was_current_actor_reconstructed:
                time.sleep(seconds)
        warm()

    return init


__all__ = ["Fault", "faulty_client_app", "parse_faults", "slow_restart"]
