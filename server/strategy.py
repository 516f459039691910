"""FedCMIStrategy: per-modality aggregation on Flower's Message API, with the method's server steps.

One strategy serves every local method (``fedcmi.methods``): discovery, membership, sampling, reply
acceptance, screening and aggregation are the same for all; what a method (or a server option) does on the
server is its :class:`~fedcmi.methods.server_step.ServerSide` (``fedcmi.federated.server_side`` builds it),
which this strategy only calls. Each round:

1. ``configure_train`` samples clients (seeded, by partition id, so runs are reproducible) and sends the
   global arrays plus a ConfigRecord with the run config and the server side's guidance (FedCMI's:
   infiltration on/off, the dominant modality and the class-wise temperatures).
2. ``aggregate_train`` screens every reply, combines each modality's group over the clients that hold it
   and the fusion head over all with the run's aggregation rule (``fedcmi.federated.aggregation``), then
   hands the aggregate and the accepted replies to the server side (FedCMI's dominance from the class
   statistics, CCVR's received moments, an adaptive server optimiser).

Every record key comes from ``fedcmi.protocol``.

Evaluation is central (``server/app.py`` after every round). The evaluate phase carries no accuracy: with CCVR on
and ``ccvr-moments=fresh``, ``configure_evaluate`` sends the just-aggregated weights to every admitted multimodal
node and ``aggregate_evaluate`` checks the head-input moments they measure with them and hands the good ones to the
server side (CCVR pools them), so the round's row is evaluated with a head calibrated for the model it
evaluates (CCVR off: no message at all).
``server/app.run_rounds`` drives these steps instead of ``Strategy.start`` so it can checkpoint, resume at
the right round number and skip rounds.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedcmi import protocol
from fedcmi.config import RunConfig
from fedcmi.dominance import ClassStats, Dominance, Guidance
from fedcmi.federated.aggregation import ClientUpdate, Rule, aggregate
from fedcmi.federated.aggregation.mean import weighted_mean
from fedcmi.federated.calibration import FeatureStats
from fedcmi.federated.membership import Member, Membership, capped_weights
from fedcmi.federated.screening import UpdateScreen, check_arrays, check_class_stats, group_norms, local_steps
from fedcmi.federated.server_side import server_side
from fedcmi.methods.server_step import ServerSide
from fedcmi.metrics import FAULTS
from fedcmi.modalities import MODALITIES, SHARED, modalities_of
from fedcmi.modalities import group_of as default_group_of
from fedcmi.models.build import ModelSpec
from fedcmi.npy import record_arrays
from server.report import RoundReport

_logger = logging.getLogger("fedcmi.server")


def log(level: int, msg: str, *args: Any) -> None:
    _logger.log(level, msg, *args)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit)): (.+)$")
_RAY_ERR = re.compile(r"ray\.exceptions\.(\w+)'>:<'(.*)", re.S)


def short_reason(text: str | None) -> str:
    """One line from an error reply: the innermost ``SomeError: message``, not Ray's whole traceback."""
    text = _ANSI.sub("", text or "")
    for line in text.splitlines():
        m = _EXC_LINE.match(line.strip())
        if m and not m.group(1).endswith("ClientAppException"):
            return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"[:200]
    m = _RAY_ERR.search(text)
    if m:
        return f"{m.group(1)}: {m.group(2).split('. ')[0].strip()}"[:200]
    return next((line.strip() for line in text.splitlines() if line.strip()), "unknown error")[:200]


class NoClientsError(RuntimeError):
    """Raised when a round gets no usable reply at all: continuing would only repeat the failure."""


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


# The constructor's defaults are the run configuration's (RunConfig is their one source)
_DEFAULT = RunConfig()


