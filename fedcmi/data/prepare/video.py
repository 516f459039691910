"""Frames straight from a video file, for the layouts that ship videos. Needs PyAV (``pip install av``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedcmi.data.prepare.media import IMAGENET_MEAN, IMAGENET_STD, SampleError


def flv_frames(path: Path, count: int, size: int, start: float = 0.0, end: float | None = None) -> np.ndarray:
    """``count`` frames at 1 fps from [start, end) seconds of a video, as 3 x F x size x size."""
    try:
        import av
    except ImportError:  # checked before any work starts; this guards direct use
        raise SampleError(path, "no video decoder (pip install av)") from None
    from PIL import Image

    if not path.is_file():
        raise SampleError(path, "missing file")
    picked: list[np.ndarray] = []
    next_second = start
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                t = float(frame.time or 0.0)
                if end is not None and t >= end:
                    break
                if t + 1e-6 < next_second:
                    continue
                img = frame.to_image().convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.float32) / 255.0
                picked.append(((arr - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))
                next_second += 1.0
    except (OSError, ValueError, av.error.FFmpegError) as exc:  # type: ignore[attr-defined]
        raise SampleError(path, f"not a readable video ({exc})") from None
    if not picked:
        raise SampleError(path, "no frames decoded")
    idx = np.linspace(0, len(picked) - 1, count).round().astype(int) if len(picked) > count else \
        [i % len(picked) for i in range(count)]
    return np.stack([picked[i] for i in idx], axis=1)
