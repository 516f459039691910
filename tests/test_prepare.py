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
from tests.prepare_fixtures import (
    AVE_CLASSES,
    EMOTIONS,
    ave_segment,
    ave_tree,
    crema_d_tree,
    crisismmd_tree,
    tiny_bert,
    video_colour,
    write_video,
    write_wav,
)

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("raw")
    crema_d_tree(base / "CREMA-D")
    crema_d_tree(base / "CREMA-D-videos", video=True)  # AudioWAV/ + VideoFlash/*.flv, as downloaded
    ave_tree(base / "AVE_Dataset")
    ave_tree(base / "AVE_Dataset-videos", video=True)  # AVE/*.mp4, as downloaded
    crisismmd_tree(base / "CrisisMMD_v2.0")
    tiny_bert(base / "bert")
    return {"crema-d": base / "CREMA-D", "crema-d-flv": base / "CREMA-D-videos", "ave": base / "AVE_Dataset",
            "ave-mp4": base / "AVE_Dataset-videos", "crisismmd": base / "CrisisMMD_v2.0", "bert": base / "bert"}


TREES = {"crema-d": "crema-d", "crema-d-flv": "crema-d", "ave": "ave", "ave-mp4": "ave", "crisismmd": "crisismmd"}


def _options(name: str, trees: dict[str, Path]) -> dict:
    return {"crema-d": {"image_size": 32}, "ave": {"image_size": 16},
            "crisismmd": {"image_size": 32, "tokenizer": str(trees["bert"])}}[name]


@pytest.fixture(scope="module")
def prepared(trees) -> dict[str, Path]:
    out = {}
    for tree, name in TREES.items():
        outcome = prepare(name, trees[tree], show_progress=False, **_options(name, trees))
        assert outcome.skipped == []
        out[tree] = outcome.path
    return out


@pytest.mark.parametrize("tree,modalities,shape_a,shape_b,rows", [
    ("crema-d", ("audio", "visual"), (1, 257, 299), (3, 2, 32, 32), {"train": 18, "test": 6}),
    ("crema-d-flv", ("audio", "visual"), (1, 257, 299), (3, 2, 32, 32), {"train": 18, "test": 6}),
    ("ave", ("audio", "visual"), (1, 257, 1004), (3, 4, 16, 16), {"train": 12, "test": 3}),
    ("ave-mp4", ("audio", "visual"), (1, 257, 1004), (3, 4, 16, 16), {"train": 12, "test": 3}),
    ("crisismmd", ("text", "image"), (40,), (3, 32, 32), {"train": 18, "test": 6}),
])
def test_prepare_then_load_then_partition(prepared, trees, tree, modalities, shape_a, shape_b, rows):
    name = TREES[tree]
    path = prepared[tree]
    assert path == trees[tree] / "fedcmi-prepared"
    manifest = json.loads((path / "fedcmi.json").read_text())
    assert manifest["name"] == name and manifest["modalities"] == list(modalities)
    assert manifest["rows"] == rows and manifest["skipped"] == 0
    assert not (path / ".work").exists()
    data = load_prepared(trees[tree])  # the raw root works too: it holds fedcmi-prepared/
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


def test_crema_d_without_videos_or_frames_says_which(tmp_path, capsys):
    write_wav(tmp_path / "AudioWAV" / "1001_DFA_ANG_XX.wav", 1.0, 300)
    rc = main(["prepare", "crema-d", "--root", str(tmp_path)])
    assert rc == 2
    assert f"neither videos '{tmp_path}/VideoFlash' nor extracted frames" in capsys.readouterr().err


# --- the videos as distributed (CREMA-D FLV, AVE MP4), decoded with PyAV -----------------------------
def _rgb(frames: np.ndarray) -> np.ndarray:
    """Mean colour (0-255) of each frame of 3 x F x S x S normalised frames: F x 3."""
    from fedcmi.data.prepare.media import IMAGENET_MEAN, IMAGENET_STD

    return (frames.mean(axis=(2, 3)).T * IMAGENET_STD + IMAGENET_MEAN) * 255


def test_flv_and_mp4_decode_to_the_encoded_frames_and_audio(prepared):
    flv = load_prepared(prepared["crema-d-flv"])
    assert flv.manifest["settings"]["frame_source"] == "VideoFlash"
    xa, xb, y = flv.arrays("test")
    for key, frames, label in zip(flv.test["key"], xb, y, strict=True):
        assert EMOTIONS[int(label)] == key.split("_")[2]
        expected = [video_colour(int(label), 6, second) for second in (0, 1)]  # seconds 0 and 1 of the clip
        assert np.abs(_rgb(frames) - np.array(expected)).max() < 8, key
    # the audio comes from AudioWAV either way: the same spectrograms as the frame-folder tree
    assert np.array_equal(xa, load_prepared(prepared["crema-d"]).arrays("test")[0])

    mp4 = load_prepared(prepared["ave-mp4"])
    settings = mp4.manifest["settings"]
    assert settings["audio_source"] == settings["frame_source"] == "AVE/*.mp4" and settings["frames"] == 4
    xa, xb, y = mp4.arrays("test")
    for key, spec, frames, label in zip(mp4.test["key"], xa, xb, y, strict=True):
        start, end = ave_segment(int(key.split(":")[0][-2:]))
        assert key.endswith(f":{start}-{end}") and AVE_CLASSES[int(label)] == AVE_CLASSES[int(key[3])]
        seconds = np.linspace(start, end - 1, 4).round().astype(int)  # 4 frames spread over the segment
        expected = [video_colour(int(label), 3, int(s)) for s in seconds]
        assert np.abs(_rgb(frames) - np.array(expected)).max() < 8, key
        tone = 250 + 200 * int(label)  # Hz; STFT bins are 16000 / 512 = 31.25 Hz apart
        assert abs(int(spec[0].mean(axis=1).argmax()) - tone / 31.25) <= 1, key
        assert abs(float(spec.mean())) < 1e-3 and abs(float(spec.std()) - 1) < 1e-2


