"""The encoder, fusion, remedy and run-option seams proven by use: a part added in a test, through its registry
only (no library file edited), builds and trains (an option with client state runs a federation end to end);
the configuration reads the names from the registries."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from fedcmi import protocol
from fedcmi.config import ConfigError, effective
from fedcmi.data.base import ClientData
from fedcmi.dominance import Guidance
from fedcmi.methods import registry as methods
from fedcmi.methods.base import TrainSettings, local_update
from fedcmi.methods.client_option import ClientOption
from fedcmi.methods.registry import method_spec
from fedcmi.methods.remedies import Remedies, Remedy
from fedcmi.methods.server_step import ServerSide, ServerStep
from fedcmi.methods.spec import OptionSpec, RemedySpec
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
    choices = "must be cnn, cnn-rows, resnet18, features or toy; did you mean 'cnn'"
    with pytest.raises(ConfigError, match=rf"^encoder='cnnn': {choices}\?$"):
        effective({"encoder": "cnnn"})
    with pytest.raises(ValueError, match=r"^unknown fusion 'nope'; one of concat, sgmft, toy$"):
        build_model("cnn", ((1, 8, 8), (3, 8, 8)), 4, 8, False, fusion="nope")
    with pytest.raises(ValueError,
                       match=r"^unknown encoder 'nope'; one of cnn, cnn-rows, resnet18, features, toy$"):
        build_model("nope", ((1, 8, 8), (3, 8, 8)), 4, 8, False)


def test_the_library_registries_name_what_the_configuration_documents():
    assert parts.encoder_names() == ("cnn", "cnn-rows", "resnet18", "features")
    assert parts.fusion_names() == ("concat", "sgmft")
    assert methods.REMEDY_KEYS == ("logit-adjust", "restricted-softmax", "ntd-beta", "ntd-temperature")
    with pytest.raises(ConfigError, match=r"^fusion='x': must be concat or sgmft$"):
        effective({"fusion": "x"})
    with pytest.raises(ConfigError, match=r"^encoder='x': must be cnn, cnn-rows, resnet18 or features$"):
        effective({"encoder": "x"})


# --- a run option with client state, added through OPTIONS alone ------------------------------------------
HEAD = "fusion.fc.bias"  # the shared head's bias: every client trains it, shape (num_classes,)


class CountOption(ClientOption):
    """A node's round count kept in its context.state (``kept``), sent back in the reply; the server sends the
    round number (``sent``). ``seen``: (round sent, count the node kept before, local steps hooked) per round."""

    seen: list[tuple[float, float, int]] = []

    def __init__(self, sent, kept) -> None:
        self.sent, self.kept, self.steps = sent[HEAD], kept.get(HEAD), 0

    def before_step(self, named) -> None:
        self.steps += 1

    def finish(self):
        before = 0.0 if self.kept is None else float(self.kept[0])
        CountOption.seen.append((float(self.sent[0]), before, self.steps))
        count = torch.full_like(self.sent, before + 1)
        return {HEAD: count}, {HEAD: count.clone()}


class CountStep(ServerStep):
    """The server half: sends the round, checks each reply's count, keeps the accepted counts per partition."""

    name = "toy-count"
    built: list[CountStep] = []

    def __init__(self, num_classes: int) -> None:
        self.num_classes, self.counts = num_classes, {}

    def guidance(self, server_round, guidance):
        sent = {HEAD: np.full(self.num_classes, server_round, np.float32)}
        return replace(guidance, records={**guidance.records, self.name: sent})

    def check_reply(self, arrays, current, held, group_of):
        count = None if arrays is None else arrays.get(HEAD)
        if count is None or not (count[0] >= 1 and float(count[0]).is_integer() and np.all(count == count[0])):
            return "toy-reply: not a round count"
        return None

    def after_aggregation(self, server_round, current, new, updated, replies):
        for reply in replies:
            self.counts.setdefault(reply.partition_id, []).append(float(reply.records[self.name][HEAD][0]))
        return new


def toy_server(cfg, num_classes):
    CountStep.built.append(CountStep(num_classes))
    return CountStep.built[-1]


def toy_client(cfg, sent, kept):
    return CountOption(sent, kept)


def test_an_option_with_client_state_added_through_the_registry_runs_end_to_end(monkeypatch, tmp_path):
    """Node state carried across rounds by the nodes' contexts, a reply record checked and consumed by the
    option's server step, malformed replies rejected with the step's (or the format's) reason."""
    from flwr.app import Array, ArrayRecord, MessageType
    from support.grid import client_app, node_context, simulated_nodes

    from server.app import run_server
    from tests.test_run_dir_once import TINY

    monkeypatch.setitem(methods.OPTIONS, "toy-count", OptionSpec(
        "toy-count", "a node's round count", f"{__name__}:toy_server", f"{__name__}:toy_client",
        sent="toy-sent", reply="toy-reply", kept="toy-kept"))
    CountOption.seen, CountStep.built = [], []
    contexts = {}
    bad = {(2, 1): np.full(6, -1.0, np.float32), (3, 2): np.ones(2, np.float32)}  # (round, partition) -> reply

    def reply(message, node_config):
        ctx = contexts.setdefault(message.metadata.dst_node_id, node_context(message, node_config))
        answer = client_app(message, node_config, ctx)
        key = (protocol.server_round_of(message.content), int(node_config["partition-id"]))
        if message.metadata.message_type == MessageType.TRAIN and key in bad:
            answer.content["toy-reply"] = ArrayRecord({HEAD: Array(bad[key])})
        return answer

    cfg = effective({**TINY, "strategy": "fedavg", "clients-per-round": 3,
                     "num-server-rounds": 3, "out-dir": str(tmp_path)}).check_run()
    run_server(simulated_nodes(3, reply=reply), cfg)
    # every node trains every round: the count it kept is the previous round's, whatever the server accepted
    assert sorted(CountOption.seen) == [(r, r - 1, s) for r, _, s in sorted(CountOption.seen)] and \
        sorted({r for r, _, _ in CountOption.seen}) == [1.0, 2.0, 3.0] and len(CountOption.seen) == 9
    assert all(steps > 0 for _, _, steps in CountOption.seen)  # the gradient hook ran before every step
    scope = protocol.run_scope(cfg.client_dict())  # the node state of this run (protocol.run_scope)
    assert all(float(ctx.state[f"toy-kept@{scope}"][HEAD].numpy()[0]) == 3.0 for ctx in contexts.values())
    step = next(s for s in CountStep.built if s.counts)
    assert step.counts == {0: [1.0, 2.0, 3.0], 1: [1.0, 3.0], 2: [1.0, 2.0]}  # rejected replies not consumed
    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert "partition 1: rejected: toy-reply: not a round count" in rows[2]["faults"]
    assert "partition 2: rejected: toy-reply fusion.fc.bias: shape (2,), expected (6,)" in rows[3]["faults"]
    # an option's reply record while its step is off (not in the run's server side) is refused, naming it
    assert ServerSide([]).check_reply({"toy-count": {HEAD: np.ones(6, np.float32)}}, {}, ("a",), str) == \
        "unexpected record 'toy-reply' (toy-count is off)"


def test_an_option_step_answers_to_its_options_name(monkeypatch):
    """Records and replies find an option's step by name: a builder whose step is named otherwise is refused."""
    from fedcmi.federated.server_side import server_side

    monkeypatch.setitem(methods.OPTIONS, "toy-other", OptionSpec("toy-other", "misnamed", f"{__name__}:toy_server"))
    with pytest.raises(ValueError, match=r"^option 'toy-other' built a server step named 'toy-count'$"):
        server_side(effective({}), 6)
