"""FedCMIStrategy: per-modality aggregation and server-side dominance on Flower's Message API.

One strategy serves every local method (``fedcmi.methods``): the local objective differs, the server path
does not. Each round:

1. ``configure_train`` samples clients (seeded, by partition id, so runs are reproducible) and sends the
   global arrays plus a ConfigRecord with the run config, whether infiltration is on, the dominant modality
   and the class-wise temperatures.
2. ``aggregate_train`` screens every reply, combines each modality's group over the clients that hold it
   and the fusion head over all with the run's aggregation rule (``fedcmi.federated.aggregation``), and
   turns the clients' class statistics into the next dominant modality and
   temperatures (``fedcmi.federated.dominance``).

Every record key comes from ``fedcmi.protocol``.

Evaluation is central (``server/app.py`` after every round); no client-side evaluation round is sent.
``server/app.run_rounds`` drives these steps instead of ``Strategy.start`` so it can checkpoint, resume at
the right round number and skip rounds.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedcmi import protocol
from fedcmi.federated.aggregation import ClientUpdate, Rule, aggregate
from fedcmi.federated.aggregation.mean import weighted_mean
from fedcmi.federated.calibration import FeatureStats
from fedcmi.federated.dominance import ClassStats, Dominance, Guidance, dominance
from fedcmi.federated.screening import check_arrays, check_class_stats
from fedcmi.models.build import ModelSpec
from fedcmi.models.modalities import group_of as default_group_of
from fedcmi.models.modalities import modalities_of

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


class FedCMIStrategy(Strategy):
    """Per-modality FedAvg with server-side dominant-modality guidance.

    Parameters
    ----------
    clients_per_round : int
        Clients sampled each round (uniformly, without replacement, by a seeded RNG over partition ids).
    model_spec : ModelSpec
        Classes and input shapes of the model, sent to clients so they build it from the message alone.
    run_config : Mapping[str, Any]
        The clients' part of the run configuration, sent to every client so all sides train with the same
        settings.
    gamma : float (default: 2.0)
        Strength of the class-wise temperatures (FedCMI authors' code).
    warmup_rounds : int (default: 1)
        Rounds without infiltration at the start.
    seed : int (default: 0)
        Seed of client sampling.
    group_of : Callable[[str], str]
        Maps an array key to ``"a"``, ``"b"`` or ``"shared"``.
    discovery_timeout : float (default: 120.0)
        Seconds to wait for enough nodes to connect and describe themselves.
    min_replies : int (default: 1)
        Good replies needed to aggregate; with fewer the round is skipped and the global model kept.
    max_update_norm : float (default: 0.0)
        Reject an update whose L2 distance to the global model exceeds this (0 = no bound).
    use_modalities : tuple[str, ...] (default: ("a", "b"))
        Modalities the strategy trains; unimodal baselines sample only clients holding theirs.
    rule : Rule (default: the sample-weighted mean)
        The aggregation rule applied per modality group (``fedcmi.federated.aggregation``).
    dominance_momentum : float (default: 0.0)
        Moving average of the class statistics across rounds (0 = this round's only), so one round's
        participants under label skew cannot flip the dominant modality on their own.
    tau_min : float (default: 0.0)
        Lower bound of the class-wise temperatures (0 = none).
    """

    def __init__(self, *, clients_per_round: int, model_spec: ModelSpec, run_config: Mapping[str, Any],
                 gamma: float = 2.0, warmup_rounds: int = 1, seed: int = 0,
                 group_of: Callable[[str], str] = default_group_of, discovery_timeout: float = 120.0,
                 min_replies: int = 1, max_update_norm: float = 0.0,
                 use_modalities: tuple[str, ...] = ("a", "b"), rule: Rule = weighted_mean,
                 dominance_momentum: float = 0.0, tau_min: float = 0.0) -> None:
        self.dominance_momentum, self.tau_min = dominance_momentum, tau_min
        self.smoothed: ClassStats | None = None  # the moving average of the class statistics
        self.clients_per_round = clients_per_round
        self.model_spec = model_spec
        self.num_classes = model_spec.num_classes
        self.rule = rule
        self.run_config = dict(run_config)
        self.gamma = gamma
        self.warmup_rounds = warmup_rounds
        self.group_of = group_of
        self.discovery_timeout = discovery_timeout
        self.min_replies = min_replies
        self.max_update_norm = max_update_norm
        self.use_modalities = use_modalities
        self.rng = random.Random(seed)
        self.nodes: dict[int, tuple[int, str]] = {}  # node id -> (partition id, kind)
        self.current_arrays: ArrayRecord | None = None
        self.guidance: Dominance | None = None  # from the latest statistics; sent next round
        self.round_log: dict[int, dict[str, Any]] = {}
        self.feature_stats: FeatureStats | None = None  # CCVR: the latest round's pooled head-input moments
        self.train_metrics: dict[int, MetricRecord] = {}

    # --- bookkeeping ------------------------------------------------------------------------------
    def summary(self) -> None:
        log(INFO, "\t├──> FedCMIStrategy: %s clients per round, warm-up %s round(s), gamma %s",
            self.clients_per_round, self.warmup_rounds, self.gamma)
        log(INFO, "\t└──> method: %s, aggregation: %s", self.run_config.get("strategy"),
            getattr(self.rule, "__name__", self.rule))

    def state(self) -> dict[str, Any]:
        """What a checkpoint must hold to continue exactly: the sampling RNG and the current guidance."""
        version, internal, gauss = self.rng.getstate()
        guidance = None
        if self.guidance is not None:
            guidance = {"dominant": self.guidance.dominant, "ratio": self.guidance.ratio,
                        "tau": [float(t) for t in self.guidance.tau]}
        state: dict[str, Any] = {"rng": [version, list(internal), gauss], "guidance": guidance}
        if self.smoothed is not None:
            state["smoothed"] = {k: [float(v) for v in getattr(self.smoothed, k)]
                                 for k in ("sum_pa", "sum_pb", "counts")}
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        g = state.get("guidance")
        self.guidance = None if g is None else Dominance(g["dominant"], float(g["ratio"]),
                                                         np.asarray(g["tau"], dtype=np.float64))
        sm = state.get("smoothed")
        self.smoothed = None if sm is None else ClassStats(*(np.asarray(sm[k], dtype=np.float64)
                                                              for k in ("sum_pa", "sum_pb", "counts")))

    def discover(self, grid: Grid) -> None:
        """Ask every connected node for its partition id and modality kind (a QUERY message)."""
        deadline = time.monotonic() + self.discovery_timeout
        while True:
            node_ids = sorted(grid.get_node_ids())
            if len(node_ids) >= self.clients_per_round or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        unknown = [n for n in node_ids if n not in self.nodes]
        msgs = [Message(protocol.query_content(self.run_config), dst_node_id=n, message_type=MessageType.QUERY)
                for n in unknown]
        for reply in grid.send_and_receive(msgs, timeout=self.discovery_timeout):
            if reply.has_error():
                log(WARNING, "node %s could not describe itself: %s", reply.metadata.src_node_id,
                    short_reason(reply.error.reason))
                continue
            try:
                info = protocol.read_info(reply.content)
            except protocol.ReplyError as exc:
                log(WARNING, "node %s described itself badly: %s", reply.metadata.src_node_id, exc)
                continue
            self.nodes[reply.metadata.src_node_id] = (info.partition_id, info.kind)
        if len(self.nodes) < self.clients_per_round:
            raise NoClientsError(f"only {len(self.nodes)} node(s) answered, {self.clients_per_round} are "
                                 "needed per round (clients-per-round)")

    def held(self, kind: str) -> tuple[str, ...]:
        """The modalities a client of this kind trains under this strategy."""
        return tuple(m for m in modalities_of(kind) if m in self.use_modalities)

    def sample(self, grid: Grid) -> list[int]:
        """Node ids of this round's clients: a seeded sample of partition ids, mapped to their nodes."""
        if len(self.nodes) < self.clients_per_round:
            self.discover(grid)
        by_partition = {pid: nid for nid, (pid, kind) in self.nodes.items() if self.held(kind)}
        k = min(self.clients_per_round, len(by_partition))
        if k == 0:
            raise NoClientsError(f"no client holds the modalities {self.use_modalities} this strategy trains")
        chosen = self.rng.sample(sorted(by_partition), k)
        return [by_partition[p] for p in sorted(chosen)]

    # --- training -----------------------------------------------------------------------------
    def guidance_for(self, server_round: int) -> Guidance:
        """Infiltration on after the warm-up; the latest dominant modality and temperatures, if any."""
        g = self.guidance
        return Guidance(infiltrate=server_round > self.warmup_rounds, dominant=g.dominant if g else None,
                        tau=g.tau if g else None)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current_arrays = arrays
        nodes = self.sample(grid)
        content = protocol.train_content(arrays, {**self.run_config, **dict(config)}, server_round,
                                         self.guidance_for(server_round), self.model_spec)
        self.round_log[server_round] = {
            "nodes": nodes,
            "sampled": [self.nodes[n][0] for n in nodes],
            "dominant": self.guidance.dominant if self.guidance else None,
            "ratio": self.guidance.ratio if self.guidance else float("nan"),
        }
        log(INFO, "configure_train: round %s, partitions %s", server_round, self.round_log[server_round]["sampled"])
        return [Message(content, dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]

    def _screen(self, msg: Message, current: Mapping[str, np.ndarray]) -> tuple[str | None, Any]:
        """(reason, None) for a bad reply; (None, (partition id, ClientUpdate, ClassStats | None)) for a good one."""
        try:
            reply = protocol.read_reply(msg.content)
        except protocol.ReplyError as exc:
            return str(exc), None
        node = msg.metadata.src_node_id
        if node in self.nodes:  # trust the server's own record of what this node holds
            pid, kind = self.nodes[node]
        elif reply.kind is not None:
            pid, kind = reply.partition_id, reply.kind
        else:
            return "reply from an unknown node without its kind", None
        if reply.partition_id not in (-1, pid):
            return f"claims partition {reply.partition_id}, node holds partition {pid}", None
        reason = check_arrays(reply.arrays, current, self.held(kind), self.group_of, self.max_update_norm)
        if reason:
            return reason, None
        if reply.stats is not None:
            s = reply.stats
            reason = check_class_stats(s.sum_pa, s.sum_pb, s.counts, self.num_classes)
            if reason:
                return reason, None
        return None, (pid, ClientUpdate(reply.arrays, reply.num_examples, self.held(kind)), reply.stats)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen every reply, then average the good ones per modality; too few good ones skip the round."""
        replies = list(replies)
        info = self.round_log.setdefault(server_round, {})
        current = {k: v.numpy() for k, v in self.current_arrays.items()} if self.current_arrays else {}
        accepted: list[tuple[int, ClientUpdate, ClassStats | None, Message]] = []
        faults: list[str] = []
        failed = rejected = 0
        answered = set()
        for msg in replies:
            node = msg.metadata.src_node_id
            answered.add(node)
            who = f"partition {self.nodes[node][0]}" if node in self.nodes else f"node {node}"
            if msg.has_error():
                failed += 1
                faults.append(f"{who}: failed: {short_reason(msg.error.reason)}")
                continue
            reason, good = self._screen(msg, current)
            if reason:
                rejected += 1
                faults.append(f"{who}: rejected: {reason}")
                continue
            accepted.append((*good, msg))
        missing = [n for n in info.get("nodes", []) if n not in answered]
        faults += [f"partition {self.nodes[n][0]}: no reply within round-timeout" for n in missing]
        for line in faults:
            log(WARNING, "round %s: %s", server_round, line)
        info.update({"replies": len(accepted), "failed": failed, "rejected": rejected, "timeout": len(missing),
                     "faults": faults, "skipped": len(accepted) < self.min_replies})
        # Replies arrive in any order; sum in partition order so the floating-point result is reproducible.
        accepted.sort(key=lambda t: t[0])
        metrics = self._train_metrics([t[3] for t in accepted], info)
        self.train_metrics[server_round] = metrics
        if info["skipped"]:
            log(WARNING, "round %s skipped: %s good replies, min-replies is %s; the global model is kept",
                server_round, len(accepted), self.min_replies)
            return None, metrics
        new, _ = aggregate(current, [t[1] for t in accepted], self.group_of, self.rule)
        self._update_guidance([t[2] for t in accepted if t[2] is not None])
        self._pool_features(server_round, [t[3] for t in accepted])
        return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in new.items()}), metrics

    def _pool_features(self, server_round: int, replies: list[Message]) -> None:
        """CCVR: sum the accepted clients' feature moments; a malformed set is left out (and logged)."""
        pooled = None
        for msg in replies:
            features = protocol.read_features(msg.content)  # screened already: readable
            if features is None:
                continue
            reason = features.check(self.num_classes)
            if reason:
                log(WARNING, "round %s: node %s: %s; left out of the calibration", server_round,
                    msg.metadata.src_node_id, reason)
                continue
            if pooled is not None and pooled.sums.shape != features.sums.shape:
                continue
            pooled = features if pooled is None else pooled + features
        if pooled is not None:
            self.feature_stats = pooled

    def _update_guidance(self, all_stats: list[ClassStats]) -> None:
        stats = sum(all_stats, ClassStats.zeros(self.num_classes))
        if stats.counts.sum() <= 0:
            return
        if self.dominance_momentum > 0:
            m = self.dominance_momentum
            prev = self.smoothed
            self.smoothed = stats if prev is None else ClassStats(
                m * prev.sum_pa + (1 - m) * stats.sum_pa, m * prev.sum_pb + (1 - m) * stats.sum_pb,
                m * prev.counts + (1 - m) * stats.counts)
            stats = self.smoothed
        new = dominance(stats, self.gamma)
        if new is not None:
            if self.tau_min > 0:
                new = Dominance(new.dominant, new.ratio, np.maximum(new.tau, self.tau_min))
            self.guidance = new

    @staticmethod
    def _train_metrics(replies: list[Message], info: Mapping[str, Any]) -> MetricRecord:
        """Sample-weighted means of the good clients' loss terms, plus reply counts."""
        totals: dict[str, float] = {}
        weights: dict[str, float] = {}
        examples = 0.0
        for m in replies:
            reply = protocol.read_reply(m.content)  # screened already: cannot fail here
            n = reply.num_examples
            examples += n
            for k, v in reply.losses.items():
                totals[k] = totals.get(k, 0.0) + n * v
                weights[k] = weights.get(k, 0.0) + n
        out = MetricRecord({k: totals[k] / weights[k] for k in totals})
        for key in ("failed", "rejected", "timeout"):
            out[f"clients-{key}"] = int(info[key])
        out["clients-ok"] = len(replies)
        out["skipped"] = int(info["skipped"])
        out[protocol.NUM_EXAMPLES] = int(examples)
        return out

    # --- evaluation is central ------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None
