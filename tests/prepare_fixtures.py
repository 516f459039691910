"""Tiny fixture trees in the distributed layouts of CREMA-D, AVE, CrisisMMD and FSDD (+ MNIST IDX files), and a
tiny local BERT.

A few seconds of tone per clip and a few 24x24 images: enough for prepare -> load -> simulate, and the
class signal (tone pitch, image colour) is learnable so a 2-round run is meaningful. The video layouts are
real FLV (Sorenson H.263 + MP3, as CREMA-D ships) and MP4 (H.264 + AAC, as AVE ships) files written with
PyAV: 32x32, 1-2 fps, each second's frame a flat colour, :func:`video_colour`, so a test can tell which
second a decoded frame came from.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
from PIL import Image

EMOTIONS = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]


def write_wav(path: Path, seconds: float, freq: float, rate: int = 16_000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.4 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((x * 32767).astype("<i2").tobytes())


def write_image(path: Path, colour: tuple[int, int, int], seed: int = 0, size: int = 24) -> None:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour)[None, None] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def write_video(path: Path, colours: list[tuple[int, int, int]], fps: int, audio_freq: float | None = None,
                rate: int = 8_000, faststart: bool = False, size: int = 32) -> None:
    """A video of flat-colour frames (``colours[i]`` is frame i, at ``fps``) and, optionally, a tone as its
    audio track (mono): FLV (flv1 + mp3) or MP4 (h264 + aac), by the file's extension."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    flv = path.suffix == ".flv"
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format="flv" if flv else "mp4", options=options) as out:
        video = out.add_stream("flv" if flv else "libx264", rate=fps)
        video.width, video.height, video.pix_fmt = size, size, "yuv420p"
        audio = None
        if audio_freq is not None:
            audio = out.add_stream("libmp3lame" if flv else "aac", rate=rate, layout="mono",
                                   options={} if flv else {"aac_coder": "fast"})  # 10x faster than the default
        for colour in colours:
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), colour, np.uint8), format="rgb24")
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if audio is not None:
            t = np.arange(int(len(colours) / fps * rate)) / rate
            x = (0.4 * np.sin(2 * np.pi * audio_freq * t)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(x[None], format="fltp", layout="mono")
            frame.sample_rate = rate
            out.mux(audio.encode(frame))
            out.mux(audio.encode())


def video_colour(k: int, n: int, second: int) -> tuple[int, int, int]:
    """The colour of second ``second`` of a class-``k`` fixture video: red/green carry the class, blue the second."""
    return int(200 * k / max(n - 1, 1)) + 20, int(200 * (1 - k / max(n - 1, 1))) + 20, 30 + 20 * second


def _colour(k: int, n: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in (255 * np.array([k / max(n - 1, 1), 1 - k / max(n - 1, 1), (k % 2)])))


def crema_d_tree(root: Path, per_class: int = 4, split_files: bool = True, video: bool = False) -> list[str]:
    """AudioWAV/<clip>.wav + Image-01-FPS/<clip>/*.jpg, or with ``video`` VideoFlash/<clip>.flv (3 s at 2 fps,
    as distributed), (+ train.csv/test.csv); returns the clip names."""
    clips = []
    for k, emo in enumerate(EMOTIONS):
        for i in range(per_class):
            clip = f"{1001 + i}_DFA_{emo}_XX"
            write_wav(root / "AudioWAV" / f"{clip}.wav", 1.0, 300 + 150 * k, seed=i)
            if video:
                write_video(root / "VideoFlash" / f"{clip}.flv", [video_colour(k, 6, f // 2) for f in range(6)],
                            fps=2, audio_freq=300 + 150 * k, rate=11_025)  # FLV takes MP3 at 11/22/44 kHz
            else:
                for f in range(3):
                    write_image(root / "Image-01-FPS" / clip / f"{f:05d}.jpg", _colour(k, 6), seed=10 * i + f)
            clips.append(clip)
    if split_files:
        test = [c for c in clips if c.startswith("1001_")]
        train = [c for c in clips if c not in test]
        (root / "train.csv").write_text("".join(f"{c},{c.split('_')[2]}\n" for c in train))
        (root / "test.csv").write_text("".join(f"{c},{c.split('_')[2]}\n" for c in test))
    return clips


AVE_CLASSES = ["Bark", "Church bell", "Helicopter"]


def ave_segment(i: int) -> tuple[int, int]:
    """[StartTime, EndTime) of the i-th fixture video of a class."""
    return i % 3, 6 + i % 4


def ave_tree(root: Path, per_class: int = 5, video: bool = False) -> list[str]:
    """Annotations.txt, trainSet.txt, testSet.txt and audio/<id>.wav + frames/<id>/*.jpg, or with ``video``
    AVE/<id>.mp4 (10 s at 1 fps with an AAC tone, as distributed)."""
    header = "Category&VideoID&Quality&StartTime&EndTime"
    lines = []
    for k, cat in enumerate(AVE_CLASSES):
        for i in range(per_class):
            vid = f"vid{k}x{i:02d}"
            start, end = ave_segment(i)
            lines.append(f"{cat}&{vid}&good&{start}&{end}")
            if video:
                write_video(root / "AVE" / f"{vid}.mp4", [video_colour(k, 3, s) for s in range(10)], fps=1,
                            audio_freq=250 + 200 * k)
                continue
            write_wav(root / "audio" / f"{vid}.wav", 10.0, 250 + 200 * k, rate=8_000, seed=i)
            for s in range(10):
                write_image(root / "frames" / vid / f"{s:02d}.jpg", _colour(k, 3), seed=100 * i + s, size=16)
    (root / "Annotations.txt").write_text("\n".join([header, *lines]) + "\n")
    test = [ln for ln in lines if ln.split("&")[1].endswith("x00")]
    (root / "trainSet.txt").write_text("\n".join(ln for ln in lines if ln not in test) + "\n")
    (root / "testSet.txt").write_text("\n".join(test) + "\n")
    return [ln.split("&")[1] for ln in lines]


WORDS = ["fire", "flood", "rescue", "help", "damage", "donate", "love", "music", "game", "coffee", "happy", "sunny"]


def tiny_bert(directory: Path) -> Path:
    """A 1-layer, 32-wide BERT with its tokenizer, saved like a hub snapshot (random weights)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz"]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5: BertTokenizer is the fast (Rust) tokenizer and takes the vocab file as `vocab`
    BertTokenizer(vocab=str(directory / "vocab.txt")).save_pretrained(str(directory))
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(str(directory))
    return directory


def crisismmd_tree(root: Path, per_class: int = 12, events: tuple[str, ...] = ("california_wildfires",)) -> None:
    """data_image/<event>/<date>/<id>_0.jpg + crisismmd_datasplit_all/task_informative_text_img_*.tsv; tweet i of
    a class belongs to ``events[i % len(events)]``."""
    cols = ["event_name", "tweet_id", "image_id", "tweet_text", "image", "label", "label_text", "label_image",
            "label_text_image"]
    rows = {"train": [], "test": []}
    for k, label in enumerate(["not_informative", "informative"]):
        for i in range(per_class):
            tid = f"91779{k}{i:04d}"
            event = events[i % len(events)]
            rel = f"data_image/{event}/10_10_2017/{tid}_0.jpg"
            write_image(root / rel, _colour(k, 2), seed=i)
            words = WORDS[6 * k: 6 * k + 6]
            text = f"RT @user {words[i % 6]} {words[(i + 1) % 6]} https://t.co/x{i} #{words[(i + 2) % 6]}"
            split = "test" if i < 3 else "train"
            rows[split].append([event, tid, f"{tid}_0", text, rel, label, label, label,
                                "Positive"])
    (root / "crisismmd_datasplit_all").mkdir(parents=True, exist_ok=True)
    for split, data in rows.items():
        lines = ["\t".join(cols)] + ["\t".join(r) for r in data]
        (root / "crisismmd_datasplit_all" / f"task_informative_text_img_{split}.tsv").write_text(
            "\n".join(lines) + "\n")


def write_png_bomb(path: Path, side: int = 16_000) -> None:
    """A valid 1-bit grey PNG of side x side pixels (256 MP for the default) in a few tens of KB: a decompression
    bomb. Written row block by row block, so making it costs no more memory than reading it should."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    rows = b"\x00" * ((1 + side // 8) * 1000)  # 1000 rows: filter byte 0 + side/8 zero bytes each
    body = b"".join(z.compress(rows) for _ in range(side // 1000)) + z.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def write_sparse_wav(path: Path, size: int = 2**30, rate: int = 16_000) -> None:
    """A WAV header declaring ``size`` bytes of 16-bit mono PCM, the file extended to that size as a sparse
    file (no disk used): what a hostile or broken download can look like."""
    import struct

    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16)  # PCM, mono, 16 bit
    header = b"RIFF" + struct.pack("<I", size - 8) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", size - 44)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(header)
        fh.truncate(size)


FSDD_SPEAKERS = ("alice", "bob", "carol")


def fsdd_tree(root: Path, speakers: tuple[str, ...] = FSDD_SPEAKERS, takes: int = 7, seconds: float = 0.3) -> list[str]:
    """recordings/{digit}_{speaker}_{index}.wav as the FSDD repository holds them (8 kHz mono 16-bit): a short tone
    per clip whose pitch carries the digit (300 + 150 * digit Hz), a little noise, and a speaker-specific level;
    takes 0-4 are FSDD's test split, 5.. its training split. Returns the clip keys."""
    keys = []
    for s, speaker in enumerate(speakers):
        for digit in range(10):
            for take in range(takes):
                key = f"{digit}_{speaker}_{take}"
                write_wav(root / "recordings" / f"{key}.wav", seconds, 300 + 150 * digit, rate=8_000,
                          seed=100 * s + take)
                keys.append(key)
    return keys


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """An IDX file (the MNIST format: 0, 0, type byte, dims, big-endian sizes, data), gzipped if ``compress``."""
    import gzip

    types = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}
    data = bytes([0, 0, types[array.dtype], array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    data += array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if compress else data)


def mnist_tree(root: Path, train_per_class: int = 4, test_per_class: int = 2) -> dict[str, np.ndarray]:
    """A tiny MNIST in its IDX files (train-*-ubyte plain, t10k-*-ubyte.gz): 28x28 images whose mean brightness
    encodes the digit and whose top-left pixel is the image's index, so a test can tell them apart. Returns the
    labels per split."""
    labels = {}
    for split, prefix, per_class in (("train", "train", train_per_class), ("test", "t10k", test_per_class)):
        y = np.repeat(np.arange(10, dtype=np.uint8), per_class)[::-1].copy()  # not in class order
        x = np.zeros((len(y), 28, 28), dtype=np.uint8)
        x[:, 4:24, 4:24] = (20 + 20 * y)[:, None, None]
        x[:, 0, 0] = np.arange(len(y))
        gz = ".gz" if split == "test" else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{gz}", x, bool(gz))
        write_idx(root / f"{prefix}-labels-idx1-ubyte{gz}", y, bool(gz))
        labels[split] = y
    return labels
