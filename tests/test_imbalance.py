"""OGM-GE and PMR (ported into local training) against hand computation on toy batches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedcmi.methods.ogm_ge import ogm_coefficients, ogm_modulate, split_head_logits
from fedcmi.methods.pmr import class_prototypes, pmr_loss, prototype_logits


def test_split_head_halves_the_bias():
    fc = nn.Linear(4, 3)
    h_a, h_b = torch.randn(5, 2), torch.randn(5, 2)
    out_a, out_b = split_head_logits(fc, h_a, h_b)
    assert torch.allclose(out_a + out_b, fc(torch.cat([h_a, h_b], dim=1)), atol=1e-6)


def test_ogm_coefficients_by_hand():
    y = torch.tensor([0, 1])
    out_a = torch.tensor([[math.log(3), 0.0], [0.0, math.log(3)]])  # true-class prob 3/4 each
    out_b = torch.tensor([[0.0, 0.0], [0.0, 0.0]])                  # true-class prob 1/2 each
    ratio = 1.5 / 1.0
    coeff_a, coeff_b = ogm_coefficients(out_a, out_b, y, alpha=0.8)
    assert coeff_a == pytest.approx(1 - math.tanh(0.8 * ratio)) and coeff_b == 1.0
    coeff_a, coeff_b = ogm_coefficients(out_b, out_a, y, alpha=0.8)  # b dominant now
    assert coeff_a == 1.0 and coeff_b == pytest.approx(1 - math.tanh(0.8 * ratio))


def test_ogm_modulation_scales_conv_gradients_and_adds_noise():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc_a = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
            self.enc_b = nn.Sequential(nn.Conv2d(1, 2, 3))

    toy = Toy()
    for p in toy.parameters():
        p.grad = torch.ones_like(p) * 2.0
    conv_a = toy.enc_a[0].weight
    conv_a.grad = torch.arange(conv_a.numel(), dtype=torch.float32).reshape(conv_a.shape)
    before = conv_a.grad.clone()
    ogm_modulate(toy, (0.25, 1.0), torch.Generator().manual_seed(7))
    noise = torch.randn(before.shape, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(conv_a.grad, 0.25 * before + noise * (before.std() + 1e-8), atol=1e-5)
    assert torch.equal(toy.enc_a[1].weight.grad, torch.full((2,), 2.0))  # 1-d (BatchNorm) left alone


def test_class_prototypes_means_momentum_and_absent_class():
    feats = torch.tensor([[0.0, 0.0], [2.0, 2.0], [4.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    protos = class_prototypes(feats, y, 3)
    assert torch.allclose(protos[:2], torch.tensor([[1.0, 1.0], [4.0, 0.0]]))
    assert torch.isnan(protos[2]).all()
    mixed = class_prototypes(feats, y, 3, previous=torch.zeros(3, 2), momentum=0.2)
    assert torch.allclose(mixed[0], torch.tensor([0.8, 0.8]))


def test_pmr_adds_the_weak_modalitys_prototype_loss():
    y = torch.tensor([0, 1])
    protos = torch.tensor([[0.0, 0.0], [3.0, 4.0], [float("nan"), float("nan")]])
    h_strong = torch.tensor([[0.0, 0.0], [3.0, 4.0]])  # exactly on its prototypes
    h_weak = torch.tensor([[1.5, 2.0], [1.5, 2.0]])     # halfway: 50/50
    logits = prototype_logits(h_weak, protos)
    assert torch.allclose(logits[:, :2], torch.full((2, 2), -2.5))
    assert (logits[:, 2] <= -1e4).all()  # absent class
    expected = 0.7 * F.cross_entropy(logits, y)
    assert pmr_loss(h_strong, h_weak, y, protos, protos, alpha=0.7).item() == pytest.approx(expected.item())
    assert pmr_loss(h_weak, h_strong, y, protos, protos, alpha=0.7).item() == pytest.approx(expected.item())
    assert pmr_loss(h_weak, h_weak, y, protos, protos, alpha=0.7).item() == 0.0
