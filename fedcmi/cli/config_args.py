"""The configuration arguments that ``simulate`` and ``partitions`` share (--config, key=value, --preset) and
the checked :class:`RunConfig` they resolve to: both commands build the same federation from the same keys."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from fedcmi.config import ConfigError, RunConfig, parse_overrides, resolve
from fedcmi.config.presets import PRESETS, SIMULATION_DEFAULTS, preset_values


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """--config FILE.toml, key=value overrides and --preset, in this order (the order of the command's help)."""
    p.add_argument("--config", metavar="FILE.toml", help="TOML file of keys (flat, or a pyproject.toml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides")
    p.add_argument("--preset", metavar="{" + ",".join(sorted(PRESETS)) + "}",  # checked by preset_values
                   help="preset keys under the method's defaults, --config and key=value (paper: the "
                        "authors' code defaults)")


def resolve_config(args: argparse.Namespace, run: bool = False) -> RunConfig:
    """The effective configuration of the parsed arguments (a simulation's preset under them); ``run``: also
    the checks of a run on this machine (``RunConfig.check_run``). An out-dir must be a new or empty,
    writable folder: a run never writes into another run's files."""
    overrides: dict[str, Any] = parse_overrides(args.overrides)
    if getattr(args, "out", None):
        overrides["out-dir"] = args.out
    cfg = resolve(args.config, overrides,
                  preset={**SIMULATION_DEFAULTS, **preset_values(getattr(args, "preset", None))})
    if run:
        cfg.check_run()
    if cfg.output.out_dir:
        out = Path(cfg.output.out_dir)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"out-dir={cfg.output.out_dir!r}: is a file, not a folder")
        if out.is_dir() and any(out.iterdir()):
            raise ConfigError(f"out-dir={cfg.output.out_dir!r}: the folder exists and is not empty; choose another "
                              "(or continue it with --resume)")
        parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
        if not os.access(parent, os.W_OK):
            raise ConfigError(f"out-dir={cfg.output.out_dir!r}: {parent} is not writable")
    return cfg
