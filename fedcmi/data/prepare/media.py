"""Decoding and the FedCMI authors' preprocessing: WAV -> log spectrogram, images -> tensors, text -> ids.

Every decoder raises :class:`SampleError` naming the file, so one bad file skips one sample, never the run.
Files are untrusted: sizes are checked against the caps below before anything is decoded, so a decompression
bomb or a huge (sparse) file costs a ``stat`` and a header read, not the machine's memory.
"""

from __future__ import annotations

import math
import re
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# caps checked before decoding (the data sets' own files are far below them: CREMA-D WAVs ~200 KB, AVE's 10 s
# tracks ~2 MB, tweet images ~1 MP)
MAX_AUDIO_BYTES = 64 * 2**20
MAX_IMAGE_BYTES = 64 * 2**20
MAX_PIXELS = 40_000_000  # per image or video frame; 8K video is 33 MP
MIN_RATE, MAX_RATE = 4_000, 384_000  # Hz; outside this a WAV header is broken (or hostile: rate 1 -> x16000)
MIN_AUDIO_SECONDS = 0.2  # shorter audio (an 8-sample WAV) tiled to 3 s or 10 s is not speech or an event


class SampleError(Exception):
    """One sample cannot be used; ``file`` is the culprit, ``reason`` says why."""

    def __init__(self, file: str | Path, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file = str(file)
        self.reason = reason


# --- audio -------------------------------------------------------------------------------------------
def check_size(path: Path, cap: int, what: str) -> int:
    """The size of ``path`` in bytes; a missing file or one over ``cap`` is a :class:`SampleError`."""
    if not path.is_file():
        raise SampleError(path, "missing file")
    size = path.stat().st_size
    if size > cap:
        raise SampleError(path, f"{what} of {size / 2**20:.0f} MiB is over the {cap / 2**20:.0f} MiB cap")
    return size


def read_wav(path: Path) -> tuple[int, np.ndarray]:
    """(rate, mono float32 waveform in [-1, 1]) of a PCM or float WAV file."""
    from scipy.io import wavfile

    check_size(path, MAX_AUDIO_BYTES, "WAV file")
    try:
        rate, data = wavfile.read(str(path))
    except Exception as exc:  # a hostile header can raise anything from the parser; it is this file's fault
        raise SampleError(path, f"not a readable WAV file ({type(exc).__name__}: {exc})") from None
    if data.size == 0:
        raise SampleError(path, "empty WAV file")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise SampleError(path, f"sample rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")
    if data.dtype == np.uint8:
        x = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        x = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    else:
        x = np.nan_to_num(data.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
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


def segment_spectrogram(path: Path, rate: int, x: np.ndarray, seconds: float, start: float = 0.0,
                        end: float | None = None, offset: float = 0.0) -> np.ndarray:
    """The spectrogram of the part of ``x`` (``rate`` Hz, first sample at ``offset`` s) in [start, end) seconds.

    Only the first ``seconds`` of the segment are used (the spectrogram is cut to that length), so only they are
    resampled. A segment outside the audio, or shorter than ``MIN_AUDIO_SECONDS``, is a :class:`SampleError`.
    """
    length = offset + x.size / rate
    stop = start + seconds if end is None else min(end, start + seconds)
    seg = x[max(0, int(round((start - offset) * rate))): max(0, int(round((stop - offset) * rate)))]
    where = "" if start == 0 and end is None else f" in [{start:g}, {end if end is not None else length:g}) s"
    if seg.size < MIN_AUDIO_SECONDS * rate:
        raise SampleError(path, f"only {seg.size} audio samples ({seg.size / rate:.3f} s){where} of "
                                f"{length:.3f} s; at least {MIN_AUDIO_SECONDS:g} s needed")
    return log_spectrogram(resample(seg, rate), seconds)


def wav_spectrogram(path: Path, seconds: float, start: float = 0.0, end: float | None = None) -> np.ndarray:
    """The spectrogram of a WAV file, optionally of the segment [start, end) seconds only."""
    rate, x = read_wav(path)
    return segment_spectrogram(path, rate, x, seconds, start, end)


def mel_filterbank(n_fft: int, n_mels: int, rate: int, f_min: float = 0.0, f_max: float | None = None):
    """Triangular mel filters on the HTK mel scale (mel = 2595 log10(1 + f / 700)), unnormalised peaks of 1:
    a tensor (n_fft // 2 + 1) x n_mels that maps an STFT power spectrum to mel bands (torchaudio's
    ``melscale_fbanks(..., norm=None, mel_scale="htk")``, computed here so torchaudio is not needed)."""
    import torch

    f_max = rate / 2 if f_max is None else f_max
    freqs = torch.linspace(0, rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, hi = (2595.0 * math.log10(1.0 + f / 700.0) for f in (f_min, f_max))
    edges = 700.0 * (10 ** (torch.linspace(lo, hi, n_mels + 2, dtype=torch.float64) / 2595.0) - 1.0)
    width = edges[1:] - edges[:-1]
    slope = edges[None, :] - freqs[:, None]
    down = -slope[:, :-2] / width[:-1]
    up = slope[:, 2:] / width[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).float()


def log_mel_spectrogram(x: np.ndarray, rate: int, seconds: float, n_fft: int, hop: int, n_mels: int,
                        top_db: float = 80.0) -> np.ndarray:
    """Zero-pad or cut ``x`` to ``seconds``, STFT (Hann window of ``n_fft``, ``hop``, centred), power -> mel
    bands (:func:`mel_filterbank`, 0 to rate/2), 10 log10, floor at ``top_db`` below the clip's peak, z-score
    over the clip -> float32 1 x n_mels x (1 + samples // hop)."""
    import torch

    n = int(round(rate * seconds))
    wave = np.zeros(n, dtype=np.float32)
    wave[:min(n, x.size)] = np.clip(x[:n], -1.0, 1.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 1 s clip: threads cost more than they give (docs/scaling.md, Earlier measurements)
    try:
        with torch.no_grad():
            spec = torch.stft(torch.from_numpy(wave), n_fft=n_fft, hop_length=hop, window=torch.hann_window(n_fft),
                              center=True, pad_mode="reflect", return_complex=True)
            mel = _mel_filterbank(n_fft, n_mels, rate).T @ spec.abs().pow(2)
            db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
            db = torch.maximum(db, db.max() - top_db)
            db = (db - db.mean()) / (db.std() + 1e-6)
    finally:
        torch.set_num_threads(threads)
    return db.numpy().astype(np.float32)[None]


@lru_cache(maxsize=8)
def _mel_filterbank(n_fft: int, n_mels: int, rate: int):
    return mel_filterbank(n_fft, n_mels, rate)


# --- images ------------------------------------------------------------------------------------------
def load_image(path: Path):
    """A decoded RGB PIL image; a truncated, non-image or oversized file is a :class:`SampleError`."""
    from PIL import Image

    check_size(path, MAX_IMAGE_BYTES, "image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our cap below is stricter
            img = Image.open(path)  # reads the header only
        with img:
            width, height = img.size
            if width * height > MAX_PIXELS:  # checked before decoding: a 31 KB PNG can claim 256 MP
                raise SampleError(path, f"{width}x{height} image is over the {MAX_PIXELS / 1e6:g} MP cap "
                                        "(a decompression bomb?)")
            img.load()
            return img.convert("RGB")
    except SampleError:
        raise
    except Image.DecompressionBombError as exc:  # over PIL's own limit, raised by Image.open
        raise SampleError(path, f"image is over the {MAX_PIXELS / 1e6:g} MP cap (a decompression bomb? {exc})") \
            from None
    except Exception as exc:  # PIL's parsers raise many types on hostile input; it is this file's fault
        raise SampleError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None


def image_tensor(img, size: int) -> np.ndarray:
    """Spec A.3 test transform of an RGB PIL image: Resize(size, size), ImageNet mean/std -> 3 x size x size."""
    from PIL import Image

    arr = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    return ((arr - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def frame_tensor(path: Path, size: int) -> np.ndarray:
    """Spec A.3 test transform of a video frame file (see :func:`image_tensor`)."""
    return image_tensor(load_image(path), size)


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
