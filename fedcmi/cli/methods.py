"""``fedcmi methods``: the local methods, one line each, and one method's keys and defaults.

Reads the registry's specs only: it answers before torch loads (tests/test_cli_startup.py)."""

from __future__ import annotations

import argparse
import shutil
import sys
from typing import Any

from fedcmi.config import config_keys, defaults

METHODS_HELP = """\
List the local methods (strategy=NAME), one line each: the model it trains, the modalities, what it does.
`fedcmi methods NAME`: the keys that method reads and their values when you do not set them (its own
defaults first), and the keys that define it.
"""


def add_methods_parser(sub: Any) -> None:
    p = sub.add_parser("methods", help="list the local methods; one method's keys", description=METHODS_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", metavar="NAME", help="a method (strategy=NAME): its keys")
    p.set_defaults(run=cmd_methods)


def _toml(value: Any) -> str:
    """A value as it is written in key=value (TOML): true/false, numbers, bare words."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _fit(line: str, width: int | None) -> str:
    return line if width is None or len(line) <= width else line[:max(width - 3, 1)] + "..."


def cmd_methods(args: argparse.Namespace) -> int:
    """One line per method; with a NAME, that method's keys. Reads the registry's specs only (no torch)."""
    from fedcmi.methods.registry import EVERY_METHOD_KEYS, METHODS, method_spec

    name: str | None = args.name
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
