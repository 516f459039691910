"""The unimodal baselines (unimodal-a, unimodal-b: FedAvg's objective on one modality; their specs are in
``registry.py``) and how their names read in output."""

from __future__ import annotations


def display_name(name: str, modality_names: tuple[str, str]) -> str:
    """``unimodal-a`` -> ``unimodal-audio`` for output; other names unchanged."""
    if name == "unimodal-a":
        return f"unimodal-{modality_names[0]}"
    if name == "unimodal-b":
        return f"unimodal-{modality_names[1]}"
    return name
