"""Data sets by name; each is built once per process and cached (Ray actors reuse it across rounds)."""

from __future__ import annotations

from functools import lru_cache

from fedcmi.config import ConfigError, RunConfig
from fedcmi.data.base import MultimodalData
from fedcmi.data.cache import cached
from fedcmi.data.features import check_encoder
from fedcmi.data.prepared import load_prepared
from fedcmi.data.sources import is_prepared


@lru_cache(maxsize=4)
def _cached(name: str, num_classes: int, train_size: int, test_size: int, signal_a: float,
            signal_b: float, noise: float) -> MultimodalData:
    # built once per machine and memory-mapped by every process (driver, Ray actors): fedcmi/data/cache.py
    # fedcmi.data.embedded imports `datasets`, so only a cache miss imports it
    if name == "synthetic-av":
        def build() -> MultimodalData:
            from fedcmi.data.embedded import synthetic_av

            return synthetic_av(num_classes, train_size, test_size, signal_a, signal_b, noise)

        return cached(name, (num_classes, train_size, test_size, signal_a, signal_b, noise), build)
    if name == "digits-cg":
        def build_digits() -> MultimodalData:
            from fedcmi.data.embedded import digits_cg

            return digits_cg()

        return cached(name, (), build_digits)
    raise ValueError(f"unknown data set {name!r}")


def load_data(cfg: RunConfig) -> MultimodalData:
    """The data set a run config names. The data itself is fixed; the run seed drives partitions."""
    if is_prepared(cfg.data.dataset):
        return _real(cfg.data.dataset, cfg.data.data_root, cfg.model.encoder)
    if cfg.data.dataset == "synthetic-av":
        d = cfg.data
        return _cached(d.dataset, d.num_classes, d.train_size, d.test_size, d.signal_a, d.signal_b, d.noise)
    return _cached(cfg.data.dataset, 0, 0, 0, 0.0, 0.0, 0.0)


def _real(name: str, data_root: str, encoder: str) -> MultimodalData:
    """A prepared real data set (``fedcmi prepare``), checked to be the one the config names."""
    data = load_prepared(data_root)
    if data.name != name:
        raise ConfigError(f"data-root={data_root!r} holds {data.name!r}, not dataset={name!r}")
    check_encoder(data.manifest, encoder, f"data-root={data_root!r}")
    return data
