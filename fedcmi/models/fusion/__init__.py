"""Fusion heads over two ``dim``-wide slots, by name (``fusion=NAME``): one file each plus a line here."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def _concat(dim: int, num_classes: int, **_: int) -> nn.Module:
    from fedcmi.models.fusion.concat import ConcatFusion

    return ConcatFusion(dim, num_classes)


def _sgmft(dim: int, num_classes: int, **options: int) -> nn.Module:
    from fedcmi.models.fusion.sgmft import SGMFTFusion

    return SGMFTFusion(dim, num_classes, **options)


FUSIONS: dict[str, Callable[..., nn.Module]] = {"concat": _concat, "sgmft": _sgmft}


def build_fusion(kind: str, dim: int, num_classes: int, **options: int) -> nn.Module:
    """The fusion head ``kind`` (``concat`` or ``sgmft``); ``options`` are SG-MFT's tokens/heads/layers."""
    if kind not in FUSIONS:
        raise ValueError(f"unknown fusion {kind!r}; one of {', '.join(FUSIONS)}")
    return FUSIONS[kind](dim, num_classes, **options)
