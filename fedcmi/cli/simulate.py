"""``fedcmi simulate``: a federation on this machine with Flower's simulation engine, resumable, and the lines
it ends with (the clients' replies; on a stop, how to continue)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from fedcmi.cli.config_args import add_config_arguments, resolve_config
from fedcmi.config import META_KEYS, ConfigError, RunConfig, config_keys, defaults, effective, parse_overrides
from fedcmi.errors import UserError
from fedcmi.runs.layout import CONFIG_FILE, METRICS_JSON, STATUS_FILE

SIMULATE_HELP = """\
Simulate a federation on this machine with Flower's simulation engine (Ray).

Each client holds a label-skewed shard of the data set (Dirichlet, alpha) and either both modalities or
only one. Every round a sample of clients trains locally and the server aggregates each modality's part
over the clients that hold it, then evaluates the global model on the held-out test set.

examples:
  fedcmi simulate                                  # FedCMI on the embedded synthetic-av data
  fedcmi simulate strategy=fedavg num-server-rounds=5
  fedcmi simulate dataset=digits-cg dirichlet-alpha=0.1 --out runs/skewed
  fedcmi simulate --config my.toml seed=3          # file first, then key=value overrides

Results go to runs/<time>-<name>/ (or --out DIR): config.json (the values that ran), metrics.csv,
metrics.json, model.safetensors and accuracy.png.

A method's own settings are defaults: a key you set always wins, and a key that contradicts what defines
the method (strategy=fedcmi-noinf lambda-cmi=3) is refused. `fedcmi methods` lists each method's keys.

configuration keys (the same as [tool.flwr.app.config] in pyproject.toml; docs/configuration.md):
{keys}
"""


def _simulate_help() -> str:
    """Built when the parser is (the defaults need no heavy import: the data sets' and methods' names are light)."""
    keys = "\n".join(f"  {k:<24} {doc} (default: {defaults()[k]!r})" for k, doc in config_keys().items())
    return SIMULATE_HELP.format(keys=keys)


def add_simulate_parser(sub: Any) -> None:
    p = sub.add_parser("simulate", help="run a federated simulation", description=_simulate_help(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p)
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<time>-<name>)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run after its last complete round (its config.json is used; "
                        "only num-server-rounds may be overridden)")
    p.add_argument("--verbose", action="store_true", help="show Flower's own log")
    p.set_defaults(run=cmd_simulate)


def resume_config(args: argparse.Namespace) -> RunConfig:
    """The config of the run to resume: its own config.json, plus at most a new num-server-rounds."""
    run = Path(args.resume)
    path = run / CONFIG_FILE
    if not run.is_dir():
        raise ConfigError(f"--resume {run}: " + ("not a directory" if run.exists() else "no such directory"))
    if not path.is_file():
        raise ConfigError(f"--resume {run}: no config.json there; not a fedcmi run directory")
    if args.config or args.out:
        raise ConfigError("--resume takes neither --config nor --out: the run's own config.json is used")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: expected a JSON object of configuration keys")
    for key in META_KEYS:
        saved.pop(key, None)
    overrides = parse_overrides(args.overrides)
    extra = sorted(set(overrides) - {"num-server-rounds"})
    if extra:
        raise ConfigError(f"--resume: {extra[0]!r} cannot change in a resumed run (only num-server-rounds can)")
    return effective({**saved, **overrides, "out-dir": str(run)}).check_run()


def cmd_simulate(args: argparse.Namespace, client_app: Any = None) -> int:
    """``client_app`` replaces fedcmi's ClientApp (e.g. one with mods; ``fedcmi.cli.main()`` passes it on)."""
    cfg = resume_config(args) if args.resume else resolve_config(args, run=True)
    return simulate_config(cfg, args.verbose, resume=bool(args.resume), client_app=client_app)


def simulate_config(cfg: RunConfig, verbose: bool, resume: bool = False, client_app: Any = None) -> int:
    """Run ``cfg``; a stop or a failure still ends with the replies of the rounds on disk."""
    from fedcmi.runtime.interrupt import Interrupted, handle_signals

    with handle_signals():  # Ctrl-C / SIGTERM from here on: stop within seconds, keep every finished round
        if not cfg.output.out_dir:  # named here, so that an interrupted or failed run can still be read back
            from fedcmi.runs.run_dir import default_run_dir

            cfg = cfg.replace(out_dir=str(default_run_dir(cfg)))
        try:
            return _simulate(cfg, verbose, resume, client_app)
        except Interrupted as exc:
            print_closing_lines(saved_rows(cfg))
            print(interrupted_line(exc, cfg), file=sys.stderr)
            return exc.exit_code
        except UserError:
            raise
        except Exception:  # the run failed (e.g. too many skipped rounds): its rounds so far, then the error line
            print_closing_lines(saved_rows(cfg))
            raise


def saved_rows(cfg: RunConfig) -> list[dict[str, Any]]:
    """The rows in the run directory's metrics.json ([] when there is none or it cannot be read)."""
    path = Path(cfg.output.out_dir or "") / METRICS_JSON
    if not cfg.output.out_dir or not path.is_file():
        return []
    with contextlib.suppress(ValueError, OSError):
        rows = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(rows, list):
            return [r for r in rows if isinstance(r, dict)]
    return []


