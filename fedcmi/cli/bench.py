"""``fedcmi bench``: run a grid of strategies x settings x seeds, resumable, and write its reports."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fedcmi.config import ConfigError, parse_overrides

BENCH_HELP = """\
Compare imbalance strategies side by side: every (strategy, Dirichlet alpha, modality mix, seed) cell is a
full federated run on the same data, partitions and evaluation. The grid runs on one simulated federation
(Ray starts once); a finished cell is never run twice, and an interrupted grid continues where it stopped
when you run the same command again.

presets:
  quick     fedavg, fedprox, fedcmi, fedcmi-plus; alpha 0.5; mixes 0.5:0.5 and 1:0.5; 1 seed
  default   all strategies; alpha 0.1, 1, iid; mixes 0.5:0.5, 1:0.5, 0.5:1; 3 seeds
  long      all strategies; the make-run federation (10 clients per round, 2 epochs, 40 rounds)
  label-skew  fedavg, fedavg-la, fedcmi, fedcmi-plus at alpha 0.1 (mixes 0.5:0.5, 1:0.5), 5 seeds, 60 rounds
            of the make-run federation (long enough to converge at alpha 0.1)

a mix is multimodal-ratio:unimodal-split (0.5:1 = half multimodal, the rest hold only the first modality).
--missing-rates 0,0.3 adds an axis: each multimodal client's samples lack the first modality at that rate and
other samples the second at the same rate (missing-a-rate = missing-b-rate; at most 0.5). --label-noise 0,0.2
adds a label-noise-rate axis (docs/missing-and-noise.md).

writes to --out (default runs/bench-<preset>): results.csv (final round per cell), rounds.csv (every
round), summary.md (mean ± 95 % interval over seeds, best in bold, paired difference to fedavg),
rounds_*.png and bars_*.png, cells/<cell>/.

examples:
  fedcmi bench --preset quick
  fedcmi bench --strategies fedavg,fedcmi --alphas 0.1,iid --seeds 2 num-server-rounds=10
  fedcmi bench --strategies fedavg,fedcmi --missing-rates 0,0.3,0.5 --label-noise 0,0.2
  fedcmi bench --strategies fedavg,fedcmi --alphas natural,0.1 dataset=fsdd data-root=DIR num-clients=12 \
      natural-splits=2
