"""`fedcmi prepare` on generated fixture trees in the distributed layouts: prepare -> load -> partition,
resumption, skipped files, clear errors; and a 2-round simulation per data set through Flower (slow)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedcmi.cli import main
from fedcmi.config import ConfigError, RunConfig, resolve
from fedcmi.config.presets import preset_values
from fedcmi.data import load_data, load_prepared
from fedcmi.data.partition import build_federation, client_data
from fedcmi.data.prepare import prepare
from fedcmi.data.prepare import writer as writer_mod
from tests.prepare_fixtures import ave_tree, crema_d_tree, crisismmd_tree, tiny_bert

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("raw")
    crema_d_tree(base / "CREMA-D")
    ave_tree(base / "AVE_Dataset")
    crisismmd_tree(base / "CrisisMMD_v2.0")
    tiny_bert(base / "bert")
    return {"crema-d": base / "CREMA-D", "ave": base / "AVE_Dataset", "crisismmd": base / "CrisisMMD_v2.0",
            "bert": base / "bert"}


def _options(name: str, trees: dict[str, Path]) -> dict:
    return {"crema-d": {"image_size": 32}, "ave": {"image_size": 16},
            "crisismmd": {"image_size": 32, "tokenizer": str(trees["bert"])}}[name]


@pytest.fixture(scope="module")
def prepared(trees) -> dict[str, Path]:
    out = {}
    for name in ("crema-d", "ave", "crisismmd"):
        outcome = prepare(name, trees[name], show_progress=False, **_options(name, trees))
        assert outcome.skipped == []
        out[name] = outcome.path
    return out


@pytest.mark.parametrize("name,modalities,shape_a,shape_b,rows", [
    ("crema-d", ("audio", "visual"), (1, 257, 299), (3, 2, 32, 32), {"train": 18, "test": 6}),
    ("ave", ("audio", "visual"), (1, 257, 1004), (3, 4, 16, 16), {"train": 12, "test": 3}),
    ("crisismmd", ("text", "image"), (40,), (3, 32, 32), {"train": 18, "test": 6}),
])
def test_prepare_then_load_then_partition(prepared, trees, name, modalities, shape_a, shape_b, rows):
    path = prepared[name]
    assert path == trees[name] / "fedcmi-prepared"
    manifest = json.loads((path / "fedcmi.json").read_text())
    assert manifest["name"] == name and manifest["modalities"] == list(modalities)
    assert manifest["rows"] == rows and manifest["skipped"] == 0
    assert not (path / ".work").exists()
    data = load_prepared(trees[name])  # the raw root works too: it holds fedcmi-prepared/
    assert data.modalities == modalities and data.shapes() == (shape_a, shape_b)
    assert len(data.train) == rows["train"] and list(data.train["idx"]) == list(range(rows["train"]))
    xa, xb, y = data.arrays("test")
    assert xa.dtype == np.float32 and np.isfinite(xa).all() and np.isfinite(xb).all()
    cfg = RunConfig(dataset=name, data_root=str(path), num_clients=2, clients_per_round=2, min_partition_size=2)
    assert load_data(cfg) is data
    specs = build_federation(data, cfg)
    assert sorted(np.concatenate([s.indices for s in specs]).tolist()) == list(range(rows["train"]))
    cd = client_data(data, specs[0])
    assert len(cd) == len(specs[0].indices)
    held = cd.a if cd.a is not None else cd.b
    assert held.shape[1:] == (shape_a if cd.a is not None else shape_b)
    train_a = data.arrays("train")[0]
    assert np.array_equal(train_a[[1]], np.asarray(data.train.with_format("numpy")[1]["a"], np.float32)[None])


def test_spectrogram_is_z_scored_and_frames_are_normalised(prepared):
    data = load_prepared(prepared["crema-d"])
    xa, xb, _ = data.arrays("test")
    assert abs(float(xa[0].mean())) < 1e-3 and abs(float(xa[0].std()) - 1) < 1e-2
    assert -3 < float(xb.min()) and float(xb.max()) < 3  # ImageNet mean/std
    ids = load_prepared(prepared["crisismmd"]).arrays("test")[0]
    assert ids[:, 0].tolist() == [2.0] * len(ids)  # [CLS] first; token ids as exact floats


def test_rerun_skips_finished_work(prepared, trees, capsys):
    before = (prepared["crema-d"] / "train" / "dataset_info.json").stat().st_mtime_ns
    assert main(["prepare", "crema-d", "--root", str(trees["crema-d"]), "--image-size", "32", "--no-progress"]) == 0
    assert "already prepared" in capsys.readouterr().out
    assert (prepared["crema-d"] / "train" / "dataset_info.json").stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match="other settings.*image_size"):
        prepare("crema-d", trees["crema-d"], show_progress=False, image_size=16)


def test_failure_midway_keeps_finished_shards(tmp_path, monkeypatch):
    root = tmp_path / "CREMA-D"
    crema_d_tree(root, per_class=2, split_files=False)
    real_write = writer_mod._write_shard
    calls = {"n": 0}

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_write(*args, **kwargs)

    monkeypatch.setattr(writer_mod, "_write_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare("crema-d", root, tmp_path / "out", show_progress=False, shard_size=4, image_size=16)
    assert len(list((tmp_path / "out" / ".work" / "train").glob("shard-*"))) == 2
    monkeypatch.setattr(writer_mod, "_write_shard", real_write)
    outcome = prepare("crema-d", root, tmp_path / "out", show_progress=False, shard_size=4, image_size=16)
    assert outcome.resumed_shards == 2 and sum(outcome.rows.values()) == 12
    assert "stratified" in json.loads((tmp_path / "out" / "fedcmi.json").read_text())["settings"]["split"]


def test_corrupt_wav_and_image_are_skipped_named_and_reported(tmp_path, capsys):
    root = tmp_path / "CREMA-D"
    crema_d_tree(root, per_class=2)
    (root / "AudioWAV" / "1002_DFA_SAD_XX.wav").write_bytes(b"RIFF\x00\x00garbage")
    (root / "Image-01-FPS" / "1002_DFA_ANG_XX" / "00000.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "AudioWAV" / "1002_DFA_HAP_XX.wav").unlink()
    rc = main(["prepare", "crema-d", "--root", str(root), "--image-size", "16", "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "skipped 3 sample(s)" in err
    assert "1002_DFA_SAD_XX.wav: not a readable WAV file" in err
    assert "00000.jpg: not a readable image" in err and "1002_DFA_HAP_XX.wav: missing file" in err
    report = (root / "fedcmi-prepared" / "prepare-report.txt").read_text()
    assert "1002_DFA_SAD_XX.wav" in report and "1002_DFA_ANG_XX" in report
    assert load_prepared(root).manifest["skipped"] == 3 and len(load_prepared(root).train) == 6 - 3


def test_corrupt_tweet_image_is_skipped(tmp_path, trees):
    root = tmp_path / "CrisisMMD_v2.0"
    crisismmd_tree(root, per_class=4)
    victim = next((root / "data_image").rglob("*.jpg"))
    victim.write_bytes(b"GIF89a-broken")
    outcome = prepare("crisismmd", root, show_progress=False, tokenizer=str(trees["bert"]), image_size=16)
    assert [s.file for s in outcome.skipped] == [str(victim)]


@pytest.mark.parametrize("args,message", [
    (["crema-d", "--root", "{tmp}/nowhere"], "root '{tmp}/nowhere' does not exist"),
    (["crema-d", "--root", "{tmp}"], "audio folder '{tmp}/AudioWAV' does not exist"),
    (["ave", "--root", "{tmp}"], "annotation file '{tmp}/Annotations.txt' does not exist"),
    (["crisismmd", "--root", "{tmp}"], "image folder '{tmp}/data_image' does not exist"),
    (["crema-d", "--root", "{tmp}", "--tokenizer", "x"], "tokenizer do not apply"),
])
def test_missing_root_or_subfolder_is_one_clear_line(tmp_path, capsys, args, message):
    rc = main(["prepare", *[a.format(tmp=tmp_path) for a in args]])
    assert rc == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err


def test_crema_d_without_frames_or_decoder_says_how(tmp_path, capsys):
    (tmp_path / "AudioWAV").mkdir()
    (tmp_path / "VideoFlash").mkdir()
    rc = main(["prepare", "crema-d", "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    try:
        import av  # noqa: F401
    except ImportError:
        assert "no video decoder is installed; pip install av, or extract frames" in err


def test_missing_tokenizer_or_text_encoder_says_how_to_provide_it(tmp_path):
    crisismmd_tree(tmp_path / "c", per_class=1)
    with pytest.raises(ConfigError, match="huggingface-cli download no-such-model"):
        prepare("crisismmd", tmp_path / "c", show_progress=False, tokenizer="no-such-model")
    from fedcmi.models.pretrained import TextEncoder, resnet18_encoder

    with pytest.raises(ConfigError, match="text-encoder='no-such-model': not available offline"):
        TextEncoder("no-such-model")
    with pytest.raises(ConfigError, match="encoder-weights=.*does not exist"):
        resnet18_encoder(1, str(tmp_path / "missing.pth"))


def test_resnet_weights_from_a_local_file_are_used_and_kept(tmp_path):
    from torchvision.models import resnet18

    from fedcmi.models import build_model

    ref = resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    m = build_model("resnet18", ((1, 32, 32), (3, 2, 32, 32)), 3, 16, decomposed=True,
                    encoder_weights=str(tmp_path / "r18.pth"))
    assert torch.equal(m.enc_b.net.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)  # not re-initialised
    assert torch.allclose(m.enc_a.net.conv1.weight, ref.conv1.weight.mean(1, keepdim=True))


def test_load_prepared_errors_name_the_path(tmp_path):
    with pytest.raises(ConfigError, match=f"data-root='{tmp_path}/x': no such directory"):
        load_prepared(tmp_path / "x")
    with pytest.raises(ConfigError, match="not a prepared data set"):
        load_prepared(tmp_path)


def test_load_data_refuses_another_data_set(prepared):
    with pytest.raises(ConfigError, match="holds 'ave', not dataset='crema-d'"):
        load_data(RunConfig(dataset="crema-d", data_root=str(prepared["ave"])))


def test_paper_preset_sits_under_file_and_overrides(tmp_path):
    cfg = resolve(None, {"dataset": "crema-d", "data-root": "/d", "num-server-rounds": 3},
                  preset=preset_values("paper"))
    assert (cfg.num_clients, cfg.clients_per_round, cfg.dirichlet_alpha, cfg.multimodal_ratio) == (10, 2, 5.0, 0.5)
    assert cfg.num_server_rounds == 3 and cfg.encoder == "resnet18" and cfg.batch_size == 16
    with pytest.raises(ConfigError, match="--preset 'nope'"):
        preset_values("nope")


# --- 2 rounds through Flower's simulation engine, per data set -------------------------------------------
SIM = ["num-clients=3", "clients-per-round=2", "num-server-rounds=2", "min-partition-size=2", "local-epochs=1",
       "batch-size=4", "feature-dim=16", "multimodal-ratio=0.34", "client-num-cpus=1"]


@pytest.mark.slow
@pytest.mark.parametrize("name,extra", [
    ("crema-d", []),
    ("ave", ["strategy=fedavg"]),
    ("crisismmd", ["fusion=sgmft", "sgmft-tokens=4", "sgmft-heads=2"]),
])
def test_two_round_simulation_through_flower(prepared, trees, tmp_path, name, extra):
    if name == "crisismmd":
        extra = [*extra, f"text-encoder={trees['bert']}"]
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fedcmi.cli", "simulate", "--out", str(out), f"dataset={name}",
         f"data-root={trees[name]}", *SIM, *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    names = json.loads((prepared[name] / "fedcmi.json").read_text())["modalities"]
    assert all(f"acc_{m}" in rows[-1] for m in names)
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    assert json.loads((out / "config.json").read_text())["dataset"] == name
