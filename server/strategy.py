"""FedCMIStrategy: per-modality aggregation on Flower's Message API, with the method's server steps.

One strategy serves every local method (``fedcmi.methods``): discovery, membership, sampling, reply
acceptance, screening and aggregation are the same for all; what a method (or a server option) does on the
server is its :class:`~fedcmi.methods.server_step.ServerSide` (``fedcmi.federated.server_side`` builds it),
which this strategy only calls. The strategy orchestrates; each job has its own module:
``server/membership.py`` (``Roster``: discovery, refusals, members that left, the seeded sample and its
shortfall), ``server/acceptance.py`` (``Acceptance``: one reply into an ``Accepted`` record or a named
``Rejection``, claim capping, the update screen, the CCVR moments check) and ``server/report.py`` (the round's
``RoundReport``, ``short_reason``). Each round:

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
import random
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedcmi import protocol
from fedcmi.config import RunConfig
from fedcmi.dominance import Dominance, Guidance
from fedcmi.federated.aggregation import Rule, aggregate
from fedcmi.federated.aggregation.mean import weighted_mean
from fedcmi.federated.calibration import FeatureStats
from fedcmi.federated.membership import Member, Membership
from fedcmi.federated.screening import UpdateScreen
from fedcmi.federated.server_side import server_side
from fedcmi.methods.server_step import ServerSide
from fedcmi.metrics import FAULTS
from fedcmi.modalities import MODALITIES
from fedcmi.modalities import group_of as default_group_of
from fedcmi.models.build import ModelSpec
from fedcmi.npy import record_arrays
from server.acceptance import Acceptance, Accepted, Rejection
from server.membership import NoClientsError, Roster
from server.report import RoundReport, short_reason

__all__ = ["Accepted", "FedCMIStrategy", "NoClientsError", "Rejection", "short_reason"]

_logger = logging.getLogger("fedcmi.server")


def log(level: int, msg: str, *args: Any) -> None:
    _logger.log(level, msg, *args)


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
    discovery_timeout : float (default: ``ReliabilityConfig.discovery_seconds``, round-timeout's 600 s)
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
                 server: ServerSide | None = None, seed: int = _DEFAULT.federation.seed,
                 group_of: Callable[[str], str] = default_group_of,
                 discovery_timeout: float = _DEFAULT.reliability.discovery_seconds,
                 min_replies: int = _DEFAULT.reliability.min_replies,
                 max_update_norm: float = _DEFAULT.reliability.max_update_norm,
                 update_norm_multiple: float = _DEFAULT.reliability.update_norm_multiple,
                 use_modalities: tuple[str, ...] = MODALITIES, rule: Rule = weighted_mean,
                 membership: Membership | None = None) -> None:
        self.server = server if server is not None else server_side(_DEFAULT, model_spec.num_classes)
        self.model_spec = model_spec
        self.num_classes = model_spec.num_classes
        self.rule = rule
        self.run_config = dict(run_config)
        self.group_of = group_of
        self.min_replies = min_replies
        self.max_update_norm = max_update_norm
        self.update_norm_multiple = update_norm_multiple
        self.screen = UpdateScreen(update_norm_multiple)
        self.rng = random.Random(seed)
        self.roster = Roster(membership if membership is not None else Membership("claims"),
                             clients_per_round=clients_per_round, use_modalities=use_modalities,
                             discovery_timeout=discovery_timeout, run_config=self.run_config, rng=self.rng)
        self.acceptance = Acceptance(self.roster.membership, num_classes=self.num_classes, held=self.roster.held,
                                     group_of=group_of, max_update_norm=max_update_norm, screen=self.screen,
                                     run_config=self.run_config, server=self.server)
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

    # --- membership: the roster (server/membership.py) ---------------------------------------------------
    @property
    def membership(self) -> Membership:
        """Who may join and the sample counts the server vouches for (``fedcmi.federated.membership``)."""
        return self.roster.membership

    @property
    def clients_per_round(self) -> int:
        return self.roster.clients_per_round

    @property
    def use_modalities(self) -> tuple[str, ...]:
        return self.roster.use_modalities

    @property
    def discovery_timeout(self) -> float:
        return self.roster.discovery_timeout

    @property
    def refusals(self) -> dict[int, str]:
        """Node id -> why discovery refused it."""
        return self.roster.refusals

    @property
    def offline(self) -> dict[int, int]:
        """Partition id -> node id of members that left and have not rejoined."""
        return self.roster.offline

    @property
    def shortfall(self) -> str | None:
        """Why the latest sample is smaller than clients-per-round, if it is."""
        return self.roster.shortfall

    @property
    def nodes(self) -> dict[int, Member]:
        """Admitted node id -> its member record (partition id, kind, vouched size)."""
        return self.roster.nodes

    def held(self, kind: str) -> tuple[str, ...]:
        """The modalities a client of this kind trains under this strategy."""
        return self.roster.held(kind)

    def discover(self, grid: Grid, wait: bool = True) -> None:
        """Ask connected nodes not yet admitted to describe themselves and admit them (``Roster.discover``)."""
        self.roster.discover(grid, wait)

    def sample(self, grid: Grid) -> list[int]:
        """Node ids of this round's clients: a seeded sample of online partitions (``Roster.sample``)."""
        return self.roster.sample(grid)

    # --- training -----------------------------------------------------------------------------
    def guidance_for(self, server_round: int) -> Guidance:
        """What the server side sends with this round's weights (FedCMI's: infiltration after the warm-up, the
        latest dominant modality and temperatures)."""
        return self.server.guidance(server_round)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample this round's clients and send each the global arrays, the run config and the guidance."""
        self.current_arrays = arrays
        nodes = self.sample(grid)
        content = protocol.train_content(arrays, {**self.run_config, **dict(config)}, server_round,
                                         self.guidance_for(server_round), self.model_spec)
        report = RoundReport(nodes, [self.membership.members[n].partition_id for n in nodes], shortfall=self.shortfall)
        self.reports[server_round] = report
        log(INFO, "configure_train: round %s, partitions %s", server_round, report.partitions)
        return [Message(content, dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]

    def accept_replies(self, server_round: int, replies: Iterable[Message], current: Mapping[str, np.ndarray],
                       report: RoundReport) -> list[Accepted]:
        """Check every reply (``server/acceptance.py``), cap claims, screen the updates; fill ``report`` (counts,
        faults, skipped) and return the accepted replies in partition order."""
        faults: list[str] = [report.shortfall] if report.shortfall else []
        faults += self.roster.take_discovery_faults()
        accepted: list[Accepted] = []
        failed = rejected = 0
        answered = set()
        # Replies arrive in any order; take them in partition order (unknown nodes last, by node id) so the
        # faults listed and the floating-point sums are the same in every run.
        for msg in sorted(replies, key=lambda m: self.roster.order(m.metadata.src_node_id)):
            node = msg.metadata.src_node_id
            if node in answered:
                continue  # one reply per node and round
            answered.add(node)
            who = self.roster.name(node)
            if msg.has_error():
                failed += 1
                faults.append(f"{who}: failed: {short_reason(msg.error.reason)}")
                continue
            verdict = self.acceptance.check(msg, current)
            if isinstance(verdict, Rejection):
                rejected += 1
                faults.append(f"{who}: rejected: {verdict.reason}")
                continue
            accepted.append(verdict)
        accepted = self.acceptance.cap_claims(accepted)
        capped = sum(e.capped for e in accepted)
        screened = self.acceptance.screen_updates(server_round, accepted, current, faults, report)
        rejected += len(accepted) - len(screened)
        accepted = screened
        missing = [n for n in report.nodes if n not in answered]
        faults += [f"{report.sampled_as(n) or self.roster.name(n)}: no reply within round-timeout" for n in missing]
        for line in faults:
            log(WARNING, "round %s: %s", server_round, line)
        report.ok, report.failed, report.rejected, report.timeout = len(accepted), failed, rejected, len(missing)
        report.capped, report.faults, report.skipped = capped, faults, len(accepted) < self.min_replies
        accepted.sort(key=lambda e: e.partition_id)
        return accepted

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check every reply, weigh it by what the server vouches for, screen the updates, then average the good
        ones per modality and hand the result to the server side; too few good ones skip the round."""
        report = self.reports.setdefault(server_round, RoundReport())
        current = record_arrays(self.current_arrays) if self.current_arrays else {}
        accepted = self.accept_replies(server_round, replies, current, report)
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
        return self.roster.multimodal_nodes()

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
        for msg in sorted(replies, key=lambda m: self.roster.order(m.metadata.src_node_id)):
            node = msg.metadata.src_node_id
            if node in answered:
                continue  # one reply per node and round
            answered.add(node)
            who = self.roster.name(node)
            moments = self.acceptance.check_moments(msg, set(asked))
            if isinstance(moments, Rejection):
                faults.append(f"{who}: ccvr moments {moments.reason}")
            elif moments is not None:
                good.append((who, moments))
        faults += [f"{self.roster.name(n)}: ccvr moments: no reply within round-timeout"
                   for n in asked if n not in answered]
        used, examples = self.server.take_moments(server_round, good, faults)
        report = self.reports.setdefault(server_round, RoundReport())
        report.faults = [*report.faults, *faults]
        for line in faults:
            log(WARNING, "round %s: %s", server_round, line)
        log(INFO, "round %s: CCVR moments of %s of %s multimodal node(s), %s samples", server_round, used,
            len(asked), examples)
        return MetricRecord({"ccvr-nodes": used, protocol.NUM_EXAMPLES: examples})
