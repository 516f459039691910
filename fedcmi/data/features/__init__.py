"""Frozen-encoder features: ``extract.py`` (``fedcmi features``, imports the Arrow stack) and
``encoders.py``; this package root holds only what every process needs to tell a features directory apart,
so a client actor that loads one does not import ``datasets`` for it."""

from __future__ import annotations

from typing import Any

from fedcmi.errors import ConfigError

FEATURES = "features"  # the manifest entry that marks a features directory


def is_features(manifest: dict[str, Any]) -> bool:
    return FEATURES in manifest


def check_encoder(manifest: dict[str, Any], encoder: str, where: str) -> None:
    """Token embeddings need ``encoder=features`` and ``encoder=features`` needs token embeddings."""
    if is_features(manifest) and encoder != "features":
        raise ConfigError(f"{where} holds extracted features (fedcmi features); train on it with encoder=features")
    if not is_features(manifest) and encoder == "features":
        raise ConfigError(f"encoder=features: {where} holds prepared inputs, not features; run `fedcmi features "
                          f"{where}` and give its output directory")
