"""The reports of ``fedcmi bench``: ``results.csv``, ``rounds.csv``, ``summary.md`` and plots of finished cells."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedcmi.bench.plan import BenchPlan, Cell, alpha_label, cell_complete
from fedcmi.bench.stats import holm, paired_difference, paired_p_value, t_interval, verdict
from fedcmi.methods.registry import METHODS
from fedcmi.methods.unimodal import display_name
from fedcmi.metrics import (
    ACC_MM,
    CAPPED,
    CLIENT_COUNTS,
    ROUND,
    WALL_S,
    acc_alone,
    accuracy_columns,
    reply_totals,
)
from fedcmi.runs.files import atomic_write, csv_text
from fedcmi.runs.layout import CONFIG_FILE, METRICS_JSON

BASELINE = "fedavg"  # every summary table compares each strategy with it, seed by seed
PAIRED_METRIC = ACC_MM
LAST = 5  # the summary averages the last rounds: under label skew single rounds swing by 10-30 points
REPLY_COLUMNS = (*CLIENT_COUNTS, CAPPED)
_OK, _FAILED, _REJECTED, _TIMEOUT = CLIENT_COUNTS


def total_column(column: str) -> str:
    """The results.csv column of a reply count summed over a cell's rounds (``clients_rejected_total``); the
    column without the suffix is the final round's alone."""
    return f"{column}_total"


def _cell_keys(cell: Cell, names: tuple[str, str]) -> dict[str, Any]:
    keys = {"strategy": display_name(cell.strategy, names), "seed": cell.seed,
            "dirichlet_alpha": alpha_label(cell.alpha), "multimodal_ratio": cell.mix.ratio,
            "unimodal_split": cell.mix.split}
    if cell.missing is not None:
        keys["missing_rate"] = cell.missing
    if cell.noise is not None:
        keys["label_noise_rate"] = cell.noise
    return keys


def _setting(r: dict[str, Any]) -> tuple:
    """A row's setting: (alpha, ratio, split, missing rate, label-noise rate); -1 for an axis the grid lacks."""
    return (r["dirichlet_alpha"], r["multimodal_ratio"], r["unimodal_split"], r.get("missing_rate", -1.0),
            r.get("label_noise_rate", -1.0))


def _corruption_text(missing: float, noise: float, sep: str = ", ") -> str:
    return (f"{sep}missing rate = {missing:g}" if missing >= 0 else "") + \
        (f"{sep}label noise = {noise:g}" if noise >= 0 else "")


def collect(plan: BenchPlan) -> tuple[list[dict[str, Any]], list[dict[str, Any]], tuple[str, str]]:
    """(final-round rows, per-round rows, modality names) of every finished cell of the plan."""
    finals, rounds = [], []
    names: tuple[str, str] = ("a", "b")
    for cell in plan.cells():
        path = plan.cell_dir(cell)
        if not cell_complete(path):
            continue
        names = tuple(json.loads((path / CONFIG_FILE).read_text())["modalities"])  # type: ignore[assignment]
        rows = json.loads((path / METRICS_JSON).read_text())
        keys = _cell_keys(cell, names)
        for r in rows:
            flat = {k: v for k, v in r.items() if not isinstance(v, list)}
            rounds.append({**keys, **flat})
        final = {k: v for k, v in rows[-1].items() if not isinstance(v, list)}
        final[WALL_S] = round(sum(float(r.get(WALL_S) or 0.0) for r in rows), 3)
        totals = reply_totals(rows)
        final.update({total_column(k): totals[k] for k in REPLY_COLUMNS})
        for metric in _metric_names(names):
            final[f"{metric}_last{LAST}"] = _mean_std(r.get(metric) for r in rows[-LAST:])[0]
        finals.append({**keys, **final})
    return finals, rounds, names


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    atomic_write(path, csv_text(list(rows)))


def _metric_names(names: tuple[str, str]) -> list[str]:
    return accuracy_columns(names)


def _mean_std(values: Iterable[Any]) -> tuple[float, float, int]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return math.nan, math.nan, 0
    return float(np.mean(vals)), float(np.std(vals)), len(vals)


def _total(r: dict[str, Any], column: str) -> int:
    v = r.get(total_column(column))
    return 0 if v in (None, "") or (isinstance(v, float) and math.isnan(v)) else int(float(v))


