"""Message dispatch of Flower 1.42's simulation engine without its per-round polling cost (flwr pinned).

Why: in ``flwr==1.42.0`` the simulation engine hands messages to its Ray workers from a thread that, every
0.1 s, asks the in-memory link state once *per node* for that node's next message, and every such call scans
all stored messages (with an expiry check each). With N nodes and k messages in flight that is N x k checks
ten times a second: negligible at 20 nodes, much of a core at 1,000 nodes (docs/scaling.md), N x N during the
discovery query. The ServerApp's grid, in turn, polls for replies every 0.1 s, which adds 0.05 s to every round on
average. :func:`install` replaces the first by one scan of the stored messages per sweep and shortens both
poll intervals to :data:`POLL_S`. Messages, contexts and results are unchanged; only when they are picked up.

``FEDCMI_STOCK_VCE=1`` leaves Flower as it is (to measure the difference, ``benchmarks/scale.py --stock``).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from queue import Queue
from typing import Any

logger = logging.getLogger("fedcmi")

POLL_S = 0.01  # seconds between sweeps for new messages and between polls for replies
FLWR_VERSION = "1.42.0"


def _take_undelivered(state: Any, nodes: set[int]) -> list[Any]:
    """Every undelivered, unexpired message for one of ``nodes``, marked delivered (one scan, one lock)."""
    from flwr.supercore.date import now

    found = []
    with state.lock:
        ids = [i for i, m in state.message_ins_store.items()
               if m.metadata.delivered_at == "" and m.metadata.dst_node_id in nodes]
        if ids:
            state._check_stored_messages(set(ids))  # drops expired ones, as Flower's get_message_ins does
            found = [m for i in ids if (m := state.message_ins_store.get(i)) is not None]
        stamp = now().isoformat()
        for msg in found:
            msg.metadata.delivered_at = stamp
    return found


def add_messages_to_queue(state: Any, queue: Queue, nodes_mapping: dict[int, int], f_stop: threading.Event) -> None:
    """Drop-in for ``vce_api.add_messages_to_queue``: same messages, one scan per sweep, sweeps every POLL_S."""
    from flwr.server.superlink.linkstate import InMemoryLinkState

    nodes = set(nodes_mapping)
    fast = isinstance(state, InMemoryLinkState) and hasattr(state, "message_ins_store")
    while not f_stop.is_set():
        if fast:
            for msg in _take_undelivered(state, nodes):
                queue.put(msg)
        else:  # another link state: Flower's own per-node query
            for node_id in nodes:
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
        f_stop.wait(POLL_S)


def install() -> bool:
    """Patch the simulation engine of this process (idempotent); False when left stock (env or version)."""
    if os.environ.get("FEDCMI_STOCK_VCE") == "1":
        return False
    import flwr
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.superlink.grid import InMemoryGrid

    if flwr.__version__ != FLWR_VERSION:
        logger.warning("flwr %s is not %s: simulation message dispatch left stock", flwr.__version__, FLWR_VERSION)
        return False
    if vce_api.add_messages_to_queue is not add_messages_to_queue:
        vce_api.add_messages_to_queue = add_messages_to_queue
        # the module, not the function of the same name that flwr.simulation re-exports
        importlib.import_module("flwr.simulation.run_simulation").InMemoryGrid = _fast_grid(InMemoryGrid)
    return True


def _fast_grid(base: type) -> type:
    class FastGrid(base):
        """The in-memory grid, polling for replies every POLL_S (up to 0.1 s for many messages) instead of 0.1 s."""

        def __init__(self, state_factory: Any, pull_interval: float = POLL_S) -> None:
            super().__init__(state_factory=state_factory, pull_interval=pull_interval)

        def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
            # One poll costs O(messages in flight): often for a round's few, seldom for 1,000 discovery queries.
            messages = list(messages)
            self.pull_interval = min(0.1, max(POLL_S, 1e-4 * len(messages)))
            return super().send_and_receive(messages, timeout=timeout)

    return FastGrid

