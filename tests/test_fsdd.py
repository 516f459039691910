"""FSDD (spoken digits) paired with handwritten digits, and natural federations (one client per speaker, actor,
event): the layout parser, the pairing, the spectrogram, the IDX reader, the natural partitioner on FSDD,
CREMA-D and CrisisMMD fixtures, `fedcmi partitions`, the bench axis, and a 2-round simulation through Flower."""

from __future__ import annotations

import csv
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedcmi.cli import main
from fedcmi.config import ConfigError, RunConfig
from fedcmi.data import load_data, load_prepared
from fedcmi.data.partition import build_federation, client_data, federation
from fedcmi.data.prepare import fsdd as fsdd_mod
from fedcmi.data.prepare import prepare
from fedcmi.data.prepare.digit_images import mnist, pair, read_idx, sklearn_digits
from fedcmi.data.prepare.media import mel_filterbank
from tests.prepare_fixtures import (
    FSDD_SPEAKERS,
    crema_d_tree,
    crisismmd_tree,
    fsdd_tree,
    mnist_tree,
    tiny_bert,
    write_idx,
    write_wav,
)

ROOT = Path(__file__).parents[1]
TAKES = 7  # takes 0-4 test, 5-6 train: 3 speakers x 10 digits x 2 = 60 training clips, 150 test clips


@pytest.fixture(scope="module")
def fsdd_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fsdd") / "free-spoken-digit-dataset"
    fsdd_tree(root, takes=TAKES)
    return root


@pytest.fixture(scope="module")
def prepared(fsdd_root) -> Path:
    outcome = prepare("fsdd", fsdd_root, show_progress=False)
    assert outcome.skipped == []
    return outcome.path


@functools.cache
def _digit_classes() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target


def _image_label(ref: str) -> int:
    """The class of scikit-learn digit ``digits:<index>``."""
    name, pos = ref.split(":")
    assert name == "digits"
    return int(_digit_classes()[int(pos)])


# --- prepare -------------------------------------------------------------------------------------------
def test_prepare_keeps_the_official_split_the_speaker_and_the_shapes(prepared, fsdd_root):
    data = load_prepared(fsdd_root)  # the raw root holds fedcmi-prepared/
    assert data.name == "fsdd" and data.modalities == ("audio", "image") and data.num_classes == 10
    assert data.shapes() == ((1, 40, 101), (1, 8, 8))
    assert data.manifest["rows"] == {"train": 60, "test": 150}
    takes = {split: {int(k.split("_")[2]) for k in ds["key"]} for split, ds in (("train", data.train),
                                                                               ("test", data.test))}
    assert takes == {"train": {5, 6}, "test": {0, 1, 2, 3, 4}}
    assert sorted(set(data.train["speaker"])) == list(FSDD_SPEAKERS)
    assert all(k.split("_")[1] == s for k, s in zip(data.train["key"], data.train["speaker"], strict=True))
    xa, xb, y = data.arrays("test")
    assert np.isfinite(xa).all() and np.isfinite(xb).all()
    assert abs(float(xa[0].mean())) < 1e-3 and abs(float(xa[0].std()) - 1) < 1e-2  # z-scored per clip
    assert [int(k[0]) for k in data.test["key"]] == y.tolist()  # label = the digit of the file name


def test_spectrogram_puts_a_tone_in_its_mel_band(prepared):
    data = load_prepared(prepared)
    xa, _, y = data.arrays("test")
    fb = mel_filterbank(256, 40, 8_000).numpy()  # 129 x 40
    for spec, digit in zip(xa, y, strict=True):
        tone_bin = round((300 + 150 * int(digit)) / (8_000 / 256))
        expected = int(fb[tone_bin].argmax())
        loudest = int(spec[0, :, :20].mean(axis=1).argmax())  # the first 0.2 s: the tone lasts 0.3 s
        assert abs(loudest - expected) <= 1, (digit, loudest, expected)


