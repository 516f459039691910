"""Per-sample missing modalities, missing labels and label noise (fedcmi/data/corruption.py): exact counts under a
seed, determinism, no sample loses both, test data untouched, every method trains on mixed presence, an absent
modality gets no gradient, statistics use present samples only, bench axes, and one run through Flower."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clients.node_data import node_data
from fedcmi.bench.plan import make_plan
from fedcmi.config import ConfigError, RunConfig, effective
from fedcmi.data import load_data
from fedcmi.data.base import UNLABELED, ClientData
from fedcmi.data.corruption import corrupt, plan
from fedcmi.dominance import Guidance
from fedcmi.federated.calibration import feature_statistics
from fedcmi.federated.client_step import client_step
from fedcmi.methods.base import TrainSettings, batches, local_update
from fedcmi.methods.fedavg import CrossEntropy
from fedcmi.methods.fedcmi import FedCMI
from fedcmi.methods.registry import METHOD_NAMES, method_spec
from fedcmi.methods.statistics import class_statistics
from fedcmi.models import ModelSpec, model_for

ROOT = Path(__file__).parents[1]
RATES = {"missing-a-rate": 0.3, "missing-b-rate": 0.2, "missing-label-rate": 0.1, "label-noise-rate": 0.25}
SMALL = {"num-clients": 4, "train-size": 400, "test-size": 100, "feature-dim": 16, "local-epochs": 1}


def _cfg(**keys: object) -> RunConfig:
    return effective({**SMALL, **keys})


def _client(n: int = 40, classes: int = 4, seed: int = 0) -> ClientData:
    gen = torch.Generator().manual_seed(seed)
    return ClientData(torch.randn(n, 1, 8, 8, generator=gen), torch.randn(n, 3, 8, 8, generator=gen),
                      torch.arange(n) % classes)


@pytest.mark.parametrize("n", [1, 7, 101, 640])
def test_exact_counts_disjoint_and_never_both(n):
    cfg = _cfg(**RATES)
    c = plan(n, "mm", cfg, partition_id=3)
    n_a = round(0.3 * n)
    n_u = max(0, min(round(0.1 * n), n - 1))
    assert len(c.missing_a) == n_a
    assert len(c.missing_b) == min(round(0.2 * n), n - n_a)
    assert len(c.unlabeled) == n_u and len(c.noisy) == min(round(0.25 * n), n - n_u)
    assert not set(c.missing_a) & set(c.missing_b)  # no sample loses both
    assert not set(c.unlabeled) & set(c.noisy)
    for idx in c.counts():
        assert len(set(getattr(c, idx))) == len(getattr(c, idx))


def test_unimodal_clients_keep_their_modality_but_lose_labels():
    c = plan(100, "a", _cfg(**RATES), partition_id=0)
    assert len(c.missing_a) == len(c.missing_b) == 0
    assert (len(c.unlabeled), len(c.noisy)) == (10, 25)


def test_seeded_by_run_seed_and_partition():
    cfg = _cfg(**RATES)
    first, again = plan(200, "mm", cfg, 1), plan(200, "mm", cfg, 1)
    for key in first.counts():
        assert np.array_equal(getattr(first, key), getattr(again, key))
    assert not np.array_equal(first.missing_a, plan(200, "mm", cfg, 2).missing_a)
    assert not np.array_equal(first.missing_a, plan(200, "mm", _cfg(**RATES, seed=1), 1).missing_a)
    # a higher rate keeps the samples of a lower one (the same permutation's prefix)
    low = plan(200, "mm", _cfg(**{**RATES, "missing-a-rate": 0.1}), 1)
    assert set(low.missing_a) <= set(first.missing_a)


def test_corrupt_marks_absent_and_changes_labels_exactly_at_the_chosen_samples():
    data, cfg = _client(), _cfg(**RATES)
    out = corrupt(data, cfg, partition_id=5, num_classes=4)
    c = plan(len(data), "mm", cfg, 5)
    assert torch.equal(~out.has_a, torch.isin(torch.arange(40), torch.from_numpy(c.missing_a)))
    assert torch.equal(~out.has_b, torch.isin(torch.arange(40), torch.from_numpy(c.missing_b)))
    assert bool((out.has_a | out.has_b).all())
    assert float(out.a[~out.has_a].abs().sum()) == 0.0  # the absent rows hold nothing of the sample
    assert torch.equal(out.a[out.has_a], data.a[out.has_a])
    unlabeled = torch.from_numpy(c.unlabeled)
    assert bool((out.y[unlabeled] == UNLABELED).all())
    changed = torch.nonzero((out.y != data.y) & (out.y != UNLABELED)).flatten()
    assert changed.tolist() == c.noisy.tolist()  # noisy labels differ from the true ones exactly there
    assert bool(((out.y[changed] >= 0) & (out.y[changed] < 4)).all())
    assert data.a.abs().sum() > 0 and torch.equal(data.y, torch.arange(40) % 4)  # the input is not modified
    pair = corrupt(data, _cfg(**RATES, **{"label-noise-model": "pair"}), 5, 4)
    assert torch.equal(pair.y[changed], (data.y[changed] + 1) % 4)


def test_all_rates_zero_is_the_data_itself():
    data = _client()
    assert corrupt(data, _cfg(), 0, 4) is data


def test_config_rules_and_record():
    with pytest.raises(ConfigError, match="missing-a-rate=0.6 \\+ missing-b-rate=0.5"):
        _cfg(**{"missing-a-rate": 0.6, "missing-b-rate": 0.5})
    with pytest.raises(ConfigError, match="missing-label-rate"):
        _cfg(**{"missing-label-rate": 1.0})
    with pytest.raises(ConfigError, match="label-noise-model"):
        _cfg(**{"label-noise-model": "asymmetric"})
    record = _cfg(**RATES).to_dict()
    assert {k: record[k] for k in RATES} == RATES and record["label-noise-model"] == "symmetric"
    assert set(RATES) <= set(_cfg().client_dict())  # they travel to clients (a SuperNode applies them)


def test_node_applies_it_and_test_split_is_untouched():
    cfg = _cfg(**RATES)
    data = load_data(cfg)
    test_before = [a.copy() for a in data.arrays("test")]
    train_before = [a.copy() for a in data.arrays("train")]
    seen = {"mm": 0, "uni": 0}
    for pid in range(cfg.federation.num_clients):
        node = node_data({"partition-id": pid, "num-partitions": cfg.federation.num_clients}, cfg)
        held = node.client_data(cfg)
        n = node.num_examples
        if node.kind == "mm":
            seen["mm"] += 1
            assert int((~held.has_a).sum()) == round(0.3 * n)
            assert int((~held.has_b).sum()) == min(round(0.2 * n), n - round(0.3 * n))
        else:
            seen["uni"] += 1
            assert not held.partial
        assert int((held.y == UNLABELED).sum()) == round(0.1 * n)
        assert torch.equal(node.client_data(cfg).y, held.y)  # deterministic
    assert seen["mm"] and seen["uni"]
    for before, after in zip(test_before + train_before, [*data.arrays("test"), *data.arrays("train")], strict=True):
        assert np.array_equal(before, after)


def _mixed_client() -> ClientData:
    data = _client(n=48, classes=4, seed=1)
    return corrupt(data, _cfg(**RATES), partition_id=2, num_classes=4)


def _model(cfg: RunConfig, decomposed: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return model_for(cfg.replace(encoder="cnn").model, ModelSpec(4, (1, 8, 8), (3, 8, 8)), decomposed)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_trains_a_client_with_mixed_presence(name):
    cfg = _cfg(strategy=name, **RATES, **{"batch-size": 8, "ccvr-steps": 1, "ccvr-moments": "received"})
    spec = method_spec(name)
    model = _model(cfg, spec.decomposed)
    data = _mixed_client()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = client_step(model, state, Guidance(True, "a", np.ones(4)), data, cfg, num_classes=4, server_round=2,
                         partition_id=2)
    labeled = data.labeled()
    held = labeled.present("a") & (labeled.present("a") if spec.modalities == ("a",) else labeled.present("b"))
    expected = {("a", "b"): len(labeled), ("a",): int(labeled.present("a").sum()),
                ("b",): int(labeled.present("b").sum())}[spec.modalities]
    assert result.num_examples == expected and expected < len(data)
    assert result.losses and all(np.isfinite(v) for v in result.losses.values())
    complete = int((labeled.present("a") & labeled.present("b")).sum())
    assert result.stats.counts.sum() == complete  # dominance statistics: labeled samples holding both
    assert result.features is not None and result.features.counts.sum() == complete  # CCVR too
    assert held.any()


def test_a_batch_without_b_gives_b_no_gradient_fedcmi_and_concat():
    data = _mixed_client().labeled()
    only_a = next(idx for idx, held in batches(data, 64, torch.Generator().manual_seed(0)) if held == ("a",))
    assert bool((~data.has_b[only_a]).all()) and len(only_a) >= 2
    for decomposed, method in ((True, FedCMI.from_config(_cfg())), (False, CrossEntropy())):
        model = _model(_cfg(), decomposed).train()
        method.batch_loss(model, data.a[only_a], None, data.y[only_a])["loss"].backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        assert all(g is None for n, g in grads.items() if n.split(".")[0].endswith("_b")), "b got a gradient"
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("enc_a"))
    # the concat baseline zero-fills the missing slot, as for a unimodal client
    model = _model(_cfg(), False).eval()
    xa = data.a[only_a]
    ha = model.enc_a(xa)
    assert torch.allclose(model(xa, None), model.fusion(ha, torch.zeros_like(ha)))


@pytest.mark.parametrize("name", ["fedcmi", "fedavg", "pmr", "ogm-ge"])
def test_absent_rows_have_no_influence_on_training(name):
    """Whatever sits in the storage of an absent modality, local training ends in the same weights."""
    cfg = _cfg(strategy=name, **{"batch-size": 8})
    spec = method_spec(name)
    data = _mixed_client()
    absent_a, absent_b = ~data.has_a[:, None, None, None], ~data.has_b[:, None, None, None]
    garbage = ClientData(torch.where(absent_a, torch.full_like(data.a, 7.0), data.a),
                         torch.where(absent_b, torch.randn_like(data.b) * 50, data.b), data.y,
                         data.has_a, data.has_b)
    finals = []
    for d in (data, garbage):
        model = _model(cfg, spec.decomposed)
        local_update(model, d, spec.build(cfg), Guidance(True, "a", np.ones(4)), TrainSettings.of(cfg, spec),
                     num_classes=4, generator=torch.Generator().manual_seed(3))
        finals.append(model.state_dict())
    for k in finals[0]:
        assert torch.equal(finals[0][k], finals[1][k]), k


def test_statistics_count_only_labeled_samples_holding_both():
    data = _mixed_client()
    model = _model(_cfg(), True)
    keep = (data.y != UNLABELED) & data.has_a & data.has_b
    stats = class_statistics(model, data, 4)
    assert np.array_equal(stats.counts, np.bincount(data.y[keep].numpy(), minlength=4).astype(float))
    direct = class_statistics(model, ClientData(data.a[keep], data.b[keep], data.y[keep]), 4)
    assert np.allclose(stats.sum_pa, direct.sum_pa) and np.allclose(stats.sum_pb, direct.sum_pb)
    feats = feature_statistics(model, data, 4)
    assert feats.counts.sum() == int(keep.sum())


def test_bench_axes(tmp_path):
    p = make_plan("quick", tmp_path / "b", {}, "fedavg,fedcmi", 1, "0.5", "0.5:0.5", "0,0.3", "0.2")
    cells = p.cells()
    assert len(cells) == 2 * 2 * 1
    cfg = p.cell_config(next(c for c in cells if c.missing == 0.3))
    assert (cfg.data.missing_a_rate, cfg.data.missing_b_rate, cfg.data.label_noise_rate) == (0.3, 0.3, 0.2)
    assert "__missing-0.3__noise-0.2__" in next(c.id for c in cells if c.missing == 0.3)
    plain = make_plan("quick", tmp_path / "c", {"missing-a-rate": 0.1}, "fedavg", 1, "0.5", "0.5:0.5")
    assert plain.cells()[0].id == "fedavg__alpha-0.5__mix-0.5-0.5__seed-0"  # no axis: ids as before
    assert plain.cell_config(plain.cells()[0]).data.missing_a_rate == 0.1
    with pytest.raises(ConfigError, match="missing-a-rate="):
        make_plan("quick", tmp_path / "d", {"missing-a-rate": 0.1}, "fedavg", 1, "0.5", "0.5:0.5", "0,0.3")
    with pytest.raises(ConfigError, match="--missing-rates '0.7'"):
        make_plan("quick", tmp_path / "e", {}, "fedavg", 1, "0.5", "0.5:0.5", "0.7")


@pytest.mark.slow
def test_simulation_through_flower_with_missing_and_noise(tmp_path):
    out = tmp_path / "run"
    keys = [f"{k}={v}" for k, v in RATES.items()]
    proc = subprocess.run([sys.executable, "-m", "fedcmi.cli", "simulate", "--out", str(out), "num-clients=4",
                           "clients-per-round=2", "num-server-rounds=2", "train-size=400", "test-size=200",
                           "local-epochs=1", "feature-dim=16", *keys], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in RATES} == RATES
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[-1]["acc_mm"] > 0
