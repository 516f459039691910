"""Who is in the federation and what the server can vouch for about each node. Pure Python, no Flower.

A node describes itself at discovery (partition id, modality kind, sample count). None of that is believed
on its own word; what backs it depends on the mode (``membership=``, docs/robustness.md):

* ``federation``: the server built the federation (simulation, embedded-data demos): it knows every
  partition's kind and size, and a node whose claim differs is refused.
* ``registry``: the operator's node registry (a TOML file, ``node-registry=``) binds each authorised node id
  (Flower's authenticated SuperNode) to a partition id and an exact size or a size cap; any other node, or a
  node claiming another partition, is refused.
* ``claims``: nothing backs a claim. A partition's first claim caps every later one (a claim cannot grow),
  and each round caps every weight at :data:`CLAIM_CAP_MULTIPLE` x the round's lower median claim
  (:func:`capped_weights`).

Two online nodes claiming one partition id are a fault of both: neither is sampled while both are online
(a restarted node's old id lingers on the SuperLink for a while; once one of them leaves, the other is
admitted). A node that is offline when another claims its partition is taken to have rejoined under a new id.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedcmi.errors import ConfigError

MODES = ("auto", "federation", "registry", "claims")
CLAIM_CAP_MULTIPLE = 4.0  # claims mode: no weight above 4 x the round's lower median claim


@dataclass(frozen=True)
class Member:
    """An admitted node: its partition, modality kind and the sample count its weight may not exceed."""

    partition_id: int
    kind: str
    size: int


@dataclass(frozen=True)
class Known:
    """What the server knows of a partition (federation mode) or of a node (registry mode)."""

    partition_id: int
    kind: str | None = None  # None: any kind
    size: int | None = None  # exact size; None: no exact size
    max_size: int | None = None  # cap; None: no cap


def lower_median(values: Sequence[float]) -> float:
    """The median, or of an even count the lower of the two middle values: with half the values
    inflated (attackers), it is still one of the others."""
    ordered = sorted(values)
    return float(ordered[(len(ordered) - 1) // 2])


def capped_weights(claims: Sequence[float], multiple: float = CLAIM_CAP_MULTIPLE) -> list[float]:
    """Claims mode: every weight capped at ``multiple`` x the lower median of the round's claims, so a liar
    among honest clients gets at most that share however large its claim."""
    if not claims:
        return []
    cap = multiple * lower_median(claims)
    return [min(float(c), cap) for c in claims]


def load_registry(path: str | Path) -> dict[int, Known]:
    """The operator's node registry: node id -> what the node holds. One-line ConfigError on any problem.

    Format (TOML)::

        [[node]]
        node-id = 8412336590212361   # printed by `flwr supernode register` / `flwr supernode list`
        partition-id = 0
        examples = 523               # exact size; or max-examples = 600 (a cap)
        kind = "mm"                  # optional: "mm", "a" or "b"
    """
    where = f"node-registry {str(path)!r}"
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{where}: not a readable TOML file ({exc})") from None
    extra = sorted(set(data) - {"node"})
    if extra:
        raise ConfigError(f"{where}: unknown table {extra[0]!r}; write one [[node]] table per node")
    nodes = data.get("node", [])
    if not isinstance(nodes, list) or not nodes:
        raise ConfigError(f"{where}: no [[node]] entries")
    out: dict[int, Known] = {}
    partitions: set[int] = set()
    for i, entry in enumerate(nodes):
        at = f"{where}, node {i + 1}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at}: must be a table")
        unknown = sorted(set(entry) - {"node-id", "partition-id", "examples", "max-examples", "kind"})
        if unknown:
            raise ConfigError(f"{at}: unknown key {unknown[0]!r} (node-id, partition-id, examples, max-examples, kind)")
        node = _int(entry, "node-id", at, required=True)
        pid = _int(entry, "partition-id", at, required=True)
        size, cap = _int(entry, "examples", at), _int(entry, "max-examples", at)
        if size is not None and cap is not None:
            raise ConfigError(f"{at}: give examples (exact) or max-examples (a cap), not both")
        if (size is not None and size < 1) or (cap is not None and cap < 1):
            raise ConfigError(f"{at}: examples and max-examples must be >= 1")
        kind = entry.get("kind")
        if kind is not None and kind not in ("mm", "a", "b"):
            raise ConfigError(f"{at}: kind={kind!r} must be 'mm', 'a' or 'b'")
        if node in out:
            raise ConfigError(f"{at}: node-id {node} is listed twice")
        if pid in partitions:
            raise ConfigError(f"{at}: partition-id {pid} is bound to two nodes")
        partitions.add(pid)
        out[node] = Known(pid, kind, size, cap)
    return out


def _int(entry: Mapping[str, object], key: str, at: str, required: bool = False) -> int | None:
    value = entry.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{at}: {key} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{at}: {key}={value!r} must be a non-negative integer")
    return value


class Membership:
    """The admitted nodes and the rule that admits them (see the module docstring).

    Parameters
    ----------
    mode : str
        ``federation``, ``registry`` or ``claims``.
    known : Mapping[int, Known] | None
        Federation mode: partition id -> its kind and exact size. Registry mode: node id -> its entry.
    """

    def __init__(self, mode: str = "claims", known: Mapping[int, Known] | None = None) -> None:
        if mode not in ("federation", "registry", "claims"):
            raise ValueError(f"membership mode {mode!r}: federation, registry or claims")
        if mode != "claims" and known is None:
            raise ValueError(f"membership mode {mode!r} needs what the server knows")
        self.mode = mode
        self.known = dict(known or {})
        self.members: dict[int, Member] = {}
        self.first_claims: dict[int, int] = {}  # claims mode: partition id -> its first claimed size
        self.disputed: dict[int, set[int]] = {}  # partition id -> the online nodes claiming it

    # --- queries ------------------------------------------------------------------------------------------
    def __contains__(self, node: int) -> bool:
        return node in self.members

    def __len__(self) -> int:
        return len(self.members)

    def get(self, node: int) -> Member | None:
        return self.members.get(node)

    def holder(self, partition_id: int) -> int | None:
        return next((n for n, m in self.members.items() if m.partition_id == partition_id), None)

    # --- changes ------------------------------------------------------------------------------------------
    def forget(self, node: int) -> None:
        self.members.pop(node, None)

    def leave_offline(self, online: Iterable[int]) -> list[tuple[int, Member]]:
        """Drop members the SuperLink no longer lists; returns them. Settles disputes left with one claimant."""
        online = set(online)
        gone = [(n, m) for n, m in self.members.items() if n not in online]
        for n, _ in gone:
            del self.members[n]
        for pid in list(self.disputed):
            self.disputed[pid] &= online
            if len(self.disputed[pid]) <= 1:
                del self.disputed[pid]  # asked again at the next discovery
        return gone

    def admit(self, node: int, partition_id: int, kind: str, claimed: float, online: Iterable[int]) -> str | None:
        """Admit ``node`` with what it claims, or return why not (one line; the node is not sampled)."""
        if self.mode == "registry":
            entry = self.known.get(node)
            if entry is None:
                return "not in the node registry"
            if partition_id != entry.partition_id:
                return f"claims partition {partition_id}; the node registry binds it to partition {entry.partition_id}"
        elif self.mode == "federation":
            entry = self.known.get(partition_id)
            if entry is None:
                return f"claims partition {partition_id}, which this federation does not have"
        else:
            entry = Known(partition_id)
        if entry.kind is not None and kind != entry.kind:
            return f"claims kind {kind!r}; partition {partition_id} holds {entry.kind!r}"
        if not (isinstance(claimed, (int, float)) and math.isfinite(claimed) and claimed >= 1):
            return f"claims {claimed!r} samples"
        if entry.size is not None and claimed != entry.size:
            return f"claims {claimed:g} samples; partition {partition_id} holds {entry.size}"
        if entry.max_size is not None and claimed > entry.max_size:
            return f"claims {claimed:g} samples; the node registry allows at most {entry.max_size}"
        # one partition, one online node: two claimants are both refused until one of them leaves
        online = set(online)
        rivals = {n for n, m in self.members.items() if m.partition_id == partition_id and n != node} & online
        if partition_id in self.disputed or rivals:
            claimants = (self.disputed.get(partition_id, set()) | rivals | {node}) & (online | {node})
            self.disputed[partition_id] = claimants
            for n in rivals:
                del self.members[n]
            others = ", ".join(str(n) for n in sorted(claimants - {node}))
            return f"partition {partition_id} is also claimed by online node(s) {others}: neither is sampled"
        for n in [n for n, m in self.members.items() if m.partition_id == partition_id and n != node]:
            del self.members[n]  # offline: the same partition rejoined under a new node id
        size = int(claimed)
        if self.mode == "claims":
            size = min(size, self.first_claims.setdefault(partition_id, size))  # a claim never grows
        self.members[node] = Member(partition_id, kind, size)
        return None
