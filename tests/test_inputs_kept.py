"""Nothing lost on any input.

Output folders: `fedcmi features` and `fedcmi prepare` write only into an absent or empty folder or one the same command
made earlier (reused or continued, as docs/features.md promises); any other non-empty folder is refused with one
line naming it and what it holds, and nothing in it is touched (`install_splits` refuses on its own too).
Inputs: a tampered manifest is one line and exit 2 before anything starts; an encoder with non-finite weights,
or one whose features come out non-finite, is refused instead of writing NaN features.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fedcmi.cli import main
from fedcmi.config import ConfigError
from fedcmi.data.features.extract import extract_features
from fedcmi.data.prepare import prepare
from fedcmi.data.prepare.writer import install_splits
from tests.prepare_fixtures import crema_d_tree, tiny_bert
from tests.test_features import calibrated


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    from torchvision.models import mobilenet_v2

    base = tmp_path_factory.mktemp("kept")
    crema_d_tree(base / "CREMA-D", per_class=2)
    torch.manual_seed(0)
    torch.save(calibrated(mobilenet_v2(width_mult=0.25)).state_dict(), base / "mnv2.pth")
    prepared = prepare("crema-d", base / "CREMA-D", show_progress=False, image_size=32).path
    feat = extract_features(prepared, base / "feat", image=str(base / "mnv2.pth"), audio=str(base / "mnv2.pth")).path
    return {"base": base, "mnv2": base / "mnv2.pth", "prepared": prepared, "feat": feat}


def _foreign(folder: Path) -> Path:
    """A folder of someone else's work that happens to use the names the commands write."""
    for name in ("train", "test", ".work"):
        (folder / name).mkdir(parents=True)
        (folder / name / "precious.txt").write_text(f"my {name} data")
    (folder / "notes.md").write_text("mine")
    return folder


# --- output folders: written only when absent, empty or this command's own --------------------------------------------
def test_features_refuses_a_non_empty_folder_it_did_not_make_and_touches_nothing(env, tmp_path, capsys):
    enc = ["--image-encoder", str(env["mnv2"]), "--audio-encoder", str(env["mnv2"]), "--no-progress"]
    foreign = _foreign(tmp_path / "foreign")
    before = _tree(foreign)
    assert main(["features", str(env["prepared"]), "--out", str(foreign), *enc]) == 2
    err = _one_line(capsys)
    assert f"{foreign}: not empty (holds .work/, notes.md, test/, train/) and not made by `fedcmi features`" in err
    assert _tree(foreign) == before
    # the prepared directory itself, and a file, as the output: refused, untouched
    prepared_before = _tree(env["prepared"])
    assert main(["features", str(env["prepared"]), "--out", str(env["prepared"]), *enc]) == 2
    assert "not made by `fedcmi features`" in _one_line(capsys)
    assert _tree(env["prepared"]) == prepared_before
    (tmp_path / "file").write_text("x")
    assert main(["features", str(env["prepared"]), "--out", str(tmp_path / "file"), *enc]) == 2
    assert "exists and is not a folder" in _one_line(capsys)
    # what the docs promise stays: a finished extraction is reused, an empty folder is used
    assert main(["features", str(env["prepared"]), "--out", str(env["feat"]), *enc]) == 0
    assert "already extracted" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["features", str(env["prepared"]), "--out", str(tmp_path / "empty"), *enc]) == 0
    assert (tmp_path / "empty" / "fedcmi.json").is_file()


def test_prepare_refuses_a_non_empty_folder_it_did_not_make(env, tmp_path, capsys):
    foreign = _foreign(tmp_path / "foreign")
    before = _tree(foreign)
    rc = main(["prepare", "crema-d", "--root", str(env["base"] / "CREMA-D"), "--out", str(foreign),
               "--image-size", "32", "--no-progress"])
    assert rc == 2
    assert "not made by `fedcmi prepare`" in _one_line(capsys)
    assert _tree(foreign) == before
    # a features directory is not prepare's either; its own earlier output is reused
    assert main(["prepare", "crema-d", "--root", str(env["base"] / "CREMA-D"), "--out", str(env["feat"]),
                 "--image-size", "32", "--no-progress"]) == 2
    assert "not made by `fedcmi prepare`" in _one_line(capsys)
    assert main(["prepare", "crema-d", "--root", str(env["base"] / "CREMA-D"), "--out", str(env["prepared"]),
                 "--image-size", "32", "--no-progress"]) == 0
    assert "already prepared" in capsys.readouterr().out


def test_install_splits_never_replaces_a_folder_no_command_is_writing(tmp_path):
    from datasets import Dataset

    foreign = _foreign(tmp_path / "foreign")
    shutil.rmtree(foreign / ".work")
    before = _tree(foreign)
    split = Dataset.from_dict({"idx": [0], "a": [1.0]})
    with pytest.raises(ConfigError, match="not an output folder this command is writing"):
        install_splits(foreign, {"train": split, "test": split})
    assert _tree(foreign) == before