def test_ave_mixes_an_extracted_audio_folder_with_the_mp4_frames(tmp_path, prepared):
    root = tmp_path / "AVE_Dataset"
    vids = ave_tree(root, per_class=2, video=True)
    for vid in vids:  # a different tone than the MP4's: the spectrogram shows which one was used
        write_wav(root / "audio" / f"{vid}.wav", 10.0, 2000, rate=8_000)
    outcome = prepare("ave", root, show_progress=False, image_size=16)
    assert outcome.skipped == [] and outcome.rows == {"train": 3, "test": 3}
    data = load_prepared(root)
    assert (data.manifest["settings"]["audio_source"], data.manifest["settings"]["frame_source"]) == \
        ("audio/*.wav", "AVE/*.mp4")
    xa, xb, y = data.arrays("test")
    assert (xa[:, 0].mean(axis=2).argmax(axis=1) == 64).all()  # 2000 Hz / 31.25 Hz per bin
    assert np.allclose(xb, load_prepared(prepared["ave-mp4"]).arrays("test")[1], atol=1e-5)


def _truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])


def _corrupt_video_packet(path: Path, index: int) -> None:
    """Overwrite the payload of the ``index``-th video packet with random bytes (the container stays intact)."""
    import av

    with av.open(str(path)) as c:
        pos, size = [(p.pos, p.size) for p in c.demux(video=0) if p.size][index]
    data = bytearray(path.read_bytes())
    data[pos + 4: pos + size] = np.random.default_rng(0).integers(0, 256, size - 4, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_corrupt_or_truncated_videos_are_skipped_named_and_reported(tmp_path, capsys):
    root = tmp_path / "CREMA-D"
    crema_d_tree(root, per_class=2, video=True)
    flv = root / "VideoFlash"
    _truncate(flv / "1002_DFA_SAD_XX.flv", 0.5)
    (flv / "1002_DFA_ANG_XX.flv").write_bytes(b"FLV\x01\x05" + bytes(range(256)) * 8)
    (flv / "1002_DFA_HAP_XX.flv").unlink()
    rc = main(["prepare", "crema-d", "--root", str(root), "--image-size", "16", "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "skipped 3 sample(s)" in err
    assert "1002_DFA_SAD_XX.flv: truncated: its packets end at" in err
    assert "1002_DFA_ANG_XX.flv: not a readable video" in err and "1002_DFA_HAP_XX.flv: missing file" in err
    report = (root / "fedcmi-prepared" / "prepare-report.txt").read_text()
    assert report.startswith("# fedcmi prepare crema-d: train 3 rows, test 6 rows, 3 skipped")
    assert sorted(line.split("\t")[1] for line in report.splitlines()[2:]) == \
        ["1002_DFA_ANG_XX", "1002_DFA_HAP_XX", "1002_DFA_SAD_XX"]

    root = tmp_path / "AVE_Dataset"
    ave_tree(root, per_class=3, video=True)
    _truncate(root / "AVE" / "vid0x01.mp4", 0.6)  # moov (the index) is at the end: gone
    write_video(root / "AVE" / "vid1x01.mp4", [video_colour(1, 3, s) for s in range(10)], fps=1,
                audio_freq=450, faststart=True)
    _truncate(root / "AVE" / "vid1x01.mp4", 0.6)  # moov first: the index survives, the packets do not
    _corrupt_video_packet(root / "AVE" / "vid2x01.mp4", 3)  # second 3 is in the segment [1, 7)
    split = (root / "trainSet.txt").read_text().replace("vid0x02&good&2&8", "vid0x02&good&12&15")
    (root / "trainSet.txt").write_text(split)  # a segment after the end of the 10 s video
    outcome = prepare("ave", root, show_progress=False, image_size=16)
    reasons = {Path(s.file).name: s.reason for s in outcome.skipped}
    assert sorted(reasons) == ["vid0x01.mp4", "vid0x02.mp4", "vid1x01.mp4", "vid2x01.mp4"]
    assert reasons["vid0x01.mp4"].startswith("not a readable video (InvalidDataError")
    assert reasons["vid1x01.mp4"].startswith("truncated: ")
    assert reasons["vid2x01.mp4"].startswith("not a readable video")
    assert reasons["vid0x02.mp4"] == "no frames at or after 12 s (the video ends at 10.13 s)"
    assert outcome.rows == {"train": 2, "test": 3}
    report = outcome.report_path.read_text()
    assert "4 skipped" in report and all(str(root / "AVE" / name) in report for name in reasons)


# --- hostile files: each is one skipped, named sample, and nothing is decoded past the caps --------------
def test_hostile_images_and_wavs_are_skipped_and_named(tmp_path, capsys):
    from tests.prepare_fixtures import write_png_bomb, write_sparse_wav

    root = tmp_path / "CREMA-D"
    crema_d_tree(root, per_class=2)
    write_png_bomb(root / "Image-01-FPS" / "1002_DFA_ANG_XX" / "00000.jpg")  # 31 KB, 16000 x 16000
    write_sparse_wav(root / "AudioWAV" / "1002_DFA_SAD_XX.wav")  # 1 GiB
    write_wav(root / "AudioWAV" / "1002_DFA_HAP_XX.wav", 8 / 16_000, 300)  # 8 samples
    write_wav(root / "AudioWAV" / "1002_DFA_FEA_XX.wav", 1.0, 30, rate=100)  # 100 Hz: 160x upsampling
    rc = main(["prepare", "crema-d", "--root", str(root), "--image-size", "16", "--no-progress"])
    assert rc == 0
    assert "skipped 4 sample(s)" in capsys.readouterr().err
    report = (root / "fedcmi-prepared" / "prepare-report.txt").read_text()
    lines = {line.split("\t")[1]: line.split("\t")[2:] for line in report.splitlines()[2:]}
    assert lines["1002_DFA_ANG_XX"][0].endswith("00000.jpg") and "decompression bomb" in lines["1002_DFA_ANG_XX"][1]
    assert lines["1002_DFA_SAD_XX"][1] == "WAV file of 1024 MiB is over the 64 MiB cap"
    assert lines["1002_DFA_HAP_XX"][1].startswith("only 8 audio samples")
    assert lines["1002_DFA_FEA_XX"][1] == "sample rate 100 Hz is outside 4000-384000 Hz"
    assert len(load_prepared(root).train) == 2


def test_bad_ave_segments_are_skipped_and_named(tmp_path):
    root = tmp_path / "AVE_Dataset"
    ave_tree(root, per_class=3)
    write_wav(root / "audio" / "vid1x02.wav", 8 / 8_000, 450, rate=8_000)  # 8 samples
    bad = {"vid0x01": "nan&6", "vid1x01": "1&inf", "vid2x01": "7&2", "vid0x02": "12&15",
           "vid2x02": "0&1e12"}  # huge but finite: clipped to the 10 s of the video, prepared
    lines = []
    for line in (root / "trainSet.txt").read_text().splitlines():
        cat, vid, quality, *_ = line.split("&")
        lines.append(f"{cat}&{vid}&{quality}&{bad[vid]}" if vid in bad else line)
    lines.append("Bark&../AVE_Dataset/audio/vid0x00&good&0&5")
    (root / "trainSet.txt").write_text("\n".join(lines) + "\n")
    outcome = prepare("ave", root, show_progress=False, image_size=16)
    split_file = str(root / "trainSet.txt")
    got = {s.key.split(":")[0]: (s.file, s.reason) for s in outcome.skipped}
    n = {vid: i + 1 for i, vid in enumerate(ln.split("&")[1] for ln in lines)}
    assert got["vid0x01"] == (f"{split_file}:{n['vid0x01']}", "StartTime=nan, EndTime=6: not finite")
    assert got["vid1x01"] == (f"{split_file}:{n['vid1x01']}", "StartTime=1, EndTime=inf: not finite")
    assert got["vid2x01"] == (f"{split_file}:{n['vid2x01']}", "segment [7, 2) is empty, reversed or negative")
    assert got["vid0x02"][0] == str(root / "audio" / "vid0x02.wav")
    assert got["vid0x02"][1] == "only 0 audio samples (0.000 s) in [12, 15) s of 10.000 s; at least 0.2 s needed"
    assert got["vid1x02"][1].startswith("only 0 audio samples (0.000 s) in [2, 8) s of 0.001 s")
    assert got["../AVE_Dataset/audio/vid0x00"][1].endswith("is not a plain file name")
    assert "vid2x02" not in got  # [0, 1e12): the whole video, and no 1e12-long list of seconds
    assert outcome.rows == {"train": 7 - 6, "test": 3} and len(outcome.skipped) == 6
    assert "6 skipped" in outcome.report_path.read_text()


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
    assert (cfg.federation.num_clients, cfg.server.clients_per_round, cfg.federation.dirichlet_alpha,
            cfg.federation.multimodal_ratio) == (10, 2, 5.0, 0.5)
    assert cfg.server.num_server_rounds == 3 and cfg.model.encoder == "resnet18" and cfg.training.batch_size == 16
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
