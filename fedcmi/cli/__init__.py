"""The ``fedcmi`` command: ``simulate`` a federation, show its ``partitions``, list the ``methods``,
``prepare`` a real data set, extract its frozen-encoder ``features``, ``bench`` strategies side by side.

Bad configuration stops before anything starts, with one line naming the key and the rule, and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from fedcmi import __version__
from fedcmi.cli.bench import add_bench_parser, cmd_bench
from fedcmi.cli.features import add_features_parser, cmd_features
from fedcmi.cli.prepare import add_prepare_parser, cmd_prepare
from fedcmi.config import META_KEYS, ConfigError, RunConfig, config_keys, defaults, effective, parse_overrides, resolve
from fedcmi.config.presets import PRESETS, preset_values
from fedcmi.errors import UserError

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
    """Built when the parser is (the defaults import the data sets' code, and with it torch)."""
    keys = "\n".join(f"  {k:<24} {doc} (default: {defaults()[k]!r})" for k, doc in config_keys().items())
    return SIMULATE_HELP.format(keys=keys)

PARTITIONS_HELP = """\
Print the federation a configuration builds: per client its modality kind, sample count and classes (with
partitioner=natural also its group, e.g. the speaker, and each group's size and classes).
Takes the same --config and key=value overrides as `simulate`; trains nothing.
"""

METHODS_HELP = """\
List the local methods (strategy=NAME): the model each trains, the modalities, the keys it reads, its
defaults for keys you do not set, and the keys that define it.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedcmi", description="Multimodal federated learning under modality imbalance (FedCMI) on Flower.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fedcmi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{simulate,partitions,methods,prepare,features,bench}")
    sim = sub.add_parser("simulate", help="run a federated simulation", description=_simulate_help(),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    part = sub.add_parser("partitions", help="show the clients a configuration builds",
                          description=PARTITIONS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    for p in (sim, part):
        p.add_argument("--config", metavar="FILE.toml", help="TOML file of keys (flat, or a pyproject.toml)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides")
        p.add_argument("--preset", choices=sorted(PRESETS),
                       help="preset keys under the method's defaults, --config and key=value (paper: the "
                            "authors' code defaults)")
    part.set_defaults(resume=None, out=None, verbose=False)
    sub.add_parser("methods", help="list the local methods and the keys each reads", description=METHODS_HELP,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sim.add_argument("--out", metavar="DIR", help="run directory (default: runs/<time>-<name>)")
    sim.add_argument("--resume", metavar="RUN_DIR",
                     help="continue an interrupted run after its last complete round (its config.json is used; "
                          "only num-server-rounds may be overridden)")
    sim.add_argument("--verbose", action="store_true", help="show Flower's own log")
    add_prepare_parser(sub)
    add_features_parser(sub)
    add_bench_parser(sub)
    return parser


def _resume_config(args: argparse.Namespace) -> RunConfig:
    """The config of the run to resume: its own config.json, plus at most a new num-server-rounds."""
    run = Path(args.resume)
    path = run / "config.json"
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


def _resolve(args: argparse.Namespace) -> RunConfig:
    if getattr(args, "resume", None):
        return _resume_config(args)
    overrides: dict[str, Any] = parse_overrides(args.overrides)
    if getattr(args, "out", None):
        overrides["out-dir"] = args.out
    cfg = resolve(args.config, overrides, preset=preset_values(getattr(args, "preset", None)))
    if args.command == "simulate":
        cfg.check_run()
    if cfg.out_dir:
        out = Path(cfg.out_dir)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"out-dir={cfg.out_dir!r}: is a file, not a folder")
        if out.is_dir() and any(out.iterdir()):
            raise ConfigError(f"out-dir={cfg.out_dir!r}: the folder exists and is not empty; choose another "
                              "(or continue it with --resume)")
        parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
        if not os.access(parent, os.W_OK):
            raise ConfigError(f"out-dir={cfg.out_dir!r}: {parent} is not writable")
    return cfg


def cmd_partitions(cfg: RunConfig) -> int:
    import numpy as np
    from rich.table import Table

    from fedcmi.cli.display import console
    from fedcmi.data import load_data
    from fedcmi.data.corruption import active, plan
    from fedcmi.data.partition import federation, natural_group_kind

    data = load_data(cfg)
    _, _, y = data.arrays("train")
    names = {"mm": "+".join(data.modalities), "a": data.modalities[0], "b": data.modalities[1]}
    specs = federation(cfg)
    natural = cfg.partitioner == "natural"
    kind = natural_group_kind(cfg.dataset) if natural else None
    groups = sorted({s.group for s in specs})
    setting = {"dirichlet": f" alpha={cfg.dirichlet_alpha}",
               "natural": f" ({len(groups)} {kind}s x {cfg.natural_splits})"}.get(cfg.partitioner, "")
    table = Table(title=f"{cfg.dataset}: {cfg.num_clients} clients, {cfg.partitioner}{setting}")
    corrupted = active(cfg)  # per-sample corruption columns only when the run has some
    extra = (f"no {data.modalities[0]}", f"no {data.modalities[1]}", "unlabeled", "noisy") if corrupted else ()
    for col in ("client", *((kind,) if natural else ()), "modalities", "samples", *extra, "classes", "label counts"):
        table.add_column(col, justify="left" if col in ("modalities", "label counts", kind) else "right")
    for spec in specs:
        counts = [int(c) for c in np.bincount(y[spec.indices], minlength=data.num_classes)]
        lost = [str(v) for v in plan(len(spec.indices), spec.kind, cfg, spec.partition_id).counts().values()]
        table.add_row(str(spec.partition_id), *((spec.group,) if natural else ()), names[spec.kind],
                      str(len(spec.indices)), *(lost if corrupted else []), str(sum(c > 0 for c in counts)),
                      " ".join(f"{c:>3}" for c in counts))
    console().print(table)
    if natural:  # each group whole: its size and classes, whatever natural-splits cut it into
        lines = []
        for group in groups:
            rows = np.concatenate([s.indices for s in specs if s.group == group])
            held = np.bincount(y[rows], minlength=data.num_classes)
            lines.append(f"  {group}: {len(rows)} samples, {int((held > 0).sum())} classes")
        console().print(f"{len(groups)} {kind}s (natural groups):\n" + "\n".join(lines), markup=False,
                        highlight=False)
    if corrupted:
        console().print("label counts are the true labels; no <m>: samples of a multimodal client without that "
                        "modality; unlabeled and noisy: training samples (docs/missing-and-noise.md)")
    return 0


def cmd_simulate(cfg: RunConfig, verbose: bool, resume: bool = False, client_app: Any = None) -> int:
    from fedcmi.runtime.interrupt import Interrupted, handle_signals

    with handle_signals():  # Ctrl-C / SIGTERM from here on: stop within seconds, keep every finished round
        if not cfg.out_dir:  # named here, so that an interrupted or failed run can still be read back
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
    path = Path(cfg.out_dir or "") / "metrics.json"
    if not cfg.out_dir or not path.is_file():
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
    status_path = Path(cfg.out_dir or "") / "status.json"
    done = None
    if cfg.out_dir and status_path.is_file():
        with contextlib.suppress(ValueError, OSError):
            done = json.loads(status_path.read_text(encoding="utf-8")).get("rounds")
    if done is None:
        return f"fedcmi: interrupted ({exc.name}) before the first round finished; nothing to resume"
    return (f"fedcmi: interrupted ({exc.name}) after round {done} of {cfg.num_server_rounds}; "
            f"continue with: fedcmi simulate --resume {cfg.out_dir}")


def _simulate(cfg: RunConfig, verbose: bool, resume: bool, client_app: Any) -> int:
    from fedcmi.data import load_data
    from fedcmi.data.partition import federation
    from fedcmi.runs.metrics import round_line
    from fedcmi.runs.run_dir import default_run_dir
    from fedcmi.runtime.devices import check_device
    from fedcmi.runtime.simulation import check_resources, simulate

    check_device(cfg.device)
    federation(cfg)  # an infeasible partition (alpha too small for min-partition-size) stops here, not in Ray
    check_resources(cfg)
    if resume:
        from fedcmi.runs.run_dir import resumable, run_status

        done = resumable(Path(cfg.out_dir), cfg).round  # checkpoint, config hash, metrics: before anything starts
        if done >= cfg.num_server_rounds:
            if run_status(Path(cfg.out_dir)) == "complete":
                print(f"fedcmi: nothing to resume: {cfg.out_dir} has finished all {cfg.num_server_rounds} rounds")
                return 0
            from server.app import run_server  # killed after its last checkpoint: write what is missing

            print_closing_lines(run_server(None, cfg, resume=True).rows)  # no round left to train: no Ray
            print(f"fedcmi: {cfg.out_dir}: all {done} rounds were done; wrote the final model, plot and status")
            return 0
    if not cfg.out_dir:  # cmd_simulate names it; kept for direct callers
        cfg = cfg.replace(out_dir=str(default_run_dir(cfg)))
    names = load_data(cfg).modalities
    header = (f"fedcmi simulate: {cfg.strategy} on {cfg.dataset}, {cfg.num_clients} clients "
              f"({cfg.clients_per_round} per round), {cfg.num_server_rounds} rounds, seed {cfg.seed}")
    if not sys.stdout.isatty():  # a file or a pipe: one plain line per round, as it ends
        print(header, flush=True)

        def line(row: dict[str, Any]) -> None:
            print(round_line(row, cfg.num_server_rounds, names), flush=True)

        run_dir = simulate(cfg, line, verbose=verbose, resume=resume, client_app=client_app)
        print_closing_lines(run_dir.rows)
        files = sorted(p.name for p in run_dir.path.iterdir() if p.is_file() and not p.name.startswith("."))
        print(f"results written to {run_dir.path}: " + ", ".join(files), flush=True)
        return 0

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedcmi.cli.display import results_table

    console = Console()
    console.print(header, markup=False, highlight=False)
    with Progress(TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console, transient=False) as progress:
        task = progress.add_task("starting Ray and the clients...", total=cfg.num_server_rounds,
                                 completed=done if resume else 0)

        def report(row: dict[str, Any]) -> None:
            desc = (f"mm {row['acc_mm']:.3f}  {names[0]} {row[f'acc_{names[0]}']:.3f}  "
                    f"{names[1]} {row[f'acc_{names[1]}']:.3f}")
            progress.update(task, completed=row["round"], description=desc)

        run_dir = simulate(cfg, report, verbose=verbose, resume=resume, client_app=client_app)
    console.print(results_table(run_dir.rows, names))
    print_closing_lines(run_dir.rows, console)
    console.print(f"results written to [bold]{run_dir.path}[/bold]")
    return 0


def cmd_methods() -> int:
    from rich.table import Table

    from fedcmi.cli.display import console
    from fedcmi.federated.calibration import KEYS as CCVR_KEYS
    from fedcmi.methods.registry import METHODS
    from fedcmi.methods.remedies import KEYS as REMEDY_KEYS

    table = Table(title="local methods (strategy=NAME)", show_lines=True,
                  caption="every method also reads the label-skew remedies: "
                          + ", ".join((*REMEDY_KEYS, *CCVR_KEYS)))
    for col in ("strategy", "model", "modalities", "reads", "its defaults", "defined by"):
        table.add_column(col)
    for spec in METHODS.values():
        table.add_row(spec.name, spec.model, ",".join(spec.modalities), " ".join(spec.uses),
                      " ".join(f"{k}={v}" for k, v in spec.defaults.items()),
                      " ".join(f"{k} {c.text}" for k, c in spec.defining.items()))
    console().print(table)
    return 0


def main(argv: list[str] | None = None, client_app: Any = None) -> int:
    """The ``fedcmi`` command; ``client_app`` replaces fedcmi's ClientApp in ``simulate`` (e.g. one with mods)."""
    from fedcmi.runtime.interrupt import STOP, Interrupted, handle_signals

    # While torch and the rest import, Ctrl-C or SIGTERM only sets a flag: an exception raised in the middle of
    # an extension module's import can abort the process. simulate and bench keep these handlers to the end
    # (a clean stop); the other commands get the default behaviour back (Ctrl-C raises KeyboardInterrupt).
    with handle_signals():
        args = _parser().parse_args(argv)
        if STOP.is_set():
            exc = Interrupted(STOP.signum or 2)
            print(f"fedcmi: interrupted ({exc.name})", file=sys.stderr)
            return exc.exit_code
        if args.command in ("simulate", "bench"):
            return _main(args, client_app)
    return _main(args, client_app)


def _main(args: argparse.Namespace, client_app: Any) -> int:
    from fedcmi.runtime.interrupt import Interrupted

    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("flwr").propagate = False  # Flower prints through its own handler
    try:
        if args.command == "prepare":
            return cmd_prepare(args)
        if args.command == "features":
            return cmd_features(args)
        if args.command == "bench":
            return cmd_bench(args)
        if args.command == "methods":
            return cmd_methods()
        cfg = _resolve(args)
        if args.command == "partitions":
            return cmd_partitions(cfg)
        return cmd_simulate(cfg, args.verbose, resume=bool(args.resume), client_app=client_app)
    except UserError as exc:
        print(f"fedcmi: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"fedcmi: interrupted ({exc.name})", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fedcmi: interrupted (SIGINT)", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence: one line, non-zero exit
        logging.getLogger("fedcmi").debug("failure", exc_info=True)
        print(f"fedcmi: run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
