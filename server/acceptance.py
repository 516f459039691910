"""Reply acceptance: one reply in, an :class:`Accepted` record or a named :class:`Rejection` out.

Every field of a reply is untrusted. The checks themselves live in the core (``fedcmi.protocol.read_reply`` types
every field, ``fedcmi.federated.screening`` bounds the arrays and class statistics, the membership vouches for
a node's sample count, ``UpdateScreen`` bounds an update relative to its group's history); this module applies
them to Flower messages in the order the strategy needs: check each reply, cap the weights of claims mode,
screen the accepted updates, and check the fresh CCVR moments of the evaluate phase. A run option's reply record
(``fedcmi.methods.registry.OPTIONS``) is checked like the arrays when read (declared shapes and dtypes), then by
the option's server step (``ServerSide.check_reply``; a record of an option that is off is refused).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import Message

from fedcmi import protocol
from fedcmi.dominance import ClassStats
from fedcmi.federated.aggregation import ClientUpdate
from fedcmi.federated.calibration import FeatureStats
from fedcmi.federated.membership import Member, Membership, capped_weights
from fedcmi.federated.screening import UpdateScreen, check_arrays, check_class_stats, group_norms, local_steps
from fedcmi.methods.server_step import ServerSide
from fedcmi.modalities import MODALITIES, SHARED
from server.report import RoundReport, short_reason

_logger = logging.getLogger("fedcmi.server")


@dataclass
class Accepted:
    """A reply that passed the checks: whose it is, what it sent, and the weight the server gives it."""

    who: str
    partition_id: int
    kind: str
    update: ClientUpdate  # num_examples is the weight the server vouches for
    claimed: float  # the sample count the reply claimed
    stats: ClassStats | None
    losses: dict[str, float]
    features: FeatureStats | None
    capped: bool = False
    records: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # run option -> its checked reply arrays


@dataclass(frozen=True)
class Rejection:
    """A reply the checks refused, and why (one line: the round's faults read ``<who>: rejected: <reason>``)."""

    reason: str


class Acceptance:
    """The server's checks on replies, applied to Flower messages.

    Parameters
    ----------
    membership : Membership
        The admitted members: who may reply and the sample count the server vouches for each.
    num_classes : int
        Classes of the model (shapes of the class statistics and moments).
    held : Callable[[str], tuple[str, ...]]
        The modalities a client of a kind trains under the strategy (the groups it may update).
    group_of : Callable[[str], str]
        Maps an array key to ``"a"``, ``"b"`` or ``"shared"``.
    max_update_norm : float
        Absolute bound on an update's L2 distance to the global model (0 = no bound).
    screen : UpdateScreen
        The relative update bound, with its history (the strategy's checkpoint holds it).
    run_config : Mapping[str, Any]
        The clients' part of the run configuration (``local-epochs``, ``batch-size`` bound the local steps).
    server : ServerSide
        The run's server steps: each run option's step checks its reply record.
    """

    def __init__(self, membership: Membership, *, num_classes: int, held: Callable[[str], tuple[str, ...]],
                 group_of: Callable[[str], str], max_update_norm: float, screen: UpdateScreen,
                 run_config: Mapping[str, Any], server: ServerSide) -> None:
        self.membership = membership
        self.num_classes = num_classes
        self.held = held
        self.group_of = group_of
        self.max_update_norm = max_update_norm
        self.screen = screen
        self.run_config = run_config
        self.server = server

    def check(self, msg: Message, current: Mapping[str, np.ndarray]) -> Accepted | Rejection:
        """One training reply: an :class:`Accepted` record, or the :class:`Rejection` naming the first check it
        failed. Every field is untrusted: the weight is at most the sample count the membership vouches for."""
        expected = {k: (tuple(v.shape), str(v.dtype)) for k, v in current.items()}
        try:
            reply = protocol.read_reply(msg.content, expected, self.num_classes)
        except protocol.ReplyError as exc:
            return Rejection(str(exc))
        member: Member | None = self.membership.get(msg.metadata.src_node_id)
        if member is None:
            return Rejection("reply from a node that is not an admitted member")
        pid, kind = member.partition_id, member.kind
        if reply.partition_id not in (-1, pid):
            return Rejection(f"claims partition {reply.partition_id}, node holds partition {pid}")
        if reply.num_examples > member.size:
            return Rejection(f"num-examples {reply.num_examples:g} exceeds the {member.size} samples vouched for")
        n = reply.num_examples
        epochs = self.run_config.get("local-epochs")
        max_batches = float(epochs) * n if isinstance(epochs, int) and epochs > 0 else None
        held = self.held(kind)
        reason = check_arrays(reply.arrays, current, held, self.group_of, self.max_update_norm, max_batches)
        if reason:
            return Rejection(reason)
        if reply.stats is not None:
            st = reply.stats
            reason = check_class_stats(st.sum_pa, st.sum_pb, st.counts, self.num_classes, max_count=n, kind=kind)
            if reason:
                return Rejection(reason)
        reason = self.server.check_reply(reply.records, current, held, self.group_of)
        if reason:
            return Rejection(reason)
        # CCVR moments are pooled only from a client holding both modalities, counting no more than it trained on
        fs = reply.features
        features = fs if fs is not None and set(held) == set(MODALITIES) and fs.counts.sum() <= n else None
        return Accepted(f"partition {pid}", pid, kind, ClientUpdate(reply.arrays, n, held), n, reply.stats,
                        reply.losses, features, records=reply.records)

    def cap_claims(self, accepted: list[Accepted]) -> list[Accepted]:
        """Claims mode: every weight at most CLAIM_CAP_MULTIPLE x the round's lower median claim; class statistics
        and CCVR moments scaled (or dropped) with it. Other modes: unchanged."""
        if self.membership.mode != "claims":
            return accepted
        out = []
        for entry, w in zip(accepted, capped_weights([e.update.num_examples for e in accepted]), strict=True):
            n = entry.update.num_examples
            if w < n:
                f = w / n
                stats = entry.stats and ClassStats(entry.stats.sum_pa * f, entry.stats.sum_pb * f,
                                                   entry.stats.counts * f)
                entry = replace(entry, update=replace(entry.update, num_examples=w), stats=stats, features=None,
                                capped=True)
            out.append(entry)
        return out

    def screen_updates(self, server_round: int, accepted: list[Accepted], current: Mapping[str, np.ndarray],
                       faults: list[str], report: RoundReport) -> list[Accepted]:
        """The relative update bound (``UpdateScreen``): rejected replies go to ``faults``; every judged reply's
        norms, steps, ratio and verdict go to ``report.screened`` (the run directory's replies.csv). Returns the
        replies kept, in the order given; the screen remembers their verdicts."""
        norms = [group_norms(e.update.arrays, current, self.group_of, (*e.update.modalities, SHARED))
                 for e in accepted]
        epochs, batch = self.run_config.get("local-epochs", 1), self.run_config.get("batch-size", 1)
        steps = [local_steps(e.update.num_examples, epochs, batch) for e in accepted]
        verdicts = self.screen.judge(norms, steps)
        kept, kept_verdicts, rows = [], [], []
        for entry, norm, st, v in zip(accepted, norms, steps, verdicts, strict=True):
            rows.append({"round": server_round, "partition": entry.partition_id, "kind": entry.kind,
                         "claimed": entry.claimed, "weight": entry.update.num_examples, "steps": st,
                         **{f"norm_{g}": norm.get(g, math.nan) for g in (*MODALITIES, SHARED)},
                         "ratio": round(v.ratio, 4), "verdict": "rejected" if v.reason else
                         ("capped" if entry.capped else "accepted")})
            if v.reason:
                faults.append(f"{entry.who}: rejected: {v.reason}")
            else:
                kept.append(entry)
                kept_verdicts.append(v)
        self.screen.remember(kept_verdicts)
        report.screened = rows
        if rows:
            _logger.log(INFO, "round %s: largest update ratio %.3g (bound %g)", server_round,
                        max(r["ratio"] for r in rows), self.screen.multiple)
        return kept

    def check_moments(self, msg: Message, asked: set[int]) -> FeatureStats | Rejection | None:
        """One evaluate-phase reply: its CCVR moments, a :class:`Rejection` (``failed: ...`` or ``rejected: ...``),
        or None for a good reply that carries no moments. Every field is untrusted: the moments may count at
        most the samples the membership vouches for the node."""
        node = msg.metadata.src_node_id
        if node not in asked:
            return Rejection("rejected: not asked for moments this round")
        if msg.has_error():
            return Rejection(f"failed: {short_reason(msg.error.reason)}")
        member = self.membership.get(node)
        if member is None:
            return Rejection("rejected: reply from a node that is not an admitted member")
        try:
            reply = protocol.read_moments_reply(msg.content, self.num_classes)
        except protocol.ReplyError as exc:
            return Rejection(f"rejected: {exc}")
        if reply.partition_id not in (-1, member.partition_id):
            return Rejection(f"rejected: claims partition {reply.partition_id}, node holds {member.partition_id}")
        if reply.num_examples > member.size:
            return Rejection(f"rejected: {reply.num_examples:g} samples exceed the {member.size} vouched for")
        return reply.features
