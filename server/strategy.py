"""FedCMIStrategy: per-modality aggregation and server-side dominance on Flower's Message API.

One strategy serves ``fedcmi``, ``fedavg`` and ``fedprox`` (spec Part 0 §8): the local objective differs, the
server path does not. Each round:

1. ``configure_train`` samples clients (seeded, by partition id, so runs are reproducible) and sends the
   global arrays plus a ConfigRecord with the run config, whether infiltration is on, the dominant modality
   and the class-wise temperatures.
2. ``aggregate_train`` averages each modality's group over the clients that hold it, the fusion head over
   all (``fedcmi.aggregation``), and turns the clients' class statistics into the next dominant modality and
   temperatures (``fedcmi.dominance``).

Evaluation is central (``evaluate_fn`` of :meth:`start`); no client-side evaluation round is sent.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedcmi.aggregation import ClientUpdate, aggregate
from fedcmi.dominance import ClassStats, Dominance, dominance
from fedcmi.models import group_of as default_group_of

KIND_MODALITIES = {"mm": ("a", "b"), "a": ("a",), "b": ("b",)}


class NoClientsError(RuntimeError):
    """Raised when a round gets no usable reply at all: continuing would only repeat the failure."""


class FedCMIStrategy(Strategy):
    """Per-modality FedAvg with server-side dominant-modality guidance.

    Parameters
    ----------
    clients_per_round : int
        Clients sampled each round (uniformly, without replacement, by a seeded RNG over partition ids).
    num_classes : int
        Length of the class statistics and temperatures.
    run_config : Mapping[str, Any]
        The resolved run configuration, sent to every client so all sides train with the same settings.
    gamma : float (default: 2.0)
        Strength of the class-wise temperatures (spec A.7).
    warmup_rounds : int (default: 1)
        Rounds without infiltration at the start.
    seed : int (default: 0)
        Seed of client sampling.
    group_of : Callable[[str], str]
        Maps an array key to ``"a"``, ``"b"`` or ``"shared"``.
    discovery_timeout : float (default: 120.0)
        Seconds to wait for enough nodes to connect and describe themselves.
    """

    def __init__(self, *, clients_per_round: int, num_classes: int, run_config: Mapping[str, Any],
                 gamma: float = 2.0, warmup_rounds: int = 1, seed: int = 0,
                 group_of: Callable[[str], str] = default_group_of, discovery_timeout: float = 120.0) -> None:
        self.clients_per_round = clients_per_round
        self.num_classes = num_classes
        self.run_config = dict(run_config)
        self.gamma = gamma
        self.warmup_rounds = warmup_rounds
        self.group_of = group_of
        self.discovery_timeout = discovery_timeout
        self.rng = random.Random(seed)
        self.nodes: dict[int, tuple[int, str]] = {}  # node id -> (partition id, kind)
        self.current_arrays: ArrayRecord | None = None
        self.guidance: Dominance | None = None  # from the latest statistics; sent next round
        self.round_log: dict[int, dict[str, Any]] = {}
        self.train_metrics: dict[int, MetricRecord] = {}

    # --- bookkeeping ------------------------------------------------------------------------------
    def summary(self) -> None:
        log(INFO, "\t├──> FedCMIStrategy: %s clients per round, warm-up %s round(s), gamma %s",
            self.clients_per_round, self.warmup_rounds, self.gamma)
        log(INFO, "\t└──> strategy preset: %s", self.run_config.get("strategy"))

    def discover(self, grid: Grid) -> None:
        """Ask every connected node for its partition id and modality kind (a QUERY message)."""
        deadline = time.monotonic() + self.discovery_timeout
        while True:
            node_ids = sorted(grid.get_node_ids())
            if len(node_ids) >= self.clients_per_round or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        unknown = [n for n in node_ids if n not in self.nodes]
        msgs = [Message(RecordDict({"config": ConfigRecord(self.run_config)}), dst_node_id=n,
                        message_type=MessageType.QUERY) for n in unknown]
        for reply in grid.send_and_receive(msgs, timeout=self.discovery_timeout):
            if reply.has_error():
                log(WARNING, "node %s could not describe itself: %s", reply.metadata.src_node_id,
                    reply.error.reason)
                continue
            info = reply.content["info"]
            self.nodes[reply.metadata.src_node_id] = (int(info["partition-id"]), str(info["kind"]))
        if len(self.nodes) < self.clients_per_round:
            raise NoClientsError(f"only {len(self.nodes)} node(s) answered, {self.clients_per_round} are "
                                 "needed per round (clients-per-round)")

    def sample(self, grid: Grid) -> list[int]:
        """Node ids of this round's clients: a seeded sample of partition ids, mapped to their nodes."""
        if len(self.nodes) < self.clients_per_round:
            self.discover(grid)
        by_partition = {pid: nid for nid, (pid, _) in self.nodes.items()}
        chosen = self.rng.sample(sorted(by_partition), self.clients_per_round)
        return [by_partition[p] for p in sorted(chosen)]

    # --- training -----------------------------------------------------------------------------
    def train_config(self, server_round: int, config: ConfigRecord) -> ConfigRecord:
        """The per-round config: run settings + round + infiltration switch + dominance guidance."""
        cfg = ConfigRecord({**self.run_config, **dict(config)})
        cfg["server-round"] = server_round
        cfg["infiltrate"] = server_round > self.warmup_rounds
        if self.guidance is not None:
            cfg["dominant"] = self.guidance.dominant
            cfg["tau"] = [float(t) for t in self.guidance.tau]
        return cfg

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current_arrays = arrays
        nodes = self.sample(grid)
        content = RecordDict({"arrays": arrays, "config": self.train_config(server_round, config)})
        self.round_log[server_round] = {
            "sampled": [self.nodes[n][0] for n in nodes],
            "dominant": self.guidance.dominant if self.guidance else None,
            "ratio": self.guidance.ratio if self.guidance else float("nan"),
        }
        log(INFO, "configure_train: round %s, partitions %s", server_round, self.round_log[server_round]["sampled"])
        return [Message(content, dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]

    def _client_update(self, msg: Message) -> ClientUpdate:
        pid, kind = self.nodes.get(msg.metadata.src_node_id, (-1, str(msg.content["info"]["kind"])))
        arrays = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        return ClientUpdate(arrays, float(msg.content["metrics"]["num-examples"]), KIND_MODALITIES[kind])

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid = [m for m in replies if not m.has_error()]
        failed = len(replies) - len(valid)
        for m in replies:
            if m.has_error():
                log(WARNING, "round %s: client on node %s failed: %s", server_round, m.metadata.src_node_id,
                    m.error.reason)
        self.round_log.setdefault(server_round, {}).update({"replies": len(valid), "failed": failed})
        if not valid or self.current_arrays is None:
            reason = replies[0].error.reason if replies and replies[0].has_error() else "no reply in time"
            raise NoClientsError(f"round {server_round}: no client trained successfully ({reason})")
        # Replies arrive in any order; sum in partition order so the floating-point result is reproducible.
        valid.sort(key=lambda m: int(m.content["metrics"]["partition-id"]))
        current = {k: v.numpy() for k, v in self.current_arrays.items()}
        new, _ = aggregate(current, [self._client_update(m) for m in valid], self.group_of)
        self._update_guidance(valid)
        arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in new.items()})
        self.train_metrics[server_round] = self._train_metrics(valid, failed)
        return arrays, self.train_metrics[server_round]

    def _update_guidance(self, replies: list[Message]) -> None:
        stats = ClassStats.zeros(self.num_classes)
        for m in replies:
            if "class-stats" in m.content:
                cs = m.content["class-stats"]
                stats = stats + ClassStats(cs["sum-pa"].numpy().astype(np.float64),
                                           cs["sum-pb"].numpy().astype(np.float64),
                                           cs["counts"].numpy().astype(np.float64))
        if stats.counts.sum() > 0:
            new = dominance(stats, self.gamma)
            if new is not None:
                self.guidance = new

    @staticmethod
    def _train_metrics(replies: list[Message], failed: int) -> MetricRecord:
        """Sample-weighted means of the clients' loss terms, plus reply counts."""
        totals: dict[str, float] = {}
        weights: dict[str, float] = {}
        for m in replies:
            mr = m.content["metrics"]
            n = float(mr["num-examples"])
            for k, v in mr.items():
                if k.startswith("loss"):
                    totals[k] = totals.get(k, 0.0) + n * float(v)
                    weights[k] = weights.get(k, 0.0) + n
        out = MetricRecord({k: totals[k] / weights[k] for k in totals})
        out["clients-ok"] = len(replies)
        out["clients-failed"] = failed
        out["num-examples"] = int(sum(float(m.content["metrics"]["num-examples"]) for m in replies))
        return out

    # --- evaluation is central ------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None
