"""The Free Spoken Digit Dataset (FSDD, CC BY-SA 4.0) paired with real handwritten digits, in its repository layout.

    <root>/recordings/{digit}_{speaker}_{index}.wav     e.g. recordings/7_jackson_32.wav (8 kHz mono 16-bit;
                                                         6 speakers x 10 digits x 50 takes in the 2024 checkout)

Split: the repository's README, "recordings numbered 0-4 (inclusive) are in the test and 5-49 are in the
training set" (2,700 / 300 clips).

Audio (modality ``a``): the clip at 8 kHz (resampled if a file has another rate), zero-padded or cut to 1 s,
STFT with a 256-sample Hann window (32 ms) and a hop of 80 (10 ms), power -> 40 HTK mel bands over 0-4 kHz,
10 log10, floored 80 dB below the clip's peak, z-scored over the clip: float32 1 x 40 x 101.

Image (modality ``b``): a real handwritten digit of the clip's class, drawn from a pool that matches the clip's
split (:mod:`fedcmi.data.prepare.digit_images`): scikit-learn's 8x8 digits by default (1 x 8 x 8), MNIST with
``images=DIR`` (1 x 28 x 28). The pairing is seeded (``seed``) and recorded in the ``image`` column.

Columns besides the usual ones: ``speaker`` (the natural group: ``partitioner=natural`` makes one client per
speaker) and ``image`` (``digits:<index>`` or ``mnist-train:<index>``/``mnist-test:<index>``). A file whose name
is not ``{digit}_{speaker}_{index}.wav``, a take missing for one digit that the speaker recorded for others, and
an unreadable, silent or too short WAV are skipped and named in the prepare report.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Array3D, Value

from fedcmi.config import ConfigError
from fedcmi.data.prepare.digit_images import ImagePool, mnist, pair, sklearn_digits
from fedcmi.data.prepare.media import SampleError, log_mel_spectrogram, read_wav, resample
from fedcmi.data.prepare.writer import Item, Skipped, Source

NAME = re.compile(r"(?P<digit>[0-9])_(?P<speaker>[A-Za-z][A-Za-z0-9]*)_(?P<take>[0-9]+)\.wav")
TEST_TAKES = 5  # takes 0-4 are the official test split
RATE = 8_000
AUDIO = {"rate": RATE, "seconds": 1.0, "n_fft": 256, "hop": 80, "n_mels": 40, "top_db": 80.0}
MIN_SECONDS = 0.05  # the shortest FSDD clip is 0.14 s; a 50 ms file is a broken cut, not a spoken digit
CLASSES = [str(d) for d in range(10)]
NATURAL_GROUP = "speaker"  # partitioner=natural: one client per speaker (fedcmi.data.partition)


def group_of_key(key: str) -> str:
    """The speaker of a clip key ``{digit}_{speaker}_{index}`` (for a directory without the speaker column)."""
    return key.split("_")[1]


@dataclass(frozen=True)
class Clip:
    path: Path
    digit: int
    speaker: str
    take: int

    @property
    def key(self) -> str:
        return self.path.stem

    @property
    def split(self) -> str:
        return "test" if self.take < TEST_TAKES else "train"


def read_layout(recordings: Path) -> tuple[list[Clip], list[Skipped]]:
    """The well-named clips of ``recordings`` (sorted by speaker, digit, take), and the files that are not: a
    misnamed file, a duplicate take, and a take that the speaker recorded for other digits but not this one."""
    clips: dict[tuple[int, str, int], Clip] = {}
    rejected: list[Skipped] = []
    named: list[Clip] = []
    for path in sorted(recordings.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        m = NAME.fullmatch(path.name)
        if m is None:
            rejected.append(Skipped("-", path.stem, str(path), "misnamed: not {digit}_{speaker}_{index}.wav"))
        else:
            named.append(Clip(path, int(m["digit"]), m["speaker"], int(m["take"])))
    # of two files for one take (7_jackson_5.wav, 7_jackson_05.wav) the one named as FSDD names files is kept
    for clip in sorted(named, key=lambda c: (c.key != f"{c.digit}_{c.speaker}_{c.take}", c.path.name)):
        ident = (clip.digit, clip.speaker, clip.take)
        if ident in clips:
            rejected.append(Skipped(clip.split, clip.key, str(clip.path), f"duplicate of {clips[ident].path.name}"))
            continue
        clips[ident] = clip
    takes: dict[str, set[int]] = defaultdict(set)
    for _, speaker, take in clips:
        takes[speaker].add(take)
    for speaker in sorted(takes):
        for digit in range(10):
            for take in sorted(takes[speaker]):
                if (digit, speaker, take) not in clips:
                    path = recordings / f"{digit}_{speaker}_{take}.wav"
                    rejected.append(Skipped("test" if take < TEST_TAKES else "train", path.stem, str(path),
                                            f"missing file ({speaker} recorded take {take} of other digits)"))
    return sorted(clips.values(), key=lambda c: (c.speaker, c.digit, c.take)), rejected


def clip_spectrogram(path: Path) -> np.ndarray:
    """The log-mel spectrogram of one FSDD clip (see the module doc); a bad file is a :class:`SampleError`."""
    rate, x = read_wav(path)
    if x.size < MIN_SECONDS * rate:
        raise SampleError(path, f"only {x.size} audio samples ({x.size / rate:.3f} s); at least "
                                f"{MIN_SECONDS:g} s needed")
    if not np.any(x):
        raise SampleError(path, "silent: every audio sample is zero")
    x = resample(x, rate, RATE)
    return log_mel_spectrogram(x, RATE, AUDIO["seconds"], AUDIO["n_fft"], AUDIO["hop"], AUDIO["n_mels"],
                               AUDIO["top_db"])


def source(root: Path, images: str | None = None, seed: int = 0) -> Source:
    """The FSDD items, each paired with a handwritten digit of its class, and their loader."""
    recordings = root / "recordings"
    if not recordings.is_dir():
        raise ConfigError(f"FSDD: recordings folder {str(recordings)!r} does not exist")
    pools: dict[str, ImagePool] = mnist(Path(images).expanduser()) if images else sklearn_digits()
    clips, rejected = read_layout(recordings)
    if not clips:
        raise ConfigError(f"FSDD: no {{digit}}_{{speaker}}_{{index}}.wav files in {recordings}")
    splits: dict[str, list[Item]] = {}
    for stream, split in enumerate(("train", "test")):
        chosen = [c for c in clips if c.split == split]
        pool = pools[split]
        where = pair([c.digit for c in chosen], pool, seed, stream)
        splits[split] = [Item(c.key, c.digit, (c.path, split, int(p)), (c.speaker, pool.ref(int(p))))
                         for c, p in zip(chosen, where, strict=True)]

    def load(item: Item) -> tuple[np.ndarray, np.ndarray]:
        path, split, pos = item.info
        return clip_spectrogram(path), pools[split].tensor(pos)

    frames = 1 + int(round(AUDIO["rate"] * AUDIO["seconds"])) // AUDIO["hop"]
    image_shape = pools["train"].shape
    return Source(
        name="fsdd", modalities=("audio", "image"), class_names=CLASSES, splits=splits,
        feature_a=Array3D(shape=(1, AUDIO["n_mels"], frames), dtype="float32"),
        feature_b=Array3D(shape=image_shape, dtype="float32"), load=load,
        settings={"images": "mnist" if images else "sklearn-digits", "seed": seed, "audio": AUDIO,
                  "image_pools": {s: len(p) for s, p in pools.items()},
                  "split": f"takes 0-{TEST_TAKES - 1} test, {TEST_TAKES}+ train (FSDD README)"},
        extra={"speaker": Value("string"), "image": Value("string")}, rejected=rejected)
