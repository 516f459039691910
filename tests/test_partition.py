"""Partition invariants: coverage, label skew vs alpha, modality kinds, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from fedcmi.config import ConfigError, RunConfig
from fedcmi.data import load_data
from fedcmi.data.partition import assign_modalities, build_federation, client_data


def _label_counts(specs, y, k):
    return np.stack([np.bincount(y[s.indices], minlength=k) for s in specs])


def test_every_sample_in_exactly_one_client():
    cfg = RunConfig(train_size=1500, test_size=100)
    data = load_data(cfg)
    specs = build_federation(data, cfg)
    all_idx = np.concatenate([s.indices for s in specs])
    assert len(all_idx) == len(data.train)
    assert np.array_equal(np.sort(all_idx), np.arange(len(data.train)))
    assert min(len(s.indices) for s in specs) >= cfg.federation.min_partition_size


def _skew(alpha: float) -> float:
    """Mean over clients of the share of their largest class (1/K when balanced, 1 when one class)."""
    cfg = RunConfig(train_size=3000, dirichlet_alpha=alpha, min_partition_size=5)
    data = load_data(cfg)
    counts = _label_counts(build_federation(data, cfg), data.arrays("train")[2], data.num_classes)
    return float(np.mean(counts.max(axis=1) / counts.sum(axis=1)))


def test_label_skew_grows_as_alpha_shrinks():
    s01, s1, s100 = _skew(0.1), _skew(1.0), _skew(100.0)
    assert s01 > s1 + 0.1 > s100 + 0.1
    assert s100 < 0.35  # near 1/6 when alpha is large


def test_iid_partitioner_is_balanced():
    cfg = RunConfig(train_size=1200, partitioner="iid")
    specs = build_federation(load_data(cfg), cfg)
    assert {len(s.indices) for s in specs} == {60}


def _iid_shards(seed: int, table) -> list[np.ndarray]:
    from types import SimpleNamespace

    from fedcmi.data.partition import partition_indices

    return partition_indices(SimpleNamespace(train=table), RunConfig(num_clients=10, partitioner="iid", seed=seed))


def test_iid_shards_follow_the_seed_and_spread_a_sorted_split():
    """IID is shuffled by the run seed: one seed gives the same shards twice, another seed other shards, and a
    split stored sorted by class and by actor (as a prepared CREMA-D split is) still gives every client a spread
    of both instead of a contiguous block."""
    from datasets import Dataset

    n, classes, actors = 600, 6, 12
    labels = np.repeat(np.arange(classes), n // classes)  # sorted by class
    actor = np.repeat(np.arange(actors), n // actors)  # and by actor: rows 0-49 are actor 0, ...
    table = Dataset.from_dict({"idx": np.arange(n), "label": labels})
    one, again, other = _iid_shards(0, table), _iid_shards(0, table), _iid_shards(1, table)
    assert all(np.array_equal(a, b) for a, b in zip(one, again, strict=True))
    assert not any(np.array_equal(a, b) for a, b in zip(one, other, strict=True))
    assert np.array_equal(np.sort(np.concatenate(one)), np.arange(n))
    for shard in one:
        assert len(shard) == n // 10
        assert len(np.unique(labels[shard])) == classes  # a contiguous shard of 60 would hold 1-2 classes
        assert len(np.unique(actor[shard])) >= actors // 2  # ... and 2 actors


@pytest.mark.parametrize("n, ratio, split, expect", [
    (20, 0.5, 0.5, {"mm": 10, "a": 5, "b": 5}),
    (20, 1.0, 0.5, {"mm": 20, "a": 0, "b": 0}),
    (20, 0.5, 1.0, {"mm": 10, "a": 10, "b": 0}),
    (10, 0.3, 0.5, {"mm": 3, "a": 3, "b": 4}),
    (7, 0.0, 0.0, {"mm": 0, "a": 0, "b": 7}),
])
def test_modality_ratios(n, ratio, split, expect):
    kinds = assign_modalities(n, ratio, split, seed=3)
    assert {k: kinds.count(k) for k in ("mm", "a", "b")} == expect


def test_same_seed_same_partition_other_seed_differs():
    cfg = RunConfig(train_size=800)
    data = load_data(cfg)
    one, two = build_federation(data, cfg), build_federation(data, cfg)
    assert [s.kind for s in one] == [s.kind for s in two]
    assert all(np.array_equal(a.indices, b.indices) for a, b in zip(one, two, strict=True))
    other = build_federation(data, cfg.replace(seed=1))
    assert [s.kind for s in other] != [s.kind for s in one] or not all(
        np.array_equal(a.indices, b.indices) for a, b in zip(one, other, strict=True))


def test_unimodal_client_never_gets_other_modality():
    cfg = RunConfig(train_size=800)
    data = load_data(cfg)
    for spec in build_federation(data, cfg):
        cd = client_data(data, spec)
        assert cd.kind == spec.kind
        assert (cd.a is None) == (spec.kind == "b")
        assert (cd.b is None) == (spec.kind == "a")
        assert len(cd) == len(spec.indices)


def test_impossible_min_partition_size_is_a_config_error():
    cfg = RunConfig(train_size=100, test_size=50, num_clients=20, min_partition_size=50)
    with pytest.raises(ConfigError, match="min-partition-size"):
        build_federation(load_data(cfg), cfg)