def replies_cell(rows: Iterable[dict[str, Any]]) -> str:
    """The ``replies`` entry of a summary row: replies the server rejected of all it asked for, summed over the
    rows' rounds (each row a seed's run), then failed, timed out and capped ones where there are any
    (``rejected 3 of 75, capped 2``); – for rows without the counts."""
    rows = [r for r in rows if total_column(CLIENT_COUNTS[0]) in r]
    if not rows:
        return "–"
    n = {k: sum(_total(r, k) for r in rows) for k in REPLY_COLUMNS}
    text = f"rejected {n[_REJECTED]:,} of {sum(n[k] for k in CLIENT_COUNTS):,}"
    for k, label in ((_FAILED, "failed"), (_TIMEOUT, "timed out"), (CAPPED, "capped")):
        text += f", {label} {n[k]:,}" if n[k] else ""
    return text


_CHANGED = ((_REJECTED, "rejected replies"), (_FAILED, "had failed replies"),
            (_TIMEOUT, "had replies time out"), (CAPPED, "had sample weights capped"))


def _cells(n: int) -> str:
    return f"{n} cell" + "s" * (n != 1)


def replies_note(finals: Sequence[dict[str, Any]], see: str = "summary.md (replies) and results.csv") -> str:
    """One line on the replies of every run of a bench: how many runs (cells) rejected replies, or had failed,
    timed-out or capped ones, and how many; or that every reply was accepted as sent. '' for rows
    without the counts."""
    finals = [r for r in finals if total_column(CLIENT_COUNTS[0]) in r]
    if not finals:
        return ""
    asked = sum(_total(r, k) for r in finals for k in CLIENT_COUNTS)
    parts = []
    for k, verb in _CHANGED:
        cells = sum(_total(r, k) > 0 for r in finals)
        if cells:
            parts.append(f"{cells} of {_cells(len(finals))} {verb} ({sum(_total(r, k) for r in finals):,} in all)")
    if not parts:
        return (f"replies: all {asked:,} replies in {_cells(len(finals))} accepted as sent (none rejected, failed, "
                "timed out or capped)")
    return f"replies: {'; '.join(parts)}; {asked:,} replies asked in all: see {see}"


