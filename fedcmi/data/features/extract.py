"""``fedcmi features``: per-sample token embeddings of a prepared data set, from frozen local encoders.

Reads a directory made by ``fedcmi prepare``, runs each modality column through its frozen encoder
(:mod:`fedcmi.data.features.encoders`) and writes a directory of the same shape: a ``DatasetDict`` saved with
``save_to_disk`` (columns ``idx``, ``key``, ``a``, ``b``, ``label``; ``a``/``b`` now ``T x D`` float32 token
embeddings) and ``fedcmi.json`` (the source manifest plus a ``features`` entry naming the encoders). So
``dataset=<name> data-root=<features dir> encoder=features`` loads it through :mod:`fedcmi.data.prepared`,
and a deployed node's ``data-dir`` may be one.

Like ``prepare`` the work is cut into shards saved atomically under ``<out>/.work/``: an interrupted extraction
continues where it stopped, a finished one is reused, other settings (another encoder file) are refused.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Array2D, Dataset, Features, Value, concatenate_datasets, load_from_disk

from fedcmi.data.features import FEATURES, is_features
from fedcmi.data.features.encoders import FrozenEncoder, audio_encoder, image_encoder, text_encoder
from fedcmi.data.outdir import check_output
from fedcmi.data.prepare.writer import install_splits
from fedcmi.data.prepared import MANIFEST, load_prepared, read_manifest
from fedcmi.errors import ConfigError

logger = logging.getLogger(__name__)

WORK = ".work"
TINY = 1e-4  # embeddings smaller than this everywhere come from an untrained or broken encoder
FEATURES_SUFFIX = "-features"  # default output: <prepared dir>-features, beside it


@dataclass
class ExtractOutcome:
    path: Path
    rows: dict[str, int]
    shapes: dict[str, list[int]]
    resumed_shards: int = 0
    already_done: bool = False
    seconds: float = 0.0


def column_kind(shape: tuple[int, ...], modality: str = "audio") -> str:
    """What a prepared column holds, from its per-sample shape and its modality's name: a one-channel
    ``1 x H x W`` is a spectrogram for audio and a gray image otherwise (FSDD's handwritten digit)."""
    if len(shape) == 1:
        return "text"
    if len(shape) == 4:
        return "frames"
    if len(shape) == 3:
        return "spectrogram" if shape[0] == 1 and modality == "audio" else "image"
    raise ConfigError(f"a prepared column of shape {shape} is none of token ids, spectrogram, image or frames")


FLAGS = {"text": "--text-encoder", "frames": "--image-encoder", "image": "--image-encoder",
         "spectrogram": "--audio-encoder"}


def _encoder_for(kind: str, spec: str | None, device: torch.device, manifest: dict[str, Any],
                 column: str) -> FrozenEncoder:
    flag = FLAGS[kind]
    if not spec:
        raise ConfigError(f"{manifest['name']}: column {column!r} ({kind}) needs {flag}")
    if kind == "text":
        pad = int(manifest.get("settings", {}).get("pad_id", 0))
        return text_encoder(spec, device, pad, flag)
    if kind == "spectrogram":
        return audio_encoder(spec, device, flag)
    return image_encoder(spec, device, flag)


def _encode(enc: FrozenEncoder, x: np.ndarray, device: torch.device, batch_size: int) -> np.ndarray:
    """Token embeddings of ``x``; refuses (one line) a batch with a NaN or Inf input or embedding: nothing
    non-finite is ever written as a feature."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)).to(device)
            if not bool(torch.isfinite(batch).all()):
                raise ConfigError(f"the prepared input of samples {i}..{i + len(batch) - 1} of a shard holds NaN "
                                  f"or Inf; the prepared directory is damaged ({enc.path} was not run on it)")
            tokens = enc.encode(batch).float().cpu().numpy()
            if not np.isfinite(tokens).all():
                raise ConfigError(f"{enc.path}: the {enc.arch} encoder produced NaN or Inf features (samples {i}.."
                                  f"{i + len(batch) - 1} of a shard); refusing to write non-finite features")
            out.append(tokens)
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def _text_columns(ds: Dataset) -> list[str]:
    """The source's extra string columns (e.g. FSDD's ``speaker``, CrisisMMD's ``event``): carried over as they
    are, so a features directory keeps the natural groups of ``partitioner=natural``."""
    return [c for c in ds.column_names if c not in ("idx", "key", "a", "b", "label")
            and ds.features[c] == Value("string")]


def _read_rows(ds: Dataset, start: int, stop: int) -> dict[str, Any]:
    cols = [c for c in ("key", "a", "b", "label", *_text_columns(ds)) if c in ds.column_names]
    return ds.select(range(start, stop)).select_columns(cols).with_format("numpy")[:]


def _write_shard(rows: dict[str, Any], encs: dict[str, FrozenEncoder], features: Features, target: Path,
                 device: torch.device, batch_size: int) -> None:
    out = {"idx": np.zeros(len(rows["label"]), np.int64),
           "key": [str(k) for k in rows["key"]] if "key" in rows else [""] * len(rows["label"]),
           "a": _encode(encs["a"], rows["a"], device, batch_size),
           "b": _encode(encs["b"], rows["b"], device, batch_size), "label": rows["label"],
           **{c: [str(v) for v in rows[c]] for c in features if c not in ("idx", "key", "a", "b", "label")}}
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    Dataset.from_dict(out, features=features).save_to_disk(str(tmp / "data"))
    tmp.rename(target)  # atomic: a shard directory without .tmp is complete


def _check_settings(out: Path, settings: dict[str, Any]) -> bool:
    """True if ``out`` already holds this extraction, finished; refuses one made with other settings."""
    for file in (out / MANIFEST, out / WORK / "settings.json"):
        if file.is_file():
            old = json.loads(file.read_text(encoding="utf-8"))
            old = old.get(FEATURES, {}).get("settings", {}) if file.name == MANIFEST else old
            if old != settings:
                changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                raise ConfigError(f"{out} holds features extracted with other settings ({', '.join(changed)}); "
                                  "use another --out or delete it")
    return (out / MANIFEST).is_file()


def _finalize(out: Path, shard_dirs: dict[str, list[Path]]) -> dict[str, int]:
    return install_splits(out, {split: concatenate_datasets([load_from_disk(str(d / "data")) for d in dirs])
                                for split, dirs in shard_dirs.items()})


def extract_features(prepared: str | Path, out: str | Path | None = None, *, image: str | None = None,
                     audio: str | None = None, text: str | None = None, device: str = "cpu",
                     batch_size: int = 32, shard_size: int = 256,
                     progress: Callable[[int, int], None] | None = None) -> ExtractOutcome:
    """Extract token embeddings of every sample of ``prepared`` into ``out`` (default
    ``<prepared>-features``, beside it); resumable. ``image``/``audio``: torchvision state-dict files; ``text``: a
    ``save_pretrained`` directory. ``progress(done, total)`` is called after every shard."""
    from datasets.utils import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled

    was_enabled = is_progress_bar_enabled()
    disable_progress_bars()  # one bar (the caller's), not one per shard save
    try:
        return _extract(prepared, out, image, audio, text, device, batch_size, shard_size, progress)
    finally:
        if was_enabled:
            enable_progress_bars()


def _extract(prepared: str | Path, out: str | Path | None, image: str | None, audio: str | None,
             text: str | None, device: str, batch_size: int, shard_size: int,
             progress: Callable[[int, int], None] | None) -> ExtractOutcome:
    started = time.perf_counter()
    try:
        src = load_prepared(prepared)
    except ConfigError as exc:  # its messages name data-root, the simulate key; here it is the argument
        raise ConfigError(str(exc).removeprefix("data-root=")) from None
    if is_features(src.manifest):
        raise ConfigError(f"{src.path} already holds extracted features; give the prepared directory")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to torch")
    dev = torch.device(device)
    target = Path(out).expanduser() if out else src.path.with_name(src.path.name + FEATURES_SUFFIX)
    check_output(target, "features")  # never write into a non-empty folder `fedcmi features` did not make
    if (target / MANIFEST).is_file():
        read_manifest(target)  # an earlier extraction's manifest, checked before it is trusted
    splits = {s: d for s, d in (("train", src.train), ("test", src.test)) if len(d)}
    first = next(iter(splits.values()))
    shapes_in = {c: tuple(np.asarray(first.with_format("numpy")[0][c]).shape) for c in ("a", "b")}
    specs = {"text": text, "frames": image, "image": image, "spectrogram": audio}
    kinds = {c: column_kind(s, src.modalities["ab".index(c)]) for c, s in shapes_in.items()}
    encs = {c: _encoder_for(kinds[c], specs[kinds[c]], dev, src.manifest, src.modalities["ab".index(c)])
            for c in shapes_in}
    settings = {"source": src.manifest.get("settings", {}), "source_rows": {s: len(d) for s, d in splits.items()},
                **{c: e.describe() for c, e in encs.items()}}
    target.mkdir(parents=True, exist_ok=True)
    if _check_settings(target, settings):
        manifest = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
        return ExtractOutcome(target, dict(manifest.get("rows", {})), manifest[FEATURES]["shapes"],
                              already_done=True, seconds=time.perf_counter() - started)
    probe = _read_rows(first, 0, 1)
    probed = {c: _encode(encs[c], probe[c], dev, 1) for c in ("a", "b")}
    shapes = {c: list(v.shape[1:]) for c, v in probed.items()}
    for c, v in probed.items():  # an untrained CNN's activations vanish (BatchNorm at init): say so early
        if float(np.abs(v).max()) < TINY:
            logger.warning("%s embeddings of the first sample are all below %g in magnitude (max %.1e): is %s a "
                           "trained model?", src.modalities["ab".index(c)], TINY, float(np.abs(v).max()),
                           encs[c].path)
    label = first.features["label"]
    features = Features({"idx": Value("int64"), "key": Value("string"),
                         **{c: Array2D(shape=tuple(shapes[c]), dtype="float32") for c in ("a", "b")},
                         "label": label, **dict.fromkeys(_text_columns(first), Value("string"))})
    work = target / WORK
    work.mkdir(exist_ok=True)
    (work / "settings.json").write_text(json.dumps(settings, indent=1), encoding="utf-8")
    total, done, resumed = sum(len(d) for d in splits.values()), 0, 0
    shard_dirs: dict[str, list[Path]] = {}
    for split, ds in splits.items():
        shard_dirs[split] = []
        for i, start in enumerate(range(0, len(ds), shard_size)):
            stop = min(start + shard_size, len(ds))
            shard = work / split / f"shard-{i:05d}"
            if shard.is_dir():
                resumed += 1
            else:
                _write_shard(_read_rows(ds, start, stop), encs, features, shard, dev, batch_size)
            shard_dirs[split].append(shard)
            done += stop - start
            if progress is not None:
                progress(done, total)
    rows = _finalize(target, shard_dirs)
    manifest = {**{k: v for k, v in src.manifest.items() if k != "settings"}, "rows": rows,
                FEATURES: {"settings": settings, "shapes": shapes, "prepared": str(src.path),
                           "kinds": kinds}}
    tmp = target / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    tmp.replace(target / MANIFEST)  # last: its presence marks the directory as finished
    shutil.rmtree(work, ignore_errors=True)
    logger.info("extracted features of %s into %s: %s, shapes %s", src.name, target, rows, shapes)
    return ExtractOutcome(target, rows, shapes, resumed_shards=resumed, seconds=time.perf_counter() - started)


__all__ = ["ExtractOutcome", "extract_features"]
