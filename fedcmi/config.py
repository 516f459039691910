"""Typed run configuration: defaults, parsing of ``key=value`` / TOML / Flower run config, validation.

Keys are hyphenated exactly as in ``[tool.flwr.app.config]`` so one vocabulary serves the CLI, config
files and ``flwr run --run-config``. Everything is validated once, at the edge, and a bad value raises
:class:`ConfigError` whose message names the key and the rule.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fedcmi.strategies import STRATEGY_NAMES


class ConfigError(ValueError):
    """A configuration value broke a rule; the message names the key and the rule."""


STRATEGIES = STRATEGY_NAMES
DATASETS = ("synthetic-av", "digits-cg", "crema-d", "ave", "crisismmd")
REAL_DATASETS = ("crema-d", "ave", "crisismmd")  # prepared with `fedcmi prepare`, read from data-root


def _rule(check: Callable[[Any], bool], text: str) -> dict[str, Any]:
    return {"check": check, "rule": text}


def _opt(default: Any, check: Callable[[Any], bool] | None = None, rule: str = "", doc: str = "") -> Any:
    meta: dict[str, Any] = {"doc": doc}
    if check is not None:
        meta.update(_rule(check, rule))
    return field(default=default, metadata=meta)


def _positive(x: float) -> bool:
    return x > 0


def _valid_faults(spec: str) -> bool:
    from fedcmi.faults import parse_faults

    try:
        parse_faults(spec)
    except ValueError:
        return False
    return True


def _unit(x: float) -> bool:
    return 0.0 <= x <= 1.0


@dataclass(frozen=True)
class RunConfig:
    """The complete, resolved configuration of one run (what ``config.json`` stores)."""

    dataset: str = _opt("synthetic-av", lambda v: v in DATASETS, f"must be one of {', '.join(DATASETS)}",
                        "embedded data set")
    strategy: str = _opt("fedcmi", lambda v: v in STRATEGIES, f"must be one of {', '.join(STRATEGIES)}",
                         "server strategy + local objective")
    num_clients: int = _opt(20, lambda v: v >= 1, "must be >= 1", "clients in the federation")
    clients_per_round: int = _opt(10, lambda v: v >= 1, "must be >= 1", "clients sampled each round")
    num_server_rounds: int = _opt(40, lambda v: v >= 1, "must be >= 1", "federated rounds")
    local_epochs: int = _opt(2, lambda v: v >= 1, "must be >= 1", "local epochs per round")
    partitioner: str = _opt("dirichlet", lambda v: v in ("dirichlet", "iid"), "must be dirichlet or iid",
                            "label partitioner")
    dirichlet_alpha: float = _opt(0.5, _positive, "must be > 0", "Dirichlet concentration (smaller = more skew)")
    min_partition_size: int = _opt(10, lambda v: v >= 0, "must be >= 0",
                                   "Dirichlet: resample until every client has this many")
    multimodal_ratio: float = _opt(0.5, _unit, "must be in [0, 1]", "fraction of clients holding both modalities")
    unimodal_split: float = _opt(0.5, _unit, "must be in [0, 1]",
                                 "share of unimodal clients holding the first modality")
    seed: int = _opt(0, lambda v: v >= 0, "must be >= 0", "seed for data, partitions, sampling and training")
    lr: float = _opt(0.02, _positive, "must be > 0", "local SGD learning rate")
    momentum: float = _opt(0.9, lambda v: 0.0 <= v < 1.0, "must be in [0, 1)", "SGD momentum")
    weight_decay: float = _opt(1e-4, lambda v: v >= 0, "must be >= 0", "SGD weight decay")
    batch_size: int = _opt(32, lambda v: v >= 1, "must be >= 1", "local batch size")
    proximal_mu: float = _opt(0.01, lambda v: v >= 0, "must be >= 0",
                              "proximal term weight (fedprox, fedcmi); 0 = off")
    lambda_self: float = _opt(2.0, lambda v: v >= 0, "must be >= 0", "fedcmi: weight of per-modality self CE; 0 = off")
    lambda_cmi: float = _opt(1.0, lambda v: v >= 0, "must be >= 0",
                             "fedcmi: weight of infiltration distillation; 0 = off")
    class_wise_temperature: bool = _opt(True, doc="fedcmi: class-wise temperatures (A.7); false = fixed `temperature`")
    temperature: float = _opt(1.0, _positive, "must be > 0", "fedcmi: fixed temperature if not class-wise")
    lambda_cross: float = _opt(1.0, lambda v: v >= 0, "must be >= 0",
                               "fedcmi-plus: weight of the unimodal (self, infiltration) paths on multimodal clients")
    ogm_alpha: float = _opt(0.8, lambda v: v >= 0, "must be >= 0", "ogm-ge: modulation strength (0.8 on CREMA-D)")
    pmr_alpha: float = _opt(1.0, lambda v: v >= 0, "must be >= 0", "pmr: weight of the prototype cross-entropy")
    pmr_momentum: float = _opt(0.2, _unit, "must be in [0, 1]", "pmr: prototype momentum between local epochs")
    gamma: float = _opt(2.0, lambda v: v >= 0, "must be >= 0", "fedcmi: class-wise temperature strength")
    dominance: str = _opt("global", lambda v: v in ("global", "local"), "must be global or local",
                          "fedcmi: dominant modality from the server (global) or per batch on the client (local)")
    warmup_rounds: int = _opt(1, lambda v: v >= 0, "must be >= 0", "fedcmi: first rounds without infiltration")
    encoder: str = _opt("cnn", lambda v: v in ("cnn", "resnet18"), "must be cnn or resnet18", "encoder architecture")
    projector: str = _opt("linear", lambda v: v in ("linear", "mlp"), "must be linear or mlp", "projector type")
    feature_dim: int = _opt(64, lambda v: v >= 1, "must be >= 1", "encoder/projector width")
    fusion: str = _opt("concat", lambda v: v in ("concat", "sgmft"), "must be concat or sgmft",
                       "fusion head: concat (spec A.4) or SG-MFT similarity-guided attention (spec Part B)")
    sgmft_tokens: int = _opt(8, lambda v: v >= 1, "must be >= 1", "sgmft: tokens each slot vector is cut into")
    sgmft_heads: int = _opt(4, lambda v: v >= 1, "must be >= 1", "sgmft: attention heads")
    sgmft_layers: int = _opt(1, lambda v: v >= 1, "must be >= 1", "sgmft: similarity-guided interaction layers")
    text_encoder: str = _opt("bert-base-uncased", lambda v: bool(v.strip()), "must not be empty",
                             "text data: transformers model, hub name (local cache only) or directory")
    encoder_weights: str = _opt("", doc="resnet18: '' = from scratch, 'imagenet' (torch hub cache) or a "
                                        "state-dict file")
    data_root: str = _opt("", doc="crema-d, ave, crisismmd: the prepared directory (or the raw root "
                                  "holding fedcmi-prepared/)")
    num_classes: int = _opt(6, lambda v: 2 <= v <= 64, "must be in [2, 64]", "synthetic-av: classes")
    train_size: int = _opt(3000, lambda v: v >= 10, "must be >= 10", "synthetic-av: training samples")
    test_size: int = _opt(1200, lambda v: v >= 10, "must be >= 10", "synthetic-av: test samples")
    signal_a: float = _opt(0.8, lambda v: v >= 0, "must be >= 0", "synthetic-av: class signal of the first modality")
    signal_b: float = _opt(0.25, lambda v: v >= 0, "must be >= 0", "synthetic-av: class signal of the second modality")
    noise: float = _opt(1.0, _positive, "must be > 0", "synthetic-av: noise standard deviation")
    eval_batch_size: int = _opt(512, lambda v: v >= 1, "must be >= 1", "server evaluation batch size")
    client_num_cpus: float = _opt(1.0, _positive, "must be > 0", "CPUs reserved per simulated client (Ray)")
    client_num_gpus: float = _opt(0.0, lambda v: v >= 0, "must be >= 0", "GPUs (fractions allowed) per client")
    device: str = _opt("auto", lambda v: v in ("auto", "cpu", "cuda"), "must be auto, cpu or cuda",
                       "training device; auto = cuda when the client has a GPU")
    bf16: bool = _opt(False, doc="CUDA only: bfloat16 autocast in local training (no effect on CPU)")
    ray_address: str = _opt("", doc="Ray cluster to join, e.g. '10.0.0.5:6379' (started with `ray start "
                                    "--head`); '' = start a local Ray")
    round_timeout: float = _opt(600.0, _positive, "must be > 0", "seconds to wait for client replies per round")
    min_replies: int = _opt(1, lambda v: v >= 1, "must be >= 1",
                            "good replies needed to aggregate a round; fewer = round skipped, model kept")
    max_consecutive_skips: int = _opt(3, lambda v: v >= 1, "must be >= 1",
                                      "stop the run after this many skipped rounds in a row")
    max_update_norm: float = _opt(1000.0, lambda v: v >= 0, "must be >= 0",
                                  "reject a client update whose L2 distance to the global model is larger; 0 = off")
    inject_faults: str = _opt("", _valid_faults, "must be kind:partition[@round],... (see fedcmi/faults.py)",
                              "testing only: clients that fail on purpose, e.g. raise:1,nan:2@3")
    run_name: str = _opt("", doc="name used in the run directory (default: dataset-strategy)")
    out_dir: str = _opt("", doc="run directory (default: runs/<time>-<name>)")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            check = f.metadata.get("check")
            if check is not None and not check(value):
                raise ConfigError(f"{key_of(f.name)}={value!r}: {f.metadata['rule']}")
        if self.clients_per_round > self.num_clients:
            raise ConfigError(
                f"clients-per-round={self.clients_per_round}: must be <= num-clients ({self.num_clients})")
        if self.dataset in REAL_DATASETS and not self.data_root:
            raise ConfigError(f"dataset={self.dataset!r} needs data-root=DIR (prepare it with "
                              f"`fedcmi prepare {self.dataset} --root DIR`)")
        if self.fusion == "sgmft" and (self.feature_dim % self.sgmft_tokens
                                       or (self.feature_dim // self.sgmft_tokens) % self.sgmft_heads):
            raise ConfigError(f"feature-dim={self.feature_dim}: with fusion=sgmft it must split into "
                              f"sgmft-tokens={self.sgmft_tokens} tokens of a width divisible by "
                              f"sgmft-heads={self.sgmft_heads}")
        if self.min_replies > self.clients_per_round:
            raise ConfigError(
                f"min-replies={self.min_replies}: must be <= clients-per-round ({self.clients_per_round})")

    # --- views ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Hyphenated keys -> values; what ``config.json`` and Flower's run config hold."""
        return {key_of(f.name): getattr(self, f.name) for f in fields(self)}

    @property
    def name(self) -> str:
        return self.run_name or f"{self.dataset}-{self.strategy}"

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


