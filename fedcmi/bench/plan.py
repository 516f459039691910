"""The plan of ``fedcmi bench``: a grid of (strategy, Dirichlet alpha, modality mix, seed) cells, optionally
crossed with missing-modality rates and label-noise rates (``--missing-rates``, ``--label-noise``).

``server/bench_app.py`` runs the cells and ``fedcmi.bench.report`` turns finished ones into reports. Each
cell is an ordinary run directory under ``cells/`` (the same files ``fedcmi simulate`` writes), so a
finished cell is never run twice and an interrupted one resumes from its checkpoint. A cell's configuration
is resolved like a run's: the preset's base keys < the method's defaults < the user's keys < the cell's axes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcmi.config import ConfigError, RunConfig, effective, normalize
from fedcmi.config.presets import SIMULATION_DEFAULTS
from fedcmi.errors import did_you_mean
from fedcmi.methods.registry import METHOD_NAMES
from fedcmi.runs.files import atomic_write
from fedcmi.runs.layout import COMPLETE, run_status

AXIS_KEYS = ("strategy", "seed", "multimodal-ratio", "unimodal-split", "dirichlet-alpha",
             "run-name", "out-dir")  # set by the grid for every cell; the user sets them with the flags
DIRICHLET = ("dirichlet", "dirichlet-balanced")  # partitioner= may choose which one the alpha cells use


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


NATURAL = "natural"  # an --alphas value: partitioner=natural (one client per speaker/actor/event, natural-splits)


def parse_alpha(text: str) -> float | str | None:
    """A Dirichlet alpha, ``None`` for ``iid``, or ``"natural"`` (the natural federation)."""
    if text.strip().lower() == "iid":
        return None
    if text.strip().lower() == NATURAL:
        return NATURAL
    try:
        alpha = float(text)
    except ValueError:
        raise ConfigError(f"alpha {text!r}: a positive number, iid or natural") from None
    if not alpha > 0 or not math.isfinite(alpha):
        raise ConfigError(f"alpha {text!r}: must be > 0")
    return alpha


def alpha_label(alpha: float | str | None) -> str:
    return "iid" if alpha is None else alpha if isinstance(alpha, str) else f"{alpha:g}"


MISSING_KEYS = ("missing-a-rate", "missing-b-rate")  # the --missing-rates axis sets both to the cell's rate
NOISE_KEYS = ("label-noise-rate",)  # the --label-noise axis


def parse_rates(text: str, flag: str, upper: float) -> list[float | None]:
    """Comma-separated rates in [0, upper] (an axis of the grid)."""
    out: list[float | None] = []
    for item in text.split(","):
        try:
            rate = float(item)
        except ValueError:
            raise ConfigError(f"{flag} {item!r}: a number in [0, {upper:g}]") from None
        if not 0 <= rate <= upper:
            raise ConfigError(f"{flag} {item!r}: must be in [0, {upper:g}]")
        out.append(rate)
    return out


@dataclass(frozen=True)
class Cell:
    strategy: str
    alpha: float | str | None  # a Dirichlet alpha, None: iid, "natural": the natural federation
    mix: Mix
    seed: int
    missing: float | None = None  # missing-a-rate = missing-b-rate of the cell; None: not an axis
    noise: float | None = None  # label-noise-rate of the cell; None: not an axis

    @property
    def id(self) -> str:
        mix = f"{self.mix.ratio:g}-{self.mix.split:g}"
        return f"{self.strategy}__alpha-{alpha_label(self.alpha)}__mix-{mix}{self.corruption_tag}__seed-{self.seed}"

    @property
    def corruption_tag(self) -> str:
        """``__missing-0.3__noise-0.2`` for the corruption axes the grid has ('' without them)."""
        tag = f"__missing-{self.missing:g}" if self.missing is not None else ""
        return tag + (f"__noise-{self.noise:g}" if self.noise is not None else "")

    @property
    def setting(self) -> str:
        extra = "" if self.missing is None else f", missing={self.missing:g}"
        extra += "" if self.noise is None else f", label-noise={self.noise:g}"
        return f"alpha={alpha_label(self.alpha)}, mix={self.mix}{extra}"

    def axes(self, dirichlet: str = "dirichlet") -> dict[str, Any]:
        """The keys this cell sets (the alpha key only for a Dirichlet cell, with the ``dirichlet`` partitioner)."""
        partitioner = "iid" if self.alpha is None else NATURAL if self.alpha == NATURAL else dirichlet
        keys: dict[str, Any] = {"strategy": self.strategy, "seed": self.seed, "multimodal-ratio": self.mix.ratio,
                                "unimodal-split": self.mix.split, "partitioner": partitioner}
        if partitioner == dirichlet:
            keys["dirichlet-alpha"] = self.alpha
        if self.missing is not None:
            keys.update(dict.fromkeys(MISSING_KEYS, self.missing))
        if self.noise is not None:
            keys["label-noise-rate"] = self.noise
        return keys


# Grid presets. The base keys shrink a cell so the default grid (378 cells) fits its time budget on 2 cores.
BENCH_BASE = {"num-clients": 20, "clients-per-round": 5, "local-epochs": 1, "min-partition-size": 5, "lr": 0.05}
BENCH_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"strategies": ["fedavg", "fedprox", "fedcmi", "fedcmi-plus"], "seeds": 1, "alphas": ["0.5"],
              "mixes": ["0.5:0.5", "1:0.5"], "base": {**BENCH_BASE, "num-server-rounds": 12}},
    "default": {"strategies": list(METHOD_NAMES), "seeds": 3, "alphas": ["0.1", "1", "iid"],
                "mixes": ["0.5:0.5", "1:0.5", "0.5:1"], "base": {**BENCH_BASE, "num-server-rounds": 15}},
    "label-skew": {"strategies": ["fedavg", "fedavg-la", "fedcmi", "fedcmi-plus"], "seeds": 5, "alphas": ["0.1"],
                   "mixes": ["0.5:0.5", "1:0.5"],
                   "base": {"num-clients": 20, "clients-per-round": 10, "local-epochs": 2, "num-server-rounds": 60}},
    "long": {"strategies": list(METHOD_NAMES), "seeds": 3, "alphas": ["0.5", "1", "iid"],
              "mixes": ["0.5:0.5", "1:0.5", "0.5:1"],
              "base": {"num-clients": 20, "clients-per-round": 10, "local-epochs": 2, "num-server-rounds": 40}},
}


@dataclass
class BenchPlan:
    """``lower``: the preset's base keys; ``explicit``: the keys the user set (never axis keys)."""

    lower: dict[str, Any]
    explicit: dict[str, Any]
    strategies: list[str]
    seeds: tuple[int, ...]
    alphas: list[float | str | None]
    mixes: list[Mix]
    out: Path
    missing: list[float | None] = field(default_factory=lambda: [None])
    noise: list[float | None] = field(default_factory=lambda: [None])
    base: RunConfig = field(init=False)

    def __post_init__(self) -> None:
        self.base = effective(self.explicit, self.lower).check_run()

    def cell_config(self, cell: Cell) -> RunConfig:
        """The effective configuration of one cell."""
        dirichlet = self.explicit.get("partitioner", "dirichlet")
        return effective({**self.explicit, **cell.axes(dirichlet), "run-name": cell.id,
                          "out-dir": str(self.cell_dir(cell))}, self.lower).check_run()

    def cells(self) -> list[Cell]:
        return [Cell(s, a, m, seed, miss, noise) for a in self.alphas for m in self.mixes for miss in self.missing
                for noise in self.noise for seed in self.seeds for s in self.strategies]

    def cell_dir(self, cell: Cell) -> Path:
        return self.out / "cells" / cell.id


