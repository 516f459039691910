"""Decoding and spec A.3 preprocessing: WAV -> log spectrogram, image files -> normalised tensors, text -> ids.

Every decoder raises :class:`SampleError` naming the file, so one bad file skips one sample, never the run.
"""

from __future__ import annotations

import math
import re
import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class SampleError(Exception):
    """One sample cannot be used; ``file`` is the culprit, ``reason`` says why."""

    def __init__(self, file: str | Path, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file = str(file)
        self.reason = reason


# --- audio -------------------------------------------------------------------------------------------
def read_wav(path: Path) -> tuple[int, np.ndarray]:
    """(rate, mono float32 waveform in [-1, 1]) of a PCM or float WAV file."""
    from scipy.io import wavfile

    if not path.is_file():
        raise SampleError(path, "missing file")
    try:
        rate, data = wavfile.read(str(path))
    except (ValueError, OSError, EOFError, wave.Error) as exc:
        raise SampleError(path, f"not a readable WAV file ({exc})") from None
    if data.size == 0:
        raise SampleError(path, "empty WAV file")
    if data.dtype == np.uint8:
        x = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        x = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    else:
        x = data.astype(np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    return int(rate), x


def resample(x: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    if rate == target:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    return resample_poly(x, target // g, rate // g).astype(np.float32)


def log_spectrogram(x: np.ndarray, seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Spec A.3: tile and cut to ``seconds``, clip to [-1, 1], STFT (512 / overlap 353), log, z-score.

    3 s at 16 kHz gives 1 x 257 x 299 (CREMA-D); 10 s gives 1 x 257 x 1004 (AVE).
    """
    from scipy.signal import spectrogram

    n = int(round(rate * seconds))
    if x.size == 0:
        raise ValueError("empty waveform")
    x = np.tile(x, n // x.size + 1)[:n]
    x = np.clip(x, -1.0, 1.0)
    _, _, spec = spectrogram(x, nperseg=512, noverlap=353)
    spec = np.log(np.abs(spec) + 1e-7)
    spec = (spec - spec.mean()) / (spec.std() + 1e-6)
    return spec.astype(np.float32)[None]


def spectrogram_shape(seconds: float, rate: int = SAMPLE_RATE) -> tuple[int, int, int]:
    n = int(round(rate * seconds))
    return 1, 257, (n - 512) // (512 - 353) + 1


def wav_spectrogram(path: Path, seconds: float, start: float = 0.0, end: float | None = None) -> np.ndarray:
    """The spectrogram of a WAV file, optionally of the segment [start, end) seconds only."""
    rate, x = read_wav(path)
    x = resample(x, rate)
    if end is not None or start > 0:
        seg = x[int(start * SAMPLE_RATE): None if end is None else int(end * SAMPLE_RATE)]
        x = seg if seg.size else x
    return log_spectrogram(x, seconds)


# --- images ------------------------------------------------------------------------------------------
def load_image(path: Path):
    """A decoded RGB PIL image; a truncated or non-image file is a :class:`SampleError`."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise SampleError(path, "missing file")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise SampleError(path, f"not a readable image ({exc})") from None


def frame_tensor(path: Path, size: int) -> np.ndarray:
    """Spec A.3 test transform of a video frame: Resize(size, size), ImageNet mean/std -> 3 x size x size."""
    from PIL import Image

    img = load_image(path).resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return ((arr - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def tweet_image_tensor(path: Path, size: int) -> np.ndarray:
    """Spec A.3 CrisisMMD image: pad to a square, resize to size*228/224, centre-crop ``size``, (x-0.5)/0.5."""
    from PIL import Image

    img = load_image(path)
    side = max(img.size)
    square = Image.new("RGB", (side, side))
    square.paste(img, ((side - img.size[0]) // 2, (side - img.size[1]) // 2))
    big = max(size, round(size * 228 / 224))
    square = square.resize((big, big), Image.Resampling.BILINEAR)
    off = (big - size) // 2
    arr = np.asarray(square.crop((off, off, off + size, off + size)), dtype=np.float32) / 255.0
    return ((arr - 0.5) / 0.5).transpose(2, 0, 1)


def image_files(folder: Path) -> list[Path]:
    """Image files of a folder in name order (the frames of one clip)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def stack_frames(paths: list[Path], count: int, size: int, folder: Path) -> np.ndarray:
    """``count`` frames as 3 x F x size x size; fewer files than ``count`` are repeated cyclically."""
    if not paths:
        raise SampleError(folder, "no frames (expected image files, one per second of video)")
    chosen = [paths[i % len(paths)] for i in range(count)]
    return np.stack([frame_tensor(p, size) for p in chosen], axis=1)


def evenly(paths: list, count: int) -> list:
    """``count`` items spread evenly over ``paths`` (all of them when there are fewer)."""
    if len(paths) <= count:
        return list(paths)
    idx = np.linspace(0, len(paths) - 1, count).round().astype(int)
    return [paths[i] for i in idx]


# --- text --------------------------------------------------------------------------------------------
_URL = re.compile(r"https?://\S+|www\.\S+")
_MENTION = re.compile(r"@\w+")
_SPACE = re.compile(r"\s+")


def clean_tweet(text: str) -> str:
    """Drop URLs, @mentions, a leading retweet marker and the '#' of hashtags; squeeze whitespace."""
    text = _URL.sub(" ", text)
    text = _MENTION.sub(" ", text)
    text = re.sub(r"^\s*RT\b:?", " ", text)
    text = text.replace("#", " ")
    return _SPACE.sub(" ", text).strip()
