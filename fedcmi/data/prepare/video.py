"""Frames and audio straight from a video file (CREMA-D's FLV, AVE's MP4), decoded with PyAV.

One pass over the file's packets: video packets are decoded until the frame of every wanted second is in
hand, audio packets (when asked for) until the wanted window is covered, and the rest of the file is only
demuxed (cheap: no decoding) so that a truncated file is noticed even when the part that is used is intact.
Any failure is a :class:`SampleError` naming the file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedcmi.data.prepare.media import MAX_PIXELS, MAX_RATE, MIN_RATE, SampleError, check_size, image_tensor

logger = logging.getLogger(__name__)

MAX_VIDEO_BYTES = 256 * 2**20  # CREMA-D's FLVs are ~0.3 MB, AVE's 10 s MP4s a few MB


@dataclass
class Decoded:
    """What :func:`decode_video` took from a file: frames (3 x S x S each, at the wanted seconds that the video
    reaches, in order) and, when asked, the mono audio from ``audio_offset`` seconds on at ``audio_rate`` Hz."""

    frames: list[np.ndarray]
    duration: float
    audio: np.ndarray | None = None
    audio_rate: int = 0
    audio_offset: float = 0.0


def _end_time(packet) -> float | None:
    ts = packet.pts if packet.pts is not None else packet.dts
    if ts is None or packet.time_base is None:
        return None
    return float((ts + (packet.duration or 0)) * packet.time_base)


def decode_video(path: Path, seconds: list[float], size: int,
                 audio_window: tuple[float, float] | None = None) -> Decoded:
    """Decode the first frame at or after each of ``seconds`` (sorted) and, optionally, the audio in
    ``audio_window`` = [start, stop) seconds. Corrupt, truncated or oversized files are a :class:`SampleError`."""
    import av

    file_size = check_size(path, MAX_VIDEO_BYTES, "video file")
    wanted = sorted(seconds)
    frames: list[np.ndarray] = []
    chunks: list[np.ndarray] = []
    audio_rate, audio_offset = 0, 0.0
    packets_end, cut_at, kept = 0.0, None, 0
    try:
        # an absolute path can never be read as an FFmpeg protocol ("concat:", "http:")
        with av.open(str(path.absolute()), metadata_errors="ignore") as container:
            if not container.streams.video:
                raise SampleError(path, "no video stream")
            vstream = container.streams.video[0]
            width, height = vstream.codec_context.width, vstream.codec_context.height
            if width * height > MAX_PIXELS:
                raise SampleError(path, f"{width}x{height} video is over the {MAX_PIXELS / 1e6:g} MP cap")
            astream = None
            if audio_window is not None:
                if not container.streams.audio:
                    raise SampleError(path, "no audio stream")
                astream = container.streams.audio[0]
                audio_rate = int(astream.codec_context.sample_rate or 0)
                if not MIN_RATE <= audio_rate <= MAX_RATE:
                    raise SampleError(path, f"audio rate {audio_rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")
                resampler = av.AudioResampler(format="fltp")  # planar float, the file's own layout and rate
            need_video, need_audio = bool(wanted), astream is not None
            for packet in container.demux():
                end = _end_time(packet)
                if end is not None:
                    packets_end = max(packets_end, end)
                if packet.is_corrupt and packet.pos is not None and packet.pos + packet.size >= file_size:
                    cut_at = end  # the demuxer's last packet is short: the file stops inside it
                if packet.stream.index == vstream.index and need_video:
                    for frame in packet.decode():
                        if frame.width * frame.height > MAX_PIXELS:
                            raise SampleError(path, f"a {frame.width}x{frame.height} frame is over the cap")
                        t = float(frame.time or 0.0)
                        if len(frames) < len(wanted) and t + 1e-6 >= wanted[len(frames)]:
                            tensor = image_tensor(frame.to_image(), size)
                            while len(frames) < len(wanted) and t + 1e-6 >= wanted[len(frames)]:
                                frames.append(tensor)  # the first frame at or after each wanted second
                        if len(frames) == len(wanted):
                            need_video = False
                            break
                elif astream is not None and packet.stream.index == astream.index and need_audio:
                    for frame in packet.decode():
                        if float(frame.time or 0.0) >= audio_window[1]:
                            need_audio = False
                            break
                        for out in resampler.resample(frame):
                            t0 = float(out.time or 0.0)
                            if t0 + out.samples / audio_rate <= audio_window[0]:
                                continue  # before the window: not kept, so memory stays bounded by it
                            if not chunks:
                                audio_offset = t0
                            chunks.append(out.to_ndarray().mean(axis=0))
                            kept += chunks[-1].size
                        if kept > (audio_window[1] - audio_window[0] + 1.0) * audio_rate:
                            need_audio = False  # timestamps that never reach the window's end: enough
                            break
            duration = float(container.duration or 0) / 1e6  # microseconds; 0 when the header does not say
            fps = float(vstream.average_rate or vstream.guessed_rate or 25)
    except SampleError:
        raise
    except Exception as exc:  # FFmpegError and whatever a hostile container makes the demuxer raise
        if cut_at is not None:
            raise SampleError(path, f"truncated: the file ends inside its packet at {cut_at:.2f} s") from None
        raise SampleError(path, f"not a readable video ({type(exc).__name__}: {exc})") from None
    if duration and packets_end + max(0.5, 2.0 / fps) < duration:
        raise SampleError(path, f"truncated: its packets end at {packets_end:.2f} s but it declares "
                                f"{duration:.2f} s")
    if cut_at is not None:
        raise SampleError(path, f"truncated: the file ends inside its packet at {cut_at:.2f} s")
    if wanted and not frames:
        raise SampleError(path, f"no frames at or after {wanted[0]:g} s (the video ends at "
                                f"{max(packets_end, duration):.2f} s)")
    audio = None
    if audio_window is not None:
        audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    logger.debug("%s: %d frame(s), %s audio samples, %.2f s", path, len(frames),
                 None if audio is None else audio.size, duration)
    return Decoded(frames, max(duration, packets_end), audio, audio_rate, audio_offset)


def video_frames(path: Path, seconds: list[float], count: int, size: int) -> np.ndarray:
    """The frames at ``seconds`` of a video as 3 x ``count`` x size x size; when the video ends before some of
    them, the frames it has are repeated cyclically (as :func:`~fedcmi.data.prepare.media.stack_frames` does)."""
    got = decode_video(path, seconds, size).frames
    return np.stack([got[i % len(got)] for i in range(count)], axis=1)
