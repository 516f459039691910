"""What the server did in one round, typed: whom it asked, what came back, what it kept and why not.

The strategy fills a :class:`RoundReport` per round; the ServerApp writes it into the metrics row (its reply
counts are the metrics columns, ``fedcmi.metrics``) and replies.csv, and stops a run on its faults.
:func:`short_reason` turns an error reply into the one line a fault carries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fedcmi.metrics import CAPPED, CLIENTS_FAILED, CLIENTS_OK, CLIENTS_REJECTED, CLIENTS_TIMEOUT, FAULTS, SKIPPED

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


@dataclass
class RoundReport:
    """One round of the server: the sampled nodes and their partitions (same order), then how the replies went.

    ``ok`` counts accepted replies (``capped`` of them with a weight the server capped), ``failed`` error
    replies, ``rejected`` replies the checks or the screen refused, ``timeout`` sampled nodes that did not
    answer in time; ``skipped``: too few good replies, the global model was kept. ``faults``: one line per
    problem, discovery refusals first. ``screened``: one replies.csv row per screened reply.
    """

    nodes: list[int] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    rejected: int = 0
    timeout: int = 0
    capped: int = 0
    skipped: bool = False
    shortfall: str | None = None  # why fewer nodes were sampled than clients-per-round (the first fault), if so
    faults: list[str] = field(default_factory=list)
    screened: list[dict[str, Any]] = field(default_factory=list)

    def sampled_as(self, node: int) -> str | None:
        """How faults name a sampled node (``partition 3``); None for a node not sampled this round."""
        partition = dict(zip(self.nodes, self.partitions, strict=False)).get(node)
        return None if partition is None else f"partition {partition}"

    def columns(self) -> dict[str, Any]:
        """The metrics row's reply columns (``fedcmi.metrics.round_row`` reads them)."""
        return {CLIENTS_OK: self.ok, CLIENTS_FAILED: self.failed, CLIENTS_REJECTED: self.rejected,
                CLIENTS_TIMEOUT: self.timeout, CAPPED: self.capped, SKIPPED: self.skipped, FAULTS: self.faults}
