"""The ``fedcmi`` command: ``simulate`` a federation, show its ``partitions``, list the ``methods``,
``prepare`` a real data set, extract its frozen-encoder ``features``, ``bench`` strategies side by side.

One module per command (``fedcmi/cli/<command>.py``) owns its ``add_<command>_parser`` and ``cmd_<command>``;
this module builds the top-level parser from those registrations and dispatches to the command's function.
Bad configuration stops before anything starts, with one line naming the key and the rule, and exit code 2.
Nothing heavy is imported at the top of this package: the command line is parsed and the configuration
checked before torch, Flower, Ray or ``datasets`` load, so ``--help``, ``methods`` and every configuration
error answer at once (tests/test_cli_startup.py checks the imports; benchmarks/cli_startup.py times them).
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from fedcmi import __version__
from fedcmi.cli.bench import add_bench_parser
from fedcmi.cli.features import add_features_parser
from fedcmi.cli.methods import add_methods_parser
from fedcmi.cli.parser import Parser
from fedcmi.cli.partitions import add_partitions_parser
from fedcmi.cli.prepare import add_prepare_parser
from fedcmi.cli.simulate import add_simulate_parser
from fedcmi.errors import UserError

# Each command's registration (it adds its subparser and sets ``run`` to its ``cmd_*``), in the order of
# `fedcmi --help`.
COMMANDS: dict[str, Callable[[Any], None]] = {
    "simulate": add_simulate_parser,
    "partitions": add_partitions_parser,
    "methods": add_methods_parser,
    "prepare": add_prepare_parser,
    "features": add_features_parser,
    "bench": add_bench_parser,
}
SIGNAL_HANDLING = ("simulate", "bench")  # keep the stop flag's handlers to the end (a clean stop)


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fedcmi", description="Multimodal federated learning under modality imbalance (FedCMI) on Flower.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fedcmi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for register in COMMANDS.values():
        register(sub)
    return parser


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
        if args.command in SIGNAL_HANDLING:
            return _main(args, client_app)
    return _main(args, client_app)


def run(argv: list[str] | None = None, client_app: Any = None) -> NoReturn:
    """The ``fedcmi`` process (the console script, ``python -m fedcmi.cli``): :func:`main`, then exit.

    ``gc.freeze()`` first: the interpreter's last full garbage collection would otherwise walk every object
    torch, Ray and Flower created (about half a million), 2.1 of the 2.6 CPU-seconds such a process took to
    exit on a 2-core machine. Every file a command writes is closed before :func:`main` returns; objects are
    still freed by reference counting, and ``atexit`` handlers still run. Not in :func:`main`: tests call it
    in their own process."""
    code = main(argv, client_app)
    gc.freeze()
    sys.exit(code)


def _main(args: argparse.Namespace, client_app: Any) -> int:
    """The command's ``cmd_*``, and every way it can end turned into one line and an exit code."""
    from fedcmi.runtime.interrupt import Interrupted

    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("flwr").propagate = False  # Flower prints through its own handler
    try:
        if args.command == "simulate":  # the one command that takes main()'s ClientApp
            return args.run(args, client_app)
        return args.run(args)
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
