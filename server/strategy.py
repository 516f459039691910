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
from fedcmi.federated.screening import check_arrays, check_class_stats, group_norms, relative_norm_outliers
from fedcmi.models.build import ModelSpec
from fedcmi.models.modalities import group_of as default_group_of
from fedcmi.models.modalities import modalities_of
from fedcmi.npy import record_arrays

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
    update_norm_multiple : float (default: 0.0)
        Reject an update whose L2 distance to the global model in one parameter group (a modality's
        encoder, the shared head) exceeds this multiple of the median of that group's distances over the
        round's screened replies (0 = no bound).
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
                 min_replies: int = 1, max_update_norm: float = 0.0, update_norm_multiple: float = 0.0,
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
        self.update_norm_multiple = update_norm_multiple
        self.use_modalities = use_modalities
        self.rng = random.Random(seed)
        self.nodes: dict[int, tuple[int, str]] = {}  # node id -> (partition id, kind)
        self.node_sizes: dict[int, int] = {}  # node id -> the sample count it reported at discovery
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

    def discover(self, grid: Grid, wait: bool = True) -> None:
        """Ask every connected node not yet known for its partition id, modality kind and sample count (a QUERY
        message). With ``wait`` (the first discovery), wait for clients-per-round nodes and fail without them."""
        deadline = time.monotonic() + self.discovery_timeout
        while True:
            node_ids = sorted(grid.get_node_ids())
            if not wait or len(node_ids) >= self.clients_per_round or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        unknown = [n for n in node_ids if n not in self.nodes]
        if not unknown:
            return
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
            node = reply.metadata.src_node_id
            for other in [n for n, (pid, _) in self.nodes.items() if pid == info.partition_id and n != node]:
                self._forget(other)  # the same partition rejoined under a new node id: count it once
            self.nodes[node] = (info.partition_id, info.kind)
            self.node_sizes[node] = info.num_examples
        if wait and len(self.nodes) < self.clients_per_round:
            raise NoClientsError(f"only {len(self.nodes)} node(s) answered, {self.clients_per_round} are "
                                 "needed per round (clients-per-round)")

    def held(self, kind: str) -> tuple[str, ...]:
        """The modalities a client of this kind trains under this strategy."""
        return tuple(m for m in modalities_of(kind) if m in self.use_modalities)

    def _forget(self, node: int) -> None:
        self.nodes.pop(node, None)
        self.node_sizes.pop(node, None)

    def sample(self, grid: Grid) -> list[int]:
        """Node ids of this round's clients: a seeded sample of partition ids, mapped to their nodes.

        Only nodes the SuperLink lists as online are sampled: a node that left is forgotten (not sampled,
        not counted) and asked again when it comes back, under the same or a new node id.
        """
        if len(self.nodes) < self.clients_per_round:
            self.discover(grid)
        else:
            online = set(grid.get_node_ids())
            for node in [n for n in self.nodes if n not in online]:
                log(WARNING, "partition %s (node %s) has left; not sampled until it rejoins", self.nodes[node][0],
                    node)
                self._forget(node)
            if online - set(self.nodes):
                self.discover(grid, wait=False)
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
        """(reason, None) for a bad reply; (None, (partition id, ClientUpdate, ClassStats | None, losses, CCVR moments
        | None)) for a good one. Every field is untrusted: counts are capped at what the node reported at discovery."""
        expected = {k: (tuple(v.shape), str(v.dtype)) for k, v in current.items()}
        try:
            reply = protocol.read_reply(msg.content, expected, self.num_classes)
        except protocol.ReplyError as exc:
            return str(exc), None
        node = msg.metadata.src_node_id
        size = None
        if node in self.nodes:  # trust the server's own record of what this node holds
            pid, kind = self.nodes[node]
            size = self.node_sizes.get(node)
        elif reply.kind is not None:
            pid, kind = reply.partition_id, reply.kind
        else:
            return "reply from an unknown node without its kind", None
        if reply.partition_id not in (-1, pid):
            return f"claims partition {reply.partition_id}, node holds partition {pid}", None
        if size is not None and reply.num_examples > size:
            return f"num-examples {reply.num_examples:g} exceeds the {size} samples the node reported", None
        n = reply.num_examples if size is None else min(reply.num_examples, size)
        epochs = self.run_config.get("local-epochs")
        max_batches = float(epochs) * n if isinstance(epochs, int) and epochs > 0 else None
        reason = check_arrays(reply.arrays, current, self.held(kind), self.group_of, self.max_update_norm,
                              max_batches)
        if reason:
            return reason, None
        if reply.stats is not None:
            s = reply.stats
            reason = check_class_stats(s.sum_pa, s.sum_pb, s.counts, self.num_classes, max_count=n, kind=kind)
            if reason:
                return reason, None
        held = self.held(kind)
        # CCVR moments are pooled only from a client holding both modalities, counting no more than it trained on
        fs = reply.features
        features = fs if fs is not None and set(held) == {"a", "b"} and fs.counts.sum() <= n else None
        return None, (pid, ClientUpdate(reply.arrays, reply.num_examples, held), reply.stats, reply.losses,
                      features)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen every reply, then average the good ones per modality; too few good ones skip the round."""
        # Replies arrive in any order; take them in partition order (unknown nodes last, by node id) so the
        # faults listed and the floating-point sums are the same in every run.
        replies = sorted(replies, key=lambda m: (m.metadata.src_node_id not in self.nodes,
                                                 self.nodes.get(m.metadata.src_node_id, (0,))[0],
                                                 m.metadata.src_node_id))
        info = self.round_log.setdefault(server_round, {})
        current = record_arrays(self.current_arrays) if self.current_arrays else {}
        accepted: list[tuple[int, ClientUpdate, ClassStats | None, dict[str, float], str]] = []
        features: dict[int, FeatureStats | None] = {}  # CCVR moments by partition id
        faults: list[str] = []
        failed = rejected = 0
        answered = set()
        for msg in replies:
            node = msg.metadata.src_node_id
            if node in answered:
                continue  # one reply per node and round
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
            *screened, features[good[0]] = good
            accepted.append((*screened, who))
        # Bound each update relative to the round's others, per parameter group (the holders of that group).
        norms = [group_norms(t[1].arrays, current, self.group_of, (*t[1].modalities, "shared")) for t in accepted]
        for g in ("a", "b", "shared"):
            group = [n[g] for n in norms if g in n]
            if group and np.median(group) > 0:
                log(INFO, "round %s: group %s update norms: median %.4g, largest %.3g x median", server_round, g,
                    float(np.median(group)), max(group) / float(np.median(group)))
        kept = []
        for entry, reason in zip(accepted, relative_norm_outliers(norms, self.update_norm_multiple), strict=True):
            if reason:
                rejected += 1
                faults.append(f"{entry[4]}: rejected: {reason}")
            else:
                kept.append(entry)
        accepted = kept
        missing = [n for n in info.get("nodes", []) if n not in answered]
        faults += [f"partition {self.nodes[n][0]}: no reply within round-timeout" if n in self.nodes
                   else f"node {n}: no reply within round-timeout" for n in missing]
        for line in faults:
            log(WARNING, "round %s: %s", server_round, line)
        info.update({"replies": len(accepted), "failed": failed, "rejected": rejected, "timeout": len(missing),
                     "faults": faults, "skipped": len(accepted) < self.min_replies})
        accepted.sort(key=lambda t: t[0])  # by partition id (a node's reply may claim -1: its node's id counts)
        metrics = self._train_metrics([(t[1].num_examples, t[3]) for t in accepted], info)
        self.train_metrics[server_round] = metrics
        if info["skipped"]:
            log(WARNING, "round %s skipped: %s good replies, min-replies is %s; the global model is kept",
                server_round, len(accepted), self.min_replies)
            return None, metrics
        new, _ = aggregate(current, [t[1] for t in accepted], self.group_of, self.rule)
        self._update_guidance([t[2] for t in accepted if t[2] is not None])
        self._pool_features(server_round, [(t[4], features.get(t[0])) for t in accepted])
        return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in new.items()}), metrics

    def _pool_features(self, server_round: int, accepted: list[tuple[str, FeatureStats | None]]) -> None:
        """CCVR: sum the accepted clients' feature moments; a malformed set is left out (and logged)."""
        pooled = None
        for who, features in accepted:
            if features is None:
                continue
            reason = features.check(self.num_classes)
            if reason:
                log(WARNING, "round %s: %s: %s; left out of the calibration", server_round, who, reason)
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
    def _train_metrics(replies: list[tuple[float, dict[str, float]]], info: Mapping[str, Any]) -> MetricRecord:
        """Sample-weighted means of the good clients' loss terms, plus reply counts."""
        totals: dict[str, float] = {}
        weights: dict[str, float] = {}
        examples = 0.0
        for n, losses in replies:
            examples += n
            for k, v in losses.items():
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
