"""AVE (audio-visual events, 28 classes) in its distributed layout, audio and frames extracted per video.

    <root>/Annotations.txt                 "Category&VideoID&Quality&StartTime&EndTime", one line per video
    <root>/trainSet.txt, <root>/testSet.txt  the official split, same line format (valSet.txt is unused)
    <root>/AVE/<VideoID>.mp4               the distributed videos (not decoded here)
    <root>/audio/<VideoID>.wav             the audio track of each video (any rate; resampled to 16 kHz)
    <root>/frames/<VideoID>/*.jpg          frames at 1 fps, file k (in name order) = second k of the video

Only the annotated event segment [StartTime, EndTime) is used (spec A.3): its audio, tiled/cut to 10 s
(1 x 257 x 1004), and ``frames`` frames spread evenly over the segment's seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from datasets import Array3D, Array4D

from fedcmi.config import ConfigError
from fedcmi.data.prepare.media import SampleError, evenly, image_files, stack_frames, wav_spectrogram
from fedcmi.data.prepare.writer import Item, Source

SECONDS = 10.0


def _require(path: Path, what: str, is_dir: bool = False) -> Path:
    if not (path.is_dir() if is_dir else path.is_file()):
        raise ConfigError(f"AVE: {what} {str(path)!r} does not exist")
    return path


def _read_lines(path: Path) -> list[tuple[str, str, float, float]]:
    """(category, video id, start, end) of each data line; the header line is skipped."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.strip().split("&")
        if len(parts) < 5:
            if line.strip():
                raise ConfigError(f"AVE: {path}:{n}: expected Category&VideoID&Quality&Start&End")
            continue
        try:
            start, end = float(parts[3]), float(parts[4])
        except ValueError:
            if n == 1:
                continue  # header
            raise ConfigError(f"AVE: {path}:{n}: StartTime/EndTime are not numbers") from None
        out.append((parts[0].strip(), parts[1].strip(), start, end))
    return out


def source(root: Path, frames: int = 4, image_size: int = 224) -> Source:
    """The AVE items and their loader (spectrogram 1 x 257 x 1004, frames 3 x F x S x S)."""
    if not root.is_dir():
        raise ConfigError(f"AVE: root {str(root)!r} does not exist")
    annotations = _read_lines(_require(root / "Annotations.txt", "annotation file"))
    classes = sorted({a[0] for a in annotations})
    audio_dir = _require(root / "audio", "audio folder (one <VideoID>.wav per video)", is_dir=True)
    frames_dir = _require(root / "frames", "frames folder (one <VideoID>/ of 1 fps frames per video)", is_dir=True)
    splits: dict[str, list[Item]] = {}
    for split, file in (("train", "trainSet.txt"), ("test", "testSet.txt")):
        items = []
        for category, vid, start, end in _read_lines(_require(root / file, "split file")):
            if category not in classes:
                raise ConfigError(f"AVE: {file}: category {category!r} is not in Annotations.txt")
            items.append(Item(f"{vid}:{start:g}-{end:g}", classes.index(category), (vid, start, end)))
        splits[split] = items

    def load(item: Item) -> tuple[np.ndarray, np.ndarray]:
        vid, start, end = item.info
        spec = wav_spectrogram(audio_dir / f"{vid}.wav", SECONDS, start, end)
        folder = frames_dir / vid
        if not folder.is_dir():
            raise SampleError(folder, "missing frames folder")
        files = image_files(folder)
        segment = files[int(np.floor(start)): max(int(np.ceil(end)), int(np.floor(start)) + 1)] or files
        return spec, stack_frames(evenly(segment, frames), frames, image_size, folder)

    return Source(
        name="ave", modalities=("audio", "visual"), class_names=classes, splits=splits,
        feature_a=Array3D(shape=(1, 257, 1004), dtype="float32"),
        feature_b=Array4D(shape=(3, frames, image_size, image_size), dtype="float32"), load=load,
        settings={"frames": frames, "image_size": image_size, "audio_seconds": SECONDS,
                  "split": "trainSet.txt/testSet.txt", "classes": classes})