def test_pairing_is_same_class_leak_free_and_seeded(fsdd_root, prepared):
    pools = sklearn_digits()
    data = load_prepared(prepared)
    for ds in (data.train, data.test):
        assert [_image_label(ref) for ref in ds["image"]] == list(ds["label"])
    test_refs, train_refs = set(data.test["image"]), set(data.train["image"])
    assert not test_refs & train_refs
    assert test_refs <= {pools["test"].ref(i) for i in range(len(pools["test"]))}
    assert not {pools["test"].ref(i) for i in range(len(pools["test"]))} & \
        {pools["train"].ref(i) for i in range(len(pools["train"]))}
    # the stored image is the referenced one
    xb = data.arrays("test")[1]
    ref = data.test["image"][3]
    pos = list(pools["test"].ids).index(int(ref.split(":")[1]))
    assert np.array_equal(xb[3], pools["test"].tensor(pos))
    # 15 test clips of a class, 45 test images of it: no image twice within a split
    assert len(test_refs) == len(data.test)

    def pairs(seed: int) -> dict[str, str]:
        src = fsdd_mod.source(fsdd_root, seed=seed)
        return {it.key: it.extra[1] for split in src.splits.values() for it in split}

    assert pairs(0) == pairs(0) == dict(zip(list(data.test["key"]) + list(data.train["key"]),
                                            list(data.test["image"]) + list(data.train["image"]), strict=True))
    other = pairs(1)
    assert other != pairs(0) and sum(other[k] != v for k, v in pairs(0).items()) > 100


def test_pair_reuses_images_evenly_when_the_pool_is_small():
    pools = sklearn_digits()
    labels = [3] * 500  # ~135 training images of a 3
    where = pair(labels, pools["train"], seed=0, stream=0)
    assert (pools["train"].labels[where] == 3).all()
    uses = np.bincount(where)[np.flatnonzero(pools["train"].labels == 3)]
    assert uses.min() >= 500 // len(uses) and uses.max() <= -(-500 // len(uses))


def test_mnist_images_from_idx_files(tmp_path, fsdd_root):
    labels = mnist_tree(tmp_path / "mnist")
    pools = mnist(tmp_path / "mnist")
    assert pools["train"].labels.tolist() == labels["train"].tolist() and len(pools["test"]) == 20
    outcome = prepare("fsdd", fsdd_root, tmp_path / "out", show_progress=False, images=str(tmp_path / "mnist"))
    data = load_prepared(outcome.path)
    assert data.shapes() == ((1, 40, 101), (1, 28, 28))
    assert data.manifest["settings"]["images"] == "mnist"
    assert {r.split(":")[0] for r in data.train["image"]} == {"mnist-train"}
    assert {r.split(":")[0] for r in data.test["image"]} == {"mnist-test"}
    xb = data.arrays("test")[1]
    raw = xb * 0.3081 + 0.1307  # back to [0, 1]
    for img, ref, label in zip(raw, data.test["image"], data.test["label"], strict=True):
        pos = int(ref.split(":")[1])
        assert round(float(img[0, 0, 0]) * 255) == pos  # the image the reference names
        assert round(float(img[0, 10, 10]) * 255) == 20 + 20 * label  # of the clip's class


def test_idx_reader_checks_the_format(tmp_path):
    x = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", x)
    write_idx(tmp_path / "b.gz", x, compress=True)
    write_idx(tmp_path / "c", np.array([1.5, -2.0], dtype=">f4"))
    assert np.array_equal(read_idx(tmp_path / "a"), x) and np.array_equal(read_idx(tmp_path / "b.gz"), x)
    assert read_idx(tmp_path / "c").tolist() == [1.5, -2.0]
    (tmp_path / "short").write_bytes((tmp_path / "a").read_bytes()[:-3])
    with pytest.raises(ConfigError, match=r"short: IDX header says \(2, 3, 4\) of uint8 \(40 bytes\), the file "
                                          r"holds 37"):
        read_idx(tmp_path / "short")
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ConfigError, match="png: not an IDX file"):
        read_idx(tmp_path / "png")
    with pytest.raises(ConfigError, match="MNIST: .*train-images-idx3-ubyte \\(or .gz\\) does not exist"):
        mnist(tmp_path)
    mnist_tree(tmp_path / "m")
    write_idx(tmp_path / "m" / "train-labels-idx1-ubyte", np.full(40, 12, np.uint8))
    with pytest.raises(ConfigError, match="labels must be digits 0-9"):
        mnist(tmp_path / "m")


