"""Admit nodes into a strategy's membership directly (unit tests that skip discovery)."""

from __future__ import annotations

from collections.abc import Mapping

from fedcmi.federated.membership import Member

LARGE = 10**6  # a size cap no test reply reaches


def admit(strategy, nodes: Mapping[int, tuple[int, str]], size: int | Mapping[int, int] = LARGE) -> None:  # noqa: ANN001
    """Make ``nodes`` (node id -> (partition id, kind)) admitted members, each vouched for ``size`` samples."""
    for node, (pid, kind) in nodes.items():
        n = size[node] if isinstance(size, Mapping) else size
        strategy.membership.members[node] = Member(pid, kind, n)
