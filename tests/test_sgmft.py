"""SG-MFT fusion: the similarity guidance on hand-made inputs, and the module inside the FedCMI model."""

from __future__ import annotations

import pytest
import torch

from fedcmi.config import ConfigError, RunConfig
from fedcmi.models import build_model
from fedcmi.models.fusion.sgmft import SGMFTFusion, SimilarityGuidedInteraction, element_similarity, modality_similarity

D = 32


def _pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """u, a copy of u, and w orthogonal to u (Gram-Schmidt), batch of 4."""
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(4, D, generator=gen)
    r = torch.randn(4, D, generator=gen)
    w = r - (r * u).sum(1, keepdim=True) / (u * u).sum(1, keepdim=True) * u
    return u, u.clone(), w


def test_modality_similarity_identical_orthogonal_zero():
    u, same, orth = _pair()
    assert torch.allclose(modality_similarity(u, same), torch.ones(4), atol=1e-5)
    assert torch.allclose(modality_similarity(u, orth), torch.zeros(4), atol=1e-5)
    assert torch.allclose(modality_similarity(u, torch.zeros_like(u)), torch.zeros(4))  # zero-filled slot
    assert torch.allclose(modality_similarity(u, -u), -torch.ones(4), atol=1e-5)


def test_identical_streams_interpolate_more_cross_attention_than_orthogonal_ones():
    u, same, orth = _pair()
    layer = SimilarityGuidedInteraction(8, 2)
    a_same = layer.interpolation_weight(modality_similarity(u, same))
    a_orth = layer.interpolation_weight(modality_similarity(u, orth))
    a_opp = layer.interpolation_weight(modality_similarity(u, -u))
    assert (a_same > 0.8).all() and (a_orth < 0.2).all()
    assert (a_same > a_orth).all() and (a_orth > a_opp).all()


def test_low_similarity_keeps_a_stream_intra_modal_high_similarity_mixes_in_the_other():
    torch.manual_seed(0)
    layer = SimilarityGuidedInteraction(8, 2).eval()
    xa, xb, xb2 = torch.randn(3, 2, 4, 8).unbind(0)
    with torch.no_grad():
        layer.sim_shift.fill_(-30.0)  # alpha ~ 0 at s = 0: pure self-attention
        low_1, _ = layer.coarse(xa, xb, torch.zeros(2))
        low_2, _ = layer.coarse(xa, xb2, torch.zeros(2))
        layer.sim_shift.fill_(30.0)   # alpha ~ 1: pure cross-attention
        high_1, _ = layer.coarse(xa, xb, torch.zeros(2))
        high_2, _ = layer.coarse(xa, xb2, torch.zeros(2))
    assert torch.allclose(low_1, low_2, atol=1e-6)           # the other stream has no say
    assert not torch.allclose(high_1, high_2, atol=1e-3)     # the other stream drives the update


def test_element_similarity_sums_to_cosine_and_is_zero_for_orthogonal_streams():
    u, same, orth = _pair()
    tok = lambda v: v.view(4, 1, D)  # noqa: E731 - one token per stream
    assert torch.allclose(element_similarity(tok(u), tok(same)).sum(1), torch.ones(4), atol=1e-5)
    assert torch.allclose(element_similarity(tok(u), tok(orth)).sum(1), torch.zeros(4), atol=1e-5)
    assert (element_similarity(tok(u), tok(same)) >= 0).all()


def test_sgmft_fusion_shapes_gradients_and_zero_slot():
    fusion = SGMFTFusion(D, 5, tokens=4, heads=2, layers=2)
    a, b = torch.randn(3, D, requires_grad=True), torch.randn(3, D, requires_grad=True)
    out = fusion(a, b)
    assert out.shape == (3, 5)
    out.sum().backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    assert torch.isfinite(fusion(a, torch.zeros_like(a))).all()


def test_fedcmi_model_with_sgmft_fusion_runs_every_path():
    m = build_model("cnn", ((1, 8, 8), (3, 8, 8)), 4, 32, decomposed=True, fusion="sgmft", sgmft_tokens=4,
                    sgmft_heads=2).eval()
    xa, xb = torch.randn(2, 1, 8, 8), torch.randn(2, 3, 8, 8)
    for out in (m(xa, xb), m(xa, None), m(None, xb), m.forward_zero(xa=xa), m.forward_zero(xb=xb)):
        assert out.shape == (2, 4)
    assert any(k.startswith("fusion.sim.0.sim_scale") for k in m.state_dict())


def test_bad_sgmft_widths_are_a_config_error():
    with pytest.raises(ConfigError, match="feature-dim=30"):
        RunConfig(fusion="sgmft", feature_dim=30)
    with pytest.raises(ValueError, match="sgmft"):
        SGMFTFusion(30, 2, tokens=4, heads=2)
