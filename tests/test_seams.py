"""The seams proven by use: a local method and an aggregation rule each added as one file plus a registry line.

``fedavg-la``: CE(z + log pi_local, y) against a hand computation. ``median``: the coordinate-wise median per
modality group over the clients that hold it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedcmi.config import effective
from fedcmi.data.base import ClientData
from fedcmi.dominance import Guidance
from fedcmi.federated.aggregation import RULES, ClientUpdate, aggregate, rule
from fedcmi.methods.fedavg import CrossEntropy
from fedcmi.methods.registry import METHODS, method_spec
from fedcmi.methods.remedies import Remedies
from fedcmi.methods.remedies.logit_adjustment import TINY_COUNT, adjust, log_label_prior
from fedcmi.modalities import group_of


def logit_adjusted_ce(logits, y, log_prior):
    return torch.nn.functional.cross_entropy(adjust(logits, log_prior), y)


def test_log_label_prior_by_hand():
    y = torch.tensor([0, 0, 0, 1])  # 3 of class 0, 1 of class 1, none of class 2
    total = 4 + TINY_COUNT
    expected = torch.tensor([math.log(3 / total), math.log(1 / total), math.log(TINY_COUNT / total)])
    assert torch.allclose(log_label_prior(y, 3), expected, atol=1e-6)


def test_logit_adjusted_ce_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 1])
    log_prior = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    # sample 0: z + log pi = [2 + ln .5, ln .25, ln .25] -> -log softmax_0; sample 1 likewise for class 1
    adj = (logits + log_prior).tolist()
    labels = y.tolist()
    by_hand = [-(adj[i][labels[i]] - math.log(sum(math.exp(v) for v in adj[i]))) for i in range(2)]
    assert logit_adjusted_ce(logits, y, log_prior).item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)
    assert logit_adjusted_ce(logits, y, torch.zeros(3)).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, y).item())  # a uniform prior is plain CE


def test_fedavg_la_is_a_registered_concat_method_whose_batch_loss_uses_the_clients_prior():
    spec = method_spec("fedavg-la")
    assert "fedavg-la" in METHODS and spec.model == "concat" and not spec.infiltration_path
    cfg = effective({"strategy": "fedavg-la"})
    assert cfg.method.logit_adjust == 1.0
    method = spec.build(cfg)
    assert isinstance(method, CrossEntropy)

    class Head(torch.nn.Module):  # any model(xa, xb) -> logits
        def forward(self, xa, xb):
            return xa

    y = torch.tensor([0, 0, 0, 1])
    remedies = Remedies.from_config(cfg)
    remedies.start(Head(), y, 3)  # what local_update does before the first batch
    method.remedies = remedies
    method.start(Head(), ClientData(torch.zeros(4, 3), None, y), Guidance(), 3)
    logits = torch.randn(4, 3)
    terms = method.batch_loss(Head(), logits, None, y)
    assert terms["loss"].item() == pytest.approx(logit_adjusted_ce(logits, y, log_label_prior(y, 3)).item())


def test_median_rule_per_modality_group_by_hand():
    assert "median" in RULES
    current = {"enc_a.w": np.zeros(3, np.float32), "enc_b.w": np.zeros(2, np.float32),
               "fusion.fc.weight": np.zeros(1, np.float32), "enc_a.bn.num_batches_tracked": np.array(0)}
    updates = [
        ClientUpdate({"enc_a.w": np.array([1, 10, -5], np.float32), "fusion.fc.weight": np.array([1], np.float32),
                      "enc_a.bn.num_batches_tracked": np.array(4)}, 1e9, ("a",)),  # weight cannot buy the median
        ClientUpdate({"enc_a.w": np.array([2, 20, -6], np.float32), "enc_b.w": np.array([7, 7], np.float32),
                      "fusion.fc.weight": np.array([2], np.float32),
                      "enc_a.bn.num_batches_tracked": np.array(6)}, 1, ("a", "b")),
        ClientUpdate({"enc_a.w": np.array([100, 30, -7], np.float32), "fusion.fc.weight": np.array([9], np.float32),
                      "enc_a.bn.num_batches_tracked": np.array(9)}, 1, ("a",)),
        ClientUpdate({"enc_b.w": np.array([1, 3], np.float32), "enc_a.w": np.array([1e6, 1e6, 1e6], np.float32),
                      "fusion.fc.weight": np.array([100], np.float32)}, 1, ("b",)),  # holds no a: its enc_a ignored
    ]
    new, contributors = aggregate(current, updates, group_of, rule("median"))
    assert np.array_equal(new["enc_a.w"], np.array([2, 20, -6], np.float32))
    assert np.array_equal(new["enc_b.w"], np.array([4, 5], np.float32))  # two clients hold b: mean of the middle
    assert np.array_equal(new["fusion.fc.weight"], np.array([5.5], np.float32))  # all four: (2 + 9) / 2
    assert new["enc_a.bn.num_batches_tracked"] == 6 and new["enc_a.bn.num_batches_tracked"].dtype == np.int64
    assert contributors == {"enc_a.w": 3, "enc_b.w": 2, "fusion.fc.weight": 4, "enc_a.bn.num_batches_tracked": 3}
    mean, _ = aggregate(current, updates, group_of, rule("mean"))
    assert mean["enc_a.w"][0] == pytest.approx(1.0, rel=1e-6)  # the weighted mean follows the 1e9 client


def test_aggregation_key_selects_the_rule_the_strategy_uses():
    from fedcmi.models import ModelSpec
    from server.app import build_strategy

    strategy = build_strategy(effective({"aggregation": "median"}).check_run(), ModelSpec(2, (1,), (1,)))
    assert strategy.rule is rule("median")
    with pytest.raises(ValueError, match="aggregation='trimmed'"):
        effective({"aggregation": "trimmed"})