def summary_markdown(finals: Sequence[dict[str, Any]], names: tuple[str, str], command: str) -> str:
    """One table per setting (alpha, mix): rows strategies, mean ± 95 % interval over seeds, best in bold, and a
    paired comparison with FedAvg on multimodal accuracy (a difference inside its interval is a tie).

    Each cell's value is its mean over the last rounds (``LAST``; ``results.csv`` has both that and the final
    round): a single round's accuracy under strong label skew swings too much to rank strategies on."""
    metrics = _metric_names(names)
    keyed = dict(zip(metrics, (f"{m}_last{LAST}" for m in metrics), strict=True))
    settings: dict[tuple, list[dict[str, Any]]] = {}
    for r in finals:
        settings.setdefault(_setting(r), []).append(r)
    lines = ["# fedcmi bench summary", "", f"Command: `{command}`", "",
             f"Test accuracy averaged over each run's last {LAST} rounds, then mean ± the half-width of a 95 % "
             "Student-t interval over seeds (n = seeds finished; no ± for n = 1); results.csv also has the final "
             "round alone. Best mean per column in bold. `vs fedavg`: the mean per-seed difference in "
             f"{PAIRED_METRIC} to fedavg on the same seeds ± its 95 % interval, and the verdict (better / worse only "
             "when the interval excludes 0, else tie; n/a (1 seed) where only one seed is common: no interval). "
             "`acc_<m>`: modality m alone through its infiltration path "
             "(zero-filled for models without one); `acc_<m>_zero`: alone with the other slot zeroed; – : the "
             "strategy never sees that modality. `replies`: the replies the server rejected of all it asked "
             "for, summed over the rounds and seeds, then those that failed, timed out, or were accepted with "
             "their sample weight capped, where there are any (per seed: the "
             "clients_*_total columns of results.csv; which rounds, partitions and reasons: the faults column of "
             "rounds.csv). `Holm p`: the paired t-test's p-value against fedavg, Holm-adjusted over the table's "
             "comparisons: with many strategies some 'better' verdicts are expected by chance; below 0.05 one "
             "holds for the whole table.", "", f"Seeds: {seed_text(sorted({int(r['seed']) for r in finals}))}.", ""]
    ours = sorted({r["strategy"] for r in finals if _is_ours(str(r["strategy"]), names)})
    if ours:
        lines += [", ".join(f"`{s}`" for s in ours) + ": fedcmi's own variant, not a published method "
                  "(docs/method.md).", ""]
    note = replies_note(finals, see="the replies column")
    if note:
        lines[4:4] = ["Replies" + note.removeprefix("replies") + ".", ""]
    for (alpha, ratio, split, missing, noise), rows in sorted(settings.items(),
                                                               key=lambda kv: (str(kv[0][0]), *kv[0][1:])):
        lines += [f"## alpha = {alpha}, multimodal-ratio = {ratio:g}, unimodal-split = {split:g}"
                  f"{_corruption_text(missing, noise)}", ""]
        by_strategy: dict[str, dict[int, dict[str, Any]]] = {}
        for r in rows:
            by_strategy.setdefault(r["strategy"], {})[int(r["seed"])] = r

        def value(r: dict[str, Any], metric: str) -> float:
            v = r.get(keyed[metric], r.get(metric))
            return math.nan if v is None else float(v)

        stats = {s: {m: t_interval(value(r, m) for r in rs.values()) for m in metrics}
                 for s, rs in by_strategy.items()}
        best = {m: max((st[m].mean for st in stats.values() if st[m].n), default=math.nan) for m in metrics}
        reference = by_strategy.get(BASELINE)
        lines.append("| strategy | n | replies | " + " | ".join(metrics)
                     + (f" | vs {BASELINE} | Holm p |" if reference else " |"))
        lines.append("|---|---|---|" + "---|" * (len(metrics) + 2 * bool(reference)))
        adjusted = holm({s: paired_p_value(*({seed: value(r, PAIRED_METRIC) for seed, r in rs.items()}
                                             for rs in (by_strategy[s], reference)))
                         for s in by_strategy if s != BASELINE}) if reference else {}
        for s, st in stats.items():
            cells = [("**" + st[m].text() + "**" if st[m].n and math.isclose(st[m].mean, best[m]) else st[m].text())
                     for m in metrics]
            if reference:
                cells.append(_versus(by_strategy[s], reference, s, lambda r: value(r, PAIRED_METRIC)))
                p = adjusted.get(s, math.nan)
                cells.append("–" if math.isnan(p) else f"{p:.3f}")
            lines.append(f"| {s} | {len(by_strategy[s])} | {replies_cell(by_strategy[s].values())} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def seed_text(seeds: Sequence[int]) -> str:
    """``10-19`` for three or more consecutive seeds, else the list (``0, 2``)."""
    seeds = list(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _versus(rows: dict[int, dict[str, Any]], reference: dict[int, dict[str, Any]], strategy: str,
            value: Callable[[dict[str, Any]], float]) -> str:
    """The paired difference to the reference strategy over the seeds both finished, with its verdict."""
    if strategy == BASELINE:
        return "(reference)"
    mine = {seed: value(r) for seed, r in rows.items() if not math.isnan(value(r))}
    theirs = {seed: value(r) for seed, r in reference.items() if not math.isnan(value(r))}
    diff = paired_difference(mine, theirs)
    if diff.n == 0:
        return "–"
    if diff.n < 2:  # no interval: the difference, and that it decides nothing
        return f"{diff.mean:+.3f}, {verdict(diff)}"
    return f"{diff.mean:+.3f} ± {diff.half_width:.3f} ({verdict(diff)})"


def _is_ours(strategy: str, names: tuple[str, str]) -> bool:
    spec = METHODS.get(_method_of(strategy, names))
    return bool(spec and spec.ours)


def _method_of(strategy: str, names: tuple[str, str]) -> str:
    """The registry name behind a displayed strategy name (``unimodal-audio`` -> ``unimodal-a``)."""
    for code, name in zip(("a", "b"), names, strict=True):
        if strategy == f"unimodal-{name}":
            return f"unimodal-{code}"
    return strategy


def strategy_colours(strategies: Iterable[str], names: tuple[str, str]) -> dict[str, Any]:
    """A colour per strategy that is the same in every plot of every bench: fixed by the method's place in
    the registry, not by its place in one plot (tab10 and four more that none of its ten resembles)."""
    import matplotlib

    from fedcmi.methods.registry import METHOD_NAMES

    palette = [*matplotlib.colormaps["tab10"].colors, "#000000", "#1b9e77", "#e6ab02", "#00007f"]
    out = {}
    for s in strategies:
        method = _method_of(s, names)
        i = METHOD_NAMES.index(method) if method in METHOD_NAMES else len(METHOD_NAMES) + sum(map(ord, s))
        out[s] = palette[i % len(palette)]
    return out


def plot_reports(out: Path, finals: Sequence[dict[str, Any]], rounds: Sequence[dict[str, Any]],
                 names: tuple[str, str]) -> list[Path]:
    """Per setting: accuracy against rounds (a grid of panels, one per evaluation path, legend in its own
    panel) and a bar chart per modality; a strategy has the same colour everywhere."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedcmi.metrics import column_labels

    metrics = _metric_names(names)
    labels_of = column_labels(names)
    written = []
    keys = sorted({_setting(r) for r in finals}, key=lambda k: (str(k[0]), *k[1:]))
    for key in keys:
        alpha, ratio, split, missing, noise = key
        tag = f"alpha-{alpha}_mix-{ratio:g}-{split:g}" + _corruption_text(missing, noise, "_").replace(
            "missing rate = ", "missing-").replace("label noise = ", "noise-")
        rows = [r for r in rounds if _setting(r) == key]
        strategies = sorted(dict.fromkeys(r["strategy"] for r in rows), key=lambda s: _order(s, names))
        colours = strategy_colours(strategies, names)
        panels = metrics[:-1]  # mm, each alone, each zero-filled (the worst class is in results.csv)
        fig, grid = plt.subplots(2, 3, figsize=(12, 7), sharex=True, sharey=True)
        axes = list(grid.flat)
        for ax, m in zip(axes, panels, strict=False):
            for s in strategies:
                per_round: dict[int, list[float]] = {}
                for r in rows:
                    if r["strategy"] == s and r.get(m) is not None:
                        per_round.setdefault(int(r[ROUND]), []).append(float(r[m]))
                xs = sorted(per_round)
                ys = [np.nanmean(per_round[x]) for x in xs]
                if xs and not all(math.isnan(v) for v in ys):
                    ax.plot(xs, ys, label=s, lw=1.4, color=colours[s])
            ax.set_title(labels_of[m], fontsize=11)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=9, labelbottom=True)
        for ax in grid[-1]:
            ax.set_xlabel("round", fontsize=10)
        for ax in grid[:, 0]:
            ax.set_ylabel("test accuracy\n(mean over seeds)", fontsize=10)
        legend_ax = axes[len(panels)]
        legend_ax.axis("off")
        handles = [plt.Line2D([], [], color=colours[s], lw=2.5) for s in strategies]
        legend_ax.legend(handles, strategies, loc="center", fontsize=10, frameon=False, title="strategy")
        fig.suptitle(f"test accuracy per round: alpha = {alpha}, mix = {ratio:g}:{split:g}"
                     f"{_corruption_text(missing, noise)}", fontsize=12)
        fig.tight_layout()
        written.append(_save(fig, out / f"rounds_{tag}.png"))
        plt.close(fig)

        finals_here = [r for r in finals if _setting(r) == key]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, name in zip(axes, names, strict=True):
            labels, means, stds = [], [], []
            for s in strategies:
                column = f"{acc_alone(name)}_last{LAST}"
                mean, std, n = _mean_std(r.get(column) for r in finals_here if r["strategy"] == s)
                if n:
                    labels.append(s)
                    means.append(mean)
                    stds.append(std if n > 1 else 0.0)
            ax.bar(range(len(labels)), means, yerr=stds if any(stds) else None, capsize=2,
                   color=[colours[s] for s in labels])
            ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
            ax.set_title(f"{name} alone (mean of the last {LAST} rounds)", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_ylabel("test accuracy")
        fig.tight_layout()
        written.append(_save(fig, out / f"bars_{tag}.png"))
        plt.close(fig)
    return written


def _order(strategy: str, names: tuple[str, str]) -> tuple[int, str]:
    from fedcmi.methods.registry import METHOD_NAMES

    method = _method_of(strategy, names)
    return (METHOD_NAMES.index(method) if method in METHOD_NAMES else len(METHOD_NAMES), strategy)


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=100)
    atomic_write(path, buf.getvalue())
    return path


def write_reports(plan: BenchPlan, command: str) -> tuple[list[dict[str, Any]], list[Path]]:
    """results.csv, rounds.csv, summary.md and the plots from every finished cell; returns (final rows, files)."""
    finals, rounds, names = collect(plan)
    if not finals:
        return [], []
    write_csv(plan.out / "results.csv", finals)
    write_csv(plan.out / "rounds.csv", rounds)
    atomic_write(plan.out / "summary.md", summary_markdown(finals, names, command))
    files = [plan.out / "results.csv", plan.out / "rounds.csv", plan.out / "summary.md"]
    return finals, files + plot_reports(plan.out, finals, rounds, names)
