"""Real handwritten digits to pair with another modality: scikit-learn's bundled 8x8 digits, or MNIST read
from its IDX files (the format is parsed here; no download, no torchvision data set code).

Each source comes as two disjoint pools, ``train`` and ``test``: a training sample is only ever paired with a
``train`` image and a test sample with a ``test`` image, so no test image is seen in training.

- scikit-learn digits (1,797 scans, ~180 per class): the stratified 75/25 split of ``digits-cg``
  (``train_test_split(random_state=0)``), 1,347 / 450 images; 1 x 8 x 8, (x / 16 - 0.3) / 0.4.
- MNIST: ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (60,000) and ``t10k-*`` (10,000), each
  optionally ``.gz`` and with ``.idx`` instead of ``-idx`` (as some mirrors name them); 1 x 28 x 28,
  (x / 255 - 0.1307) / 0.3081.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedcmi.errors import ConfigError

# IDX type byte -> numpy big-endian dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MAX_IDX_BYTES = 256 * 2**20  # MNIST's training images are 47 MB; a larger (or larger-unzipping) file is not MNIST
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@dataclass(frozen=True)
class ImagePool:
    """The images of one split of a digit source: raw pixels, labels, and their ids in the source."""

    name: str  # e.g. "digits" or "mnist-train": an image is referred to as "<name>:<id>"
    raw: np.ndarray  # N x H x W, as stored by the source
    labels: np.ndarray  # N, int64 in 0-9
    ids: np.ndarray  # N, the image's index in the source file
    scale: float  # pixel value of full ink
    mean: float
    std: float

    def __len__(self) -> int:
        return len(self.labels)

    def ref(self, pos: int) -> str:
        return f"{self.name}:{int(self.ids[pos])}"

    def tensor(self, pos: int) -> np.ndarray:
        """Image ``pos`` as float32 1 x H x W, normalised."""
        x = self.raw[pos].astype(np.float32) / self.scale
        return ((x - self.mean) / self.std).astype(np.float32)[None]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (1, *self.raw.shape[1:])


def sklearn_digits() -> dict[str, ImagePool]:
    """scikit-learn's 8x8 digits, split as ``digits-cg`` splits them (fixed, stratified, 25 % test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(labels)), test_size=0.25, random_state=0, stratify=labels)
    return {split: ImagePool("digits", digits.images[idx], labels[idx], idx, 16.0, 0.3, 0.4)
            for split, idx in (("train", np.sort(tr)), ("test", np.sort(te)))}


def read_idx(path: Path) -> np.ndarray:
    """The array of an IDX file (optionally gzip-compressed); anything else is a one-line ConfigError."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
            fh.seek(0)
            if head == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=fh) as gz:
                    data = gz.read(MAX_IDX_BYTES + 1)
            else:
                data = fh.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise ConfigError(f"{path}: not readable ({type(exc).__name__}: {exc})") from None
    if len(data) > MAX_IDX_BYTES:
        raise ConfigError(f"{path}: over {MAX_IDX_BYTES // 2**20} MiB (uncompressed); not an MNIST IDX file")
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES or data[3] == 0:
        raise ConfigError(f"{path}: not an IDX file (magic {data[:4].hex() or 'missing'}; expected 0000 then a "
                          "type byte and the number of dimensions)")
    dtype, ndim = np.dtype(IDX_TYPES[data[2]]), data[3]
    if len(data) < 4 + 4 * ndim:
        raise ConfigError(f"{path}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = 4 + 4 * ndim + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ConfigError(f"{path}: IDX header says {shape} of {dtype.name} ({expected} bytes), the file holds "
                          f"{len(data)} bytes")
    return np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)


def _find(directory: Path, prefix: str, kind: str) -> Path:
    idx = "idx3" if kind == "images" else "idx1"
    names = [f"{prefix}-{kind}-{idx}-ubyte", f"{prefix}-{kind}.{idx}-ubyte"]
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise ConfigError(f"MNIST: {directory / names[0]} (or .gz) does not exist")


def mnist(directory: Path) -> dict[str, ImagePool]:
    """MNIST's training and test images (IDX files in ``directory``), checked to be 28x28-ish digit images."""
    if not directory.is_dir():
        raise ConfigError(f"MNIST: --images folder {str(directory)!r} does not exist")
    pools = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images_file, labels_file = _find(directory, prefix, "images"), _find(directory, prefix, "labels")
        images, labels = read_idx(images_file), read_idx(labels_file)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ConfigError(f"{images_file}: expected N x H x W unsigned bytes, found {images.shape} "
                              f"{images.dtype.name}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ConfigError(f"{labels_file}: expected {len(images)} labels (one per image), found shape "
                              f"{labels.shape}")
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise ConfigError(f"{labels_file}: labels must be digits 0-9 (found {int(labels.min())}-"
                              f"{int(labels.max())})")
        pools[split] = ImagePool(f"mnist-{split}", images, labels.astype(np.int64), np.arange(len(labels)),
                                 255.0, MNIST_MEAN, MNIST_STD)
    return pools


def pair(labels: Sequence[int], pool: ImagePool, seed: int, stream: int) -> np.ndarray:
    """For each label, the position in ``pool`` of an image of the same class.

    Per class, the pool's images of that class in a seeded random order, cycled with a fresh order on each pass:
    with n samples and m images of a class every image is used floor(n/m) or ceil(n/m) times, and with n <= m
    no image twice. ``stream`` separates independent pairings under one seed (e.g. the splits).
    """
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(len(labels), -1, dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        candidates = np.flatnonzero(pool.labels == c)
        if not len(candidates):
            raise ConfigError(f"{pool.name}: no image of class {int(c)} to pair with")
        rng = np.random.default_rng([seed, stream, int(c)])
        passes = -(-len(where) // len(candidates))
        out[where] = np.concatenate([rng.permutation(candidates) for _ in range(passes)])[:len(where)]
    return out
