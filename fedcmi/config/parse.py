"""From what the user wrote to the effective configuration: parsing, coercion, and the method's defaults.

Layers, lowest first: built-in defaults < a preset (``--preset``) < the method's own defaults < a config
file < ``key=value`` overrides. The method's defaults never override a key the user set; a key the user
set that contradicts what defines the method (``strategy=fedcmi-noinf lambda-cmi=3``) is refused.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedcmi.config.run_config import FIELDS, RunConfig, defaults, section_of, unknown_key
from fedcmi.errors import ConfigError

META_KEYS = ("modalities", "unused-keys")  # written into config.json beside the keys; not configuration


def _coerce(key: str, value: Any) -> Any:
    typ = FIELDS[key].type
    if typ == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key}={value!r}: must be true or false")
    if typ == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}={value!r}: must be an integer")
        return value
    if typ == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: must be a number")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{key}={value!r}: must be a finite number")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key}={value!r}: must be a string")
    return value


def normalize(values: Mapping[str, Any]) -> dict[str, Any]:
    """Hyphenated, known, typed keys; an unknown key is an error naming it."""
    out: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("_", "-")
        if key not in FIELDS:
            raise unknown_key(raw_key)
        out[key] = _coerce(key, value)
    return out


def from_mapping(values: Mapping[str, Any]) -> RunConfig:
    """A validated config of exactly these values over the built-in defaults (no method defaults applied)."""
    merged = {**defaults(), **normalize(values)}
    return RunConfig(**{FIELDS[k].name: v for k, v in merged.items()})


def effective(explicit: Mapping[str, Any], lower: Mapping[str, Any] | None = None) -> RunConfig:
    """The configuration that runs: ``lower`` (preset) < the method's defaults < ``explicit`` (user set)."""
    from fedcmi.methods.registry import method_spec

    explicit, lower = normalize(explicit), normalize(lower or {})
    strategy = explicit.get("strategy", lower.get("strategy", defaults()["strategy"]))
    spec = method_spec(strategy)
    for key, constraint in spec.defining.items():
        if key in explicit and not constraint.check(explicit[key]):
            raise ConfigError(f"strategy={strategy} is defined by {key} {constraint.text}; {key}={explicit[key]!r} "
                              f"contradicts it (drop {key}= or choose another strategy)")
    return from_mapping({**lower, **spec.defaults, **explicit})


def unused_keys(cfg: RunConfig) -> list[str]:
    """Method keys the chosen strategy does not read (listed in ``config.json``)."""
    from fedcmi.methods.registry import EVERY_METHOD_KEYS, method_spec

    uses = {*method_spec(cfg.method.strategy).uses, *EVERY_METHOD_KEYS}  # the remedies combine with every method
    return [k for k in FIELDS if section_of(k) == "method" and k != "strategy" and k not in uses]


def set_by_flower_run(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a ``flwr run`` run config that differ from the built-in defaults.

    Flower merges ``--run-config`` into ``[tool.flwr.app.config]`` (every key, at its default), so which keys
    the user typed is lost; a key whose value differs from the default is taken as set. A method key set to
    exactly its built-in default under ``flwr run`` therefore gets the method's default instead.
    """
    base = defaults()
    return {k: v for k, v in run_config.items() if k in FIELDS and normalize({k: v})[k] != base[k]}


def parse_value(text: str) -> Any:
    """Parse one ``key=value`` right-hand side as a TOML value; bare words stay strings."""
    if len(text) > 100_000:
        raise ConfigError(f"value {text[:20]!r}...: longer than 100000 characters")
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise ConfigError(f"value {text[:20]!r}...: nested too deeply") from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=0.1", "dataset=digits-cg"]`` -> ``{"lr": 0.1, "dataset": "digits-cg"}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{item!r}: overrides are written key=value")
        out[key.strip()] = parse_value(text.strip())
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a config file: a flat TOML table, or a pyproject with ``[tool.flwr.app.config]``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"config file {str(p)!r}: values nested too deeply") from None
    nested = data.get("tool", {}).get("flwr", {}).get("app", {}).get("config")
    return dict(nested) if isinstance(nested, dict) else data


def resolve(config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
            preset: Mapping[str, Any] | None = None) -> RunConfig:
    """Defaults < ``preset`` < the method's defaults < config file < overrides, validated once at the end."""
    explicit: dict[str, Any] = {}
    if config_file is not None:
        explicit.update(load_toml(config_file))
    explicit.update(overrides or {})
    return effective(explicit, preset)