def test_bad_missing_and_misnamed_files_are_skipped_and_reported(tmp_path, capsys):
    root = tmp_path / "fsdd"
    fsdd_tree(root, speakers=("alice", "bob"), takes=6)
    rec = root / "recordings"
    (rec / "3_alice_5.wav").write_bytes(b"RIFF\x00\x00garbage")  # corrupt
    (rec / "4_bob_0.wav").unlink()  # missing: bob recorded take 0 of the other digits
    (rec / "7-bob-5.wav").write_bytes((rec / "7_bob_5.wav").read_bytes())  # misnamed
    (rec / "12_bob_1.wav").write_bytes(b"x")  # misnamed: no digit 12
    (rec / "notes.txt").write_text("hello")  # misnamed
    (rec / ".DS_Store").write_bytes(b"\0")  # hidden: ignored
    (rec / "1_bob_05.wav").write_bytes((rec / "1_bob_5.wav").read_bytes())  # take 5 twice
    write_wav(rec / "2_alice_1.wav", 0.01, 500, rate=8_000)  # 80 samples
    write_wav(rec / "5_alice_2.wav", 0.3, 500, rate=16_000)  # another rate: resampled, kept
    rc = main(["prepare", "fsdd", "--root", str(root), "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "skipped 7 sample(s)" in err
    report = (root / "fedcmi-prepared" / "prepare-report.txt").read_text().splitlines()
    assert report[0] == "# fedcmi prepare fsdd: train 19 rows, test 98 rows, 7 skipped"
    reasons = {Path(line.split("\t")[2]).name: line.split("\t")[3] for line in report[2:]}
    assert reasons["3_alice_5.wav"].startswith("not a readable WAV file")
    assert reasons["4_bob_0.wav"] == "missing file (bob recorded take 0 of other digits)"
    for name in ("7-bob-5.wav", "12_bob_1.wav", "notes.txt"):
        assert reasons[name] == "misnamed: not {digit}_{speaker}_{index}.wav"
    assert reasons["1_bob_05.wav"] == "duplicate of 1_bob_5.wav"
    assert reasons["2_alice_1.wav"].startswith("only 80 audio samples")
    assert ".DS_Store" not in reasons and "5_alice_2.wav" not in reasons
    data = load_prepared(root)
    assert data.manifest["skipped"] == 7 and "5_alice_2" in data.test["key"]


def test_missing_recordings_folder_is_one_line(tmp_path, capsys):
    assert main(["prepare", "fsdd", "--root", str(tmp_path)]) == 2
    assert f"recordings folder '{tmp_path}/recordings' does not exist" in capsys.readouterr().err
    assert main(["prepare", "fsdd", "--root", str(tmp_path), "--frames", "2"]) == 2
    assert "frames do not apply (it takes images, seed)" in capsys.readouterr().err


# --- natural federations ---------------------------------------------------------------------------------
def _natural(name: str, root: Path, clients: int, splits: int = 1, **keys) -> RunConfig:
    return RunConfig(dataset=name, data_root=str(root), partitioner="natural", num_clients=clients,
                     natural_splits=splits, clients_per_round=min(2, clients), **keys)


def test_natural_federation_is_one_client_per_speaker(prepared):
    data = load_prepared(prepared)
    specs = build_federation(data, _natural("fsdd", prepared, 3))
    speakers = np.asarray(data.train["speaker"])
    assert [s.group for s in specs] == list(FSDD_SPEAKERS)
    for spec in specs:
        assert set(speakers[spec.indices]) == {spec.group} and len(spec.indices) == 20
    assert sorted(np.concatenate([s.indices for s in specs]).tolist()) == list(range(60))


def test_natural_splits_cut_each_group_iid_seeded(prepared):
    data = load_prepared(prepared)
    cfg = _natural("fsdd", prepared, 6, 2, multimodal_ratio=0.5)
    specs = build_federation(data, cfg)
    assert [s.group for s in specs] == [g for g in FSDD_SPEAKERS for _ in range(2)]
    assert [len(s.indices) for s in specs] == [10] * 6
    assert sorted(np.concatenate([s.indices for s in specs]).tolist()) == list(range(60))
    assert [s.kind for s in specs].count("mm") == 3  # the modality mix on top
    again = build_federation(data, cfg)
    assert all(np.array_equal(a.indices, b.indices) for a, b in zip(specs, again, strict=True))
    other = build_federation(data, cfg.replace(seed=1))
    assert not all(np.array_equal(a.indices, b.indices) for a, b in zip(specs, other, strict=True))
    assert [s.group for s in other] == [s.group for s in specs]
    cd = client_data(data, specs[0])
    assert len(cd) == 10


def test_natural_needs_groups_times_splits_clients_and_natural_groups(prepared):
    data = load_prepared(prepared)
    with pytest.raises(ConfigError, match=r"fsdd has 3 speakers x natural-splits=2 = 6 clients; set num-clients=6 "
                                          r"\(not 5\)"):
        build_federation(data, _natural("fsdd", prepared, 5, 2))
    with pytest.raises(ConfigError, match="natural-splits=21: speaker 'alice' has only 20 training sample"):
        build_federation(data, _natural("fsdd", prepared, 63, 21))
    cfg = RunConfig(partitioner="natural", num_clients=3, clients_per_round=2)
    with pytest.raises(ConfigError, match="dataset='synthetic-av' has no natural groups .*fsdd: speakers"):
        build_federation(load_data(cfg), cfg)
    with pytest.raises(ConfigError, match="natural-splits=0: must be >= 1"):
        RunConfig(natural_splits=0)


def test_natural_groups_from_keys_when_the_column_is_missing(prepared, tmp_path):
    """A directory without the speaker column (e.g. made by `fedcmi features`) still knows the speakers."""
    data = load_prepared(prepared)
    stripped = tmp_path / "no-speaker"
    from datasets import DatasetDict

    DatasetDict({"train": data.train.remove_columns("speaker"), "test": data.test}).save_to_disk(str(stripped))
    (stripped / "fedcmi.json").write_text((prepared / "fedcmi.json").read_text())
    one = build_federation(data, _natural("fsdd", prepared, 3))
    two = build_federation(load_prepared(stripped), _natural("fsdd", stripped, 3))
    assert [s.group for s in one] == [s.group for s in two]
    assert all(np.array_equal(a.indices, b.indices) for a, b in zip(one, two, strict=True))


def test_natural_federation_of_crema_d_actors(tmp_path):
    root = tmp_path / "CREMA-D"
    crema_d_tree(root, per_class=4)  # actors 1001-1004; 1001 is the test split
    prepare("crema-d", root, show_progress=False, image_size=16)
    data = load_prepared(root)
    specs = build_federation(data, _natural("crema-d", root, 3))
    keys = np.asarray(data.train["key"])
    assert [s.group for s in specs] == ["1002", "1003", "1004"]
    for spec in specs:
        assert {k.split("_")[0] for k in keys[spec.indices]} == {spec.group} and len(spec.indices) == 6
    specs = build_federation(data, _natural("crema-d", root, 6, 2))
    assert [len(s.indices) for s in specs] == [3] * 6
    with pytest.raises(ConfigError, match="crema-d has 3 actors x natural-splits=1 = 3 clients"):
        build_federation(data, _natural("crema-d", root, 4))


def test_natural_federation_of_crisismmd_events(tmp_path):
    root = tmp_path / "CrisisMMD_v2.0"
    crisismmd_tree(root, per_class=6, events=("california_wildfires", "hurricane_irma"))
    prepare("crisismmd", root, show_progress=False, image_size=16, tokenizer=str(tiny_bert(tmp_path / "bert")))
    data = load_prepared(root)
    specs = build_federation(data, _natural("crisismmd", root, 2))
    assert [s.group for s in specs] == ["california_wildfires", "hurricane_irma"]
    events = np.asarray(data.train["event"])
    assert all(set(events[s.indices]) == {s.group} for s in specs)
    # prepared before the event column existed: one line saying so
    old = tmp_path / "old"
    from datasets import DatasetDict

    DatasetDict({"train": data.train.remove_columns("event"), "test": data.test}).save_to_disk(str(old))
    (old / "fedcmi.json").write_text((root / "fedcmi-prepared" / "fedcmi.json").read_text())
    with pytest.raises(ConfigError, match="has no 'event' column .*fedcmi prepare crisismmd"):
        build_federation(load_prepared(old), _natural("crisismmd", old, 2))


def test_partitions_command_shows_groups_sizes_and_classes(prepared, capsys):
    args = ["partitions", "dataset=fsdd", f"data-root={prepared}", "partitioner=natural", "num-clients=6",
            "natural-splits=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fsdd: 6 clients, natural (3 speakers x 2)" in out and "speaker" in out
    assert "3 speakers (natural groups):" in out and "alice: 20 samples, 10 classes" in out
    assert main([*args[:-2], "num-clients=4"]) == 2
    assert "set num-clients=3 (not 4)" in capsys.readouterr().err
    federation(_natural("fsdd", prepared, 6, 2))  # cached per process: the same objects the second time
    assert federation(_natural("fsdd", prepared, 6, 2)) is federation(_natural("fsdd", prepared, 6, 2))


def test_bench_grid_takes_natural_as_an_alpha(prepared, tmp_path):
    from fedcmi.bench.plan import make_plan

    plan = make_plan("quick", tmp_path / "b", {"dataset": "fsdd", "data-root": str(prepared), "num-clients": 6,
                                               "natural-splits": 2, "clients-per-round": 3},
                     strategies="fedavg", seeds="1", alphas="natural,0.5")
    cells = plan.cells()
    assert [c.id for c in cells] == ["fedavg__alpha-natural__mix-0.5-0.5__seed-0",
                                     "fedavg__alpha-natural__mix-1-0.5__seed-0",
                                     "fedavg__alpha-0.5__mix-0.5-0.5__seed-0", "fedavg__alpha-0.5__mix-1-0.5__seed-0"]
    natural = plan.cell_config(cells[0])
    assert natural.federation.partitioner == "natural" and natural.federation.natural_splits == 2
    assert plan.cell_config(cells[2]).federation.partitioner == "dirichlet"
    assert [s.group for s in federation(natural)] == [g for g in FSDD_SPEAKERS for _ in range(2)]


# --- 2 rounds through Flower's simulation engine ------------------------------------------------------------
@pytest.mark.slow
def test_two_round_natural_simulation_through_flower(prepared, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fedcmi.cli", "simulate", "--out", str(out), "dataset=fsdd", f"data-root={prepared}",
         "partitioner=natural", "num-clients=3", "clients-per-round=2", "num-server-rounds=2", "local-epochs=1",
         "batch-size=8", "feature-dim=16", "multimodal-ratio=0.34", "client-num-cpus=1"],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fsdd, 3 clients (2 per round), 2 rounds" in proc.stdout
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    assert "acc_audio" in rows[-1] and "acc_image" in rows[-1]
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    saved = json.loads((out / "config.json").read_text())
    assert saved["partitioner"] == "natural" and saved["dataset"] == "fsdd"


def test_frozen_encoders_turn_fsdd_into_features_that_keep_the_speakers_and_train(prepared, tmp_path):
    """`fedcmi features` on a prepared FSDD directory (the spectrogram and the 8x8 digit through
    a local torchvision file). The audio keeps one token per output time step of the CNN, the image is one token;
    the speaker column and so the natural federation are those of the prepared directory, and FedCMI trains
    only the small heads on them."""
    import torch
    from torchvision.models import mobilenet_v2

    from fedcmi.data.features.extract import extract_features
    from fedcmi.dominance import Guidance
    from fedcmi.federated.client_step import client_step
    from fedcmi.methods.registry import method_spec
    from fedcmi.models.build import ModelSpec, model_for
    from tests.test_features import calibrated

    torch.manual_seed(0)
    cnns = {m: calibrated(mobilenet_v2(width_mult=0.25), seed=i) for i, m in enumerate(("audio", "image"))}
    for m, cnn in cnns.items():
        torch.save(cnn.state_dict(), tmp_path / f"{m}.pth")
    with pytest.raises(ConfigError, match=r"fsdd: column 'image' \(image\) needs --image-encoder"):
        extract_features(prepared, audio=str(tmp_path / "audio.pth"), out=tmp_path / "no-image")
    feat = extract_features(prepared, image=str(tmp_path / "image.pth"), audio=str(tmp_path / "audio.pth"),
                            batch_size=8, out=tmp_path / "feat").path
    data = load_prepared(feat)
    raw = load_prepared(prepared)
    # 101 spectrogram frames through five stride-2 stages: ceil(101 / 32) = 4 time steps; 8x8 pools to one token
    assert np.asarray(data.train[0]["a"]).shape == (4, 1280) and np.asarray(data.train[0]["b"]).shape == (1, 1280)
    # the digit went through the image encoder, its gray channel repeated to three
    digit = torch.as_tensor(np.asarray(raw.train[0]["b"], dtype=np.float32))[None].expand(-1, 3, -1, -1)
    with torch.no_grad():
        by_hand = cnns["image"].features(digit).mean(dim=(2, 3))
    np.testing.assert_allclose(np.asarray(data.train[0]["b"]), by_hand.numpy(), rtol=1e-4, atol=1e-5)
    assert list(data.train["speaker"]) == list(raw.train["speaker"]) and data.num_classes == 10
    specs = {kind: build_federation(load_data(_natural("fsdd", root, 3, encoder=encoder)),
                                    _natural("fsdd", root, 3, encoder=encoder))
             for kind, root, encoder in (("raw", prepared, "cnn"), ("feat", feat, "features"))}
    assert [s.group for s in specs["feat"]] == list(FSDD_SPEAKERS)
    assert all(np.array_equal(a.indices, b.indices) for a, b in zip(specs["raw"], specs["feat"], strict=True))

    cfg = _natural("fsdd", feat, 3, encoder="features", strategy="fedcmi", multimodal_ratio=1.0, batch_size=4,
                   feature_dim=16)
    loaded = load_data(cfg)
    model = model_for(cfg.model, ModelSpec.of(loaded), method_spec("fedcmi").decomposed)
    assert sum(p.numel() for p in model.enc_a.parameters()) == 1280 * 16 + 16  # the projection only
    state = {k: v.clone() for k, v in model.state_dict().items()}
    guidance = Guidance(infiltrate=True, dominant="b", tau=np.ones(10))
    result = client_step(model, state, guidance, client_data(loaded, specs["feat"][0]), cfg, num_classes=10,
                         server_round=3, partition_id=0)
    assert all(np.isfinite(v) for v in result.losses.values()), result.losses
    assert any(not torch.equal(v, state[k]) for k, v in result.arrays.items() if v.is_floating_point())
