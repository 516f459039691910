"""The encoder, fusion and remedy seams proven by use: a part added in a test, through its registry only (no
library file edited), builds and trains; the configuration reads the names from the registries."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedcmi.config import ConfigError, effective
from fedcmi.data.base import ClientData
from fedcmi.dominance import Guidance
from fedcmi.methods import registry as methods
from fedcmi.methods.base import TrainSettings, local_update
from fedcmi.methods.registry import method_spec
from fedcmi.methods.remedies import Remedies, Remedy
from fedcmi.methods.spec import RemedySpec
from fedcmi.models import build_model, model_for
from fedcmi.models import registry as parts
from fedcmi.models.build import ModelSpec
from fedcmi.models.registry import EncoderOptions, FusionSpec, PartSpec


class ToyFusion(nn.Module):
    """F(u, w) = W (u * w): a head no library file knows."""

    def __init__(self, dim: int, num_classes: int, scale: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)
        self.scale = scale

    def forward(self, slot_a: torch.Tensor, slot_b: torch.Tensor) -> torch.Tensor:
        return self.fc(slot_a * slot_b) * self.scale


def toy_fusion(dim: int, num_classes: int, *, sgmft_layers: int) -> nn.Module:
    return ToyFusion(dim, num_classes, sgmft_layers)


class ToyEncoder(nn.Module):
    def __init__(self, shape: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.fc = nn.Linear(int(torch.tensor(shape).prod()), out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def toy_encoder(shape: tuple[int, ...], options: EncoderOptions) -> nn.Module:
    return ToyEncoder(shape, options.feature_dim)


class ToyRemedy(Remedy):
    """Halves every CE term's logits and adds 0.5 * mean(logits^2): a remedy no library file knows."""

    calls: dict[str, int] = {}

    def start(self, model, y, num_classes):
        self.calls["start"] = self.calls.get("start", 0) + 1

    def logits(self, z):
        self.calls["logits"] = self.calls.get("logits", 0) + 1
        return z / 2

    def loss_terms(self, model, xa, xb, y):
        self.calls["terms"] = self.calls.get("terms", 0) + 1
        return {"loss_toy": (0.5, model(xa, xb).pow(2).mean())}


def toy_remedy(cfg):
    return ToyRemedy()


def _client(n: int = 8) -> ClientData:
    g = torch.Generator().manual_seed(0)
    return ClientData(torch.randn(n, 1, 8, 8, generator=g), torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 4)


@pytest.fixture
def toys(monkeypatch):
    monkeypatch.setitem(parts.FUSIONS, "toy", FusionSpec("toy", "u * w", f"{__name__}:toy_fusion",
                                                         options=("sgmft_layers",)))
    monkeypatch.setitem(parts.ENCODERS, "toy", PartSpec("toy", "one linear layer", f"{__name__}:toy_encoder"))
    monkeypatch.setitem(methods.REMEDIES, "toy", RemedySpec("toy", "halved logits", f"{__name__}:toy_remedy"))
    ToyRemedy.calls = {}


@pytest.mark.parametrize("name", ["fedavg", "fedcmi"])
def test_a_fusion_head_encoder_and_remedy_added_through_the_registries_train_a_step(toys, name):
    spec = method_spec(name)
    cfg = effective({"strategy": name, "fusion": "toy", "encoder": "toy", "sgmft-layers": 3, "lr": 0.1,
                     "local-epochs": 1, "batch-size": 8})
    model = model_for(cfg.model, ModelSpec(4, (1, 8, 8), (3, 8, 8)), spec.decomposed)
    assert isinstance(model.fusion, ToyFusion) and model.fusion.scale == 3
    assert isinstance(model.enc_a, ToyEncoder) and isinstance(model.enc_b, ToyEncoder)
    remedies = Remedies.from_config(cfg)
    assert [type(r) for r in remedies.on] == [ToyRemedy]  # the library's remedies are off by default
    before = model.fusion.fc.weight.detach().clone()
    result = local_update(model, _client(), spec.build(cfg), Guidance(), TrainSettings.of(cfg, spec),
                          num_classes=4, generator=torch.Generator().manual_seed(0), remedies=remedies)
    assert ToyRemedy.calls["start"] == 1 and ToyRemedy.calls["terms"] == 1 and ToyRemedy.calls["logits"] >= 1
    assert "loss_toy" in result.losses and result.losses["loss"] > result.losses["loss_fused"]
    assert not torch.equal(model.fusion.fc.weight, before)  # one SGD step through the toy head


def test_the_toy_remedy_shapes_the_loss_exactly_as_declared(toys):
    cfg = effective({"strategy": "fedavg"})
    spec = method_spec("fedavg")
    torch.manual_seed(0)
    model = build_model("cnn", ((1, 8, 8), (3, 8, 8)), 4, 8, False).eval()
    data = _client()
    method = spec.build(cfg)
    method.remedies = Remedies.from_config(cfg)
    with torch.no_grad():
        terms = method.batch_loss(model, data.a, data.b, data.y)
        method.remedies.add_terms(terms, model, data.a, data.b, data.y)
        z = model(data.a, data.b)
    fused = nn.functional.cross_entropy(z / 2, data.y)
    assert terms["loss_fused"].item() == pytest.approx(fused.item())
    assert terms["loss"].item() == pytest.approx((fused + 0.5 * z.pow(2).mean()).item())


def test_unknown_names_are_one_line_naming_the_registry(toys):
    with pytest.raises(ConfigError, match=r"^fusion='nope': must be concat, sgmft or toy$"):
        effective({"fusion": "nope"})
    choices = "must be cnn, resnet18, features or toy; did you mean 'cnn'"
    with pytest.raises(ConfigError, match=rf"^encoder='cnnn': {choices}\?$"):
        effective({"encoder": "cnnn"})
    with pytest.raises(ValueError, match=r"^unknown fusion 'nope'; one of concat, sgmft, toy$"):
        build_model("cnn", ((1, 8, 8), (3, 8, 8)), 4, 8, False, fusion="nope")
    with pytest.raises(ValueError, match=r"^unknown encoder 'nope'; one of cnn, resnet18, features, toy$"):
        build_model("nope", ((1, 8, 8), (3, 8, 8)), 4, 8, False)


def test_the_library_registries_name_what_the_configuration_documents():
    assert parts.encoder_names() == ("cnn", "resnet18", "features")
    assert parts.fusion_names() == ("concat", "sgmft")
    assert methods.REMEDY_KEYS == ("logit-adjust", "restricted-softmax", "ntd-beta", "ntd-temperature")
    with pytest.raises(ConfigError, match=r"^fusion='x': must be concat or sgmft$"):
        effective({"fusion": "x"})
    with pytest.raises(ConfigError, match=r"^encoder='x': must be cnn, resnet18 or features$"):
        effective({"encoder": "x"})