"""


def _seed_text(seeds: tuple[int, ...]) -> str:
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def add_bench_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="compare strategies over a grid of settings and seeds",
                       description=BENCH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick", help="quick | default | long | label-skew (default: quick)")
    p.add_argument("--strategies", help="comma-separated strategy names (default: the preset's)")
    p.add_argument("--seeds", help="a count N (seeds 0..N-1), a range 10-19 or a list 3,7,21 (default: the "
                   "preset's count)")
    p.add_argument("--alphas", help="comma-separated Dirichlet alphas; iid for IID; natural for the natural "
                   "federation of a prepared data set (one client per speaker/actor/event, natural-splits=K each; "
                   "num-clients must be groups x K) (default: the preset's)")
    p.add_argument("--mixes", help="comma-separated ratio:split mixes (default: the preset's)")
    p.add_argument("--missing-rates", help="comma-separated missing-modality rates in [0, 0.5] (an axis; default: "
                   "none, the base keys apply)")
    p.add_argument("--label-noise", help="comma-separated label-noise rates in [0, 1] (an axis; default: none)")
    p.add_argument("--jobs", type=int, metavar="N", help="cells run at once on the one federation (default: "
                   "3, more when there are more client actors than 2/3 of a round's clients); results are the "
                   "same for any N")
    p.add_argument("--out", metavar="DIR", help="bench folder (default: runs/bench-<preset>)")
    p.add_argument("--verbose", action="store_true", help="show Flower's own log")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="base configuration overrides")
    p.set_defaults(run=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from fedcmi.runtime.interrupt import Interrupted, handle_signals

    with handle_signals():  # Ctrl-C / SIGTERM: stop within seconds; finished cells and rounds are kept
        try:
            return _bench(args)
        except Interrupted as exc:
            print(f"fedcmi: interrupted ({exc.name}); finished cells and rounds are kept: run the same command "
                  "again to continue", file=sys.stderr)
            return exc.exit_code


def _bench(args: argparse.Namespace) -> int:
    from fedcmi.bench.plan import cell_complete, make_plan, save_plan
    from fedcmi.runtime.simulation import check_resources, run_app

    # the whole grid is checked before torch, Ray or the data sets are imported (a typo answers at once)
    out = Path(args.out or f"runs/bench-{args.preset}")
    plan = make_plan(args.preset, out, parse_overrides(args.overrides), args.strategies, args.seeds,
                     args.alphas, args.mixes, args.missing_rates, args.label_noise)
    backend = check_resources(plan.base)
    jobs = default_jobs(plan.base, backend) if args.jobs is None else args.jobs
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: must be at least 1 (cells run at once)")

    from fedcmi.bench.report import replies_note, write_reports
    from fedcmi.data.partition import federation
    from fedcmi.metrics import ACC_MM, ROUND, modality_names, round_line
    from fedcmi.runtime.apps import make_bench_app

    for cell in plan.cells():  # every partition of the grid, before Ray starts (cached: cheap)
        federation(plan.cell_config(cell))
    command = "fedcmi " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "fedcmi bench"
    cells = plan.cells()
    todo = [c for c in cells if not cell_complete(plan.cell_dir(c))]
    tty = sys.stdout.isatty()
    console = _console(tty)
    corruptions = len(plan.missing) * len(plan.noise)
    axes = f"{len(plan.strategies)} strategies x {len(plan.alphas)} alphas x {len(plan.mixes)} mixes x "
    axes += f"{corruptions} corruption settings x " if corruptions > 1 else ""
    seeds = f"{len(plan.seeds)} seeds: {_seed_text(plan.seeds)}"
    console.print(f"fedcmi bench --preset {args.preset}: {len(cells)} cells ({axes}{seeds}), "
                  f"{len(cells) - len(todo)} already finished, {jobs} at a time; writing to {out}")
    out.mkdir(parents=True, exist_ok=True)
    save_plan(plan, command)
    outcome: dict[str, str] = {}
    interrupted: dict[str, Any] = {}
    started = time.monotonic()
    if todo and not tty:  # a file or a pipe: one plain line per cell and per round, as they end
        done = {"n": len(cells) - len(todo), "started": len(cells) - len(todo)}
        lock = threading.Lock()  # cells report from their own threads

        def on_cell_line(cell: Any, state: str) -> None:
            with lock:
                if state == "start":
                    done["started"] += 1
                    print(f"cell {done['started']}/{len(cells)} {cell.id}", flush=True)
                else:
                    done["n"] += 1
                    print(f"cell {done['n']}/{len(cells)} {cell.id}: {state}", flush=True)

        def on_round_line(cell: Any, row: dict[str, Any]) -> None:
            line = round_line(row, plan.base.server.num_server_rounds, modality_names(row))
            with lock:
                print(f"  {cell.id} {line}" if jobs > 1 else f"  {line}", flush=True)

        run_app(make_bench_app(plan, todo, outcome, on_cell_line, on_round_line, interrupted, jobs), plan.base,
                args.verbose)
    elif todo:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("[bold]cells"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                      TextColumn("{task.description}"), console=console) as progress:
            task = progress.add_task("starting Ray and the clients...", total=len(cells),
                                     completed=len(cells) - len(todo))
            def on_cell(cell: Any, state: str) -> None:
                if state == "start":
                    progress.update(task, description=f"{cell.id}")
                else:
                    progress.advance(task)

            def on_round(cell: Any, row: dict[str, Any]) -> None:
                progress.update(task, description=f"{cell.id}  round {row[ROUND]}  mm {row[ACC_MM]:.3f}")

            run_app(make_bench_app(plan, todo, outcome, on_cell, on_round, interrupted, jobs), plan.base,
                    args.verbose)
    if "signal" in interrupted:
        raise interrupted["signal"]
    failed = {k: v for k, v in outcome.items() if v != "complete"}
    finals, files = write_reports(plan, command)
    console.print(f"{len(outcome) - len(failed)} cells run, {len(cells) - len(todo)} reused, {len(failed)} failed "
                  f"in {time.monotonic() - started:.0f} s; {len(finals)} cells in the reports")
    for cell_id, why in failed.items():
        console.print(f"failed {cell_id}: {why}", style="red" if tty else None)
    note = replies_note(finals, see=f"{out / 'summary.md'} (replies) and results.csv")
    if note:
        console.print(note, markup=False, highlight=False)
    if files:
        console.print(f"reports: {out / 'summary.md'}, {out / 'results.csv'}, {out / 'rounds.csv'} and "
                      f"{len(files) - 3} plots")
    return 1 if failed else 0


def default_jobs(base: Any, backend: dict[str, Any]) -> int:
    """Cells at once by default: 3, or enough that the cells' rounds can keep every client actor busy
    (2 x actors / clients-per-round) where there are more actors. Why 3 on a few cores: one cell leaves
    them idle while its server evaluates and waits for its slowest client (docs/benchmark.md compares 2, 3
    and 4)."""
    cpus = backend.get("init_args", {}).get("num_cpus") or 0
    per_client = backend["client_resources"]["num_cpus"] or 1
    actors = int(cpus // per_client) if cpus else 0
    return max(3, math.ceil(2 * actors / max(1, base.server.clients_per_round)))


def _console(tty: bool) -> Any:
    from fedcmi.cli.display import console

    return console()

