"""Label-skew remedies (restricted softmax, not-true distillation, logit adjustment in every CE term), FedCMI's
own fixes (zero-filled slot on unimodal clients, normalised loss, smoothed dominance, clipped tau) and the
authors' self-balancing partition: each against a hand computation or an invariant."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedcmi.config import effective
from fedcmi.data.embedded import synthetic_av
from fedcmi.data.partition import partition_indices
from fedcmi.dominance import ClassStats, dominance
from fedcmi.methods.fedavg import CrossEntropy
from fedcmi.methods.fedcmi import FedCMI
from fedcmi.methods.remedies import Remedies
from fedcmi.methods.remedies.not_true_distillation import not_true_logits, ntd_loss
from fedcmi.methods.remedies.restricted_softmax import RestrictedSoftmax, present_classes, restrict
from fedcmi.models import ModelSpec, build_model
from server.app import build_strategy


def test_restricted_softmax_scales_only_missing_classes_by_hand():
    y = torch.tensor([0, 2, 2])
    present = present_classes(y, 4)
    assert present.tolist() == [True, False, True, False]
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert restrict(logits, present, 0.5).tolist() == [[1.0, 1.0, 3.0, 2.0]]
    method = CrossEntropy()
    method.remedies = Remedies((RestrictedSoftmax(0.5),))
    method.remedies.start(None, y, 4)
    z = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.0, -1.0]])
    labels = torch.tensor([0, 2])
    by_hand = F.cross_entropy(torch.tensor([[1.0, 1.0, 3.0, 2.0], [0.0, 0.5, 0.0, -0.5]]), labels)
    assert method.ce(z, labels).item() == pytest.approx(by_hand.item())


def test_not_true_distillation_by_hand():
    student = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[5.0, 1.0, 1.0], [1.0, 3.0, 1.0]])
    y = torch.tensor([0, 1])
    assert not_true_logits(student, y).tolist() == [[0.0, 1.0], [0.0, 0.0]]
    # sample 0: teacher not-true (1, 1) -> q=(.5,.5); student (0, 1) -> p=(1/(1+e), e/(1+e))
    p0 = [1 / (1 + math.e), math.e / (1 + math.e)]
    kl0 = sum(0.5 * math.log(0.5 / p) for p in p0)
    # sample 1: teacher not-true (1, 1) -> (.5, .5); student (0, 0) -> (.5, .5): KL 0
    assert ntd_loss(student, teacher, y).item() == pytest.approx(kl0 / 2, rel=1e-5)
    assert ntd_loss(teacher, teacher, y).item() == pytest.approx(0.0, abs=1e-7)


def _client(kind="mm", n=24, k=4, seed=0):
    from fedcmi.data.base import ClientData

    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    a = torch.randn(n, 1, 8, 8, generator=g) if kind in ("mm", "a") else None
    b = torch.randn(n, 3, 8, 8, generator=g) if kind in ("mm", "b") else None
    return ClientData(a, b, y)


def test_ntd_term_is_added_to_the_loss_of_any_method():
    from fedcmi.dominance import Guidance
    from fedcmi.methods.base import TrainSettings, local_update
    from fedcmi.methods.registry import method_spec

    for name in ("fedavg", "fedcmi"):
        spec = method_spec(name)
        cfg = effective({"strategy": name, "ntd-beta": 1.0, "lr": 0.01, "local-epochs": 1, "batch-size": 12})
        torch.manual_seed(0)
        model = build_model("cnn", ((1, 8, 8), (3, 8, 8)), 4, 8, spec.decomposed)
        result = local_update(model, _client(), spec.build(cfg), Guidance(), TrainSettings.of(cfg, spec),
                              num_classes=4, generator=torch.Generator().manual_seed(0),
                              remedies=Remedies.from_config(cfg))
        assert "loss_ntd" in result.losses and result.losses["loss_ntd"] >= 0, name
        # the first batch starts from the teacher's weights: its not-true distributions agree (KL ~ 0)


def test_fedcmi_zero_fill_and_normalised_loss_by_hand():
    torch.manual_seed(0)
    model = build_model("cnn", ((1, 8, 8), (3, 8, 8)), 4, 8, True).eval()
    data = _client("a")
    y = data.y[:6]
    plain = FedCMI(lambda_self=2.0, lambda_cmi=1.0, lambda_cross=0.0, class_wise_temperature=True,
                   temperature=1.0, gamma=2.0, dominance="global")
    fixed = FedCMI(lambda_self=2.0, lambda_cmi=1.0, lambda_cross=0.0, class_wise_temperature=True,
                   temperature=1.0, gamma=2.0, dominance="global", unimodal_zero_fill=0.5, normalize_loss=True)
    with torch.no_grad():
        fused = F.cross_entropy(model(data.a[:6], None), y)
        zero = F.cross_entropy(model.forward_zero(data.a[:6], None), y)
        t_plain = plain.batch_loss(model, data.a[:6], None, y)
        t_fixed = fixed.batch_loss(model, data.a[:6], None, y)
    assert set(t_plain) == {"loss", "loss_fused"} and t_plain["loss"].item() == pytest.approx(fused.item())
    assert t_fixed["loss_zero"].item() == pytest.approx(zero.item())
    assert t_fixed["loss"].item() == pytest.approx((fused.item() + 0.5 * zero.item()) / 1.5, rel=1e-6)
    mm = _client("mm")
    with torch.no_grad():
        terms = fixed.batch_loss(model, mm.a[:6], mm.b[:6], mm.y[:6])
    expected = (terms["loss_fused"] + 2.0 * terms["loss_self"]) / (1 + 2 * 2.0)  # no distiller: no cmi weight
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_smoothed_dominance_and_clipped_tau_by_hand():
    from fedcmi.methods.guidance import DominanceGuidance

    cfg = effective({"dominance-momentum": 0.5, "tau-min": 0.9}).check_run()
    s = build_strategy(cfg, ModelSpec(2, (1,), (1,)))
    step = s.server.find(DominanceGuidance)
    first = ClassStats(np.array([8.0, 1.0]), np.array([2.0, 1.0]), np.array([10.0, 10.0]))  # a dominates
    second = ClassStats(np.array([1.0, 1.0]), np.array([9.0, 9.0]), np.array([10.0, 10.0]))  # b, one round
    step.update(2, [first])
    assert s.guidance.dominant == "a"
    step.update(3, [second])
    ema = ClassStats(0.5 * first.sum_pa + 0.5 * second.sum_pa, 0.5 * first.sum_pb + 0.5 * second.sum_pb,
                     0.5 * first.counts + 0.5 * second.counts)
    want = dominance(ema, cfg.method.gamma)
    assert s.guidance.dominant == want.dominant and s.guidance.ratio == pytest.approx(want.ratio)
    assert np.allclose(s.guidance.tau, np.maximum(want.tau, 0.9)) and s.guidance.tau.min() >= 0.9
    unsmoothed = dominance(second, cfg.method.gamma)
    assert unsmoothed.dominant == "b"  # without the moving average one round would flip it
    restored = build_strategy(cfg, ModelSpec(2, (1,), (1,)))
    restored.load_state(s.state())
    assert np.array_equal(restored.server.find(DominanceGuidance).smoothed.sum_pa, step.smoothed.sum_pa)


def test_self_balancing_partition_shrinks_the_largest_clients():
    """flwr-datasets' self-balancing stops giving samples to a client above the average size; a client can still
    overshoot by one class's share, so the cap is soft: over 5 seeds the largest client shrinks."""
    data = synthetic_av(num_classes=6, train_size=3000, test_size=60)
    largest = {}
    for partitioner in ("dirichlet", "dirichlet-balanced"):
        parts = [partition_indices(data, effective({"dirichlet-alpha": 0.1, "min-partition-size": 5, "seed": seed,
                                                    "partitioner": partitioner})) for seed in range(5)]
        for p in parts:
            assert sorted(np.concatenate(p).tolist()) == list(range(3000))  # every row exactly once
        largest[partitioner] = np.mean([max(len(x) for x in p) for p in parts])
    assert largest["dirichlet-balanced"] < 0.8 * largest["dirichlet"], largest
