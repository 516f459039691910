"""Loss terms and class-wise temperatures against hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedcmi.dominance import ClassStats, class_temperatures, dominance
from fedcmi.methods.losses import add_proximal_gradient, infiltration_distillation, proximal_term


def test_distillation_matches_hand_computation():
    student = torch.tensor([[math.log(2), 0.0]])
    teacher = torch.tensor([[math.log(3), 0.0]])
    # tau = 1: teacher softmax (3/4, 1/4), student log-softmax (ln 2/3, ln 1/3)
    at_1 = -(0.75 * math.log(2 / 3) + 0.25 * math.log(1 / 3))
    assert infiltration_distillation(student, teacher, torch.tensor([1.0])).item() == pytest.approx(at_1, rel=1e-6)
    # tau = 0.5 divides both: teacher (9/10, 1/10), student (4/5, 1/5)
    at_half = -(0.9 * math.log(0.8) + 0.1 * math.log(0.2))
    assert infiltration_distillation(student, teacher, torch.tensor([0.5])).item() == pytest.approx(at_half, rel=1e-6)
    # per-sample temperatures: the mean of the two
    both = infiltration_distillation(student.repeat(2, 1), teacher.repeat(2, 1), torch.tensor([1.0, 0.5]))
    assert both.item() == pytest.approx((at_1 + at_half) / 2, rel=1e-6)


def test_distillation_teacher_gets_no_gradient():
    student = torch.zeros(2, 3, requires_grad=True)
    teacher = torch.randn(2, 3, requires_grad=True)
    infiltration_distillation(student, teacher, torch.ones(2)).backward()
    assert teacher.grad is None and student.grad is not None


def test_class_temperatures_dominant_first_modality():
    tau, r_bar = class_temperatures(np.array([0.9, 0.6, 0.5]), np.array([0.3, 0.6, 0.5]), gamma=2.0)
    assert r_bar == pytest.approx(5 / 3)
    assert tau[0] == pytest.approx(1 / (1 + 2 * math.log(3 / (5 / 3))))
    assert tau[1:] == pytest.approx([1.0, 1.0])


def test_class_temperatures_dominant_second_modality_and_absent_class():
    tau, r_bar = class_temperatures(np.array([0.2, 0.5, np.nan]), np.array([0.8, 0.5, np.nan]), gamma=2.0)
    assert r_bar == pytest.approx(0.625)
    assert tau[0] == pytest.approx(1 / (1 + 2 * math.log(4 * 0.625)))
    assert tau[1:] == pytest.approx([1.0, 1.0])
    assert np.all((tau > 0) & (tau <= 1))


def test_geometric_ratio_mean_is_not_decided_by_one_collapsed_class():
    """Ratios 1e9 (class 0: P_b collapsed), 0.5, 0.5, 0.5: the arithmetic r̄ (authors' code) is 2.5e8, so audio
    'dominates' and only class 0 gets tau < 1; the geometric r̄ = (1e9 x 0.125)^(1/4) = 105.7 also says a, and
    tau_0 = 1 / (1 + 2 ln(1e9 / 105.7)). With ratios 100, 0.1, 0.1, 0.1 the arithmetic mean (25.075) says a,
    the geometric one (0.1 x 1000^(1/4) = 0.562) says b: three of four classes favour b."""
    p_a, p_b = np.array([0.9, 0.25, 0.25, 0.25]), np.array([0.9e-9, 0.5, 0.5, 0.5])
    _, arithmetic = class_temperatures(p_a, p_b, gamma=2.0)
    assert arithmetic == pytest.approx((1e9 + 1.5) / 4)
    tau, geometric = class_temperatures(p_a, p_b, gamma=2.0, geometric=True)
    assert geometric == pytest.approx((1e9 * 0.125) ** 0.25)
    assert tau[0] == pytest.approx(1 / (1 + 2 * math.log(1e9 / geometric))) and tau[1:] == pytest.approx([1, 1, 1])
    stats = ClassStats(np.array([1.0, 0.1, 0.1, 0.1]), np.array([0.01, 1.0, 1.0, 1.0]), np.ones(4))
    assert dominance(stats, 2.0).dominant == "a" and dominance(stats, 2.0).ratio == pytest.approx(25.075)
    geo = dominance(stats, 2.0, geometric=True)
    assert geo.dominant == "b" and geo.ratio == pytest.approx(0.1 * 1000 ** 0.25)
    # b dominates: q_c = 1 / r_c = 0.01, 10, 10, 10 against 1 / r̄ = 1.778; classes 1-3 get tau < 1
    assert geo.tau[0] == 1.0 and geo.tau[1] == pytest.approx(1 / (1 + 2 * math.log(10 * geo.ratio)))


def test_dominance_from_count_weighted_statistics():
    s1 = ClassStats(np.array([9.0, 0.0]), np.array([3.0, 0.0]), np.array([10.0, 0.0]))
    s2 = ClassStats(np.array([15.0, 6.0]), np.array([15.0, 6.0]), np.array([30.0, 10.0]))
    d = dominance(s1 + s2, gamma=2.0)
    # P_a(0) = 24/40, P_b(0) = 18/40 -> r0 = 4/3; r1 = 1; r_bar = 7/6
    assert d.dominant == "a"
    assert d.ratio == pytest.approx(7 / 6)
    assert d.tau[0] == pytest.approx(1 / (1 + 2 * math.log((4 / 3) / (7 / 6))))
    assert d.tau[1] == pytest.approx(1.0)
    assert dominance(ClassStats.zeros(3), 2.0) is None


def test_proximal_term_zero_at_global_and_growing():
    g = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])]
    assert proximal_term([t.clone() for t in g], g, mu=0.5).item() == 0.0
    near = proximal_term([torch.tensor([1.0, 2.0]), torch.tensor([[1.0]])], g, mu=0.5).item()
    far = proximal_term([torch.tensor([2.0, 4.0]), torch.tensor([[1.0]])], g, mu=0.5).item()
    assert near == pytest.approx(0.25 * 5)
    assert far == pytest.approx(0.25 * 20) and far > near


def test_proximal_gradient_is_the_gradient_of_the_term():
    p = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    g = torch.tensor([0.5, 0.5, 0.5])
    p.grad = torch.zeros(3)
    add_proximal_gradient([p], [g], mu=0.3)
    q = p.detach().clone().requires_grad_(True)
    (0.5 * 0.3 * (q - g).pow(2).sum()).backward()
    assert torch.allclose(p.grad, q.grad)
    untouched = torch.tensor([1.0], requires_grad=True)  # no gradient -> the term leaves it alone
    add_proximal_gradient([untouched], [torch.tensor([0.0])], mu=1.0)
    assert untouched.grad is None
