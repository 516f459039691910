"""AVE (audio-visual events, 28 classes) in its distributed layout (AVE_Dataset.zip).

    <root>/Annotations.txt                 "Category&VideoID&Quality&StartTime&EndTime", one line per video
    <root>/trainSet.txt, <root>/testSet.txt  the official split, same line format (valSet.txt is unused)
    <root>/AVE/<VideoID>.mp4               the distributed videos: audio track and frames (decoded with PyAV)
  optionally, extracted beforehand (each used instead of the MP4 when its folder exists):
    <root>/audio/<VideoID>.wav             the audio track of each video (any rate; resampled to 16 kHz)
    <root>/frames/<VideoID>/*.jpg          frames at 1 fps, file k (in name order) = second k of the video

Only the annotated event segment [StartTime, EndTime) is used: its audio, tiled/cut to 10 s
(1 x 257 x 1004), and ``frames`` frames spread evenly over the segment's seconds. A line whose segment is
not a finite, non-empty, non-negative interval, or whose VideoID is not a plain file name, is a skipped
sample (named in prepare-report.txt), as is a segment outside its video.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from datasets import Array3D, Array4D

from fedcmi.config import ConfigError
from fedcmi.data.prepare.media import (
    SampleError,
    evenly,
    image_files,
    segment_spectrogram,
    stack_frames,
    wav_spectrogram,
)
from fedcmi.data.prepare.video import decode_video
from fedcmi.data.prepare.writer import Item, Source

SECONDS = 10.0


def _require(path: Path, what: str, is_dir: bool = False) -> Path:
    if not (path.is_dir() if is_dir else path.is_file()):
        raise ConfigError(f"AVE: {what} {str(path)!r} does not exist")
    return path


def _read_lines(path: Path) -> list[tuple[str, str, float, float, int]]:
    """(category, video id, start, end, line number) of each data line; the header line is skipped."""
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
        out.append((parts[0].strip(), parts[1].strip(), start, end, n))
    return out


def _problem(vid: str, start: float, end: float) -> str | None:
    """Why a line cannot be prepared, or None."""
    if not vid or Path(vid).name != vid or vid in (".", ".."):
        return f"VideoID {vid!r} is not a plain file name"
    if not (math.isfinite(start) and math.isfinite(end)):
        return f"StartTime={start:g}, EndTime={end:g}: not finite"
    if start < 0 or end <= start:
        return f"segment [{start:g}, {end:g}) is empty, reversed or negative"
    return None


def _seconds(start: float, end: float, count: int) -> list[int]:
    """``count`` whole seconds spread evenly over [start, end) (all of them when fewer), without listing them all:
    a finite but huge EndTime must not cost memory."""
    first = int(np.floor(start))
    stop = max(int(np.ceil(end)), first + 1)
    if stop - first <= count:
        return list(range(first, stop))
    return [first + int(i) for i in np.linspace(0, stop - 1 - first, count).round()]


def source(root: Path, frames: int = 4, image_size: int = 224) -> Source:
    """The AVE items and their loader (spectrogram 1 x 257 x 1004, frames 3 x F x S x S)."""
    if not root.is_dir():
        raise ConfigError(f"AVE: root {str(root)!r} does not exist")
    annotations = _read_lines(_require(root / "Annotations.txt", "annotation file"))
    classes = sorted({a[0] for a in annotations})
    video_dir, audio_dir, frames_dir = root / "AVE", root / "audio", root / "frames"
    if not video_dir.is_dir() and not (audio_dir.is_dir() and frames_dir.is_dir()):
        raise ConfigError(f"AVE: video folder {str(video_dir)!r} (one <VideoID>.mp4 per video) does not exist")
    splits: dict[str, list[Item]] = {}
    for split, file in (("train", "trainSet.txt"), ("test", "testSet.txt")):
        items = []
        for category, vid, start, end, n in _read_lines(_require(root / file, "split file")):
            if category not in classes:
                raise ConfigError(f"AVE: {file}: category {category!r} is not in Annotations.txt")
            items.append(Item(f"{vid}:{start:g}-{end:g}", classes.index(category),
                              (vid, start, end, f"{root / file}:{n}", _problem(vid, start, end))))
        splits[split] = items

    def load(item: Item) -> tuple[np.ndarray, np.ndarray]:
        vid, start, end, where, problem = item.info
        if problem:
            raise SampleError(where, problem)
        seconds = _seconds(start, end, frames)
        mp4 = video_dir / f"{vid}.mp4"
        if audio_dir.is_dir() and frames_dir.is_dir():
            decoded = None
        else:  # one pass over the MP4 for whatever was not extracted
            decoded = decode_video(mp4, [] if frames_dir.is_dir() else seconds, image_size,
                                   None if audio_dir.is_dir() else (start, min(end, start + SECONDS)))
        if audio_dir.is_dir():
            spec = wav_spectrogram(audio_dir / f"{vid}.wav", SECONDS, start, end)
        elif decoded.audio.size == 0:
            raise SampleError(mp4, f"no audio in [{start:g}, {end:g}) s: the file lasts {decoded.duration:.2f} s")
        else:
            spec = segment_spectrogram(mp4, decoded.audio_rate, decoded.audio, SECONDS, start, end,
                                       offset=decoded.audio_offset)
        if not frames_dir.is_dir():
            got = decoded.frames
            return spec, np.stack([got[i % len(got)] for i in range(frames)], axis=1)
        folder = frames_dir / vid
        if not folder.is_dir():
            raise SampleError(folder, "missing frames folder")
        files = image_files(folder)
        first = int(np.floor(start))
        segment = files[first: max(int(np.ceil(end)), first + 1)]
        if not segment:
            raise SampleError(folder, f"no frames for [{start:g}, {end:g}) s: the folder holds {len(files)}")
        return spec, stack_frames(evenly(segment, frames), frames, image_size, folder)

    media = {"audio_source": "audio/*.wav" if audio_dir.is_dir() else "AVE/*.mp4",
             "frame_source": "frames/*/" if frames_dir.is_dir() else "AVE/*.mp4"}
    extracted = audio_dir.is_dir() and frames_dir.is_dir()  # the layout of fedcmi 0.1: its settings, unchanged
    return Source(
        name="ave", modalities=("audio", "visual"), class_names=classes, splits=splits,
        feature_a=Array3D(shape=(1, 257, 1004), dtype="float32"),
        feature_b=Array4D(shape=(3, frames, image_size, image_size), dtype="float32"), load=load,
        settings={"frames": frames, "image_size": image_size, "audio_seconds": SECONDS,
                  "split": "trainSet.txt/testSet.txt", "classes": classes, **({} if extracted else media)})