class FedCMIStrategy(Strategy):
    """Per-modality FedAvg; the method's server side decides the guidance and post-processes the aggregate.

    Parameters
    ----------
    clients_per_round : int
        Clients sampled each round (uniformly, without replacement, by a seeded RNG over partition ids).
    model_spec : ModelSpec
        Classes and input shapes of the model, sent to clients so they build it from the message alone.
    run_config : Mapping[str, Any]
        The clients' part of the run configuration, sent to every client so all sides train with the same
        settings.
    server : ServerSide | None
        The method's server steps (guidance, after aggregation, state, calibration);
        ``None``: those of the default run configuration (FedCMI's dominance guidance).
    seed : int (default: seed's, 0)
        Seed of client sampling.
    group_of : Callable[[str], str]
        Maps an array key to ``"a"``, ``"b"`` or ``"shared"``.
    discovery_timeout : float (default: ``RunConfig.discovery_seconds``, round-timeout's 600 s)
        Seconds to wait for enough nodes to connect and describe themselves.
    min_replies : int (default: min-replies', 1)
        Good replies needed to aggregate; with fewer the round is skipped and the global model kept.
    max_update_norm : float (default: max-update-norm's, 0.0)
        Reject an update whose L2 distance to the global model exceeds this (0 = no bound).
    update_norm_multiple : float (default: update-norm-multiple's, 10.0)
        Reject an update whose L2 distance to the global model in one parameter group (a modality's
        encoder, the shared head), per local step, exceeds this multiple of the group's reference
        (``fedcmi.federated.screening.UpdateScreen``; 0 = no bound).
    membership : Membership | None
        Who may join and the sample counts the server vouches for (``fedcmi.federated.membership``);
        ``None``: claims mode (nothing backs a node's claims; weights capped per round).
    use_modalities : tuple[str, ...] (default: ("a", "b"))
        Modalities the strategy trains; unimodal baselines sample only clients holding theirs.
    rule : Rule (default: the sample-weighted mean)
        The aggregation rule applied per modality group (``fedcmi.federated.aggregation``).
    """

    def __init__(self, *, clients_per_round: int, model_spec: ModelSpec, run_config: Mapping[str, Any],
                 server: ServerSide | None = None, seed: int = _DEFAULT.seed,
                 group_of: Callable[[str], str] = default_group_of,
                 discovery_timeout: float = _DEFAULT.discovery_seconds, min_replies: int = _DEFAULT.min_replies,
                 max_update_norm: float = _DEFAULT.max_update_norm,
                 update_norm_multiple: float = _DEFAULT.update_norm_multiple,
                 use_modalities: tuple[str, ...] = MODALITIES, rule: Rule = weighted_mean,
                 membership: Membership | None = None) -> None:
        self.server = server if server is not None else server_side(_DEFAULT, model_spec.num_classes)
        self.clients_per_round = clients_per_round
        self.model_spec = model_spec
        self.num_classes = model_spec.num_classes
        self.rule = rule
        self.run_config = dict(run_config)
        self.group_of = group_of
        self.discovery_timeout = discovery_timeout
        self.min_replies = min_replies
        self.max_update_norm = max_update_norm
        self.update_norm_multiple = update_norm_multiple
        self.screen = UpdateScreen(update_norm_multiple)
        self.membership = membership if membership is not None else Membership("claims")
        self.refusals: dict[int, str] = {}  # node id -> why discovery refused it (logged when it changes)
        self.discovery_faults: list[str] = []  # refusals since the last round was recorded
        self.offline: dict[int, int] = {}  # partition id -> node id of members that left and have not rejoined
        self.shortfall: str | None = None  # why the latest sample is smaller than clients-per-round, if it is
        self.use_modalities = use_modalities
        self.rng = random.Random(seed)
        self.current_arrays: ArrayRecord | None = None
        self.reports: dict[int, RoundReport] = {}
        self.moments_asked: dict[int, list[int]] = {}  # round -> nodes asked for fresh CCVR moments
        self.train_metrics: dict[int, MetricRecord] = {}

    # --- bookkeeping ------------------------------------------------------------------------------
    def summary(self) -> None:
        log(INFO, "\t├──> FedCMIStrategy: %s clients per round, server steps: %s", self.clients_per_round,
            ", ".join(s.name for s in self.server.steps) or "none")
        log(INFO, "\t└──> method: %s, aggregation: %s", self.run_config.get("strategy"),
            getattr(self.rule, "__name__", self.rule))

    @property
    def guidance(self) -> Dominance | None:
        """The dominance the latest statistics decided (sent next round; the round's row reports it)."""
        return self.server.reported()

    def state(self) -> dict[str, Any]:
        """What a checkpoint must hold to continue exactly: the sampling RNG, the screen's history, the first
        claims, and the server side's state (its one serialiser)."""
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "screen": self.screen.state(),
                "claims": {str(p): n for p, n in sorted(self.membership.first_claims.items())},
                **self.server.state()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``; the server side checks its part first (its one validator)."""
        self.server.load_state(state, self.num_classes)
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.screen.load_state(state.get("screen", {}))
        self.membership.first_claims = {int(p): int(n) for p, n in state.get("claims", {}).items()}

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
                self._refuse(node, f"could not describe itself: {short_reason(reply.error.reason)}")
                continue
            try:
                info = protocol.read_info(reply.content)
            except protocol.ReplyError as exc:
                self._refuse(node, f"described itself badly: {exc}")
                continue
            previous = self.membership.holder(info.partition_id)
            reason = self.membership.admit(node, info.partition_id, info.kind, info.num_examples, online)
            if reason:
                self._refuse(node, reason)
                if previous is not None and previous not in self.membership:
                    self._refuse(previous, f"partition {info.partition_id} is also claimed by online node {node}: "
                                           "neither is sampled")
                continue
            self.refusals.pop(node, None)
            if previous is not None and previous != node:
                log(WARNING, "partition %s rejoined as node %s (node %s is offline)", info.partition_id, node,
                    previous)
        admitted = len(self.membership)
        if wait and (admitted == 0 or len(node_ids) < self.clients_per_round):
            refused = f"; refused: {'; '.join(f'node {n}: {r}' for n, r in sorted(self.refusals.items()))}" \
                if self.refusals else ""
            raise NoClientsError(f"only {admitted} node(s) admitted of {len(node_ids)} connected, "
                                 f"{self.clients_per_round} are needed per round (clients-per-round){refused}")
        if wait and admitted < self.clients_per_round:
            log(WARNING, "only %s node(s) admitted, %s requested per round: rounds sample fewer", admitted,
                self.clients_per_round)

    def _refuse(self, node: int, reason: str) -> None:
        """A node discovery did not admit: logged (once per reason) and listed in the next round's faults."""
        if self.refusals.get(node) != reason:
            log(WARNING, "node %s refused: %s", node, reason)
            self.discovery_faults.append(f"node {node}: refused: {reason}")
        self.refusals[node] = reason

    def held(self, kind: str) -> tuple[str, ...]:
        """The modalities a client of this kind trains under this strategy."""
        return tuple(m for m in modalities_of(kind) if m in self.use_modalities)

    @property
    def nodes(self) -> dict[int, tuple[int, str]]:
        """Admitted node id -> (partition id, kind)."""
        return {n: (m.partition_id, m.kind) for n, m in self.membership.members.items()}

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
                log(WARNING, "partition %s (node %s) has left; not sampled until it rejoins", member.partition_id,
                    node)
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
        self.shortfall = self._shortfall(k, len(by_partition))
        chosen = self.rng.sample(sorted(by_partition), k)
        return [by_partition[p] for p in sorted(chosen)]

    def _shortfall(self, k: int, eligible: int) -> str | None:
        """A round that samples fewer clients than requested says so in its row (the ``faults`` column), with
        why: members offline (a SuperNode that died and has not rejoined yet) or too few eligible nodes."""
        if k >= self.clients_per_round:
            return None
        why = [f"{len(self.offline)} node(s) offline (partition {', '.join(map(str, sorted(self.offline)))})"] \
            if self.offline else []
        why.append(f"{eligible} admitted node(s) hold {'/'.join(self.use_modalities)}")
        return f"sampled {k} of clients-per-round={self.clients_per_round}: {'; '.join(why)}"

    # --- training -----------------------------------------------------------------------------
    def guidance_for(self, server_round: int) -> Guidance:
        """What the server side sends with this round's weights (FedCMI's: infiltration after the warm-up, the
        latest dominant modality and temperatures)."""
        return self.server.guidance(server_round)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current_arrays = arrays
        nodes = self.sample(grid)
        content = protocol.train_content(arrays, {**self.run_config, **dict(config)}, server_round,
                                         self.guidance_for(server_round), self.model_spec)
        report = RoundReport(nodes, [self.membership.members[n].partition_id for n in nodes], shortfall=self.shortfall)
        self.reports[server_round] = report
        log(INFO, "configure_train: round %s, partitions %s", server_round, report.partitions)
        return [Message(content, dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]

    def _check(self, msg: Message, current: Mapping[str, np.ndarray]) -> tuple[str | None, Accepted | None]:
        """(reason, None) for a bad reply, (None, Accepted) for a good one. Every field is untrusted: the weight is
        at most the sample count the membership vouches for."""
        expected = {k: (tuple(v.shape), str(v.dtype)) for k, v in current.items()}
        try:
            reply = protocol.read_reply(msg.content, expected, self.num_classes)
        except protocol.ReplyError as exc:
            return str(exc), None
        member: Member | None = self.membership.get(msg.metadata.src_node_id)
        if member is None:
            return "reply from a node that is not an admitted member", None
        pid, kind = member.partition_id, member.kind
        if reply.partition_id not in (-1, pid):
            return f"claims partition {reply.partition_id}, node holds partition {pid}", None
        if reply.num_examples > member.size:
            return f"num-examples {reply.num_examples:g} exceeds the {member.size} samples vouched for", None
        n = reply.num_examples
        epochs = self.run_config.get("local-epochs")
        max_batches = float(epochs) * n if isinstance(epochs, int) and epochs > 0 else None
        reason = check_arrays(reply.arrays, current, self.held(kind), self.group_of, self.max_update_norm,
                              max_batches)
        if reason:
            return reason, None
        if reply.stats is not None:
            st = reply.stats
            reason = check_class_stats(st.sum_pa, st.sum_pb, st.counts, self.num_classes, max_count=n, kind=kind)
            if reason:
                return reason, None
        held = self.held(kind)
        # CCVR moments are pooled only from a client holding both modalities, counting no more than it trained on
        fs = reply.features
        features = fs if fs is not None and set(held) == set(MODALITIES) and fs.counts.sum() <= n else None
        who = f"partition {pid}"
        return None, Accepted(who, pid, kind, ClientUpdate(reply.arrays, n, held), n, reply.stats, reply.losses,
                              features)

    def _who(self, node: int, report: RoundReport) -> str:
        """How faults name a node: its partition when it was sampled or is a member, else its node id."""
        member = self.membership.get(node)
        return report.sampled_as(node) or (f"partition {member.partition_id}" if member else f"node {node}")

    def _cap_claims(self, accepted: list[Accepted]) -> list[Accepted]:
        """Claims mode: every weight at most CLAIM_CAP_MULTIPLE x the round's lower median claim; class statistics
        and CCVR moments scaled (or dropped) with it."""
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

    def _screen(self, server_round: int, accepted: list[Accepted], current: Mapping[str, np.ndarray],
                faults: list[str], report: RoundReport) -> list[Accepted]:
        """The relative update bound (``UpdateScreen``): rejected replies go to ``faults``; every judged reply's
        norms, steps, ratio and verdict go to ``report.screened`` (the run directory's replies.csv)."""
        norms = [group_norms(e.update.arrays, current, self.group_of, (*e.update.modalities, SHARED))
                 for e in accepted]
        epochs, batch = self.run_config.get("local-epochs", 1), self.run_config.get("batch-size", 1)
        steps = [local_steps(e.update.num_examples, epochs, batch) for e in accepted]
        verdicts = self.screen.judge(norms, steps)
        kept, rows = [], []
        for entry, norm, st, v in zip(accepted, norms, steps, verdicts, strict=True):
            rows.append({"round": server_round, "partition": entry.partition_id, "kind": entry.kind,
                         "claimed": entry.claimed, "weight": entry.update.num_examples, "steps": st,
                         **{f"norm_{g}": norm.get(g, math.nan) for g in (*MODALITIES, SHARED)},
                         "ratio": round(v.ratio, 4), "verdict": "rejected" if v.reason else
                         ("capped" if entry.capped else "accepted")})
            if v.reason:
                faults.append(f"{entry.who}: rejected: {v.reason}")
            else:
                kept.append((entry, v))
        self.screen.remember([v for _, v in kept])
        report.screened = rows
        if rows:
            log(INFO, "round %s: largest update ratio %.3g (bound %g)", server_round, max(r["ratio"] for r in rows),
                self.update_norm_multiple)
        return [e for e, _ in kept]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check every reply, weigh it by what the server vouches for, screen the updates, then average the good
        ones per modality; too few good ones skip the round."""
        # Replies arrive in any order; take them in partition order (unknown nodes last, by node id) so the
        # faults listed and the floating-point sums are the same in every run.
        def order(m: Message) -> tuple[bool, int, int]:
            member = self.membership.get(m.metadata.src_node_id)
            return member is None, member.partition_id if member else 0, m.metadata.src_node_id

        replies = sorted(replies, key=order)
        report = self.reports.setdefault(server_round, RoundReport())
        current = record_arrays(self.current_arrays) if self.current_arrays else {}
        accepted: list[Accepted] = []
        faults: list[str] = [report.shortfall] if report.shortfall else []
        faults += self.discovery_faults
        self.discovery_faults = []
        failed = rejected = 0
        answered = set()
        for msg in replies:
            node = msg.metadata.src_node_id
            if node in answered:
                continue  # one reply per node and round
            answered.add(node)
            member = self.membership.get(node)
            who = f"partition {member.partition_id}" if member else f"node {node}"
            if msg.has_error():
                failed += 1
                faults.append(f"{who}: failed: {short_reason(msg.error.reason)}")
                continue
            reason, good = self._check(msg, current)
            if reason:
                rejected += 1
                faults.append(f"{who}: rejected: {reason}")
                continue
            accepted.append(good)
        accepted = self._cap_claims(accepted)
        capped = sum(e.capped for e in accepted)
        screened = self._screen(server_round, accepted, current, faults, report)
        rejected += len(accepted) - len(screened)
        accepted = screened
        missing = [n for n in report.nodes if n not in answered]
        faults += [f"{self._who(n, report)}: no reply within round-timeout" for n in missing]
        for line in faults:
            log(WARNING, "round %s: %s", server_round, line)
        report.ok, report.failed, report.rejected, report.timeout = len(accepted), failed, rejected, len(missing)
        report.capped, report.faults, report.skipped = capped, faults, len(accepted) < self.min_replies
        accepted.sort(key=lambda e: e.partition_id)
        metrics = self._train_metrics(accepted, report)
        self.train_metrics[server_round] = metrics
        if report.skipped:
            log(WARNING, "round %s skipped: %s good replies, min-replies is %s; the global model is kept",
                server_round, len(accepted), self.min_replies)
            return None, metrics
        new, contributors = aggregate(current, [e.update for e in accepted], self.group_of, self.rule)
        new = self.server.after_aggregation(server_round, current, new, frozenset(contributors), accepted)
        return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in new.items()}), metrics

    @staticmethod
    def _train_metrics(accepted: list[Accepted], report: RoundReport) -> MetricRecord:
        """Sample-weighted means of the good clients' loss terms, plus reply counts (named as the metrics columns)."""
        totals: dict[str, float] = {}
        weights: dict[str, float] = {}
        examples = 0.0
        for entry in accepted:
            n = entry.update.num_examples
            examples += n
            for k, v in entry.losses.items():
                totals[k] = totals.get(k, 0.0) + n * v
                weights[k] = weights.get(k, 0.0) + n
        out = MetricRecord({k: totals[k] / weights[k] for k in totals})
        for key, value in report.columns().items():
            if key != FAULTS:
                out[key] = int(value)
        out[protocol.NUM_EXAMPLES] = int(examples)
        return out

    # --- evaluation is central; the evaluate phase gathers CCVR's fresh moments --------------------------
    @property
    def fresh_moments(self) -> bool:
        """Whether the evaluate phase asks multimodal nodes for moments (CCVR with ``ccvr-moments=fresh``)."""
        return self.server.asks_moments()

    def moment_nodes(self) -> list[int]:
        """Every admitted node holding both modalities the strategy trains, in partition order: the pool covers
        every multimodal client, not only this round's sample."""
        both = [(m.partition_id, n) for n, m in self.membership.members.items()
                if set(self.held(m.kind)) == set(MODALITIES)]
        return [n for _, n in sorted(both)]

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """With fresh CCVR moments: one EVALUATE message per multimodal node with ``arrays``, the weights this
        round's aggregation produced; otherwise none."""
        if not self.fresh_moments:
            return []
        nodes = self.moment_nodes()
        self.moments_asked[server_round] = nodes
        content = protocol.moments_request(arrays, {**self.run_config, **dict(config)}, server_round,
                                           self.model_spec)
        log(INFO, "configure_evaluate: round %s, CCVR moments from %s multimodal node(s)", server_round, len(nodes))
        return [Message(content, dst_node_id=n, message_type=MessageType.EVALUATE) for n in nodes]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Check the fresh moments and hand the good ones to the server side (CCVR pools them; none usable: the
        round is evaluated uncalibrated); a failed, malformed or missing reply is left out and named in the
        round's faults."""
        asked = self.moments_asked.pop(server_round, None)
        if asked is None:
            return None
        faults: list[str] = []
        good: list[tuple[str, FeatureStats]] = []
        answered: set[int] = set()
        for msg in sorted(replies, key=lambda m: self._partition_of(m.metadata.src_node_id)):
            node = msg.metadata.src_node_id
            if node in answered:
                continue  # one reply per node and round
            answered.add(node)
            who = self._name(node)
            reason, features = self._check_moments(msg, set(asked))
            if reason:
                faults.append(f"{who}: ccvr moments {reason}")
            elif features is not None:
                good.append((who, features))
        faults += [f"{self._name(n)}: ccvr moments: no reply within round-timeout" for n in asked if n not in answered]
        used, examples = self.server.take_moments(server_round, good, faults)
        report = self.reports.setdefault(server_round, RoundReport())
        report.faults = [*report.faults, *faults]
        for line in faults:
            log(WARNING, "round %s: %s", server_round, line)
        log(INFO, "round %s: CCVR moments of %s of %s multimodal node(s), %s samples", server_round, used,
            len(asked), examples)
        return MetricRecord({"ccvr-nodes": used, protocol.NUM_EXAMPLES: examples})

    def _partition_of(self, node: int) -> tuple[bool, int, int]:
        """Sort key: members in partition order, unknown nodes last by node id (deterministic sums and faults)."""
        member = self.membership.get(node)
        return member is None, member.partition_id if member else 0, node

    def _name(self, node: int) -> str:
        member = self.membership.get(node)
        return f"partition {member.partition_id}" if member else f"node {node}"

    def _check_moments(self, msg: Message, asked: set[int]) -> tuple[str | None, FeatureStats | None]:
        """(reason, None) for an unusable moments reply, (None, moments) for a good one. Every field is untrusted:
        the moments may count at most the samples the membership vouches for the node."""
        node = msg.metadata.src_node_id
        if node not in asked:
            return "rejected: not asked for moments this round", None
        if msg.has_error():
            return f"failed: {short_reason(msg.error.reason)}", None
        member = self.membership.get(node)
        if member is None:
            return "rejected: reply from a node that is not an admitted member", None
        try:
            reply = protocol.read_moments_reply(msg.content, self.num_classes)
        except protocol.ReplyError as exc:
            return f"rejected: {exc}", None
        if reply.partition_id not in (-1, member.partition_id):
            return f"rejected: claims partition {reply.partition_id}, node holds {member.partition_id}", None
        if reply.num_examples > member.size:
            return f"rejected: {reply.num_examples:g} samples exceed the {member.size} vouched for", None
        return None, reply.features
