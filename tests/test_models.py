"""Model forward paths with either modality missing and parameter groups."""

from __future__ import annotations

import pytest
import torch

from fedcmi.modalities import group_of
from fedcmi.models import ConcatModel, FedCMIModel, build_model
from fedcmi.models.encoders import ResNet18Encoder

SHAPES = ((1, 20, 24), (3, 16, 16))


@pytest.fixture
def model() -> FedCMIModel:
    torch.manual_seed(0)
    return build_model("cnn", SHAPES, 6, 16, decomposed=True).eval()


def test_forward_shapes_each_modality_and_both(model):
    xa, xb = torch.randn(5, *SHAPES[0]), torch.randn(5, *SHAPES[1])
    for out in (model(xa, xb), model(xa=xa), model(xb=xb), model.forward_zero(xa=xa), model.forward_zero(xb=xb)):
        assert out.shape == (5, 6)
    with pytest.raises(ValueError):
        model()


def test_missing_slot_holds_own_infiltration_output(model):
    xa, xb = torch.randn(4, *SHAPES[0]), torch.randn(4, *SHAPES[1])
    with torch.no_grad():
        sa, ia = model.branches(xa, "a")
        sb, ib = model.branches(xb, "b")
        assert torch.allclose(model(xa, xb), model.fuse(sa, sb))
        assert torch.allclose(model(xa=xa), model.fuse(sa, ia))  # a's infiltration fills slot b
        assert torch.allclose(model(xb=xb), model.fuse(ib, sb))  # b's infiltration fills slot a
        assert torch.allclose(model.forward_zero(xa=xa), model.fuse(sa, torch.zeros_like(sa)))
        assert torch.allclose(model.forward_zero(xb=xb), model.fuse(torch.zeros_like(sb), sb))
        # both projectors of a modality share one classifier
        assert torch.allclose(model.classify(ia, "a"), model.cls_a(ia))


def test_parameter_groups_by_prefix(model):
    groups = {}
    for k in model.state_dict():
        groups.setdefault(group_of(k), set()).add(k.split(".")[0])
    assert groups == {"a": {"enc_a", "self_a", "inf_a", "cls_a"}, "b": {"enc_b", "self_b", "inf_b", "cls_b"},
                      "shared": {"fusion"}}


def test_concat_baseline_zero_fills():
    torch.manual_seed(0)
    m = build_model("cnn", SHAPES, 6, 16, decomposed=False).eval()
    assert isinstance(m, ConcatModel)
    xa = torch.randn(3, *SHAPES[0])
    with torch.no_grad():
        ha = m.enc_a(xa)
        assert torch.allclose(m(xa=xa), m.fusion(ha, torch.zeros_like(ha)))
    assert {group_of(k) for k in m.state_dict()} == {"a", "b", "shared"}


def test_resnet18_encoder_single_channel_and_frame_stacks():
    enc = ResNet18Encoder(1).eval()
    with torch.no_grad():
        assert enc(torch.randn(2, 1, 32, 32)).shape == (2, 512)
        frames = ResNet18Encoder(3).eval()
        assert frames(torch.randn(2, 3, 2, 32, 32)).shape == (2, 512)  # B x C x F x H x W
    m = build_model("resnet18", ((1, 32, 32), (3, 32, 32)), 4, 64, decomposed=True).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 1, 32, 32), torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_path_logits_match_each_forward_path(model):
    xa, xb = torch.randn(4, *SHAPES[0]), torch.randn(4, *SHAPES[1])
    concat = build_model("cnn", SHAPES, 6, 16, decomposed=False).eval()
    with torch.no_grad():
        for m in (model, concat):
            paths = m.path_logits(xa, xb)
            assert torch.allclose(paths["mm"], m(xa, xb), atol=1e-6)
            assert torch.allclose(paths["a"], m(xa=xa), atol=1e-6)
            assert torch.allclose(paths["b"], m(xb=xb), atol=1e-6)
            assert torch.allclose(paths["a_zero"], m.forward_zero(xa=xa), atol=1e-6)
            assert torch.allclose(paths["b_zero"], m.forward_zero(xb=xb), atol=1e-6)


@pytest.mark.parametrize("decomposed", [True, False])
def test_unimodal_evaluation_runs_one_encoder_and_predicts_as_the_full_pass(decomposed):
    """A unimodal baseline is scored without the encoder it never trains, with the very predictions the full
    pass gives on that modality's paths (bit for bit, batched the same)."""
    from fedcmi.federated.evaluation import evaluate, predict_paths

    torch.manual_seed(1)
    m = build_model("cnn", SHAPES, 6, 16, decomposed=decomposed).eval()
    xa, xb = torch.randn(37, *SHAPES[0]), torch.randn(37, *SHAPES[1])
    y = torch.randint(0, 6, (37,))
    full = predict_paths(m, xa, xb, batch_size=16)
    for only, enc, other in (("a", m.enc_a, m.enc_b), ("b", m.enc_b, m.enc_a)):
        calls = {"own": 0, "other": 0}

        def counter(key: str, calls: dict = calls):
            return lambda *_: calls.__setitem__(key, calls[key] + 1)

        hooks = [enc.register_forward_hook(counter("own")), other.register_forward_hook(counter("other"))]
        alone = predict_paths(m, xa, xb, batch_size=16, only=only)
        res = evaluate(m, xa, xb, y, 6, ("x", "y"), batch_size=16, use_modalities=(only,))
        for h in hooks:
            h.remove()
        assert calls == {"own": 6, "other": 0}  # 3 batches, twice
        assert set(alone) == {only, f"{only}_zero"}
        for path in alone:
            assert (alone[path] == full[path]).all()
        yn = y.numpy()
        name, unseen = ("x", "y") if only == "a" else ("y", "x")
        assert res["acc_mm"] == pytest.approx(float((full[f"{only}_zero"] == yn).mean()))
        assert res[f"acc_{name}"] == pytest.approx(float((full[only] == yn).mean()))
        assert res[f"acc_{unseen}"] != res[f"acc_{unseen}"]  # NaN: never seen


