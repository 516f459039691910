"""CrisisMMD v2.0 (tweet text + image), task "informative", in its distributed layout.

    <root>/data_image/<event>/<date>/<tweet_id>_<n>.jpg      the images (CrisisMMD_v2.0.tar.gz)
    <root>/crisismmd_datasplit_all/task_informative_text_img_train.tsv
    <root>/crisismmd_datasplit_all/task_informative_text_img_test.tsv   (the agreed-label benchmark split;
                                                                          ..._dev.tsv is unused)

The TSV header names the columns; used are ``image_id``, ``tweet_text``, ``image`` (a path relative to
<root>, e.g. data_image/california_wildfires/10_10_2017/917791044158185473_0.jpg) and ``label``.
Text is cleaned and tokenised to ``max_length`` ids with the given BERT-family tokenizer (the authors' code: 40).
The crisis event of each tweet (the TSV's ``event_name``, else its image folder) is kept as the ``event`` column,
the natural group of ``partitioner=natural``.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from datasets import Array3D, Sequence, Value

from fedcmi.config import ConfigError
from fedcmi.data.prepare.media import clean_tweet, tweet_image_tensor
from fedcmi.data.prepare.writer import Item, Source

CLASSES = ["not_informative", "informative"]
SPLIT_DIR = "crisismmd_datasplit_all"
COLUMNS = ("image_id", "tweet_text", "image", "label")
NATURAL_GROUP = "event"  # partitioner=natural: one client per crisis event (the ``event`` column)


def _event(row: dict[str, str]) -> str:
    """The crisis event of a TSV row: its ``event_name`` column, else the folder of its image
    (``data_image/<event>/<date>/<id>.jpg``)."""
    name = (row.get("event_name") or "").strip()
    if name:
        return name
    parts = Path(row["image"].strip()).parts
    return parts[1] if len(parts) > 2 else ""


def load_tokenizer(name: str):
    """A fast tokenizer by hub name (local cache only) or directory, or a one-line error saying how to get it."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"tokenizer {name!r} is not available offline ({type(exc).__name__}); on a connected machine run "
            f"`huggingface-cli download {name}` (it fills the local Hugging Face cache), or pass a directory "
            "holding the tokenizer files (vocab.txt / tokenizer.json)") from None


def _read_tsv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ConfigError(f"CrisisMMD: split file {str(path)!r} does not exist")
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"CrisisMMD: {path} lacks column(s) {missing}")
        return list(reader)


def source(root: Path, tokenizer: str = "bert-base-uncased", max_length: int = 40,
           image_size: int = 224) -> Source:
    """The CrisisMMD items and their loader (token ids of length ``max_length``, image 3 x S x S)."""
    if not root.is_dir():
        raise ConfigError(f"CrisisMMD: root {str(root)!r} does not exist")
    if not (root / "data_image").is_dir():
        raise ConfigError(f"CrisisMMD: image folder {str(root / 'data_image')!r} does not exist")
    tok = load_tokenizer(tokenizer)
    splits: dict[str, list[Item]] = {}
    for split in ("train", "test"):
        path = root / SPLIT_DIR / f"task_informative_text_img_{split}.tsv"
        items = []
        for n, row in enumerate(_read_tsv(path), 2):
            label = row["label"].strip()
            if label not in CLASSES:
                raise ConfigError(f"CrisisMMD: {path}:{n}: label {label!r} is not one of {CLASSES}")
            items.append(Item(row["image_id"].strip(), CLASSES.index(label),
                              (row["image"].strip(), clean_tweet(row["tweet_text"])), (_event(row),)))
        splits[split] = items

    def load(item: Item) -> tuple[np.ndarray, np.ndarray]:
        rel, text = item.info
        image = tweet_image_tensor(root / rel, image_size)
        ids = tok(text, max_length=max_length, padding="max_length", truncation=True)["input_ids"]
        return np.asarray(ids, dtype=np.int32), image

    return Source(
        name="crisismmd", modalities=("text", "image"), class_names=CLASSES, splits=splits,
        feature_a=Sequence(Value("int32"), length=max_length),
        feature_b=Array3D(shape=(3, image_size, image_size), dtype="float32"), load=load,
        settings={"tokenizer": tokenizer, "max_length": max_length, "pad_id": int(tok.pad_token_id or 0),
                  "vocab_size": len(tok), "image_size": image_size,
                  "split": "task_informative_text_img_{train,test}.tsv"},
        extra={"event": Value("string")})
