"""Who the strategy trains with: discovery, refusals, members that left, and each round's seeded sample.

The admission rule itself (who may join, the sample count the server vouches for) is
:class:`fedcmi.federated.membership.Membership`; this module is the Flower side of it: QUERY messages to nodes
not yet admitted, one logged line per refusal (and one fault in the next round's row), members the SuperLink
stops listing, and a seeded sample of partition ids mapped to their nodes, with the shortfall message when a
round samples fewer clients than requested.
"""

from __future__ import annotations

import logging
import random
import time
from logging import WARNING

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from fedcmi import protocol
from fedcmi.federated.membership import Member, Membership
from fedcmi.modalities import MODALITIES, modalities_of
from server.report import short_reason

_logger = logging.getLogger("fedcmi.server")


class NoClientsError(RuntimeError):
    """Raised when a round gets no usable reply at all: continuing would only repeat the failure."""


class Roster:
    """The admitted nodes as the strategy sees them, and how it finds and samples them.

    Parameters
    ----------
    membership : Membership
        The admission rule and the admitted members (``fedcmi.federated.membership``).
    clients_per_round : int
        Clients sampled each round; the first discovery waits for this many nodes.
    use_modalities : tuple[str, ...]
        Modalities the strategy trains; only nodes holding one of them are sampled.
    discovery_timeout : float
        Seconds to wait for enough nodes to connect and describe themselves.
    run_config : dict
        The clients' part of the run configuration, sent with the QUERY message.
    rng : random.Random
        The seeded sampling RNG (the strategy's checkpoint holds its state).
    """

    def __init__(self, membership: Membership, *, clients_per_round: int, use_modalities: tuple[str, ...],
                 discovery_timeout: float, run_config: dict, rng: random.Random) -> None:
        self.membership = membership
        self.clients_per_round = clients_per_round
        self.use_modalities = use_modalities
        self.discovery_timeout = discovery_timeout
        self.run_config = run_config
        self.rng = rng
        self.refusals: dict[int, str] = {}  # node id -> why discovery refused it (logged when it changes)
        self.discovery_faults: list[str] = []  # refusals since the last round was recorded
        self.offline: dict[int, int] = {}  # partition id -> node id of members that left and have not rejoined
        self.shortfall: str | None = None  # why the latest sample is smaller than clients-per-round, if it is

    # --- the admitted-nodes view ------------------------------------------------------------------------------
    @property
    def nodes(self) -> dict[int, Member]:
        """Admitted node id -> its member record (partition id, kind, vouched size)."""
        return dict(self.membership.members)

    def held(self, kind: str) -> tuple[str, ...]:
        """The modalities a client of this kind trains under this strategy."""
        return tuple(m for m in modalities_of(kind) if m in self.use_modalities)

    def name(self, node: int) -> str:
        """How faults name a node: ``partition 3`` for a member, else ``node 42``."""
        member = self.membership.get(node)
        return f"partition {member.partition_id}" if member else f"node {node}"

    def order(self, node: int) -> tuple[bool, int, int]:
        """Sort key: members in partition order, unknown nodes last by node id (deterministic sums and faults)."""
        member = self.membership.get(node)
        return member is None, member.partition_id if member else 0, node

    def multimodal_nodes(self) -> list[int]:
        """Every admitted node holding both modalities the strategy trains, in partition order."""
        both = [(m.partition_id, n) for n, m in self.membership.members.items()
                if set(self.held(m.kind)) == set(MODALITIES)]
        return [n for _, n in sorted(both)]

    def take_discovery_faults(self) -> list[str]:
        """The refusals since the last call (each listed in one round's faults)."""
        faults, self.discovery_faults = self.discovery_faults, []
        return faults

    # --- discovery ----------------------------------------------------------------------------------------
    def discover(self, grid: Grid, wait: bool = True) -> None:
        """Ask every connected node not yet admitted for its partition id, modality kind and sample count (a QUERY
        message) and admit it through the membership rule. With ``wait`` (the first discovery), wait for
        clients-per-round nodes; fail when none is admitted, or when fewer connected than needed."""
        deadline = time.monotonic() + self.discovery_timeout
        while True:
            node_ids = sorted(grid.get_node_ids())
            if not wait or len(node_ids) >= self.clients_per_round or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        unknown = [n for n in node_ids if n not in self.membership]
        if not unknown:
            return
        msgs = [Message(protocol.query_content(self.run_config), dst_node_id=n, message_type=MessageType.QUERY)
                for n in unknown]
        online = set(node_ids)
        for reply in grid.send_and_receive(msgs, timeout=self.discovery_timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.refuse(node, f"could not describe itself: {short_reason(reply.error.reason)}")
                continue
            try:
                info = protocol.read_info(reply.content)
            except protocol.ReplyError as exc:
                self.refuse(node, f"described itself badly: {exc}")
                continue
            previous = self.membership.holder(info.partition_id)
            reason = self.membership.admit(node, info.partition_id, info.kind, info.num_examples, online)
            if reason:
                self.refuse(node, reason)
                if previous is not None and previous not in self.membership:
                    self.refuse(previous, f"partition {info.partition_id} is also claimed by online node {node}: "
                                          "neither is sampled")
                continue
            self.refusals.pop(node, None)
            if previous is not None and previous != node:
                _logger.log(WARNING, "partition %s rejoined as node %s (node %s is offline)", info.partition_id,
                            node, previous)
        admitted = len(self.membership)
        if wait and (admitted == 0 or len(node_ids) < self.clients_per_round):
            refused = f"; refused: {'; '.join(f'node {n}: {r}' for n, r in sorted(self.refusals.items()))}" \
                if self.refusals else ""
            raise NoClientsError(f"only {admitted} node(s) admitted of {len(node_ids)} connected, "
                                 f"{self.clients_per_round} are needed per round (clients-per-round){refused}")
        if wait and admitted < self.clients_per_round:
            _logger.log(WARNING, "only %s node(s) admitted, %s requested per round: rounds sample fewer", admitted,
                        self.clients_per_round)

    def refuse(self, node: int, reason: str) -> None:
        """A node discovery did not admit: logged (once per reason) and listed in the next round's faults."""
        if self.refusals.get(node) != reason:
            _logger.log(WARNING, "node %s refused: %s", node, reason)
            self.discovery_faults.append(f"node {node}: refused: {reason}")
        self.refusals[node] = reason

    # --- sampling -----------------------------------------------------------------------------------------
    def sample(self, grid: Grid) -> list[int]:
        """Node ids of this round's clients: a seeded sample of partition ids, mapped to their nodes.

        Only nodes the SuperLink lists as online are sampled: a node that left is forgotten (not sampled,
        not counted) and asked again when it comes back, under the same or a new node id.
        """
        if len(self.membership) < self.clients_per_round and not self.refusals:
            self.discover(grid)
        else:
            online = set(grid.get_node_ids())
            for node, member in self.membership.leave_offline(online):
                _logger.log(WARNING, "partition %s (node %s) has left; not sampled until it rejoins",
                            member.partition_id, node)
                self.offline[member.partition_id] = node
            for node in [n for n in self.refusals if n not in online]:
                del self.refusals[node]
            if online - set(self.membership.members):
                self.discover(grid, wait=False)
        by_partition = {m.partition_id: n for n, m in self.membership.members.items() if self.held(m.kind)}
        for pid in {m.partition_id for m in self.membership.members.values()}:
            self.offline.pop(pid, None)  # rejoined
        k = min(self.clients_per_round, len(by_partition))
        if k == 0:
            raise NoClientsError(f"no client holds the modalities {self.use_modalities} this strategy trains")
        self.shortfall = self.shortfall_message(k, len(by_partition))
        chosen = self.rng.sample(sorted(by_partition), k)
        return [by_partition[p] for p in sorted(chosen)]

    def shortfall_message(self, k: int, eligible: int) -> str | None:
        """A round that samples fewer clients than requested says so in its row (the ``faults`` column), with
        why: members offline (a SuperNode that died and has not rejoined yet) or too few eligible nodes."""
        if k >= self.clients_per_round:
            return None
        why = [f"{len(self.offline)} node(s) offline (partition {', '.join(map(str, sorted(self.offline)))})"] \
            if self.offline else []
        why.append(f"{eligible} admitted node(s) hold {'/'.join(self.use_modalities)}")
        return f"sampled {k} of clients-per-round={self.clients_per_round}: {'; '.join(why)}"