def parse_seeds(text: str | int) -> tuple[int, ...]:
    """``--seeds``: a count N (seeds 0..N-1), a range ``10-19`` or a list ``3,7,21``, so a claim can be checked on
    seeds it was not tuned on."""
    spec = str(text).strip()
    lo_hi = spec.split("-", 1) if "-" in spec.lstrip("-") and "," not in spec else None
    try:
        if lo_hi:
            lo, hi = int(lo_hi[0]), int(lo_hi[1])
            values = list(range(lo, hi + 1)) if hi >= lo else []
        elif "," in spec:
            values = [int(v) for v in spec.split(",") if v.strip()]
        else:
            values = list(range(int(spec)))
    except ValueError:
        raise ConfigError(f"--seeds {spec!r}: a count (3), a range (10-19) or a list (3,7,21)") from None
    if not values:
        raise ConfigError(f"--seeds {spec}: names no seed (a count must be >= 1, a range must not end before it "
                          "starts)")
    if not values or any(v < 0 or v > 2**32 - 1 for v in values):
        raise ConfigError(f"--seeds {spec}: seeds must be in [0, 2**32 - 1]")
    return tuple(_unique(values))


def make_plan(preset_name: str, out: Path, base_overrides: dict[str, Any], strategies: str | None = None,
              seeds: str | int | None = None, alphas: str | None = None, mixes: str | None = None,
              missing_rates: str | None = None, label_noise: str | None = None) -> BenchPlan:
    """The grid of a preset, with any of its axes or base keys overridden; validated before anything runs."""
    if preset_name not in BENCH_PRESETS:
        raise ConfigError(f"--preset {preset_name!r}: must be one of {', '.join(BENCH_PRESETS)}"
                          + did_you_mean(preset_name, BENCH_PRESETS))
    p = BENCH_PRESETS[preset_name]
    explicit = normalize(base_overrides)
    on_axes = [k for k in explicit if k in AXIS_KEYS or (missing_rates and k in MISSING_KEYS)
               or (label_noise and k in NOISE_KEYS)]
    if explicit.get("partitioner", "dirichlet") not in DIRICHLET:
        on_axes.append("partitioner")
    if on_axes:
        raise ConfigError(f"{on_axes[0]}=: the grid sets it for every cell; use --strategies, --seeds, --alphas, "
                          "--mixes, --missing-rates, --label-noise or --out instead")
    # a value named twice (fedavg,fedavg or 0.5,5e-1) is one cell, not two runs counted as n=2
    names = _unique([s.strip() for s in strategies.split(",")] if strategies else list(p["strategies"]))
    unknown = [s for s in names if s not in METHOD_NAMES]
    if unknown or not names:
        raise ConfigError(f"--strategies: unknown strategy {unknown[0]!r}; one of {', '.join(METHOD_NAMES)}"
                          + did_you_mean(unknown[0], METHOD_NAMES) if unknown else
                          "--strategies: name at least one strategy")
    seed_values = parse_seeds(p["seeds"] if seeds is None else seeds)
    alpha_values = _unique([parse_alpha(a) for a in (alphas.split(",") if alphas else p["alphas"])])
    mix_values = _unique([Mix.parse(m) for m in (mixes.split(",") if mixes else p["mixes"])])
    missing = _unique(parse_rates(missing_rates, "--missing-rates", 0.5)) if missing_rates else [None]
    noise = _unique(parse_rates(label_noise, "--label-noise", 1.0)) if label_noise else [None]
    plan = BenchPlan({**SIMULATION_DEFAULTS, **p["base"]}, explicit, names, seed_values, alpha_values, mix_values,
                     out, missing, noise)
    for cell in plan.cells():  # every cell's effective config: a user key a method refuses stops here
        plan.cell_config(cell)
    _check_out_dir(plan)
    return plan


def _unique(values: list[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


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
            key = diff[0]
            was, now = (v if isinstance(v, str) else json.dumps(v) for v in (saved[key], base[key]))
            raise ConfigError(f"{plan.out}: holds a bench with a different base configuration ({key}: {was} there, "
                              f"{now} now); continue it with {key}={was}, or use another --out")
    elif plan.out.exists() and any(plan.out.iterdir()):
        raise ConfigError(f"--out {plan.out}: exists, is not empty and is not a fedcmi bench folder")


def save_plan(plan: BenchPlan, command: str) -> None:
    base = {k: v for k, v in plan.base.to_dict().items() if k not in ("out-dir", "run-name")}
    atomic_write(plan.out / "bench.json", json.dumps({"base": base, "command": command}, indent=2) + "\n")


def cell_complete(path: Path) -> bool:
    """Whether the cell's run finished (its status says so and its final model is there)."""
    return run_status(path) == COMPLETE
