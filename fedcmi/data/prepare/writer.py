"""The resumable, sharded writer every ``fedcmi prepare`` source goes through.

Work is cut into shards of a few hundred samples. Each finished shard is saved under ``<out>/.work/`` by an
atomic rename, with the list of samples it skipped, so a crash or Ctrl-C loses at most the shard in
progress and a re-run starts where the last one stopped. When every shard exists they are concatenated
into the final ``DatasetDict`` (``<out>/train``, ``<out>/test``), the report is written, and
``fedcmi.json`` is written last: its presence is what marks a directory as prepared.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, concatenate_datasets, load_from_disk

from fedcmi.config import ConfigError
from fedcmi.data.outdir import check_output
from fedcmi.data.prepare.media import SampleError
from fedcmi.data.prepared import MANIFEST

logger = logging.getLogger(__name__)

REPORT = "prepare-report.txt"
WORK = ".work"


@dataclass(frozen=True)
class Item:
    """One sample to prepare: a unique key (clip or tweet id), its label, whatever the loader needs, and the
    values of the source's ``extra`` columns (in their order)."""

    key: str
    label: int
    info: tuple[Any, ...] = ()
    extra: tuple[Any, ...] = ()


@dataclass
class Skipped:
    split: str
    key: str
    file: str
    reason: str


@dataclass
class Source:
    """What a data set contributes: names, items per split, column features and a per-item loader.

    ``extra``: more columns (name -> ``datasets`` feature; each item's values in ``Item.extra``), e.g. the
    speaker of a clip. ``rejected``: files the layout reader could not use at all (a misnamed file, a missing
    take); they are reported with the samples the loader skipped.
    """

    name: str
    modalities: tuple[str, str]
    class_names: list[str]
    splits: dict[str, list[Item]]
    feature_a: Any
    feature_b: Any
    load: Callable[[Item], tuple[np.ndarray, np.ndarray]]
    settings: dict[str, Any] = field(default_factory=dict)  # recorded; a re-run must match them
    extra: dict[str, Any] = field(default_factory=dict)
    rejected: list[Skipped] = field(default_factory=list)


@dataclass
class Outcome:
    """What a preparation produced: the directory, rows per split, and the samples it skipped."""

    path: Path
    rows: dict[str, int]
    skipped: list[Skipped]
    resumed_shards: int = 0
    already_done: bool = False

    @property
    def report_path(self) -> Path:
        return self.path / REPORT


def _features(src: Source) -> Features:
    return Features({"idx": Value("int64"), "key": Value("string"), "a": src.feature_a, "b": src.feature_b,
                     "label": ClassLabel(names=src.class_names), **src.extra})


