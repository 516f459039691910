"""The run directory: resolved config, per-round metrics (CSV + JSON), final model, accuracy plot.

Every file is written atomically (temporary file + rename) after each round, so an interrupted run keeps
every finished round.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from fedcmi.config import RunConfig

MODEL_FILE = "model.safetensors"


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def csv_text(rows: list[dict[str, Any]]) -> str:
    """CSV of dict rows; the columns are every key in first-seen order (later rows may add columns)."""
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def default_run_dir(cfg: RunConfig, root: str | Path = "runs") -> Path:
    return Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.name}"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class RunDirectory:
    """One run's output folder; ``add_round`` rewrites ``metrics.csv``/``metrics.json`` each round."""

    def __init__(self, path: str | Path, cfg: RunConfig, modality_names: tuple[str, str],
                 resume_after: int | None = None) -> None:
        """A new run directory, or (``resume_after=k``) an existing one keeping its rows of rounds 0..k."""
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self.modality_names = modality_names
        self.rows: list[dict[str, Any]] = []
        if resume_after is None:
            atomic_write(self.path / "config.json", json.dumps(
                {**cfg.to_dict(), "modalities": list(modality_names)}, indent=2) + "\n")
            return
        rows = json.loads((self.path / "metrics.json").read_text(encoding="utf-8"))
        for row in rows:
            if row["round"] <= resume_after:
                self.rows.append({k: (math.nan if v is None and k == "ratio" else v) for k, v in row.items()})
        if [r["round"] for r in self.rows] != list(range(resume_after + 1)):
            raise ValueError(f"{self.path / 'metrics.json'}: rounds 0..{resume_after} are not all present")
        self.add_round(self.rows.pop())  # rewrite both files without rows past the checkpoint

    def add_round(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        atomic_write(self.path / "metrics.json", json.dumps(
            [{k: _json_safe(v) for k, v in r.items()} for r in self.rows], indent=1) + "\n")
        atomic_write(self.path / "metrics.csv", self._csv())

    def _csv(self) -> str:
        flat = []
        for r in self.rows:
            out = {}
            for k, v in r.items():
                if isinstance(v, list):
                    out.update({f"{k}_{i}": x for i, x in enumerate(v)})
                else:
                    out[k] = v
            flat.append(out)
        return csv_text(flat)

    def save_model(self, state_dict: Mapping[str, torch.Tensor]) -> Path:
        path = self.path / MODEL_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(tmp),
                  metadata={"dataset": self.cfg.dataset, "strategy": self.cfg.strategy})
        os.replace(tmp, path)
        return path

    def plot(self) -> Path:
        """accuracy.png: one curve per evaluation path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        a, b = self.modality_names
        paths = [("acc_mm", "multimodal"), (f"acc_{a}", f"{a} alone (infiltration path)"),
                 (f"acc_{b}", f"{b} alone (infiltration path)"), (f"acc_{a}_zero", f"{a} alone, {b} zeroed"),
                 (f"acc_{b}_zero", f"{b} alone, {a} zeroed"), ("worst_class_acc", "worst class (multimodal)")]
        fig, ax = plt.subplots(figsize=(7, 4.2))
        rounds = [r["round"] for r in self.rows]
        for key, label in paths:
            style = "--" if key.endswith("_zero") else (":" if key.startswith("worst") else "-")
            ax.plot(rounds, [r.get(key) for r in self.rows], style, marker="o", ms=3, label=label)
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.set_title(f"{self.cfg.dataset} / {self.cfg.strategy}")
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = self.path / "accuracy.png"
        buf = io.BytesIO()
        fig.savefig(buf, dpi=110)
        plt.close(fig)
        atomic_write(path, buf.getvalue())
        return path

    def finish(self, status: str, **extra: Any) -> None:
        atomic_write(self.path / "status.json", json.dumps({"status": status, **extra}, indent=2) + "\n")
