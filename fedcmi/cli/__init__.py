"""The ``fedcmi`` command: ``simulate`` a federation, show its ``partitions``, list the ``methods``,
``prepare`` a real data set, extract its frozen-encoder ``features``, ``bench`` strategies side by side.

Bad configuration stops before anything starts, with one line naming the key and the rule, and exit code 2.
Nothing heavy is imported at the top of this package: the command line is parsed and the configuration
checked before torch, Flower, Ray or ``datasets`` load, so ``--help``, ``methods`` and every configuration
error answer at once (tests/test_cli_startup.py checks the imports; benchmarks/cli_startup.py times them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, NoReturn

from fedcmi import __version__
from fedcmi.cli.bench import add_bench_parser, cmd_bench
from fedcmi.cli.features import add_features_parser, cmd_features
from fedcmi.cli.prepare import add_prepare_parser, cmd_prepare
from fedcmi.config import META_KEYS, ConfigError, RunConfig, config_keys, defaults, effective, parse_overrides, resolve
from fedcmi.config.presets import PRESETS, SIMULATION_DEFAULTS, preset_values
from fedcmi.errors import UserError, did_you_mean
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

PARTITIONS_HELP = """\
Print the federation a configuration builds: per client its modality kind, sample count and classes (with
partitioner=natural also its group, e.g. the speaker, and each group's size and classes).
Takes the same --config and key=value overrides as `simulate`; trains nothing.
"""

METHODS_HELP = """\
List the local methods (strategy=NAME), one line each: the model it trains, the modalities, what it does.
`fedcmi methods NAME`: the keys that method reads and their values when you do not set them (its own
defaults first), and the keys that define it.
"""

_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<word>[^']*)' \(choose from (?P<choices>.*)\)$")


class _Parser(argparse.ArgumentParser):
    """argparse with the one error style of every fedcmi command: ``fedcmi: error: ...`` in one line, exit 2."""

    def error(self, message: str, prog: str | None = None) -> NoReturn:
        bad = _INVALID_CHOICE.search(message)
        if bad:  # a mistyped command or choice: the closest one
            choices = [c.strip(" '") for c in bad["choices"].split(",")]
            message += did_you_mean(bad["word"], choices)
        self.exit(2, f"fedcmi: error: {message} (see `{prog or self.prog} --help`)\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if isinstance(getattr(parsed, "overrides", None), list):  # key=value after an option: still a key
            keys = [e for e in extras if "=" in e and not e.startswith("-")]
            parsed.overrides += keys
            extras = [e for e in extras if e not in keys]
        if extras:  # argparse reports them from the top parser; the help to read is the command's
            command = getattr(parsed, "command", None)
            self.error(f"unrecognized arguments: {' '.join(extras)}", f"{self.prog} {command}" if command else None)
        return parsed


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
        p.add_argument("--preset", metavar="{" + ",".join(sorted(PRESETS)) + "}",  # checked by preset_values
                       help="preset keys under the method's defaults, --config and key=value (paper: the "
                            "authors' code defaults)")
    part.set_defaults(resume=None, out=None, verbose=False)
    methods = sub.add_parser("methods", help="list the local methods; one method's keys", description=METHODS_HELP,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    methods.add_argument("name", nargs="?", metavar="NAME", help="a method (strategy=NAME): its keys")
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


def _resolve(args: argparse.Namespace) -> RunConfig:
    if getattr(args, "resume", None):
        return _resume_config(args)
    overrides: dict[str, Any] = parse_overrides(args.overrides)
    if getattr(args, "out", None):
        overrides["out-dir"] = args.out
    cfg = resolve(args.config, overrides,
                  preset={**SIMULATION_DEFAULTS, **preset_values(getattr(args, "preset", None))})
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
    from fedcmi.modalities import MM, A, B

    data = load_data(cfg)
    _, _, y = data.arrays("train")
    names = {MM: "+".join(data.modalities), A: data.modalities[0], B: data.modalities[1]}
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
    path = Path(cfg.out_dir or "") / METRICS_JSON
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
    status_path = Path(cfg.out_dir or "") / STATUS_FILE
    done = None
    if cfg.out_dir and status_path.is_file():
        with contextlib.suppress(ValueError, OSError):
            done = json.loads(status_path.read_text(encoding="utf-8")).get("rounds")
    if done is None:
        return f"fedcmi: interrupted ({exc.name}) before the first round finished; nothing to resume"
    return (f"fedcmi: interrupted ({exc.name}) after round {done} of {cfg.num_server_rounds}; "
            f"continue with: fedcmi simulate --resume {cfg.out_dir}")


def _simulate(cfg: RunConfig, verbose: bool, resume: bool, client_app: Any) -> int:
    from fedcmi.runtime.simulation import check_resources, simulate

    check_resources(cfg)  # this machine's CPUs (and GPUs, Ray address) first: no data or torch needed for the CPUs

    from fedcmi.data import load_data
    from fedcmi.data.partition import federation
    from fedcmi.devices import check_device
    from fedcmi.metrics import ACC_MM, ROUND, acc_alone, round_line
    from fedcmi.runs.run_dir import default_run_dir

    check_device(cfg.device)
    federation(cfg)  # an infeasible partition (alpha too small for min-partition-size) stops here, not in Ray
    done = 0
    if resume:
        from fedcmi.runs.layout import COMPLETE, run_status
        from fedcmi.runs.run_dir import resumable

        done = resumable(Path(cfg.out_dir), cfg).round  # checkpoint, config hash, metrics: before anything starts
        if done >= cfg.num_server_rounds:
            if run_status(Path(cfg.out_dir)) == COMPLETE:
                print(f"fedcmi: nothing to resume: {cfg.out_dir} has finished all {cfg.num_server_rounds} rounds")
                return 0
            from fedcmi.runtime.apps import run_server  # killed after its last checkpoint: write what is missing

            print_closing_lines(run_server(None, cfg, resume=True).rows)  # no round left to train: no Ray
            print(f"fedcmi: {cfg.out_dir}: all {done} rounds were done; wrote the final model, plot and status")
            return 0
    if not cfg.out_dir:  # cmd_simulate names it; kept for direct callers
        cfg = cfg.replace(out_dir=str(default_run_dir(cfg)))
    names = load_data(cfg).modalities
    header = (f"fedcmi simulate: {cfg.strategy} on {cfg.dataset}, {cfg.num_clients} clients "
              f"({cfg.clients_per_round} per round), {cfg.num_server_rounds} rounds, seed {cfg.seed}"
              + (f"; resuming {cfg.out_dir} from round {done + 1}" if resume else ""))
    if not sys.stdout.isatty():  # a file or a pipe: one plain line per round, as it ends
        print(header, flush=True)

        def line(row: dict[str, Any]) -> None:
            print(round_line(row, cfg.num_server_rounds, names), flush=True)

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
        task = progress.add_task("starting Ray and the clients...", total=cfg.num_server_rounds,
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
    if not cfg.wandb:
        return None
    from fedcmi.runs.wandb_log import sync_hint

    return sync_hint(path)


def _toml(value: Any) -> str:
    """A value as it is written in key=value (TOML): true/false, numbers, bare words."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _fit(line: str, width: int | None) -> str:
    return line if width is None or len(line) <= width else line[:max(width - 3, 1)] + "..."


def cmd_methods(name: str | None = None) -> int:
    """One line per method; with ``name``, that method's keys. Reads the registry's specs only (no torch)."""
    from fedcmi.methods.registry import EVERY_METHOD_KEYS, METHODS, method_spec

    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None  # a file or a pipe: whole lines
    if name is None:
        col = max(map(len, METHODS)) + 2
        lines = [f"{'strategy':<{col}}{'model':<8}{'trains':<8}what it does"]
        lines += [f"{spec.name:<{col}}{spec.model:<8}{'+'.join(spec.modalities):<8}{spec.summary}"
                  for spec in METHODS.values()]
        lines.append(f"every method also reads: {', '.join(EVERY_METHOD_KEYS)}. `fedcmi methods NAME`: the keys "
                     "a method reads, its defaults and the keys that define it")
        print("\n".join(_fit(line, width) for line in lines))
        return 0
    spec = method_spec(name)
    base, docs = defaults(), config_keys()
    model = ("two projectors per modality (self, infiltration)" if spec.decomposed
             else "the encoders' features concatenated into the fusion head")
    alone = "its infiltration projector" if spec.infiltration_path else "the other slot zero-filled"
    lines = [f"{spec.name}: {spec.summary}",
             f"model {spec.model}: {model}; trains {'+'.join(spec.modalities)}; a modality alone is evaluated "
             f"through {alone}",
             "keys it reads (the value when you do not set it; * = this method's default):"]
    keys = [*spec.uses, *(k for k in spec.defaults if k not in spec.uses)]  # e.g. fedavg-la's logit-adjust
    settings = [f"{k}={_toml(spec.defaults.get(k, base[k]))}" + ("*" if k in spec.defaults else "") for k in keys]
    col = max(map(len, settings)) + 3
    lines += [f"  {setting:<{col}}{docs[k]}" for k, setting in zip(keys, settings, strict=True)]
    if spec.defining:
        lines.append("defined by (a value you set that contradicts it is refused): "
                     + ", ".join(f"{k} {c.text}" for k, c in spec.defining.items()))
    lines.append(f"every method also reads: {', '.join(k for k in EVERY_METHOD_KEYS if k not in keys)} "
                 "(`fedcmi simulate --help`)")
    print("\n".join(_fit(line, width) for line in lines))
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
            return cmd_methods(args.name)
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
