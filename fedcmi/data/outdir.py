"""The output folder of ``fedcmi prepare`` and ``fedcmi features``: written only if that command made it.

Both commands replace ``train/``, ``test/`` and ``dataset_dict.json`` and delete ``.work/`` when they finish
(:func:`fedcmi.data.prepare.writer.install_splits`), so they may only write into a folder that is absent,
empty, or one the same command made earlier: its manifest (``fedcmi.json``, finished) or its
``.work/settings.json`` (interrupted) says so. There the recorded settings decide: the same ones reuse or
continue the work (what the docs promise), other ones are refused. Any other non-empty folder is refused
with one line naming it and what it holds; nothing in it is touched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedcmi.errors import ConfigError

MANIFEST = "fedcmi.json"  # fedcmi.data.prepared.MANIFEST (not imported: that module imports the config)
WORK = ".work"
SETTINGS = "settings.json"
FEATURES = "features"  # fedcmi.data.features.FEATURES: the manifest entry of a features directory


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def made_by(out: Path, command: str) -> bool:
    """Whether ``out`` holds the finished or interrupted output of ``fedcmi <command>`` (prepare, features)."""
    features = command == "features"
    manifest = _json(out / MANIFEST)
    if isinstance(manifest, dict):
        return (FEATURES in manifest) == features
    settings = _json(out / WORK / SETTINGS)
    if isinstance(settings, dict):
        return {"source", "source_rows"} <= set(settings) if features else "name" in settings
    return False


def check_output(out: Path, command: str) -> None:
    """Refuse (one line) to write into ``out`` unless it is absent, empty, or made by ``fedcmi <command>``."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; give a new or empty output folder")
    if not out.is_dir():
        return
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    if entries and not made_by(out, command):
        shown = ", ".join(entries[:6]) + (f", ... ({len(entries)} entries)" if len(entries) > 6 else "")
        raise ConfigError(f"{out}: not empty (holds {shown}) and not made by `fedcmi {command}`; refusing to "
                          "write into it (give a new or empty output folder)")
