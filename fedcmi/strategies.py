"""Named strategies: each is a server path (shared by all) plus a model and a local objective.

``strategy=NAME`` picks one. Every strategy uses the same data, partitions, sampling, per-modality
aggregation and evaluation, so differences between them come from the method alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StrategyPreset:
    """How a strategy differs from plain FedCMI / FedAvg.

    ``decomposed``: the two-projector FedCMI model (else the concat baseline). ``objective``: fields of
    :class:`fedcmi.training.Objective` fixed by the strategy (the rest come from the run config).
    ``modalities``: the modalities the strategy trains and evaluates (unimodal baselines use one).
    """

    name: str
    decomposed: bool
    summary: str
    objective: dict[str, Any] = field(default_factory=dict)
    modalities: tuple[str, ...] = ("a", "b")


_PRESETS = [
    StrategyPreset("fedavg", False, "FedAvg: concat model, cross-entropy, missing modality zero-filled",
                   {"proximal_mu": 0.0}),
    StrategyPreset("fedprox", False, "FedProx: FedAvg plus the proximal term (proximal-mu)"),
    StrategyPreset("unimodal-a", False, "first modality only, trained on the clients that hold it",
                   {"proximal_mu": 0.0}, modalities=("a",)),
    StrategyPreset("unimodal-b", False, "second modality only, trained on the clients that hold it",
                   {"proximal_mu": 0.0}, modalities=("b",)),
    StrategyPreset("fedcmi", True, "FedCMI: two projectors, self CE, infiltration distillation, class-wise "
                   "temperatures, proximal term, server-side dominance", {"lambda_cross": 0.0}),
    StrategyPreset("fedcmi-plus", True, "FedCMI + multimodal clients also train the fusion head on the "
                   "unimodal (self, infiltration) pairs, so infiltration features are accepted in the "
                   "missing slot (lambda-cross)"),
    StrategyPreset("fedcmi-noinf", True, "ablation: no infiltration distillation",
                   {"lambda_cmi": 0.0, "lambda_cross": 0.0}),
    StrategyPreset("fedcmi-single", True, "ablation: single projector (distil into the weak self projector; "
                   "unimodal clients zero-fill)", {"single_projector": True, "lambda_cross": 0.0}),
    StrategyPreset("fedcmi-fixedtemp", True, "ablation: fixed temperature instead of class-wise",
                   {"class_wise_temperature": False, "lambda_cross": 0.0}),
    StrategyPreset("fedcmi-noprox", True, "ablation: no proximal term", {"proximal_mu": 0.0, "lambda_cross": 0.0}),
    StrategyPreset("fedcmi-local", True, "ablation: the authors' per-batch local dominance instead of the "
                   "server's global one", {"dominance": "local", "lambda_cross": 0.0}),
    StrategyPreset("ogm-ge", False, "OGM-GE on multimodal clients: dominant encoder's gradients scaled by "
                   "1 - tanh(alpha * ratio) plus Gaussian noise (FedAvg otherwise)",
                   {"local_method": "ogm-ge", "proximal_mu": 0.0}),
    StrategyPreset("pmr", False, "PMR on multimodal clients: prototype cross-entropy for the weak modality "
                   "(FedAvg otherwise)", {"local_method": "pmr", "proximal_mu": 0.0}),
]

PRESETS: dict[str, StrategyPreset] = {p.name: p for p in _PRESETS}
STRATEGY_NAMES: tuple[str, ...] = tuple(PRESETS)


def preset(name: str) -> StrategyPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown strategy {name!r}; one of {', '.join(STRATEGY_NAMES)}")
    return PRESETS[name]


def display_name(name: str, modality_names: tuple[str, str]) -> str:
    """``unimodal-a`` -> ``unimodal-audio`` for output; other names unchanged."""
    if name == "unimodal-a":
        return f"unimodal-{modality_names[0]}"
    if name == "unimodal-b":
        return f"unimodal-{modality_names[1]}"
    return name