def _shards(items: Sequence[Item], size: int) -> list[Sequence[Item]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _write_shard(src: Source, split: str, items: Sequence[Item], target: Path,
                 advance: Callable[[], None]) -> None:
    rows: dict[str, list[Any]] = {c: [] for c in ("idx", "key", "a", "b", "label", *src.extra)}
    skipped: list[dict[str, str]] = []
    for item in items:
        try:
            a, b = src.load(item)
        except SampleError as exc:
            skipped.append({"split": split, "key": item.key, "file": exc.file, "reason": exc.reason})
        else:
            for col, val in (("idx", 0), ("key", item.key), ("a", a), ("b", b), ("label", item.label),
                             *zip(src.extra, item.extra, strict=True)):
                rows[col].append(val)
        advance()
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    Dataset.from_dict(rows, features=_features(src)).save_to_disk(str(tmp / "data"))
    (tmp / "skipped.json").write_text(json.dumps(skipped), encoding="utf-8")
    tmp.rename(target)  # atomic: a shard directory without .tmp is complete


def _read_skipped(shard: Path) -> list[Skipped]:
    return [Skipped(**s) for s in json.loads((shard / "skipped.json").read_text(encoding="utf-8"))]


def _check_settings(out: Path, settings: dict[str, Any]) -> bool:
    """True if ``out`` is already fully prepared with these settings; refuses other settings."""
    for file in (out / MANIFEST, out / WORK / "settings.json"):
        if file.is_file():
            old = json.loads(file.read_text(encoding="utf-8"))
            old = old.get("settings", old) if file.name == MANIFEST else old
            if old != settings:
                changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                raise ConfigError(f"{out} holds a preparation with other settings ({', '.join(changed)}); "
                                  "use another --out or delete it")
    return (out / MANIFEST).is_file()


def _write_report(out: Path, src: Source, rows: dict[str, int], skipped: list[Skipped]) -> None:
    lines = [f"# fedcmi prepare {src.name}: " + ", ".join(f"{s} {n} rows" for s, n in rows.items())
             + f", {len(skipped)} skipped", "# split\tkey\tfile\treason"]
    lines += [f"{s.split}\t{s.key}\t{s.file}\t{s.reason}" for s in skipped]
    (out / REPORT).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _load_report(out: Path) -> list[Skipped]:
    if not (out / REPORT).is_file():
        return []
    rows = [line.split("\t") for line in (out / REPORT).read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#")]
    return [Skipped(*r[:4]) for r in rows if len(r) >= 4]


def _finalize(src: Source, out: Path, shard_dirs: dict[str, list[Path]]) -> dict[str, int]:
    splits = {}
    for split, dirs in shard_dirs.items():
        parts = [p for p in (load_from_disk(str(d / "data")) for d in dirs) if len(p)]
        if not parts:
            raise ConfigError(f"{src.name}: no usable samples in split {split!r} (skipped ones are listed in "
                              f"{out / WORK}/{split}/*/skipped.json)")
        splits[split] = concatenate_datasets(parts)
    return install_splits(out, splits)


def install_splits(out: Path, splits: dict[str, Any]) -> dict[str, int]:
    """Renumber each split's ``idx`` and save the DatasetDict into ``out`` through a temporary folder, so a
    crash leaves either the old splits or the new ones (shared by ``prepare`` and ``features``).

    It replaces ``out``'s splits, so ``out`` must be a folder the command is writing: one it checked with
    :func:`fedcmi.data.outdir.check_output` and marked with ``.work/settings.json``; anything else is refused."""
    if not (out / WORK / "settings.json").is_file():
        raise ConfigError(f"{out}: not an output folder this command is writing (no {WORK}/settings.json); "
                          "refusing to replace what it holds")
    splits = {name: ds.remove_columns("idx").add_column("idx", np.arange(len(ds), dtype=np.int64))
              for name, ds in splits.items()}
    final = out / ".final.tmp"
    shutil.rmtree(final, ignore_errors=True)
    DatasetDict(splits).save_to_disk(str(final))
    for entry in final.iterdir():
        dest = out / entry.name
        if dest.is_dir():
            shutil.rmtree(dest)
        entry.replace(dest)
    final.rmdir()
    return {s: len(d) for s, d in splits.items()}


def write_prepared(src: Source, out: Path, shard_size: int = 256, show_progress: bool = True) -> Outcome:
    """Prepare every item of ``src`` into ``out`` (resuming finished shards) and return the outcome."""
    from datasets.utils import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled

    was_enabled = is_progress_bar_enabled()
    disable_progress_bars()  # one bar (ours), not one per shard save
    try:
        return _write_prepared(src, out, shard_size, show_progress)
    finally:
        if was_enabled:
            enable_progress_bars()


def _write_prepared(src: Source, out: Path, shard_size: int, show_progress: bool) -> Outcome:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    check_output(out, "prepare")  # never write into a non-empty folder `fedcmi prepare` did not make
    out.mkdir(parents=True, exist_ok=True)
    settings = {"name": src.name, **src.settings}
    if _check_settings(out, settings):
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        return Outcome(out, dict(manifest.get("rows", {})), _load_report(out), already_done=True)
    work = out / WORK
    work.mkdir(exist_ok=True)
    (work / "settings.json").write_text(json.dumps(settings, indent=1), encoding="utf-8")
    total = sum(len(v) for v in src.splits.values())
    shard_dirs: dict[str, list[Path]] = {}
    skipped: list[Skipped] = list(src.rejected)
    resumed = 0
    with Progress(TextColumn(f"[bold]prepare {src.name}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), TextColumn("{task.description}"), disable=not show_progress) as bar:
        task = bar.add_task("", total=total)
        for split, items in src.splits.items():
            shard_dirs[split] = []
            for i, chunk in enumerate(_shards(items, shard_size)):
                target = work / split / f"shard-{i:05d}"
                if target.is_dir():
                    resumed += 1
                    bar.advance(task, len(chunk))
                else:
                    bar.update(task, description=f"{split} shard {i}")
                    _write_shard(src, split, chunk, target, lambda: bar.advance(task))
                shard_dirs[split].append(target)
                skipped += _read_skipped(target)
    rows = _finalize(src, out, shard_dirs)
    _write_report(out, src, rows, skipped)
    manifest = {"name": src.name, "modalities": list(src.modalities), "num_classes": len(src.class_names),
                "class_names": src.class_names, "rows": rows, "skipped": len(skipped), "settings": settings}
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    tmp.replace(out / MANIFEST)
    shutil.rmtree(work, ignore_errors=True)
    logger.info("prepared %s in %s: %s, %d skipped", src.name, out, rows, len(skipped))
    return Outcome(out, rows, skipped, resumed_shards=resumed)
