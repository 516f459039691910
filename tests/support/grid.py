"""One fake Flower Grid for the unit tests: the nodes, a reply function per message, optional delays and failures.

:class:`FakeGrid` has what fedcmi calls on a ``flwr.serverapp.Grid``: ``get_node_ids``, ``send_and_receive``
and ``push_messages`` / ``pull_messages`` (with a ``pull_interval``: the calls
:class:`fedcmi.runtime.interrupt.StoppableGrid` makes). It holds no SuperLink; a message is answered when it is
pulled, by ``reply(message, node)``:

- ``nodes`` maps node id -> what the reply function needs to know of that node (``(partition id, kind)`` for
  :func:`describe`, a ``node_config`` for :func:`client_app`). It is a plain dict the test may change between
  calls: pop a node to take it offline (a message to a node not in ``nodes`` gets no reply), add one to (re)join.
- ``reply`` returns a ``Message``, a ``RecordDict`` (the reply's content), an ``Exception`` (an error reply,
  ``"<type>: <text>"``, as Flower sends for a ClientApp that raised) or ``None`` (no reply: the node stays
  silent until the timeout). An exception the reply function *raises* leaves the grid call (the process stopped
  in the middle of a round; :func:`stop_in_round`).
- ``delay``: seconds from a push until its reply can be pulled; ``None``: never (nodes that hang). The test may
  set it between rounds, to switch the same grid from answering to hanging.
- ``sent``: every message sent, in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, MessageType, RecordDict

Answer = Message | RecordDict | Exception | None
Reply = Callable[[Message, Any], Answer]


def describe(message: Message, node: tuple[int, str]) -> RecordDict:
    """A QUERY reply from a node given as ``(partition id, kind)`` (what discovery reads)."""
    pid, kind = node
    return RecordDict({"info": ConfigRecord({"partition-id": pid, "kind": kind, "num-examples": 10})})


def empty(message: Message, node: Any) -> RecordDict:
    """An empty reply to any message (tests that count replies, not read them)."""
    return RecordDict()


def node_context(message: Message, node_config: dict) -> Context:
    """A fresh Context of the node ``message`` is addressed to, with its ``node_config``."""
    return Context(run_id=1, node_id=message.metadata.dst_node_id, node_config=dict(node_config), state=RecordDict(),
                   run_config={})


def client_app(message: Message, node_config: dict, context: Context | None = None) -> Message:
    """fedcmi's ClientApp handlers in this process, on a node given as its ``node_config`` (what
    ``flower-supernode --node-config`` gives the node: ``partition-id``, and ``data-dir``, ``modalities``...).
    Each message gets a fresh Context unless ``context`` is given (a node's ``context.state`` kept across
    messages, as Flower keeps it)."""
    import clients.app as app

    handlers = {MessageType.QUERY: app.describe, MessageType.TRAIN: app.train, MessageType.EVALUATE: app.moments}
    return handlers[message.metadata.message_type](message, context or node_context(message, node_config))


def stop_in_round(server_round: int, reply: Reply) -> Reply:
    """``reply``, but a TRAIN message of ``server_round`` or later raises KeyboardInterrupt (the run is stopped
    in that round: nothing of it comes back)."""

    def stopping(message: Message, node: Any) -> Answer:
        if (message.metadata.message_type == MessageType.TRAIN
                and int(message.content["config"]["server-round"]) >= server_round):
            raise KeyboardInterrupt
        return reply(message, node)

    return stopping


def simulated_nodes(num_nodes: int, stop_from_round: int | None = None, reply: Reply = client_app) -> FakeGrid:
    """``num_nodes`` nodes as the simulation engine configures them (partition i is node 100 + i, node config
    ``partition-id``, ``num-partitions``), answered by ``reply`` (:func:`client_app`); from ``stop_from_round``
    on, the process is stopped in the round (:func:`stop_in_round`)."""
    nodes = {100 + i: {"partition-id": i, "num-partitions": num_nodes} for i in range(num_nodes)}
    return FakeGrid(nodes, reply=reply if stop_from_round is None else stop_in_round(stop_from_round, reply))


class FakeGrid:
    """A Grid whose ``nodes`` answer each message with ``reply(message, node)`` after ``delay`` seconds."""

    pull_interval = 0.01  # StoppableGrid polls an in-memory grid at this interval, not a deployment's 3 s

    def __init__(self, nodes: dict[int, Any] | None = None, reply: Reply = describe, delay: float | None = 0.0):
        self.nodes = nodes if nodes is not None else {}
        self.reply = reply
        self.delay = delay
        self.sent: list[Message] = []
        self._pushed: dict[str, tuple[float, Message]] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message in messages:
            msg_id = f"m{len(self.sent)}"
            message.metadata.__dict__["_message_id"] = msg_id  # what the SuperLink does (flwr InMemoryGrid)
            self.sent.append(message)
            self._pushed[msg_id] = (time.monotonic(), message)
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """The replies due by now; each message is answered once (a pulled or silent one is forgotten)."""
        if self.delay is None:
            return []
        replies = []
        now = time.monotonic()
        for msg_id in list(message_ids):
            if msg_id not in self._pushed or now - self._pushed[msg_id][0] < self.delay:
                continue
            _, message = self._pushed.pop(msg_id)
            reply = self._answer(message)
            if reply is not None:
                replies.append(reply)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Push, wait ``delay`` (at most ``timeout``), pull once: silent nodes count as timed out."""
        ids = self.push_messages(messages)
        if self.delay is None or self.delay > 0:
            wait = timeout if self.delay is None else min(self.delay, timeout if timeout is not None else self.delay)
            if wait is None:
                raise ValueError("FakeGrid(delay=None) never replies: send_and_receive needs a timeout")
            time.sleep(wait)
        return self.pull_messages(ids)

    def _answer(self, message: Message) -> Message | None:
        node = message.metadata.dst_node_id
        if node not in self.nodes:  # offline: nothing answers
            return None
        answer = self.reply(message, self.nodes[node])
        if isinstance(answer, Exception):
            return Message(Error(code=0, reason=f"{type(answer).__name__}: {answer}"), reply_to=message)
        if isinstance(answer, RecordDict):
            return Message(answer, reply_to=message)
        return answer


__all__ = ["FakeGrid", "client_app", "describe", "empty", "node_context", "simulated_nodes", "stop_in_round"]