def key_of(attr: str) -> str:
    return attr.replace("_", "-")


_FIELDS = {key_of(f.name): f for f in fields(RunConfig)}
_TYPES = {f.name: f.type for f in fields(RunConfig)}


def config_keys() -> dict[str, str]:
    """Key -> one-line description, for ``--help`` and the README."""
    return {k: f.metadata.get("doc", "") for k, f in _FIELDS.items()}


def _coerce(key: str, typ: str, value: Any) -> Any:
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


def from_mapping(values: Mapping[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Build a validated config from hyphenated (or underscored) keys over ``base`` (default: defaults)."""
    changes: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("_", "-")
        if key not in _FIELDS:
            raise ConfigError(f"unknown key {raw_key!r} (see `fedcmi simulate --help` for the keys)")
        attr = _FIELDS[key].name
        changes[attr] = _coerce(key, _TYPES[attr], value)
    return dataclasses.replace(base or RunConfig(), **changes)


def parse_value(text: str) -> Any:
    """Parse one ``key=value`` right-hand side as a TOML value; bare words stay strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


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
    nested = data.get("tool", {}).get("flwr", {}).get("app", {}).get("config")
    return dict(nested) if isinstance(nested, dict) else data


def resolve(config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
            base: Mapping[str, Any] | None = None) -> RunConfig:
    """Defaults < ``base`` (a preset) < config file < overrides, validated once at the end."""
    values: dict[str, Any] = dict(base or {})
    if config_file is not None:
        values.update(load_toml(config_file))
    values.update(overrides or {})
    return from_mapping(values)
