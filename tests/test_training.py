"""Local training: which parameters each client kind and method term may move; learning happens."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fedcmi.config import effective
from fedcmi.data.base import ClientData
from fedcmi.dominance import Guidance
from fedcmi.methods.base import TrainSettings, local_update, only
from fedcmi.methods.registry import METHOD_NAMES, method_spec
from fedcmi.methods.statistics import class_statistics
from fedcmi.models import build_model

SHAPES = ((1, 20, 24), (3, 16, 16))
K = 4


def _data(kind: str, n: int = 48, seed: int = 0) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    base_a = torch.randn(K, *SHAPES[0], generator=g)
    base_b = torch.randn(K, *SHAPES[1], generator=g)
    a = base_a[y] + 0.3 * torch.randn(n, *SHAPES[0], generator=g)
    b = base_b[y] + 0.3 * torch.randn(n, *SHAPES[1], generator=g)
    return ClientData(a if kind in ("mm", "a") else None, b if kind in ("mm", "b") else None, y)


def _model(decomposed: bool = True):
    torch.manual_seed(0)
    return build_model("cnn", SHAPES, K, 16, decomposed=decomposed)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _moved(before, model, prefix: str) -> bool:
    after = model.state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before
               if k.startswith(prefix) and after[k].is_floating_point())


def _update(model, data, strategy="fedcmi", guidance=None, epochs=1, **keys):
    """One local update of ``strategy`` with ``keys`` set by the user (a fresh method object, as per round)."""
    spec = method_spec(strategy)
    cfg = effective({"strategy": strategy, **keys})
    settings = dataclasses.replace(TrainSettings.of(cfg, spec), epochs=epochs, batch_size=16, lr=0.05)
    return local_update(model, only(data, spec.modalities), spec.build(cfg), guidance or Guidance(), settings,
                        num_classes=K, generator=torch.Generator().manual_seed(1))


FEDCMI = {"strategy": "fedcmi", "proximal_mu": 0.1}


def test_unimodal_client_never_moves_the_other_modality():
    for kind, other in (("a", "_b."), ("b", "_a.")):
        model = _model()
        before = _snapshot(model)
        _update(model, _data(kind), guidance=Guidance(infiltrate=True, dominant="a"), **FEDCMI)
        for prefix in ("enc", "self", "inf", "cls"):
            assert not _moved(before, model, prefix + other), (kind, prefix)
        assert _moved(before, model, "fusion.")
        assert _moved(before, model, f"inf_{kind}.")  # its infiltration output fills the fusion slot


def test_infiltration_trains_only_the_weak_modality_projector():
    model = _model()
    before = _snapshot(model)
    _update(model, _data("mm"), guidance=Guidance(infiltrate=True, dominant="a", tau=np.full(K, 0.8)), **FEDCMI)
    assert _moved(before, model, "inf_b.")      # the weak modality's infiltration projector learns
    assert not _moved(before, model, "inf_a.")  # the dominant one's gets no gradient on a multimodal client


def test_distillation_switch_off_and_warmup_leave_infiltration_projectors_alone():
    for keys, guidance in ((FEDCMI, Guidance(infiltrate=False)),
                           ({"lambda_cmi": 0.0}, Guidance(infiltrate=True, dominant="a"))):
        model = _model()
        before = _snapshot(model)
        result = _update(model, _data("mm"), guidance=guidance, **keys)
        assert "loss_cmi" not in result.losses
        assert not _moved(before, model, "inf_a.") and not _moved(before, model, "inf_b.")


def test_no_infiltration_before_the_server_decided_the_dominant_modality():
    """dominance=global without a server decision (round 2, whose statistics came from the initial model): no
    distillation at all, never a silent switch to the per-batch rule; dominance=local distils regardless."""
    model = _model()
    before = _snapshot(model)
    result = _update(model, _data("mm"), guidance=Guidance(infiltrate=True), **FEDCMI)
    assert "loss_cmi" not in result.losses
    assert not _moved(before, model, "inf_a.") and not _moved(before, model, "inf_b.")
    local = _update(_model(), _data("mm"), guidance=Guidance(infiltrate=True), dominance="local", **FEDCMI)
    assert "loss_cmi" in local.losses


def test_each_term_reported_and_local_dominance_runs():
    model = _model()
    result = _update(model, _data("mm"), guidance=Guidance(infiltrate=True), dominance="local")
    assert set(result.losses) == {"loss", "loss_fused", "loss_self", "loss_cmi"}
    assert result.num_examples == 48
    no_self = _update(_model(), _data("mm"), lambda_self=0.0)
    assert "loss_self" not in no_self.losses


def test_local_training_learns():
    for decomposed in (True, False):
        model = _model(decomposed)
        keys = FEDCMI if decomposed else {"strategy": "fedavg"}
        data = _data("mm")
        first = _update(model, data, epochs=1, **keys).losses["loss_fused"]
        later = _update(model, data, epochs=4, **keys).losses["loss_fused"]
        assert later < 0.5 * first


def test_proximal_term_holds_weights_closer_to_global():
    far = _model()
    start = _snapshot(far)
    _update(far, _data("mm"), "fedavg", epochs=3)
    near = _model()
    _update(near, _data("mm"), "fedavg", epochs=3, proximal_mu=5.0)  # the user's mu wins over FedAvg's 0

    def dist(m):
        return sum(float((m.state_dict()[k] - start[k]).pow(2).sum()) for k in start
                   if start[k].is_floating_point() and "running" not in k)

    assert dist(near) < 0.5 * dist(far)


def test_class_statistics_counts_and_probabilities():
    model = _model().eval()
    data = _data("mm", n=40)
    stats = class_statistics(model, data, K)
    assert np.array_equal(stats.counts, np.full(K, 10.0))
    p_a, p_b = stats.means()
    assert np.all((p_a > 0) & (p_a < 1)) and np.all((p_b > 0) & (p_b < 1))
    assert class_statistics(model, _data("a"), K).counts.sum() == 0  # only multimodal clients measure


def test_every_strategy_trains_each_client_kind():
    for name in METHOD_NAMES:
        spec = method_spec(name)
        for kind in ("mm", "a", "b"):
            if kind != "mm" and kind not in spec.modalities:
                continue
            model = _model(spec.decomposed)
            result = _update(model, _data(kind), name, Guidance(infiltrate=True, dominant="a"))
            assert np.isfinite(result.losses["loss"]), (name, kind)


def test_fedcmi_plus_trains_the_dominant_infiltration_projector_single_projector_none():
    model = _model()
    before = _snapshot(model)
    result = _update(model, _data("mm"), "fedcmi-plus", Guidance(infiltrate=True, dominant="a"))
    assert "loss_cross" in result.losses
    assert _moved(before, model, "inf_a.") and _moved(before, model, "inf_b.")
    for kind in ("mm", "a"):
        model = _model()
        before = _snapshot(model)
        _update(model, _data(kind), "fedcmi-single", Guidance(infiltrate=True, dominant="a"))
        assert not _moved(before, model, "inf_a.") and not _moved(before, model, "inf_b.")


def test_unimodal_baseline_ignores_the_other_modality_and_pmr_reports_its_term():
    model = _model(decomposed=False)
    before = _snapshot(model)
    _update(model, _data("mm"), "unimodal-b")
    assert not _moved(before, model, "enc_a.") and _moved(before, model, "enc_b.")
    pmr = _update(_model(decomposed=False), _data("mm"), "pmr")
    assert "loss_proto" in pmr.losses
