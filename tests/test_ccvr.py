"""CCVR: pooled class-conditional feature moments and the server-side calibration of the fusion head.

On toy Gaussians the calibrated head recovers the Bayes classifier's decisions, even when it starts out
biased toward one class (what a head takes on from the last round's participants under label skew).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.members import admit

from fedcmi.data.base import ClientData
from fedcmi.federated.calibration import FeatureStats, calibrated, feature_statistics


class Slots(torch.nn.Module):
    """A model whose head inputs are its inputs (so the features are the toy Gaussians themselves)."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        from fedcmi.models.fusion.concat import ConcatFusion

        self.fusion = ConcatFusion(dim, classes)

    def slots(self, xa, xb):
        return xa, xb


def _gaussians(n_per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    means = np.array([[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 2.0]])
    x = np.concatenate([rng.normal(m, 1.0, size=(n_per_class, 4)) for m in means])
    y = np.repeat(np.arange(3), n_per_class)
    return x.astype(np.float32), y, means


def test_moments_pool_exactly_across_clients():
    x, y, _ = _gaussians(50, 0)
    model = Slots(2, 3)
    t = torch.from_numpy(x)
    parts = [ClientData(t[i::3, :2], t[i::3, 2:], torch.from_numpy(y[i::3])) for i in range(3)]
    pooled = sum((feature_statistics(model, p, 3) for p in parts), FeatureStats.zeros(3, 4))
    present, means, cov = pooled.moments()
    assert present.tolist() == [0, 1, 2]
    for c in range(3):
        xc = x[y == c].astype(np.float64)
        assert np.allclose(means[c], xc.mean(0)) and np.allclose(cov[c], np.cov(xc.T, bias=True))
    assert pooled.check(3) is None and FeatureStats(-pooled.counts, pooled.sums, pooled.outer).check(3)


def test_calibrated_head_recovers_the_bayes_decisions_from_a_biased_start():
    x, y, means = _gaussians(200, 1)
    model = Slots(2, 3)
    with torch.no_grad():  # a head that predicts class 2 for everything
        model.fusion.fc.weight.zero_()
        model.fusion.fc.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))
    stats = feature_statistics(model, ClientData(torch.from_numpy(x[:, :2]), torch.from_numpy(x[:, 2:]),
                                                 torch.from_numpy(y)), 3)
    test_x, test_y, _ = _gaussians(300, 2)
    bayes = np.argmin(((test_x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)  # equal priors, identity cov
    t = torch.from_numpy(test_x)

    def decisions(m):
        with torch.no_grad():
            return m.fusion(t[:, :2], t[:, 2:]).argmax(1).numpy()

    assert (decisions(model) == 2).all()
    fixed = calibrated(model, stats, samples=200, steps=300, lr=0.1, seed=0)
    agree = (decisions(fixed) == bayes).mean()
    assert agree > 0.95, agree
    assert (decisions(model) == 2).all()  # the original model is left as it was
    again = calibrated(model, stats, samples=200, steps=300, lr=0.1, seed=0)
    assert torch.equal(again.fusion.fc.weight, fixed.fusion.fc.weight)  # seeded: reproducible


@pytest.mark.parametrize("name", ["fedavg", "fedcmi"])
def test_ccvr_round_trip_through_the_client_step_and_the_strategy(name):
    from flwr.app import ArrayRecord, Message, MessageType, RecordDict

    from fedcmi import protocol
    from fedcmi.config import effective
    from fedcmi.data import load_data
    from fedcmi.data.partition import client_data, federation
    from fedcmi.dominance import Guidance
    from fedcmi.federated.client_step import client_step
    from fedcmi.methods.registry import method_spec
    from fedcmi.models import ModelSpec, model_for
    from server.app import build_strategy

    cfg = effective({"strategy": name, "num-clients": 4, "clients-per-round": 4, "train-size": 400,
                     "test-size": 100, "ccvr-steps": 5, "local-epochs": 1, "multimodal-ratio": 1.0}).check_run()
    data = load_data(cfg)
    spec = ModelSpec.of(data)
    torch.manual_seed(0)
    model = model_for(cfg, spec, method_spec(name).decomposed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    strategy = build_strategy(cfg, spec)
    admit(strategy, {10 + c.partition_id: (c.partition_id, c.kind) for c in federation(cfg)})
    strategy.current_arrays = ArrayRecord(model.state_dict())
    replies = []
    for client in federation(cfg):
        res = client_step(model, state, Guidance(), client_data(data, client), cfg, num_classes=spec.num_classes,
                          server_round=1, partition_id=client.partition_id)
        assert res.features is not None and res.features.counts.sum() == len(client.indices)
        request = Message(RecordDict(), dst_node_id=10 + client.partition_id, message_type=MessageType.TRAIN)
        content = protocol.reply_content(res.arrays, res.num_examples, res.losses, res.stats,
                                         client.partition_id, client.kind, res.features)
        replies.append(Message(content, reply_to=request))
    strategy.aggregate_train(1, replies)
    assert strategy.feature_stats is not None and strategy.feature_stats.counts.sum() == 400
