"""Aggregation rules by name (``aggregation=NAME``): one file each plus one line in ``RULES``."""

from __future__ import annotations

from fedcmi.federated.aggregation.base import ClientUpdate, Rule, aggregate
from fedcmi.federated.aggregation.clipped_mean import clipped_mean
from fedcmi.federated.aggregation.mean import weighted_mean
from fedcmi.federated.aggregation.median import coordinate_median
from fedcmi.federated.aggregation.trimmed_mean import trimmed_mean

RULES: dict[str, Rule] = {
    "mean": weighted_mean,
    "median": coordinate_median,
    "trimmed-mean": trimmed_mean,
    "clipped-mean": clipped_mean,
}
RULE_NAMES: tuple[str, ...] = tuple(RULES)


def rule(name: str) -> Rule:
    if name not in RULES:
        raise ValueError(f"unknown aggregation rule {name!r}; one of {', '.join(RULE_NAMES)}")
    return RULES[name]


__all__ = ["RULES", "RULE_NAMES", "ClientUpdate", "Rule", "aggregate", "rule"]