def print_closing_lines(rows: list[dict[str, Any]], console: Any = None) -> None:
    """The replies of a run's rounds, after its last round (complete, interrupted or failed), on stdout."""
    from fedcmi.cli.display import closing_lines

    for line in closing_lines(rows):
        if console is None:
            print(line, flush=True)
        else:
            console.print(line, markup=False, highlight=False, soft_wrap=True)


def interrupted_line(exc: Any, cfg: RunConfig) -> str:
    """The one line an interrupted run ends with: the signal, the last complete round, how to continue."""
    status_path = Path(cfg.output.out_dir or "") / STATUS_FILE
    done = None
    if cfg.output.out_dir and status_path.is_file():
        with contextlib.suppress(ValueError, OSError):
            done = json.loads(status_path.read_text(encoding="utf-8")).get("rounds")
    if done is None:
        return f"fedcmi: interrupted ({exc.name}) before the first round finished; nothing to resume"
    return (f"fedcmi: interrupted ({exc.name}) after round {done} of {cfg.server.num_server_rounds}; "
            f"continue with: fedcmi simulate --resume {cfg.output.out_dir}")


def _simulate(cfg: RunConfig, verbose: bool, resume: bool, client_app: Any) -> int:
    from fedcmi.runtime.simulation import check_resources, simulate

    check_resources(cfg)  # this machine's CPUs (and GPUs, Ray address) first: no data or torch needed for the CPUs

    from fedcmi.data import load_data
    from fedcmi.data.partition import federation
    from fedcmi.devices import check_device
    from fedcmi.metrics import ACC_MM, ROUND, acc_alone, round_line
    from fedcmi.runs.run_dir import default_run_dir

    check_device(cfg.runtime.device)
    federation(cfg)  # an infeasible partition (alpha too small for min-partition-size) stops here, not in Ray
    done = 0
    if resume:
        from fedcmi.runs.layout import COMPLETE, run_status
        from fedcmi.runs.run_dir import resumable

        # checkpoint, config hash, metrics: before anything starts
        done = resumable(Path(cfg.output.out_dir), cfg).round
        if done >= cfg.server.num_server_rounds:
            if run_status(Path(cfg.output.out_dir)) == COMPLETE:
                print(f"fedcmi: nothing to resume: {cfg.output.out_dir} has finished all "
                      f"{cfg.server.num_server_rounds} rounds")
                return 0
            from fedcmi.runtime.apps import run_server  # killed after its last checkpoint: write what is missing

            print_closing_lines(run_server(None, cfg, resume=True).rows)  # no round left to train: no Ray
            print(f"fedcmi: {cfg.output.out_dir}: all {done} rounds were done; wrote the final model, plot and status")
            return 0
    if not cfg.output.out_dir:  # simulate_config names it; kept for direct callers
        cfg = cfg.replace(out_dir=str(default_run_dir(cfg)))
    names = load_data(cfg).modalities
    header = (f"fedcmi simulate: {cfg.method.strategy} on {cfg.data.dataset}, {cfg.federation.num_clients} clients "
              f"({cfg.server.clients_per_round} per round), {cfg.server.num_server_rounds} rounds, "
              f"seed {cfg.federation.seed}"
              + (f"; resuming {cfg.output.out_dir} from round {done + 1}" if resume else ""))
    if not sys.stdout.isatty():  # a file or a pipe: one plain line per round, as it ends
        print(header, flush=True)

        def line(row: dict[str, Any]) -> None:
            print(round_line(row, cfg.server.num_server_rounds, names), flush=True)

        run_dir = simulate(cfg, line, verbose=verbose, resume=resume, client_app=client_app)
        print_closing_lines(run_dir.rows)
        files = sorted(p.name for p in run_dir.path.iterdir() if p.is_file() and not p.name.startswith("."))
        print(f"results written to {run_dir.path}: " + ", ".join(files), flush=True)
        if hint := _wandb_hint(cfg, run_dir.path):
            print(hint, flush=True)
        return 0

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedcmi.cli.display import results_table

    console = Console()
    console.print(header, markup=False, highlight=False)
    with Progress(TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console, transient=False) as progress:
        task = progress.add_task("starting Ray and the clients...", total=cfg.server.num_server_rounds,
                                 completed=done if resume else 0)

        def report(row: dict[str, Any]) -> None:
            desc = (f"mm {row[ACC_MM]:.3f}  {names[0]} {row[acc_alone(names[0])]:.3f}  "
                    f"{names[1]} {row[acc_alone(names[1])]:.3f}")
            progress.update(task, completed=row[ROUND], description=desc)

        run_dir = simulate(cfg, report, verbose=verbose, resume=resume, client_app=client_app)
    console.print(results_table(run_dir.rows, names))
    print_closing_lines(run_dir.rows, console)
    console.print(f"results written to [bold]{run_dir.path}[/bold]")
    if hint := _wandb_hint(cfg, run_dir.path):
        console.print(hint, markup=False, highlight=False)
    return 0


def _wandb_hint(cfg: RunConfig, path: Path) -> str | None:
    if not cfg.output.wandb:
        return None
    from fedcmi.runs.wandb_log import sync_hint

    return sync_hint(path)