# --- inputs: tampered manifests and non-finite encoders are refused ---------------------------------------------------
TAMPERED = [
    ({"num_classes": 2}, "class_names must be 2 names (num_classes)"),
    ({"num_classes": 2, "class_names": ["x", "y"]},
     "num_classes 2 does not match split 'train', whose label column has 6 classes"),
    ({"num_classes": "abc"}, "num_classes 'abc' must be an integer in [2, 10000]"),
    ({"num_classes": True}, "num_classes 'True' must be an integer"),
    ({"modalities": [{}, None]}, "modalities [{}, None] must be two different names"),
    ({"modalities": ["audio", "audio"]}, "must be two different names"),
    ({"name": ["crema-d"]}, "name ['crema-d'] is not a data set name"),
    ({"class_names": ["a"]}, "class_names must be 6 names"),
    ({"rows": "abc"}, "rows must map split names to row counts"),
    ({"features": {"shapes": "abc"}}, "features must record the token shapes"),
    ({"features": None}, "features must record the token shapes"),
]


def _tampered(src: Path, dest: Path, change: dict) -> Path:
    shutil.copytree(src, dest)
    manifest = json.loads((dest / "fedcmi.json").read_text())
    manifest.update(change)
    (dest / "fedcmi.json").write_text(json.dumps(manifest))
    return dest


@pytest.mark.parametrize("change, needle", TAMPERED)
def test_a_tampered_features_manifest_is_one_line_and_exit_2(env, tmp_path, monkeypatch, capsys, change, needle):
    import server.app
    from fedcmi.runtime import simulation

    def must_not_start(*args, **kwargs):
        raise AssertionError("a run started on a tampered data set")

    monkeypatch.setattr(simulation, "simulate", must_not_start)
    monkeypatch.setattr(server.app, "run_server", must_not_start)
    feat = _tampered(env["feat"], tmp_path / "feat", change)
    rc = main(["simulate", "--out", str(tmp_path / "run"), "dataset=crema-d", f"data-root={feat}", "encoder=features",
               "num-clients=2", "clients-per-round=2", "min-partition-size=1"])
    assert rc == 2
    err = _one_line(capsys)
    assert needle in err and "fedcmi.json" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("change, needle", [c for c in TAMPERED if "features" not in c[0]])
def test_a_tampered_prepared_manifest_stops_fedcmi_features(env, tmp_path, capsys, change, needle):
    prepared = _tampered(env["prepared"], tmp_path / "prep", change)
    rc = main(["features", str(prepared), "--out", str(tmp_path / "out"), "--image-encoder", str(env["mnv2"]),
               "--audio-encoder", str(env["mnv2"]), "--no-progress"])
    assert rc == 2
    assert needle in _one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_a_tampered_manifest_of_an_earlier_extraction_is_one_line(env, tmp_path, capsys):
    out = _tampered(env["feat"], tmp_path / "feat", {"features": {"settings": {}, "shapes": None}})
    rc = main(["features", str(env["prepared"]), "--out", str(out), "--image-encoder", str(env["mnv2"]),
               "--audio-encoder", str(env["mnv2"]), "--no-progress"])
    assert rc == 2
    assert "features must record the token shapes" in _one_line(capsys)


def test_an_encoder_with_nan_weights_is_refused(env, tmp_path, capsys):
    state = torch.load(env["mnv2"], weights_only=True)
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()},
               tmp_path / "nan.pth")
    rc = main(["features", str(env["prepared"]), "--out", str(tmp_path / "out"), "--image-encoder",
               str(tmp_path / "nan.pth"), "--audio-encoder", str(env["mnv2"]), "--no-progress"])
    assert rc == 2
    err = _one_line(capsys)
    assert f"--image-encoder='{tmp_path / 'nan.pth'}': tensor 'features.0.0.weight' holds NaN or Inf" in err
    assert not (tmp_path / "out" / "fedcmi.json").exists()


def test_an_encoder_whose_features_come_out_non_finite_is_refused(env, tmp_path, capsys):
    state = torch.load(env["mnv2"], weights_only=True)  # every value finite, but a negative running variance:
    state["features.0.1.running_var"] = -torch.ones_like(state["features.0.1.running_var"])  # BatchNorm: sqrt(-1)
    torch.save(state, tmp_path / "negvar.pth")
    rc = main(["features", str(env["prepared"]), "--out", str(tmp_path / "out"), "--image-encoder",
               str(env["mnv2"]), "--audio-encoder", str(tmp_path / "negvar.pth"), "--no-progress"])
    assert rc == 2
    err = _one_line(capsys)
    assert "encoder produced NaN or Inf features" in err and "refusing to write non-finite features" in err
    assert not (tmp_path / "out" / "fedcmi.json").exists()


def test_a_text_encoder_with_nan_weights_is_refused(tmp_path):
    from transformers import BertModel

    from fedcmi.data.features.encoders import text_encoder

    bert = tiny_bert(tmp_path / "bert")
    model = BertModel.from_pretrained(str(bert), local_files_only=True)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.fill_(float("nan"))
    model.save_pretrained(str(bert))
    with pytest.raises(ConfigError, match="tensor 'embeddings.word_embeddings.weight' holds NaN or Inf"):
        text_encoder(bert, torch.device("cpu"), pad_id=0)
