"""``fedcmi bench``: a grid of (strategy, Dirichlet alpha, modality mix, seed) cells, and its reports.

This module plans the grid and turns finished cells into ``results.csv``, ``rounds.csv``, ``summary.md`` and
plots; ``server/bench_app.py`` runs the cells. Each cell is an ordinary run directory under ``cells/``
(the same files ``fedcmi simulate`` writes), so a finished cell is never run twice and an interrupted one
resumes from its checkpoint.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedcmi.config import ConfigError, RunConfig, from_mapping
from fedcmi.results import atomic_write, csv_text
from fedcmi.strategies import STRATEGY_NAMES, display_name

METRICS = ("acc_mm", "acc_{a}", "acc_{b}", "acc_{a}_zero", "acc_{b}_zero", "worst_class_acc")
LAST = 5  # the summary averages the last rounds: under label skew single rounds swing by 10-30 points


@dataclass(frozen=True)
class Mix:
    """A modality mix: ``multimodal-ratio`` and ``unimodal-split``, written ``ratio:split``."""

    ratio: float
    split: float

    @classmethod
    def parse(cls, text: str) -> Mix:
        try:
            ratio, split = (float(v) for v in text.split(":"))
        except ValueError:
            raise ConfigError(f"mix {text!r}: write multimodal-ratio:unimodal-split, e.g. 0.5:0.5") from None
        if not (0 <= ratio <= 1 and 0 <= split <= 1):
            raise ConfigError(f"mix {text!r}: both numbers must be in [0, 1]")
        return cls(ratio, split)

    def __str__(self) -> str:
        return f"{self.ratio:g}:{self.split:g}"


def parse_alpha(text: str) -> float | None:
    """A Dirichlet alpha, or ``None`` for ``iid``."""
    if text.strip().lower() == "iid":
        return None
    try:
        alpha = float(text)
    except ValueError:
        raise ConfigError(f"alpha {text!r}: a positive number or iid") from None
    if not alpha > 0 or not math.isfinite(alpha):
        raise ConfigError(f"alpha {text!r}: must be > 0")
    return alpha


def alpha_label(alpha: float | None) -> str:
    return "iid" if alpha is None else f"{alpha:g}"


@dataclass(frozen=True)
class Cell:
    strategy: str
    alpha: float | None
    mix: Mix
    seed: int

    @property
    def id(self) -> str:
        mix = f"{self.mix.ratio:g}-{self.mix.split:g}"
        return f"{self.strategy}__alpha-{alpha_label(self.alpha)}__mix-{mix}__seed-{self.seed}"

    @property
    def setting(self) -> str:
        return f"alpha={alpha_label(self.alpha)}, mix={self.mix}"

    def config(self, base: RunConfig, out: Path) -> RunConfig:
        return base.replace(strategy=self.strategy, seed=self.seed, multimodal_ratio=self.mix.ratio,
                            unimodal_split=self.mix.split, partitioner="iid" if self.alpha is None else "dirichlet",
                            dirichlet_alpha=self.alpha if self.alpha is not None else base.dirichlet_alpha,
                            run_name=self.id, out_dir=str(out / "cells" / self.id))


# Grid presets. The base keys shrink a cell so the default grid (351 cells) fits its time budget on 2 cores.
BENCH_BASE = {"num-clients": 20, "clients-per-round": 5, "local-epochs": 1, "min-partition-size": 5, "lr": 0.05}
BENCH_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"strategies": ["fedavg", "fedprox", "fedcmi", "fedcmi-plus"], "seeds": 1, "alphas": ["0.5"],
              "mixes": ["0.5:0.5", "1:0.5"], "base": {**BENCH_BASE, "num-server-rounds": 12}},
    "default": {"strategies": list(STRATEGY_NAMES), "seeds": 3, "alphas": ["0.1", "1", "iid"],
                "mixes": ["0.5:0.5", "1:0.5", "0.5:1"], "base": {**BENCH_BASE, "num-server-rounds": 15}},
    "paper": {"strategies": list(STRATEGY_NAMES), "seeds": 3, "alphas": ["0.5", "1", "iid"],
              "mixes": ["0.5:0.5", "1:0.5", "0.5:1"],
              "base": {"num-clients": 20, "clients-per-round": 10, "local-epochs": 2, "num-server-rounds": 40}},
}


@dataclass
class BenchPlan:
    base: RunConfig
    strategies: list[str]
    seeds: int
    alphas: list[float | None]
    mixes: list[Mix]
    out: Path

    def cells(self) -> list[Cell]:
        return [Cell(s, a, m, seed) for a in self.alphas for m in self.mixes for seed in range(self.seeds)
                for s in self.strategies]

    def cell_dir(self, cell: Cell) -> Path:
        return self.out / "cells" / cell.id


def make_plan(preset_name: str, out: Path, base_overrides: dict[str, Any], strategies: str | None = None,
              seeds: int | None = None, alphas: str | None = None, mixes: str | None = None) -> BenchPlan:
    """The grid of a preset, with any of its axes or base keys overridden; validated before anything runs."""
    if preset_name not in BENCH_PRESETS:
        raise ConfigError(f"--preset {preset_name!r}: one of {', '.join(BENCH_PRESETS)}")
    p = BENCH_PRESETS[preset_name]
    base = from_mapping({**p["base"], **base_overrides})
    names = [s.strip() for s in strategies.split(",")] if strategies else list(p["strategies"])
    unknown = [s for s in names if s not in STRATEGY_NAMES]
    if unknown or not names:
        raise ConfigError(f"--strategies: unknown strategy {unknown[0]!r}; one of {', '.join(STRATEGY_NAMES)}"
                          if unknown else "--strategies: name at least one strategy")
    n_seeds = p["seeds"] if seeds is None else seeds
    if n_seeds < 1:
        raise ConfigError(f"--seeds {n_seeds}: must be >= 1")
    alpha_values = [parse_alpha(a) for a in (alphas.split(",") if alphas else p["alphas"])]
    mix_values = [Mix.parse(m) for m in (mixes.split(",") if mixes else p["mixes"])]
    plan = BenchPlan(base, names, n_seeds, alpha_values, mix_values, out)
    for cell in plan.cells()[:1]:  # one cell's full config validates every axis combination rule
        cell.config(base, out)
    _check_out_dir(plan)
    return plan


def _check_out_dir(plan: BenchPlan) -> None:
    """A bench folder keeps one base configuration: cells of different bases must not mix."""
    path = plan.out / "bench.json"
    base = {k: v for k, v in plan.base.to_dict().items() if k not in ("out-dir", "run-name")}
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))["base"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{path}: not a fedcmi bench file") from None
        # keys added to fedcmi after the bench started are not a difference (they default to old behaviour)
        diff = sorted(k for k in saved if k in base and saved[k] != base[k])
        if diff:
            raise ConfigError(f"{plan.out}: holds a bench with a different base configuration ({diff[0]}); "
                              "use another --out")
    elif plan.out.exists() and any(plan.out.iterdir()):
        raise ConfigError(f"--out {plan.out}: exists, is not empty and is not a fedcmi bench folder")


def save_plan(plan: BenchPlan, command: str) -> None:
    base = {k: v for k, v in plan.base.to_dict().items() if k not in ("out-dir", "run-name")}
    atomic_write(plan.out / "bench.json", json.dumps({"base": base, "command": command}, indent=2) + "\n")


def cell_complete(path: Path) -> bool:
    try:
        return json.loads((path / "status.json").read_text())["status"] == "complete"
    except (OSError, ValueError, KeyError):
        return False


# --- reports ---------------------------------------------------------------------------------------
def _cell_keys(cell: Cell, names: tuple[str, str]) -> dict[str, Any]:
    return {"strategy": display_name(cell.strategy, names), "seed": cell.seed,
            "dirichlet_alpha": alpha_label(cell.alpha), "multimodal_ratio": cell.mix.ratio,
            "unimodal_split": cell.mix.split}


def collect(plan: BenchPlan) -> tuple[list[dict[str, Any]], list[dict[str, Any]], tuple[str, str]]:
    """(final-round rows, per-round rows, modality names) of every finished cell of the plan."""
    finals, rounds = [], []
    names: tuple[str, str] = ("a", "b")
    for cell in plan.cells():
        path = plan.cell_dir(cell)
        if not cell_complete(path):
            continue
        names = tuple(json.loads((path / "config.json").read_text())["modalities"])  # type: ignore[assignment]
        rows = json.loads((path / "metrics.json").read_text())
        keys = _cell_keys(cell, names)
        for r in rows:
            flat = {k: v for k, v in r.items() if not isinstance(v, list)}
            rounds.append({**keys, **flat})
        final = {k: v for k, v in rows[-1].items() if not isinstance(v, list)}
        final["wall_s"] = round(sum(float(r.get("wall_s") or 0.0) for r in rows), 3)
        for metric in _metric_names(names):
            final[f"{metric}_last{LAST}"] = _mean_std(r.get(metric) for r in rows[-LAST:])[0]
        finals.append({**keys, **final})
    return finals, rounds, names


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    atomic_write(path, csv_text(list(rows)))


def _metric_names(names: tuple[str, str]) -> list[str]:
    return [m.format(a=names[0], b=names[1]) for m in METRICS]


def _mean_std(values: Iterable[Any]) -> tuple[float, float, int]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return math.nan, math.nan, 0
    return float(np.mean(vals)), float(np.std(vals)), len(vals)


def summary_markdown(finals: Sequence[dict[str, Any]], names: tuple[str, str], command: str) -> str:
    """One table per setting (alpha, mix): rows strategies, mean ± std over seeds, best in bold.

    Each cell's value is its mean over the last rounds (``LAST``; ``results.csv`` has both that and the final
    round): a single round's accuracy under strong label skew swings too much to rank strategies on."""
    metrics = _metric_names(names)
    keyed = [f"{m}_last{LAST}" for m in metrics]
    settings: dict[tuple[str, float, float], list[dict[str, Any]]] = {}
    for r in finals:
        settings.setdefault((r["dirichlet_alpha"], r["multimodal_ratio"], r["unimodal_split"]), []).append(r)
    lines = ["# fedcmi bench summary", "", f"Command: `{command}`", "",
             f"Test accuracy averaged over each run's last {LAST} rounds, then mean ± std over seeds (n = seeds "
             "finished); results.csv also has the final round alone. Best mean per column in bold. `acc_<m>`: "
             "modality m alone through its infiltration path (zero-filled for models without one); "
             "`acc_<m>_zero`: alone with the other slot zeroed; – : the strategy never sees that modality.",
             ""]
    for (alpha, ratio, split), rows in sorted(settings.items(), key=lambda kv: (str(kv[0][0]), kv[0][1], kv[0][2])):
        lines += [f"## alpha = {alpha}, multimodal-ratio = {ratio:g}, unimodal-split = {split:g}", ""]
        by_strategy: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_strategy.setdefault(r["strategy"], []).append(r)
        stats = {s: {m: _mean_std(r.get(k, r.get(m)) for r in rs) for m, k in zip(metrics, keyed, strict=True)}
                 for s, rs in by_strategy.items()}
        best = {m: max((st[m][0] for st in stats.values() if not math.isnan(st[m][0])), default=math.nan)
                for m in metrics}
        lines.append("| strategy | n | " + " | ".join(metrics) + " |")
        lines.append("|---|---|" + "---|" * len(metrics))
        for s, st in stats.items():
            cells = []
            for m in metrics:
                mean, std, n = st[m]
                if n == 0:
                    cells.append("–")
                    continue
                text = f"{mean:.3f} ± {std:.3f}"
                cells.append(f"**{text}**" if math.isclose(mean, best[m]) else text)
            lines.append(f"| {s} | {len(by_strategy[s])} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_reports(out: Path, finals: Sequence[dict[str, Any]], rounds: Sequence[dict[str, Any]],
                 names: tuple[str, str]) -> list[Path]:
    """Per setting: accuracy against rounds (one panel per evaluation path) and a bar chart per modality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = _metric_names(names)
    written = []
    keys = sorted({(r["dirichlet_alpha"], r["multimodal_ratio"], r["unimodal_split"]) for r in finals},
                  key=lambda k: (str(k[0]), k[1], k[2]))
    for alpha, ratio, split in keys:
        tag = f"alpha-{alpha}_mix-{ratio:g}-{split:g}"
        rows = [r for r in rounds if (r["dirichlet_alpha"], r["multimodal_ratio"], r["unimodal_split"])
                == (alpha, ratio, split)]
        strategies = list(dict.fromkeys(r["strategy"] for r in rows))
        fig, axes = plt.subplots(1, len(metrics) - 1, figsize=(4 * (len(metrics) - 1), 3.6), sharey=True)
        for ax, m in zip(axes, metrics[:-1], strict=True):
            ax.set_prop_cycle(color=plt.cm.tab20.colors)  # 13 strategies: more colours than the default 10
            for s in strategies:
                per_round: dict[int, list[float]] = {}
                for r in rows:
                    if r["strategy"] == s and r.get(m) is not None:
                        per_round.setdefault(int(r["round"]), []).append(float(r[m]))
                xs = sorted(per_round)
                ys = [np.nanmean(per_round[x]) for x in xs]
                if xs and not all(math.isnan(v) for v in ys):
                    ax.plot(xs, ys, label=s, lw=1.2)
            ax.set_title(m, fontsize=9)
            ax.set_xlabel("round")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("test accuracy (mean over seeds)")
        axes[-1].legend(fontsize=6, loc="lower right")
        fig.suptitle(f"alpha = {alpha}, mix = {ratio:g}:{split:g}", fontsize=10)
        fig.tight_layout()
        written.append(_save(fig, out / f"rounds_{tag}.png"))
        plt.close(fig)

        finals_here = [r for r in finals if (r["dirichlet_alpha"], r["multimodal_ratio"], r["unimodal_split"])
                       == (alpha, ratio, split)]
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
        for ax, name in zip(axes, names, strict=True):
            labels, means, stds = [], [], []
            for s in strategies:
                mean, std, n = _mean_std(r.get(f"acc_{name}_last{LAST}") for r in finals_here if r["strategy"] == s)
                if n:
                    labels.append(s)
                    means.append(mean)
                    stds.append(std)
            ax.bar(range(len(labels)), means, yerr=stds, capsize=2)
            ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
            ax.set_title(f"{name} alone (mean of the last {LAST} rounds)", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_ylabel("test accuracy")
        fig.tight_layout()
        written.append(_save(fig, out / f"bars_{tag}.png"))
        plt.close(fig)
    return written


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=100)
    atomic_write(path, buf.getvalue())
    return path


def write_reports(plan: BenchPlan, command: str) -> tuple[int, list[Path]]:
    """results.csv, rounds.csv, summary.md and the plots from every finished cell; returns (cells, files)."""
    finals, rounds, names = collect(plan)
    if not finals:
        return 0, []
    write_csv(plan.out / "results.csv", finals)
    write_csv(plan.out / "rounds.csv", rounds)
    atomic_write(plan.out / "summary.md", summary_markdown(finals, names, command))
    files = [plan.out / "results.csv", plan.out / "rounds.csv", plan.out / "summary.md"]
    return len(finals), files + plot_reports(plan.out, finals, rounds, names)
