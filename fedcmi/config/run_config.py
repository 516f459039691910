"""The typed run configuration: every key, its default, its rule, its section and a one-line doc.

Keys are hyphenated exactly as in ``[tool.flwr.app.config]`` so one vocabulary serves the CLI, config
files and ``flwr run --run-config``. Each key is a field of one frozen section dataclass (:class:`DataConfig`,
:class:`TrainingConfig`, ...; :data:`SECTION_TYPES`), and the code reads it through its section
(``cfg.training.lr``); :class:`RunConfig` holds the nine sections. Per-key rules, and the rules between keys
of one section, run when a section is built; rules between sections run when a :class:`RunConfig` is built;
rules that tie server keys to the federation live in :meth:`RunConfig.check_run` (a run) so that commands
which train nothing (``fedcmi partitions``) and clients (which never see server-only keys) are not held to
them. The edge stays flat: hyphenated keys in and out (:meth:`RunConfig.to_dict`, :data:`FIELDS`), and
``RunConfig(lr=0.1)`` / ``cfg.replace(lr=0.1)`` take flat attribute names.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any, ClassVar

from fedcmi.errors import ConfigError, did_you_mean
from fedcmi.extras import require_wandb

# Sections group the keys in docs and decide what travels to clients: server-only sections never do.
SECTIONS = ("data", "federation", "training", "method", "model", "runtime", "server", "reliability", "output")
SERVER_ONLY_SECTIONS = ("server", "reliability", "output")


def _dataset_names() -> tuple[str, ...]:
    from fedcmi.data.sources import DATASET_NAMES

    return DATASET_NAMES


def _is_prepared(name: str) -> bool:
    from fedcmi.data.sources import is_prepared

    return is_prepared(name)


def _method_names() -> tuple[str, ...]:
    from fedcmi.methods.registry import METHOD_NAMES

    return METHOD_NAMES


def _encoder_names() -> tuple[str, ...]:
    from fedcmi.models.registry import encoder_names

    return encoder_names()


def _fusion_names() -> tuple[str, ...]:
    from fedcmi.models.registry import fusion_names

    return fusion_names()


def _one_of(names: Callable[[], tuple[str, ...]]) -> Callable[[], str]:
    """The rule text of a key that names a registry entry: "must be a, b or c" (read when a value is refused)."""
    def text() -> str:
        *rest, last = names()
        return f"must be {', '.join(rest)} or {last}" if rest else f"must be {last}"
    return text


# The aggregation rules' names, without importing them (their code imports torch):
# fedcmi.federated.aggregation.RULE_NAMES is the same tuple (tests/test_cli_startup.py checks).
AGGREGATION_NAMES = ("mean", "median", "trimmed-mean", "clipped-mean")
# The adaptive server optimisers' names: fedcmi.federated.server_opt.RULES plus "none" (tests/test_server_opt.py)
SERVER_OPT_NAMES = ("none", "adam", "yogi", "adagrad")
SERVER_OPT_KEYS = ("server-lr", "server-beta1", "server-beta2", "server-tau")


UPDATE_NORM_MULTIPLE = 10.0

# Upper bounds, checked before anything else: beyond them a value is a typo or an attack (num-clients with
# 400 digits, seed=2**70), never a run. Integer keys not listed are capped at MAX_INT, strings at MAX_STR.
MAX_INT = 2**31 - 1
MAX_STR = 4096
UPPER: dict[str, float] = {
    "num_clients": 100_000, "clients_per_round": 100_000, "natural_splits": 100_000, "train_size": 10**8,
    "test_size": 10**8, "min_partition_size": 10**8, "seed": 2**32 - 1, "num_server_rounds": 100_000,
    "local_epochs": 10_000,
    "batch_size": 2**20, "eval_batch_size": 2**20, "feature_dim": 16_384, "sgmft_tokens": 1024, "sgmft_heads": 256,
    "sgmft_layers": 64, "warmup_rounds": 100_000, "min_replies": 100_000, "max_consecutive_skips": 100_000,
    "round_timeout": 7 * 86_400.0, "lr": 1e3, "server_lr": 1e3, "server_tau": 1e3, "scaffold_lr": 1e3,
    "client_num_cpus": 4096.0, "client_num_gpus": 64.0,
}
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _wandb_project_ok(v: str) -> bool:
    return 0 < len(v) <= 128 and not any(c in v for c in "/\\#?%:")


def _run_name_ok(v: str) -> bool:
    return v == "" or bool(RUN_NAME.fullmatch(v))


def _opt(default: Any, doc: str, check: Callable[[Any], bool] | None = None,
         rule: str | Callable[[], str] = "", choices: Callable[[], tuple[str, ...]] | None = None) -> Any:
    """A key: its default, doc, rule (``check``, and the ``rule`` text of a value it refuses) and, for a key
    that names something, its ``choices`` (a refused value gets "did you mean" the closest one). Its section is
    the section dataclass it is a field of."""
    meta: dict[str, Any] = {"doc": doc, "check": check, "rule": rule, "choices": choices}
    return field(default=default, metadata=meta)


def _positive(x: float) -> bool:
    return x > 0


def _unit(x: float) -> bool:
    return 0.0 <= x <= 1.0


def _at_least(n: int) -> Callable[[Any], bool]:
    return lambda v: v >= n


def _check_value(f: dataclasses.Field[Any], value: Any) -> None:
    """One key's own rules: the upper bound, the length of a string, its ``check``."""
    if isinstance(value, str) and len(value) > MAX_STR:
        raise ConfigError(f"{key_of(f.name)}: longer than {MAX_STR} characters")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        hi = UPPER.get(f.name, MAX_INT if isinstance(value, int) else math.inf)
        if value > hi:
            text = repr(value)
            shown = text if len(text) <= 30 else f"{text[:12]}... ({len(text)} digits)"
            limit = hi if isinstance(hi, int) else f"{hi:g}"
            raise ConfigError(f"{key_of(f.name)}={shown}: must be <= {limit}")
    check = f.metadata.get("check")
    if check is not None and not check(value):
        rule, choices = f.metadata["rule"], f.metadata["choices"]
        hint = did_you_mean(value, choices()) if choices is not None else ""
        raise ConfigError(f"{key_of(f.name)}={value!r}: {rule() if callable(rule) else rule}{hint}")