def test_evaluation_does_not_depend_on_how_the_test_set_is_batched():
    """The default eval-batch-size was chosen for speed (docs/scaling.md): every path's predictions over a test
    set that is not a multiple of it (a short last batch) match one pass over the whole set."""
    from fedcmi.config import effective
    from fedcmi.federated.evaluation import evaluate, predict_paths

    size = effective({}).server.eval_batch_size
    n = 2 * size + 37
    torch.manual_seed(2)
    m = build_model("cnn", SHAPES, 6, 16, decomposed=True).eval()
    xa, xb = torch.randn(n, *SHAPES[0]), torch.randn(n, *SHAPES[1])
    y = torch.randint(0, 6, (n,))
    whole = predict_paths(m, xa, xb, batch_size=n)
    batched = predict_paths(m, xa, xb, batch_size=size)
    assert set(batched) == {"mm", "a", "b", "a_zero", "b_zero"} and len(batched["mm"]) == n
    for path in whole:
        assert (batched[path] == whole[path]).all(), path
    assert evaluate(m, xa, xb, y, 6, ("x", "y"), batch_size=size) == evaluate(m, xa, xb, y, 6, ("x", "y"),
                                                                              batch_size=n)


def test_the_model_keys_are_every_build_argument_and_key_the_client_model_cache():
    """A model option added to build_model but not to MODEL_KEYS would let a client reuse a stale model."""
    import inspect

    from fedcmi.config import RunConfig
    from fedcmi.models import ModelSpec, model_key
    from fedcmi.models.build import MODEL_KEYS

    built_from_spec = {"shapes", "num_classes", "decomposed"}
    assert set(inspect.signature(build_model).parameters) - built_from_spec == set(MODEL_KEYS)
    spec, cfg = ModelSpec(3, (1, 8, 8), (3, 8, 8)), RunConfig()
    for key in MODEL_KEYS:
        value = getattr(cfg.model, key)
        other = {"encoder": "resnet18", "projector": "mlp", "fusion": "sgmft", "text_encoder": "x",
                 "encoder_weights": "w"}.get(key, value + 1 if isinstance(value, int) else value)
        assert model_key(cfg.replace(**{key: other}).model, spec, True) != model_key(cfg.model, spec, True), key
    assert model_key(cfg.model, spec, True) != model_key(cfg.model, spec, False)


# --- encoder=cnn-rows: where along the frequency axis a pattern lies -----------------------------------------
def _bump(row: int) -> torch.Tensor:
    """A 1 x 64 x 32 input, zero but for a 3 x 3 bump at (row, 12): far from every border, so both encoders see
    it whole wherever it lies."""
    x = torch.zeros(1, 1, 64, 32)
    x[0, 0, row:row + 3, 12:15] = torch.tensor([[0.5, 1.0, 0.5], [1.0, 2.0, 1.0], [0.5, 1.0, 0.5]])
    return x


def test_cnn_rows_tells_a_band_moved_along_frequency_where_cnn_cannot():
    """A bump moved by 20 rows (a multiple of the two strides' 4, so every conv sees the same numbers): cnn's
    global average cannot tell the two apart (the same activations, moved), cnn-rows keeps the row."""
    torch.manual_seed(0)
    spec = ((1, 64, 32), (3, 8, 8))
    cnn = build_model("cnn", spec, 4, 16, decomposed=True).eval()
    rows = build_model("cnn-rows", spec, 4, 16, decomposed=True).eval()
    with torch.no_grad():
        low, high = _bump(20), _bump(40)
        assert torch.allclose(cnn.enc_a(low), cnn.enc_a(high), atol=1e-6)
        assert cnn.enc_a(low).abs().sum() > 0
        assert not torch.allclose(rows.enc_a(low), rows.enc_a(high), atol=1e-3)
        # moved along time (the last axis) instead, by 8 columns: cnn-rows averages time away
        later = torch.roll(low, 8, dims=-1)
        assert torch.allclose(rows.enc_a(low), rows.enc_a(later), atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 40, 101), (3, 8, 8), (1, 7, 5), (3, 2, 9, 9)])
def test_cnn_rows_sizes_its_projection_for_any_input_height(shape):
    """FSDD's 1 x 40 x 101 spectrogram, an 8 x 8 image, odd sizes, a frame stack: feature-dim features out."""
    torch.manual_seed(0)
    m = build_model("cnn-rows", (shape, (1, 8, 8)), 10, 12, decomposed=True).eval()
    with torch.no_grad():
        assert m.enc_a(torch.randn(2, *shape)).shape == (2, 12)
        assert m(torch.randn(2, *shape), torch.randn(2, 1, 8, 8)).shape == (2, 10)
