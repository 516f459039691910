"""`fedcmi features` and `encoder=features`: tiny random encoders saved in their real formats (torchvision state
dicts, a `save_pretrained` BERT), official-layout fixture trees prepared, features extracted (shapes, a hand
check against the encoder, determinism, resume), every method trained on them, and 2 rounds of FedAvg and
FedCMI through Flower (one `fedcmi bench` grid, so Ray starts once)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_from_disk

from fedcmi.cli import main
from fedcmi.config import ConfigError, RunConfig, effective
from fedcmi.data import load_data, load_prepared
from fedcmi.data.features import extract as features_mod
from fedcmi.data.features.extract import extract_features
from fedcmi.data.partition import build_federation, client_data
from fedcmi.data.prepare import prepare
from tests.prepare_fixtures import crema_d_tree, crisismmd_tree, tiny_bert

ROOT = Path(__file__).parents[1]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def calibrated(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised CNN with its BatchNorm statistics measured on random inputs, as training would leave
    them: at init (running mean 0, variance 1) mobilenet_v2's activations shrink to ~1e-7 by the last layer, a
    scale no pretrained encoder has."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 64, 64, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    from torchvision.models import mobilenet_v2, resnet18

    base = tmp_path_factory.mktemp("features")
    crema_d_tree(base / "CREMA-D")
    crisismmd_tree(base / "CrisisMMD", per_class=8, events=("california_wildfires", "hurricane_irma"))
    tiny_bert(base / "bert")
    torch.manual_seed(0)
    torch.save(calibrated(mobilenet_v2(width_mult=0.25)).state_dict(), base / "mobilenet_v2.pth")
    torch.save(resnet18().state_dict(), base / "resnet18.pth")
    env = {"base": base, "mnv2": base / "mobilenet_v2.pth", "r18": base / "resnet18.pth", "bert": base / "bert",
           "crema-d": prepare("crema-d", base / "CREMA-D", show_progress=False, image_size=32).path,
           "crisismmd": prepare("crisismmd", base / "CrisisMMD", show_progress=False, image_size=32,
                                tokenizer=str(base / "bert")).path}
    env["crema-d-feat"] = extract_features(env["crema-d"], image=str(env["mnv2"]), audio=str(env["mnv2"]),
                                           batch_size=8).path
    env["crisismmd-feat"] = extract_features(env["crisismmd"], image=str(env["r18"]), text=str(env["bert"])).path
    return env


def test_crema_d_features_keep_time_steps_and_frames_and_match_the_encoder(env):
    from torchvision.models import mobilenet_v2

    feat, prep = load_prepared(env["crema-d-feat"]), load_prepared(env["crema-d"])
    manifest = json.loads((env["crema-d-feat"] / "fedcmi.json").read_text())
    assert (feat.name, feat.modalities, feat.num_classes) == ("crema-d", ("audio", "visual"), 6)
    assert manifest["features"]["kinds"] == {"a": "spectrogram", "b": "frames"}
    assert manifest["features"]["settings"]["a"]["arch"] == "mobilenet_v2(width_mult=0.25)"
    xa, xb, y = feat.arrays("test")
    # 257 x 299 spectrogram -> mobilenet's 9 x 10 map -> 10 time steps; 2 frames -> 2 tokens; 1280 wide
    assert xa.shape == (6, 10, 1280) and xb.shape == (6, 2, 1280)
    assert np.array_equal(y, prep.arrays("test")[2])
    assert feat.test["key"] == prep.test["key"]
    # by hand: torchvision's mobilenet_v2 trunk over sample 3, as the documentation says
    net = mobilenet_v2(width_mult=0.25)
    net.load_state_dict(torch.load(env["mnv2"], weights_only=True))
    net.eval()
    pa, pb, _ = prep.arrays("test")
    with torch.no_grad():
        spec = torch.from_numpy(pa[3:4]).expand(-1, 3, -1, -1)
        audio = net.features(spec).mean(dim=2).transpose(1, 2)[0]
        frames = torch.from_numpy(pb[3]).permute(1, 0, 2, 3)  # F x C x H x W
        visual = net.features(frames).mean(dim=(2, 3))
    assert torch.allclose(torch.from_numpy(xa[3]), audio, atol=1e-5)
    assert torch.allclose(torch.from_numpy(xb[3]), visual, atol=1e-5)


def test_crisismmd_text_keeps_tokens_with_padding_zeroed(env):
    from transformers import BertModel

    feat, prep = load_prepared(env["crisismmd-feat"]), load_prepared(env["crisismmd"])
    xa, xb, _ = feat.arrays("test")
    ids = prep.arrays("test")[0].astype(np.int64)
    assert xa.shape == (len(ids), 40, 32) and xb.shape == (len(ids), 1, 512)
    valid = ids != 0
    assert np.all(np.abs(xa[~valid]) == 0) and np.all(np.abs(xa[valid]).sum(-1) > 0)
    bert = BertModel.from_pretrained(str(env["bert"]), local_files_only=True).eval()
    with torch.no_grad():
        ref = bert(input_ids=torch.from_numpy(ids[:2]), attention_mask=torch.from_numpy(valid[:2]).long())
    expect = (ref.last_hidden_state * torch.from_numpy(valid[:2])[..., None]).numpy()
    assert np.allclose(xa[:2], expect, atol=1e-5)


def test_features_keep_the_natural_groups(env):
    """partitioner=natural on a features directory: CrisisMMD's event column is carried over, CREMA-D's actor is
    read from the keys; the federation is the one of the prepared directory."""
    feat = load_prepared(env["crisismmd-feat"])
    assert list(feat.train["event"]) == list(load_prepared(env["crisismmd"]).train["event"])
    for name, groups in (("crisismmd", ["california_wildfires", "hurricane_irma"]),
                         ("crema-d", ["1002", "1003", "1004"])):
        specs = {}
        for kind, encoder in (("", "cnn"), ("-feat", "features")):
            cfg = RunConfig(dataset=name, data_root=str(env[name + kind]), encoder=encoder, partitioner="natural",
                            num_clients=len(groups), clients_per_round=2)
            specs[kind] = build_federation(load_data(cfg), cfg)
        assert [s.group for s in specs[""]] == [s.group for s in specs["-feat"]] == groups
        assert all(np.array_equal(a.indices, b.indices) for a, b in zip(specs[""], specs["-feat"], strict=True))


def test_rerun_reuses_and_an_interrupted_extraction_resumes_to_the_same_result(env, tmp_path, monkeypatch):
    again = extract_features(env["crisismmd"], env["crisismmd-feat"], image=str(env["r18"]), text=str(env["bert"]))
    assert again.already_done
    real, calls = features_mod._write_shard, []

    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(*args, **kwargs)

    monkeypatch.setattr(features_mod, "_write_shard", crash_on_third)
    out = tmp_path / "resumed"
    kwargs = {"image": str(env["r18"]), "text": str(env["bert"]), "shard_size": 5}
    with pytest.raises(KeyboardInterrupt):
        extract_features(env["crisismmd"], out, **kwargs)
    assert not (out / "fedcmi.json").exists() and len(list((out / ".work" / "train").iterdir())) == 2
    monkeypatch.setattr(features_mod, "_write_shard", real)
    outcome = extract_features(env["crisismmd"], out, **kwargs)
    assert outcome.resumed_shards == 2 and not (out / ".work").exists()
    a, b = load_from_disk(str(out)), load_from_disk(str(env["crisismmd-feat"]))
    for split in ("train", "test"):  # resumption changes nothing; batch size 5 vs 32 only the last bits
        for col in ("a", "b"):
            assert np.allclose(a[split].with_format("numpy")[col], b[split].with_format("numpy")[col],
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="other settings .*a"):  # another text encoder: refused, not mixed
        bert2 = tmp_path / "bert2"
        tiny_bert(bert2)
        extract_features(env["crisismmd"], out, image=str(env["r18"]), text=str(bert2))


def test_a_missing_or_wrong_encoder_is_one_line_and_exit_2(env, tmp_path, capsys):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    torch.save(torch.nn.Linear(3, 4).state_dict(), tmp_path / "linear.pth")
    prep = str(env["crema-d"])
    cases = [
        (["--image-encoder", str(tmp_path / "none.pth"), "--audio-encoder", str(env["mnv2"])], "no such file"),
        (["--image-encoder", str(garbage), "--audio-encoder", str(env["mnv2"])], "not a readable state-dict"),
        (["--image-encoder", str(tmp_path / "linear.pth"), "--audio-encoder", str(env["mnv2"])],
         "not the state dict of a torchvision"),
        (["--image-encoder", str(env["mnv2"])], "column 'audio' (spectrogram) needs --audio-encoder"),
    ]
    for flags, message in cases:
        assert main(["features", prep, "--out", str(tmp_path / "o"), "--no-progress", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    rc = main(["features", str(env["crisismmd"]), "--out", str(tmp_path / "t"), "--image-encoder",
               str(env["r18"]), "--text-encoder", str(tmp_path)])
    assert rc == 2 and "not a transformers model directory" in capsys.readouterr().err


def test_an_untrained_encoder_is_flagged(env, tmp_path, caplog):
    from torchvision.models import mobilenet_v2

    torch.save(mobilenet_v2(width_mult=0.25).state_dict(), tmp_path / "init.pth")  # BatchNorm at init
    extract_features(env["crisismmd"], tmp_path / "f", image=str(tmp_path / "init.pth"), text=str(env["bert"]))
    flagged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(flagged) == 1 and flagged[0].startswith("image embeddings of the first sample are all below")


def test_features_and_the_encoder_key_must_agree(env):
    with pytest.raises(ConfigError, match="train on it with encoder=features"):
        load_data(RunConfig(dataset="crema-d", data_root=str(env["crema-d-feat"])))
    with pytest.raises(ConfigError, match="holds prepared inputs, not features"):
        load_data(RunConfig(dataset="crema-d", data_root=str(env["crema-d"]), encoder="features"))
    with pytest.raises(ConfigError, match="encoder=features: dataset='synthetic-av' has no extracted features"):
        RunConfig(encoder="features")


@pytest.mark.parametrize("extra", [{}, {"fusion": "sgmft", "sgmft-tokens": 4, "sgmft-heads": 2}])
def test_every_method_trains_only_the_small_heads_on_features(env, extra):
    from fedcmi.dominance import Guidance
    from fedcmi.federated.client_step import client_step
    from fedcmi.methods.registry import METHOD_NAMES, method_spec
    from fedcmi.models.build import ModelSpec, model_for

    base = {"dataset": "crema-d", "data-root": str(env["crema-d-feat"]), "encoder": "features",
            "num-clients": 2, "multimodal-ratio": 1.0, "min-partition-size": 2, "local-epochs": 1,
            "batch-size": 4, "feature-dim": 16, **extra}
    remedies = {"logit-adjust": 1.0, "restricted-softmax": 0.5, "ntd-beta": 0.5, "ccvr-steps": 2}
    for strategy in (*METHOD_NAMES, "remedies"):
        if extra and strategy == "ogm-ge":  # OGM-GE splits the concat head's weights (as in raw mode)
            continue
        cfg = effective({**base, **({"strategy": strategy} if strategy != "remedies" else remedies)})
        strategy = cfg.method.strategy
        data = load_data(cfg)
        spec = ModelSpec.of(data)
        assert (spec.shape_a, spec.shape_b) == ((10, 1280), (2, 1280))
        model = model_for(cfg.model, spec, method_spec(strategy).decomposed)
        width = 16 // (4 if extra else 1)  # per segment (SG-MFT token)
        assert sum(p.numel() for p in model.enc_a.parameters()) == 1280 * width + width  # the projection only
        state = {k: v.clone() for k, v in model.state_dict().items()}
        client = client_data(data, build_federation(data, cfg)[0])
        guidance = Guidance(infiltrate=True, dominant="a", tau=np.ones(6))
        result = client_step(model, state, guidance, client, cfg, num_classes=6, server_round=2, partition_id=0)
        assert all(np.isfinite(v) for v in result.losses.values()), (strategy, result.losses)
        moved = [k for k, v in result.arrays.items() if v.is_floating_point() and not torch.equal(v, state[k])]
        assert moved, strategy


def test_ogm_ge_modulates_the_feature_projection(env):
    from fedcmi.methods.ogm_ge import ogm_modulate
    from fedcmi.models import build_model

    model = build_model("features", ((10, 1280), (2, 1280)), 6, 16, decomposed=False)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    ogm_modulate(model, (0.5, 1.0), torch.Generator().manual_seed(0))
    assert not torch.equal(model.enc_a.proj.weight.grad, torch.ones_like(model.enc_a.proj.weight))
    assert torch.equal(model.enc_a.proj.bias.grad, torch.ones_like(model.enc_a.proj.bias))  # weights only


def test_a_deployed_node_reads_a_features_directory(env):
    from clients.node_data import NodeConfigError, node_data

    cfg = RunConfig(dataset="crema-d", data_root=str(env["crema-d-feat"]), encoder="features")
    node = node_data({"partition-id": 3, "data-dir": str(env["crema-d-feat"]), "modalities": "visual"}, cfg)
    data = node.client_data(cfg)
    assert node.kind == "b" and data.a is None and tuple(data.b.shape) == (18, 2, 1280)
    with pytest.raises(NodeConfigError, match="train on it with encoder=features"):
        node_data({"partition-id": 3, "data-dir": str(env["crema-d-feat"]), "modalities": "visual"},
                  cfg.replace(encoder="cnn"))


@pytest.mark.slow
def test_two_rounds_of_fedavg_and_fedcmi_through_flower_on_features(env, tmp_path):
    out = tmp_path / "bench"
    digests = {p: _sha(env[p]) for p in ("mnv2",)}
    proc = subprocess.run(
        [sys.executable, "-m", "fedcmi.cli", "bench", "--strategies", "fedavg,fedcmi", "--seeds", "1",
         "--alphas", "1", "--mixes", "0.67:0.5", "--out", str(out), "dataset=crema-d",
         f"data-root={env['crema-d-feat']}", "encoder=features", "num-clients=3", "clients-per-round=2",
         "num-server-rounds=2", "min-partition-size=2", "local-epochs=1", "batch-size=4", "feature-dim=16",
         "client-num-cpus=1"],
        capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "results.csv") as fh:
        rows = {r["strategy"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"fedavg", "fedcmi"}
    for row in rows.values():
        assert int(row["round"]) == 2 and 0.0 <= float(row["acc_mm"]) <= 1.0
    assert {p: _sha(env[p]) for p in digests} == digests  # the frozen encoder file is untouched