class _Section:
    """A section of the run configuration: its keys' rules (in field order), then its own rules between them."""

    SECTION: ClassVar[str]

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]  # a dataclass, as every subclass
            _check_value(f, getattr(self, f.name))
        self._check()

    def _check(self) -> None:
        """Rules between keys of this section (none by default)."""


@dataclass(frozen=True)
class DataConfig(_Section):
    """The data set and the per-sample corruption of the clients' training data."""

    SECTION: ClassVar[str] = "data"

    dataset: str = _opt("synthetic-av", "data set: embedded (synthetic-av, digits-cg) or prepared with "
                        "`fedcmi prepare` (crema-d, ave, crisismmd, fsdd)", lambda v: v in _dataset_names(),
                        lambda: f"must be one of {', '.join(_dataset_names())}", _dataset_names)
    data_root: str = _opt("", "crema-d, ave, crisismmd, fsdd: the prepared directory (or the raw root "
                                      "holding fedcmi-prepared/)")
    num_classes: int = _opt(6, "synthetic-av: classes", lambda v: 2 <= v <= 64, "must be in [2, 64]")
    train_size: int = _opt(3000, "synthetic-av: training samples", _at_least(10), "must be >= 10")
    test_size: int = _opt(1200, "synthetic-av: test samples", _at_least(10), "must be >= 10")
    signal_a: float = _opt(0.8, "synthetic-av: class signal of the first modality", _at_least(0),
                           "must be >= 0")
    signal_b: float = _opt(0.25, "synthetic-av: class signal of the second modality", _at_least(0),
                           "must be >= 0")
    noise: float = _opt(1.0, "synthetic-av: noise standard deviation", _positive, "must be > 0")
    # per-sample corruption of each client's training data (fedcmi.data.corruption; test data never)
    missing_a_rate: float = _opt(0.0, "multimodal clients: share of each client's training samples that lack "
                                 "the first modality (exactly round(rate * n), seeded by seed and partition); "
                                 "unimodal clients keep theirs", _unit, "must be in [0, 1]")
    missing_b_rate: float = _opt(0.0, "multimodal clients: share of samples that lack the second modality "
                                 "(never the same samples as missing-a-rate, so no sample loses both)", _unit,
                                 "must be in [0, 1]")
    missing_label_rate: float = _opt(0.0, "every client: share of training samples without a label "
                                     "(left out of every supervised loss and statistic; a client keeps >= 1)",
                                     lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")
    label_noise_rate: float = _opt(0.0, "every client: share of training samples whose label is replaced "
                                   "by a wrong one (label-noise-model; other samples than the unlabeled ones)",
                                   _unit, "must be in [0, 1]")
    label_noise_model: str = _opt("symmetric", "label noise: symmetric (uniform over the other classes) or "
                                  "pair (class c -> c + 1 mod classes)", lambda v: v in ("symmetric", "pair"),
                                  "must be symmetric or pair")

    def _check(self) -> None:
        if _is_prepared(self.dataset) and not self.data_root:
            raise ConfigError(f"dataset={self.dataset!r} needs data-root=DIR (prepare it with "
                              f"`fedcmi prepare {self.dataset} --root DIR`)")
        if self.missing_a_rate + self.missing_b_rate > 1 + 1e-9:
            raise ConfigError(f"missing-a-rate={self.missing_a_rate} + missing-b-rate={self.missing_b_rate}: must "
                              "be <= 1 (a sample never loses both modalities)")
        if self.missing_label_rate + self.label_noise_rate > 1 + 1e-9:
            raise ConfigError(f"missing-label-rate={self.missing_label_rate} + label-noise-rate="
                              f"{self.label_noise_rate}: must be <= 1 (a noisy sample has a label)")


@dataclass(frozen=True)
class FederationConfig(_Section):
    """The clients and their data: how many, the partitioner, the modality mix, the seed."""

    SECTION: ClassVar[str] = "federation"

    num_clients: int = _opt(20, "clients in the federation", _at_least(1), "must be >= 1")
    partitioner: str = _opt("dirichlet", "label partitioner: dirichlet, dirichlet-balanced (the FedCMI "
                            "authors' self-balancing: no client above ~N/M samples), iid, or natural (one client per "
                            "natural group of a prepared data set: the fsdd speaker, the crema-d actor, the "
                            "crisismmd event; num-clients = groups x natural-splits)",
                            lambda v: v in ("dirichlet", "dirichlet-balanced", "iid", "natural"),
                            "must be dirichlet, dirichlet-balanced, iid or natural")
    natural_splits: int = _opt(1, "partitioner=natural: clients per natural group (its samples split "
                               "IID, seeded)", _at_least(1), "must be >= 1")
    dirichlet_alpha: float = _opt(0.5, "Dirichlet concentration (smaller = more skew)", _positive,
                                  "must be > 0")
    min_partition_size: int = _opt(10, "Dirichlet: resample until every client has this many",
                                   _at_least(0), "must be >= 0")
    multimodal_ratio: float = _opt(0.5, "fraction of clients holding both modalities", _unit,
                                   "must be in [0, 1]")
    unimodal_split: float = _opt(0.5, "share of unimodal clients holding the first modality",
                                 _unit, "must be in [0, 1]")
    seed: int = _opt(0, "seed for data, partitions, sampling and training", _at_least(0),
                     "must be >= 0")


@dataclass(frozen=True)
class TrainingConfig(_Section):
    """Local training: epochs, SGD and the batch size."""

    SECTION: ClassVar[str] = "training"

    local_epochs: int = _opt(2, "local epochs per round", _at_least(1), "must be >= 1")
    lr: float = _opt(0.02, "local SGD learning rate", _positive, "must be > 0")
    momentum: float = _opt(0.9, "SGD momentum", lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")
    weight_decay: float = _opt(1e-4, "SGD weight decay", _at_least(0), "must be >= 0")
    batch_size: int = _opt(32, "local batch size", _at_least(1), "must be >= 1")


@dataclass(frozen=True)
class MethodConfig(_Section):
    """The local method and what it reads (``fedcmi methods``), the remedies and server options that combine with
    every method."""

    SECTION: ClassVar[str] = "method"

    strategy: str = _opt("fedcmi", "local method (see `fedcmi methods`)",
                         lambda v: v in _method_names(), "must be a method listed by `fedcmi methods`",
                         _method_names)
    proximal_mu: float = _opt(0.01, "proximal term weight; 0 = off", _at_least(0), "must be >= 0")
    lambda_self: float = _opt(2.0, "fedcmi: weight of per-modality self CE; 0 = off", _at_least(0),
                              "must be >= 0")
    lambda_cmi: float = _opt(1.0, "fedcmi: weight of infiltration distillation; 0 = off", _at_least(0),
                             "must be >= 0")
    class_wise_temperature: bool = _opt(True, "fedcmi: class-wise temperatures; false = fixed `temperature`")
    temperature: float = _opt(1.0, "fedcmi: fixed temperature if not class-wise", _positive,
                              "must be > 0")
    gamma: float = _opt(2.0, "fedcmi: class-wise temperature strength", _at_least(0), "must be >= 0")
    dominance: str = _opt("global", "fedcmi: dominant modality from the server (global) or per batch "
                          "on the client (local)", lambda v: v in ("global", "local"), "must be global or local")
    warmup_rounds: int = _opt(1, "fedcmi: first rounds without infiltration", _at_least(0),
                              "must be >= 0")
    lambda_cross: float = _opt(1.0, "fedcmi-plus: weight of the unimodal (self, infiltration) paths "
                               "on multimodal clients", _at_least(0), "must be >= 0")
    ogm_alpha: float = _opt(0.8, "ogm-ge: modulation strength (0.8 on CREMA-D)", _at_least(0),
                            "must be >= 0")
    pmr_alpha: float = _opt(1.0, "pmr: weight of the prototype cross-entropy", _at_least(0),
                            "must be >= 0")
    pmr_momentum: float = _opt(0.2, "pmr: prototype momentum between local epochs", _unit,
                               "must be in [0, 1]")
    unimodal_zero_fill: float = _opt(0.0, "fedcmi: unimodal clients also fit the head on F(self, 0) "
                                     "with this weight; 0 = off", _at_least(0), "must be >= 0")
    normalize_loss: bool = _opt(False, "fedcmi: divide the local loss by the sum of its term weights, so "
                                "the step does not grow with the number of terms")
    dominance_momentum: float = _opt(0.0, "fedcmi: server-side moving average of the class statistics "
                                     "across rounds (0 = this round only)", lambda v: 0.0 <= v < 1.0,
                                     "must be in [0, 1)")
    tau_min: float = _opt(0.0, "fedcmi: lower bound of the class-wise temperatures; 0 = none", _unit,
                          "must be in [0, 1]")
    ratio_mean: str = _opt("arithmetic", "fedcmi: how the per-class ratios P_a(c)/P_b(c) are averaged into "
                           "r̄, which decides the dominant modality and tau_c: arithmetic (the authors' code) or "
                           "geometric (mean of the log ratios: one class whose probability collapsed cannot decide)",
                           lambda v: v in ("arithmetic", "geometric"), "must be arithmetic or geometric")
    # label-skew remedies, combinable with every method (fedcmi.methods.remedies)
    logit_adjust: float = _opt(0.0, "every method: CE(z + tau log pi_local, y) with this tau (FedLC / "
                               "logit adjustment); 0 = off", _at_least(0), "must be >= 0")
    restricted_softmax: float = _opt(1.0, "every method: FedRS, logits of classes a client lacks scaled by "
                                     "this alpha; 1 = off", lambda v: 0.0 < v <= 1.0, "must be in (0, 1]")
    ntd_beta: float = _opt(0.0, "every method: FedNTD not-true distillation from the global model, "
                           "weight; 0 = off", _at_least(0), "must be >= 0")
    ntd_temperature: float = _opt(1.0, "every method: FedNTD temperature", _positive, "must be > 0")
    ccvr_steps: int = _opt(0, "every method: CCVR, server-side SGD steps calibrating the fusion head on "
                           "virtual features from the multimodal clients' class means/covariances; 0 = off",
                           _at_least(0), "must be >= 0")
    ccvr_samples: int = _opt(64, "ccvr: virtual features drawn per class", _at_least(1), "must be >= 1")
    ccvr_lr: float = _opt(0.01, "ccvr: learning rate of the head calibration", _positive, "must be > 0")
    ccvr_moments: str = _opt("fresh", "ccvr: which feature moments calibrate the head: fresh (after each "
                             "aggregation the server asks every multimodal node for them under the new global "
                             "weights) or received (those the last round's sampled clients measured with the "
                             "weights they received, one aggregation old)", lambda v: v in ("fresh", "received"),
                             "must be fresh or received")
    scaffold: bool = _opt(False, "every method: SCAFFOLD control variates (Karimireddy et al. 2020, "
                          "option II): each local gradient corrected by c - c_i; the node keeps c_i across rounds, "
                          "the server c (scaffold-lr)")


@dataclass(frozen=True)
class ModelConfig(_Section):
    """The model: encoders, projector, fusion head (``fedcmi.models.build.MODEL_KEYS``: every key here)."""

    SECTION: ClassVar[str] = "model"

    encoder: str = _opt("cnn", "encoder architecture: cnn, cnn-rows (spectrograms), resnet18, or features "
                        "(train on the token embeddings of `fedcmi features`: data-root is the features directory)",
                        lambda v: v in _encoder_names(), _one_of(_encoder_names), _encoder_names)
    projector: str = _opt("linear", "projector type", lambda v: v in ("linear", "mlp"),
                          "must be linear or mlp")
    feature_dim: int = _opt(64, "encoder/projector width", _at_least(1), "must be >= 1")
    fusion: str = _opt("concat", "fusion head: concat, or sgmft (similarity-guided attention)",
                       lambda v: v in _fusion_names(), _one_of(_fusion_names), _fusion_names)
    sgmft_tokens: int = _opt(8, "sgmft: tokens each slot vector is cut into", _at_least(1),
                             "must be >= 1")
    sgmft_heads: int = _opt(4, "sgmft: attention heads", _at_least(1), "must be >= 1")
    sgmft_layers: int = _opt(1, "sgmft: similarity-guided interaction layers", _at_least(1),
                             "must be >= 1")
    text_encoder: str = _opt("bert-base-uncased", "text data: transformers model, hub name (local "
                             "cache only) or directory", lambda v: bool(v.strip()), "must not be empty")
    encoder_weights: str = _opt("", "resnet18: '' = from scratch, 'imagenet' (torch hub cache) or a "
                                             "state-dict file")

    def _check(self) -> None:
        if self.fusion == "sgmft" and (self.feature_dim % self.sgmft_tokens
                                       or (self.feature_dim // self.sgmft_tokens) % self.sgmft_heads):
            raise ConfigError(f"feature-dim={self.feature_dim}: with fusion=sgmft it must split into "
                              f"sgmft-tokens={self.sgmft_tokens} tokens of a width divisible by "
                              f"sgmft-heads={self.sgmft_heads}")


@dataclass(frozen=True)
class RuntimeConfig(_Section):
    """Where a client trains."""

    SECTION: ClassVar[str] = "runtime"

    client_num_cpus: float = _opt(1.0, "CPUs reserved per simulated client (Ray)", _positive,
                                  "must be > 0")
    device: str = _opt("auto", "training device; auto = cuda when the client has a GPU",
                       lambda v: v in ("auto", "cpu", "cuda"), "must be auto, cpu or cuda")
    bf16: bool = _opt(False, "CUDA only: bfloat16 autocast in local training (no effect on CPU)")


@dataclass(frozen=True)
class ServerConfig(_Section):
    """The server: rounds, sampling, aggregation, the server optimisers, evaluation, Ray."""

    SECTION: ClassVar[str] = "server"

    num_server_rounds: int = _opt(40, "federated rounds", _at_least(1), "must be >= 1")
    clients_per_round: int = _opt(10, "clients sampled each round", _at_least(1), "must be >= 1")
    aggregation: str = _opt("mean", "aggregation rule per modality group: mean (FedAvg), median, "
                            "trimmed-mean (beta 0.2), clipped-mean (updates clipped to the median norm)",
                            lambda v: v in AGGREGATION_NAMES, f"must be one of {', '.join(AGGREGATION_NAMES)}",
                            lambda: AGGREGATION_NAMES)
    server_opt: str = _opt("none", "adaptive server optimiser on the aggregated weights, per parameter "
                           "(Reddi et al. 2021): none (the aggregate is the new model), adam (FedAdam), yogi "
                           "(FedYogi), adagrad (FedAdagrad)", lambda v: v in SERVER_OPT_NAMES,
                           f"must be one of {', '.join(SERVER_OPT_NAMES)}", lambda: SERVER_OPT_NAMES)
    server_lr: float = _opt(0.01, "server-opt: server learning rate eta", _positive, "must be > 0")
    server_beta1: float = _opt(0.9, "server-opt: first-moment decay beta1 (0 = no momentum, as Flower's "
                               "FedAdagrad)", lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")
    server_beta2: float = _opt(0.99, "server-opt adam, yogi: second-moment decay beta2",
                               lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")
    server_tau: float = _opt(0.001, "server-opt: adaptivity tau, added to sqrt(v)", _positive,
                             "must be > 0")
    scaffold_lr: float = _opt(1.0, "scaffold: global learning rate eta_g, x += eta_g (aggregate - x) "
                              "(1 = the aggregate)", _positive, "must be > 0")
    # 256 (the authors' test batch): on CPU a 512 batch's activations spill out of cache, with the same
    # predictions; the timings are in docs/scaling.md (benchmarks/eval_batch.py)
    eval_batch_size: int = _opt(256, "server evaluation batch size", _at_least(1), "must be >= 1")
    client_num_gpus: float = _opt(0.0, "GPUs (fractions allowed) per simulated client", _at_least(0),
                                  "must be >= 0")
    ray_address: str = _opt("", "Ray cluster to join, e.g. '10.0.0.5:6379' (started with `ray start "
                                          "--head`); '' = start a local Ray")
    pipelined_eval: bool = _opt(True, "evaluate and checkpoint round r in a background thread (one "
                                "torch thread) while round r+1 trains; the same numbers as false (sequential)")


@dataclass(frozen=True)
class ReliabilityConfig(_Section):
    """What the server waits for and what it accepts."""

    SECTION: ClassVar[str] = "reliability"

    round_timeout: float = _opt(600.0, "seconds to wait for client replies per round", _positive,
                                "must be > 0")
    discovery_timeout: float = _opt(0.0, "seconds to wait for clients-per-round nodes to connect "
                                    "and describe themselves before round 1; 0 = round-timeout", _at_least(0),
                                    "must be >= 0")
    min_replies: int = _opt(1, "good replies needed to aggregate a round; fewer = round skipped, "
                            "model kept", _at_least(1), "must be >= 1")
    max_consecutive_skips: int = _opt(3, "stop the run after this many skipped rounds in a row",
                                      _at_least(1), "must be >= 1")
    max_update_norm: float = _opt(0.0, "absolute bound: reject a client update whose L2 distance "
                                  "to the global model is larger; 0 = off (the relative bound "
                                  "update-norm-multiple is the default defence)", _at_least(0), "must be >= 0")
    update_norm_multiple: float = _opt(UPDATE_NORM_MULTIPLE, "relative bound, per parameter group "
                                       "(each modality's encoder, the shared head): reject a client update whose "
                                       "L2 distance to the global model in a group, per local step, exceeds this "
                                       "multiple of the lower median of that group over the round's replies and "
                                       "the last 3 rounds' accepted ones; 0 = off, the default of fedcmi simulate and "
                                       "fedcmi bench (docs/robustness.md)",
                                       lambda v: v == 0 or v >= 2, "must be 0 (off) or >= 2")
    membership: str = _opt("auto", "what backs a node's sample count and partition id: federation "
                           "(the server rebuilds the partitions from this config: simulations, embedded-data "
                           "nodes), registry (node-registry), claims (nothing: each weight capped at 4x the "
                           "round's lower median claim); auto = registry when node-registry is set, else "
                           "federation (docs/robustness.md)",
                           lambda v: v in ("auto", "federation", "registry", "claims"),
                           "must be auto, federation, registry or claims")
    node_registry: str = _opt("", "the operator's node registry (TOML): each authorised node id "
                              "bound to a partition id and a size or size cap (docs/robustness.md)")

    @property
    def discovery_seconds(self) -> float:
        """Seconds the first discovery may take: discovery-timeout, or round-timeout when that is 0 (actors
        start slowly on a loaded machine, as slowly as a round may take)."""
        return self.discovery_timeout or self.round_timeout


@dataclass(frozen=True)
class OutputConfig(_Section):
    """The run directory and the logs."""

    SECTION: ClassVar[str] = "output"

    run_name: str = _opt("", "name used in the run directory (default: dataset-strategy): letters, "
                         "digits, '.', '_', '-', at most 100, never a path", _run_name_ok,
                         "must be letters, digits, '.', '_' or '-' (at most 100, not starting with '.' or '-')")
    out_dir: str = _opt("", "run directory (default: runs/<time>-<name>)")
    tensorboard: bool = _opt(True, "write every round's accuracies, mean losses, reply counts and "
                             "dominance ratio, and the configuration, as TensorBoard event files in "
                             "<run>/tensorboard/ (`tensorboard --logdir runs/`)")
    wandb: bool = _opt(False, "also log the numbers TensorBoard gets, and the configuration, to a Weights & "
                       "Biases run in <run>/wandb/: offline (no account, no network) unless WANDB_MODE is set; "
                       "upload later with `wandb sync`. Needs `pip install wandb`")
    wandb_project: str = _opt("fedcmi", "the W&B project of a wandb=true run", _wandb_project_ok,
                              "must be 1-128 characters, none of / \\ # ? % :")


# The sections in order: the order of the keys in config.json, the docs and ``--help``.
SECTION_TYPES: dict[str, type[_Section]] = {cls.SECTION: cls for cls in (
    DataConfig, FederationConfig, TrainingConfig, MethodConfig, ModelConfig, RuntimeConfig, ServerConfig,
    ReliabilityConfig, OutputConfig)}
assert tuple(SECTION_TYPES) == SECTIONS
# attribute name -> its field and its section (every key is a field of exactly one section)
_FIELD_OF: dict[str, dataclasses.Field[Any]] = {f.name: f for cls in SECTION_TYPES.values() for f in fields(cls)}
_SECTION_OF: dict[str, str] = {f.name: s for s, cls in SECTION_TYPES.items() for f in fields(cls)}


def unknown_key(raw_key: str) -> ConfigError:
    """The error of a key no section has (``lrr``, ``lr-rate``): its name and the closest key."""
    key = str(raw_key).replace("_", "-")
    hint = did_you_mean(key, FIELDS) or " (see `fedcmi simulate --help` for the keys)"
    return ConfigError(f"unknown key {raw_key!r}{hint}")


@dataclass(frozen=True, init=False)
class RunConfig:
    """The complete, effective configuration of one run (what ``config.json`` stores): nine sections.

    Code reads a key through its section (``cfg.training.lr``); ``cfg.lr`` is an AttributeError. Built from
    sections (``RunConfig(training=TrainingConfig(lr=0.1))``), from flat attribute names
    (``RunConfig(lr=0.1, strategy="fedavg")``, each given to its section), or both (flat names win).
    """

    data: DataConfig = field(default_factory=DataConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    reliability: ReliabilityConfig = field(default_factory=ReliabilityConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __init__(self, **values: Any) -> None:
        given = {s: values.pop(s) for s in SECTIONS if s in values}
        for s, section in given.items():
            if not isinstance(section, SECTION_TYPES[s]):
                raise TypeError(f"RunConfig({s}=...): a {SECTION_TYPES[s].__name__}, not {type(section).__name__}")
        changes: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for name, value in values.items():
            if name not in _SECTION_OF:
                raise unknown_key(name)
            changes[_SECTION_OF[name]][name] = value
        for name, f in _FIELD_OF.items():  # every key's own rule first, in key order, as one flat class did
            if name in values:
                _check_value(f, values[name])
        for s, cls in SECTION_TYPES.items():
            section = given.get(s)
            if section is None:
                section = cls(**changes[s])
            elif changes[s]:
                section = dataclasses.replace(section, **changes[s])
            object.__setattr__(self, s, section)
        self._check()

    def _check(self) -> None:
        """Rules between sections."""
        if self.model.encoder == "features" and not _is_prepared(self.data.dataset):
            raise ConfigError(f"encoder=features: dataset={self.data.dataset!r} has no extracted features; use a "
                              "prepared data set with data-root=<directory made by `fedcmi features`>")

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup failed: no flat fallback, just the section to read instead
        if name in _SECTION_OF:
            raise AttributeError(f"'RunConfig' object has no attribute {name!r}: read cfg.{_SECTION_OF[name]}.{name}")
        raise AttributeError(f"'RunConfig' object has no attribute {name!r}")

    def check_run(self) -> RunConfig:
        """Rules between server keys and the federation, checked before a run starts."""
        fed, server, rel = self.federation, self.server, self.reliability
        if server.clients_per_round > fed.num_clients:
            raise ConfigError(
                f"clients-per-round={server.clients_per_round}: must be <= num-clients ({fed.num_clients})")
        if rel.min_replies > server.clients_per_round:
            raise ConfigError(
                f"min-replies={rel.min_replies}: must be <= clients-per-round ({server.clients_per_round})")
        if server.server_opt == "none":
            changed = [k for k in SERVER_OPT_KEYS if getattr(server, FIELDS[k].name) != FIELDS[k].default]
            if changed:
                raise ConfigError(f"{changed[0]}={getattr(server, FIELDS[changed[0]].name)}: only read with "
                                  "server-opt=adam, yogi or adagrad (server-opt=none)")
        if not self.method.scaffold and server.scaffold_lr != FIELDS["scaffold-lr"].default:
            raise ConfigError(f"scaffold-lr={server.scaffold_lr}: only read with scaffold=true (scaffold=false)")
        if self.output.wandb:
            require_wandb()  # finds the package without importing it
        return self

    # --- views ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Hyphenated keys -> values, section by section in key order; what ``config.json`` and Flower's run
        config hold."""
        return {key_of(f.name): getattr(section, f.name) for section in self.sections() for f in fields(section)}

    def client_dict(self) -> dict[str, Any]:
        """The keys clients need (no server-only section: paths, timeouts, Ray, output)."""
        return {key_of(f.name): getattr(section, f.name) for section in self.sections()
                if section.SECTION not in SERVER_ONLY_SECTIONS for f in fields(section)}

    def sections(self) -> tuple[_Section, ...]:
        """The nine sections, in :data:`SECTIONS` order."""
        return tuple(getattr(self, s) for s in SECTIONS)

    @property
    def name(self) -> str:
        return self.output.run_name or f"{self.data.dataset}-{self.method.strategy}"

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with these changes: flat attribute names (``lr=0.1``) and/or whole sections."""
        return RunConfig(**{**{s: getattr(self, s) for s in SECTIONS}, **changes})


def key_of(attr: str) -> str:
    return attr.replace("_", "-")


FIELDS = {key_of(name): f for name, f in _FIELD_OF.items()}


@lru_cache(maxsize=1)
def _defaults() -> tuple[tuple[str, Any], ...]:
    return tuple(RunConfig().to_dict().items())


def defaults() -> dict[str, Any]:
    """Every key's default value (hyphenated keys)."""
    return dict(_defaults())


def config_keys() -> dict[str, str]:
    """Key -> one-line description, for ``--help`` and the docs."""
    return {k: f.metadata["doc"] for k, f in FIELDS.items()}


def section_of(key: str) -> str:
    """The section a (hyphenated) key belongs to."""
    return _SECTION_OF[FIELDS[key].name]
