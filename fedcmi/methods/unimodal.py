"""Unimodal baselines: one modality only, trained (and evaluated) on the clients that hold it."""

from __future__ import annotations

from fedcmi.methods.base import MethodSpec
from fedcmi.methods.fedavg import CrossEntropy

SPEC_A = MethodSpec("unimodal-a", "first modality only, trained on the clients that hold it",
                    build=lambda cfg: CrossEntropy(), modalities=("a",), uses=("proximal-mu",),
                    defaults={"proximal-mu": 0.0})
SPEC_B = MethodSpec("unimodal-b", "second modality only, trained on the clients that hold it",
                    build=lambda cfg: CrossEntropy(), modalities=("b",), uses=("proximal-mu",),
                    defaults={"proximal-mu": 0.0})


def display_name(name: str, modality_names: tuple[str, str]) -> str:
    """``unimodal-a`` -> ``unimodal-audio`` for output; other names unchanged."""
    if name == SPEC_A.name:
        return f"unimodal-{modality_names[0]}"
    if name == SPEC_B.name:
        return f"unimodal-{modality_names[1]}"
    return name
