"""CREMA-D (audio + face video, 6 emotions) in its distributed layout.

    <root>/AudioWAV/<clip>.wav            e.g. AudioWAV/1001_DFA_ANG_XX.wav (16 kHz mono, as distributed)
    <root>/VideoFlash/<clip>.flv          the distributed videos (decoded with PyAV)
      or <root>/Image-01-FPS/<clip>/*.jpg frames extracted at 1 fps, one folder per clip (OGM-GE/PMR layout);
                                          used instead of the videos when the folder exists
    <root>/train.csv, <root>/test.csv     optional: the OGM-GE split, lines "<clip>,<EMO>" (6,698 / 744)

Either way the frames of seconds 0, 1, ..., frames-1 of each clip are used (repeated if the clip is shorter).
Without the two csv files the split is a seeded, stratified 90/10 split of the clips in AudioWAV.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from datasets import Array3D, Array4D

from fedcmi.config import ConfigError
from fedcmi.data.prepare.media import SampleError, image_files, stack_frames, wav_spectrogram
from fedcmi.data.prepare.video import video_frames
from fedcmi.data.prepare.writer import Item, Source

EMOTIONS = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]  # the label order of the authors' code
SECONDS = 3.0
FRAMES_DIR = "Image-01-FPS"
NATURAL_GROUP = "actor"  # partitioner=natural: one client per actor (fedcmi.data.partition)


def group_of_key(clip: str) -> str:
    """The actor of a clip ``<actor>_<sentence>_<EMO>_<level>`` (e.g. ``1001``)."""
    return clip.split("_")[0]


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ConfigError(f"CREMA-D: {what} {str(path)!r} does not exist")
    return path


def _label(clip: str) -> int | None:
    parts = clip.split("_")
    return EMOTIONS.index(parts[2]) if len(parts) >= 3 and parts[2] in EMOTIONS else None


def _read_split_file(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [row[0].strip() for row in csv.reader(fh) if row and row[0].strip()]


def _splits(root: Path, clips: list[str], seed: int) -> tuple[dict[str, list[str]], str]:
    if (root / "train.csv").is_file() and (root / "test.csv").is_file():
        return {"train": _read_split_file(root / "train.csv"), "test": _read_split_file(root / "test.csv")}, \
            "train.csv/test.csv"
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k in range(len(EMOTIONS)):
        group = [c for c in clips if _label(c) == k]
        group = [group[i] for i in rng.permutation(len(group))]
        n_test = max(1, int(round(0.1 * len(group)))) if len(group) >= 2 else 0
        test += group[:n_test]
        train += group[n_test:]
    return {"train": sorted(train), "test": sorted(test)}, f"stratified 90/10, seed {seed}"


def source(root: Path, frames: int = 2, image_size: int = 224, seed: int = 0) -> Source:
    """The CREMA-D items and their loader (spectrogram 1 x 257 x 299, frames 3 x F x S x S)."""
    audio_dir = _require_dir(root / "AudioWAV", "audio folder")
    frames_dir = root / FRAMES_DIR
    video_dir = root / "VideoFlash"
    if not frames_dir.is_dir() and not video_dir.is_dir():
        raise ConfigError(f"CREMA-D: neither videos {str(video_dir)!r} nor extracted frames "
                          f"{str(frames_dir)!r} exist")
    clips = sorted(p.stem for p in audio_dir.glob("*.wav") if _label(p.stem) is not None)
    if not clips:
        raise ConfigError(f"CREMA-D: no <actor>_<sentence>_<EMO>_<level>.wav files in {audio_dir}")
    names, split_info = _splits(root, clips, seed)
    splits = {}
    for split, keys in names.items():
        items = []
        for clip in keys:
            label = _label(clip)
            if label is None:
                raise ConfigError(f"CREMA-D: clip name {clip!r} in the {split} list has no emotion code")
            items.append(Item(clip, label))
        splits[split] = items

    def load(item: Item) -> tuple[np.ndarray, np.ndarray]:
        spec = wav_spectrogram(audio_dir / f"{item.key}.wav", SECONDS)
        folder = frames_dir / item.key
        if frames_dir.is_dir():
            if not folder.is_dir():
                raise SampleError(folder, "missing frames folder")
            return spec, stack_frames(image_files(folder)[:frames], frames, image_size, folder)
        return spec, video_frames(video_dir / f"{item.key}.flv", list(range(frames)), frames, image_size)

    shape_a = (1, 257, 299)
    return Source(
        name="crema-d", modalities=("audio", "visual"), class_names=EMOTIONS, splits=splits,
        feature_a=Array3D(shape=shape_a, dtype="float32"),
        feature_b=Array4D(shape=(3, frames, image_size, image_size), dtype="float32"), load=load,
        settings={"frames": frames, "image_size": image_size, "audio_seconds": SECONDS, "split": split_info,
                  "frame_source": FRAMES_DIR if frames_dir.is_dir() else "VideoFlash"})
