"""The message format between the ServerApp and the ClientApp: every record key is spelled here only.

Functions pack the core's types into Flower records and read them back. Reading a reply treats every
field as untrusted input: a missing or malformed field raises :class:`ReplyError` with a one-line reason,
which the strategy records as a rejected reply.

Messages:
* QUERY (discovery): ``config`` (the clients' run config) -> ``info`` (partition id, kind, sample count).
* TRAIN: ``arrays`` (global weights) + ``config`` (run config, round, infiltration switch, dominant modality,
  class temperatures, the model's classes and input shapes) -> ``arrays`` (trained groups), ``metrics``
  (sample count, partition id, loss terms), ``class-stats`` (per-class sums), ``info`` (kind, partition id).
  A run option with client state (``fedcmi.methods.registry.OPTIONS``) adds the array records
  its line names: one TRAIN carries (``sent``), one the reply carries (``reply``), and one the node keeps in its
  ``context.state`` from round to round (``kept``); each keyed by parameter name, declared with the
  parameter's shape and dtype. Inside fedcmi they are keyed by the option's name.
* EVALUATE (CCVR fresh moments, multimodal nodes only, after each aggregation): the same ``arrays`` + ``config``
  as TRAIN, with the new global weights -> ``feature-stats`` (per-class moments of the fusion head's inputs)
  and ``metrics`` (the samples they cover, partition id).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedcmi.dominance import ClassStats, Guidance
from fedcmi.federated.calibration import FeatureStats
from fedcmi.federated.screening import MAX_LOSS, MAX_NUM_EXAMPLES
from fedcmi.methods.registry import OPTIONS
from fedcmi.modalities import KINDS
from fedcmi.models.build import ModelSpec
from fedcmi.npy import record_arrays, record_state_dict

# record names
ARRAYS, CONFIG, METRICS, CLASS_STATS, INFO = "arrays", "config", "metrics", "class-stats", "info"
FEATURE_STATS = "feature-stats"  # CCVR: per-class moments of the fusion head's inputs (multimodal clients)
# keys of the training config beside the run-config keys
SERVER_ROUND, INFILTRATE, DOMINANT, TAU = "server-round", "infiltrate", "dominant", "tau"
NUM_CLASSES, SHAPE_A, SHAPE_B = "num-classes", "shape-a", "shape-b"
ROUND_KEYS = (SERVER_ROUND, INFILTRATE, DOMINANT, TAU, NUM_CLASSES, SHAPE_A, SHAPE_B)
# keys of node info and reply metrics
PARTITION_ID, KIND, NUM_EXAMPLES = "partition-id", "kind", "num-examples"
# class statistics arrays
SUM_PA, SUM_PB, COUNTS = "sum-pa", "sum-pb", "counts"
SUMS, OUTER = "sums", "outer"
MAX_FEATURE_DIM = 4096  # the widest fusion-head input a CCVR reply may describe (2 x 2048)
LOSS_PREFIX = "loss"  # metrics whose name starts with it are loss terms, averaged over clients
REPLY_RECORDS = (ARRAYS, METRICS, CLASS_STATS, INFO, FEATURE_STATS)  # and the run options' reply records
MOMENTS_RECORDS = (FEATURE_STATS, METRICS)  # what a reply to an EVALUATE (CCVR moments) request may hold
# a node keeps run-option state for this many run scopes (bench cells); more cells at once on one node than
# this would lose the oldest one's state (fedcmi bench runs --jobs cells at once)
MAX_KEPT_SCOPES = 16
NPY_HEADER_SLACK = 4096  # bytes of an .npy header beyond the array's own data


class ReplyError(ValueError):
    """A reply's field is missing or malformed; the message is the reason the reply is rejected."""


@dataclass(frozen=True)
class NodeInfo:
    partition_id: int
    kind: str
    num_examples: int


@dataclass
class TrainInstruction:
    """What a client needs for one round, read from a TRAIN message."""

    run_config: dict[str, Any]
    server_round: int
    guidance: Guidance
    model_spec: ModelSpec
    state: dict[str, torch.Tensor]


@dataclass(frozen=True)
class MomentsReply:
    """A node's fresh CCVR moments, read and checked for shape, finiteness and integer counts."""

    partition_id: int
    num_examples: float
    features: FeatureStats


@dataclass
class Reply:
    """A client's training reply, read and type-checked (not yet screened against the global model)."""

    partition_id: int
    kind: str | None
    num_examples: float
    arrays: dict[str, np.ndarray]
    stats: ClassStats | None
    losses: dict[str, float] = field(default_factory=dict)
    features: FeatureStats | None = None
    records: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # option name -> its reply arrays
    # (declared shapes and dtypes checked against the model, values not: its server step checks them)


# --- discovery ---------------------------------------------------------------------------------------------
def query_content(run_config: Mapping[str, Any]) -> RecordDict:
    return RecordDict({CONFIG: ConfigRecord(dict(run_config))})


def run_config_of(content: RecordDict) -> dict[str, Any]:
    """The run-config keys a message carries (round keys left out)."""
    if CONFIG not in content.config_records:
        return {}
    return {k: v for k, v in content[CONFIG].items() if k not in ROUND_KEYS}


def info_content(info: NodeInfo) -> RecordDict:
    return RecordDict({INFO: ConfigRecord({PARTITION_ID: info.partition_id, KIND: info.kind,
                                           NUM_EXAMPLES: info.num_examples})})


def read_info(content: RecordDict) -> NodeInfo:
    if INFO not in content.config_records:
        raise ReplyError(f"reply lacks its {INFO!r} record")
    rec = content[INFO]
    info = NodeInfo(_int(rec.get(PARTITION_ID), PARTITION_ID), _kind(rec.get(KIND)),
                    _int(rec.get(NUM_EXAMPLES), NUM_EXAMPLES))
    if info.partition_id < 0:
        raise ReplyError(f"{PARTITION_ID} {info.partition_id} is negative")
    if not 0 < info.num_examples <= MAX_NUM_EXAMPLES:
        raise ReplyError(f"{NUM_EXAMPLES} {info.num_examples} must be in [1, 2**53]")
    return info


# --- training ------------------------------------------------------------------------------------------------
def train_content(arrays: ArrayRecord, run_config: Mapping[str, Any], server_round: int, guidance: Guidance,
                  model_spec: ModelSpec) -> RecordDict:
    cfg = ConfigRecord(dict(run_config))
    cfg[SERVER_ROUND] = server_round
    cfg[INFILTRATE] = guidance.infiltrate
    if guidance.dominant is not None:
        cfg[DOMINANT] = guidance.dominant
    if guidance.tau is not None:
        cfg[TAU] = [float(t) for t in guidance.tau]
    cfg[NUM_CLASSES] = model_spec.num_classes
    cfg[SHAPE_A] = [int(s) for s in model_spec.shape_a]
    cfg[SHAPE_B] = [int(s) for s in model_spec.shape_b]
    content = RecordDict({ARRAYS: arrays, CONFIG: cfg})
    for name, option_arrays in guidance.records.items():
        content[_record_name(name, "sent")] = arrays_record(option_arrays)
    return content


def read_train(content: RecordDict) -> TrainInstruction:
    sent = content[CONFIG]
    records = {name: record_arrays(content[spec.sent]) for name, spec in OPTIONS.items()
               if spec.sent is not None and spec.sent in content.array_records}
    guidance = Guidance(infiltrate=bool(sent.get(INFILTRATE, False)), dominant=sent.get(DOMINANT),
                        tau=np.asarray(sent[TAU], dtype=np.float64) if TAU in sent else None, records=records)
    spec = ModelSpec(int(sent[NUM_CLASSES]), tuple(int(s) for s in sent[SHAPE_A]),
                     tuple(int(s) for s in sent[SHAPE_B]))
    return TrainInstruction(run_config_of(content), int(sent.get(SERVER_ROUND, 0)), guidance, spec,
                            record_state_dict(content[ARRAYS]))


def server_round_of(content: RecordDict) -> int:
    return int(content[CONFIG].get(SERVER_ROUND, 0)) if CONFIG in content.config_records else 0


def reply_content(arrays: Mapping[str, torch.Tensor], num_examples: int, losses: Mapping[str, float],
                  stats: ClassStats, partition_id: int, kind: str, features: FeatureStats | None = None,
                  records: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> RecordDict:
    metrics = MetricRecord({NUM_EXAMPLES: num_examples, PARTITION_ID: partition_id, **losses})
    class_stats = ArrayRecord({SUM_PA: Array(stats.sum_pa.astype(np.float64)),
                               SUM_PB: Array(stats.sum_pb.astype(np.float64)),
                               COUNTS: Array(stats.counts.astype(np.float64))})
    content = RecordDict({ARRAYS: ArrayRecord(dict(arrays)), METRICS: metrics, CLASS_STATS: class_stats,
                          INFO: ConfigRecord({KIND: kind, PARTITION_ID: partition_id})})
    if features is not None:
        content[FEATURE_STATS] = features_record(features)
    for name, option_arrays in (records or {}).items():
        content[_record_name(name, "reply")] = arrays_record(option_arrays)
    return content


def arrays_record(arrays: Mapping[str, np.ndarray | torch.Tensor]) -> ArrayRecord:
    """A run option's arrays (parameter name -> array, dtype kept) as an ArrayRecord, in name order."""
    out = ArrayRecord()
    for k in sorted(arrays):
        v = arrays[k]
        a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        out[k] = Array(np.ascontiguousarray(a))
    return out


def run_scope(client_config: Mapping[str, Any]) -> str:
    """The scope of a node's kept state: a digest of the clients' run config the message carries.

    Why: Flower keeps one ``context.state`` per node for a whole Flower run, and ``fedcmi bench`` runs every
    cell of a grid in one Flower run, several at a time. Kept unscoped, a node's state (SCAFFOLD's c_i) would
    pass from one cell to the next, or alternate between cells running at once. Cells differ in at least one
    client key (strategy, seed, alpha, mix, ...), so each gets its own state; a resumed cell finds its own."""
    text = json.dumps(dict(client_config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _scoped(record: str, scope: str) -> str:
    return f"{record}@{scope}"


def node_state(state: RecordDict, scope: str) -> dict[str, dict[str, torch.Tensor]]:
    """What the run options kept in the node's ``context.state`` for this run scope (:func:`run_scope`; option
    name -> arrays; an option that kept nothing yet, before the node's first round, is absent)."""
    out = {}
    for name, spec in OPTIONS.items():
        key = None if spec.kept is None else _scoped(spec.kept, scope)
        if key is not None and key in state.array_records:
            out[name] = record_state_dict(state[key])
    return out


def keep_node_state(state: RecordDict, kept: Mapping[str, Mapping[str, torch.Tensor]], scope: str) -> None:
    """Store each option's arrays in the node's ``context.state`` for this run scope, which Flower keeps for the
    node's next message. At most :data:`MAX_KEPT_SCOPES` scopes per option stay, the least recently kept
    dropped first, so a node serving a long bench grid does not hold every cell's state."""
    for name, arrays in kept.items():
        record = _record_name(name, "kept")
        key = _scoped(record, scope)
        if key in state:
            del state[key]  # re-inserted last: the most recently kept
        state[key] = arrays_record(arrays)
        scopes = [k for k in state.array_records if k.startswith(f"{record}@")]
        for old in scopes[:-MAX_KEPT_SCOPES]:
            del state[old]


def _record_name(option: str, which: str) -> str:
    """The record an option's line names for ``which`` (``sent``, ``reply``, ``kept``): a programming error
    (an option without that record) raises."""
    name = getattr(OPTIONS[option], which)
    if name is None:
        raise ValueError(f"option {option!r} names no {which} record")
    return name


def read_reply(content: RecordDict, expected: Mapping[str, tuple[tuple[int, ...], str]] | None = None,
               num_classes: int | None = None) -> Reply:
    """Every field of a training reply, type-checked; raises :class:`ReplyError` naming the bad one.

    ``expected`` (key -> (shape, dtype) of the global model) and ``num_classes`` let the sizes be checked
    from the arrays' declared metadata and byte lengths before any array is deserialised, so an unknown or
    oversized array costs no second copy in memory. (Flower itself has already pulled the whole message
    into memory by then: a ServerApp has no hook to bound a reply's size before ``Grid.send_and_receive``
    returns it.)
    """
    options = {spec.reply: name for name, spec in OPTIONS.items() if spec.reply is not None}
    extra = sorted(set(content.keys()) - set(REPLY_RECORDS) - set(options))
    if extra:
        raise ReplyError(f"unexpected record {extra[0]!r}")
    if ARRAYS not in content.array_records or METRICS not in content.metric_records:
        raise ReplyError(f"reply lacks its {ARRAYS!r} or {METRICS!r} record")
    metrics = content[METRICS]
    n = metrics.get(NUM_EXAMPLES)
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(float(n)) or n <= 0:
        raise ReplyError(f"{NUM_EXAMPLES} {n!r} must be a positive finite number")
    if n > MAX_NUM_EXAMPLES:
        raise ReplyError(f"{NUM_EXAMPLES} {n!r} is above 2**53")
    pid = _int(metrics.get(PARTITION_ID, -1), PARTITION_ID) if PARTITION_ID in metrics else -1
    kind = None
    if INFO in content.config_records and KIND in content[INFO]:
        kind = _kind(content[INFO][KIND])
    losses: dict[str, float] = {}
    for k, v in metrics.items():
        if k.startswith(LOSS_PREFIX):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise ReplyError(f"metric {k} {v!r} is not a finite number")
            if abs(v) > MAX_LOSS:
                raise ReplyError(f"metric {k} {v!r} is beyond {MAX_LOSS:g}")
            losses[k] = float(v)
    if expected is not None:
        for k, arr in content[ARRAYS].items():
            if k not in expected:
                raise ReplyError(f"unknown parameter {k!r}")
            _check_declared(arr, k, *expected[k])
    if num_classes is not None and CLASS_STATS in content.array_records:
        for k, arr in content[CLASS_STATS].items():
            if k not in (SUM_PA, SUM_PB, COUNTS):
                raise ReplyError(f"unexpected {CLASS_STATS} array {k!r}")
            _check_declared(arr, f"{CLASS_STATS} {k}", (num_classes,), "float64")
    if num_classes is not None and FEATURE_STATS in content.array_records:
        _check_feature_record(content[FEATURE_STATS], num_classes)
    for record in sorted(r for r in options if r in content):
        if record not in content.array_records:
            raise ReplyError(f"{record} is not an array record")
        if expected is None:
            continue
        for k, arr in content[record].items():
            if k not in expected:
                raise ReplyError(f"{record}: unknown parameter {k!r}")
            _check_declared(arr, f"{record} {k}", *expected[k])
    try:
        arrays = record_arrays(content[ARRAYS])
    except Exception as exc:  # noqa: BLE001 - a malformed array is a rejected reply, not a crash
        raise ReplyError(f"unreadable arrays ({type(exc).__name__}: {exc})") from None
    stats = None
    if CLASS_STATS in content.array_records:
        cs = content[CLASS_STATS]
        try:
            got = record_arrays(cs, (SUM_PA, SUM_PB, COUNTS))
            stats = ClassStats(*(got[k].astype(np.float64) for k in (SUM_PA, SUM_PB, COUNTS)))
        except Exception as exc:  # noqa: BLE001 - as above
            raise ReplyError(f"malformed {CLASS_STATS} ({type(exc).__name__}: {exc})") from None
    records: dict[str, dict[str, np.ndarray]] = {}
    for record in sorted(r for r in options if r in content.array_records):
        try:
            records[options[record]] = record_arrays(content[record])
        except Exception as exc:  # noqa: BLE001 - as above
            raise ReplyError(f"malformed {record} ({type(exc).__name__}: {exc})") from None
    return Reply(pid, kind, float(n), arrays, stats, losses, read_features(content), records)


def read_features(content: RecordDict) -> FeatureStats | None:
    """The CCVR feature moments of a reply, if it carries them."""
    if FEATURE_STATS not in content.array_records:
        return None
    fs = content[FEATURE_STATS]
    try:
        got = record_arrays(fs, (COUNTS, SUMS, OUTER))
        return FeatureStats(*(got[k].astype(np.float64) for k in (COUNTS, SUMS, OUTER)))
    except Exception as exc:  # noqa: BLE001 - a malformed record rejects the reply
        raise ReplyError(f"malformed {FEATURE_STATS} ({type(exc).__name__}: {exc})") from None


def _check_feature_record(fs: ArrayRecord, num_classes: int) -> None:
    """The declared shapes and byte lengths of a ``feature-stats`` record, before it is deserialised."""
    if set(fs.keys()) != {COUNTS, SUMS, OUTER}:
        raise ReplyError(f"{FEATURE_STATS}: expected the arrays {COUNTS}, {SUMS}, {OUTER}")
    dim = tuple(fs[SUMS].shape)[-1] if len(fs[SUMS].shape) == 2 else -1
    if not 0 < dim <= MAX_FEATURE_DIM:
        raise ReplyError(f"{FEATURE_STATS} {SUMS}: shape {tuple(fs[SUMS].shape)}, expected ({num_classes}, D)")
    for k, shape in ((COUNTS, (num_classes,)), (SUMS, (num_classes, dim)), (OUTER, (num_classes, dim, dim))):
        _check_declared(fs[k], f"{FEATURE_STATS} {k}", shape, "float64")


# --- CCVR fresh moments (EVALUATE) ---------------------------------------------------------------------------
def moments_request(arrays: ArrayRecord, run_config: Mapping[str, Any], server_round: int,
                    model_spec: ModelSpec) -> RecordDict:
    """A TRAIN message's content without guidance: a node needs the weights, the run config (to load its data
    and build the model) and the model's shapes; ``read_train`` reads it."""
    return train_content(arrays, run_config, server_round, Guidance(), model_spec)


def features_record(features: FeatureStats) -> ArrayRecord:
    return ArrayRecord({COUNTS: Array(features.counts.astype(np.float64)),
                        SUMS: Array(features.sums.astype(np.float64)),
                        OUTER: Array(features.outer.astype(np.float64))})


def moments_reply(features: FeatureStats, partition_id: int) -> RecordDict:
    metrics = MetricRecord({NUM_EXAMPLES: int(features.counts.sum()), PARTITION_ID: partition_id})
    return RecordDict({FEATURE_STATS: features_record(features), METRICS: metrics})


def read_moments_reply(content: RecordDict, num_classes: int) -> MomentsReply:
    """A reply to a moments request, every field untrusted; raises :class:`ReplyError` naming the bad one.

    Beyond the shapes: finite values, non-negative integer counts, and a sample count that equals the counts'
    sum (the caller bounds it by what the membership vouches for)."""
    extra = sorted(set(content.keys()) - set(MOMENTS_RECORDS))
    if extra:
        raise ReplyError(f"unexpected record {extra[0]!r}")
    if FEATURE_STATS not in content.array_records or METRICS not in content.metric_records:
        raise ReplyError(f"reply lacks its {FEATURE_STATS!r} or {METRICS!r} record")
    metrics = content[METRICS]
    n = metrics.get(NUM_EXAMPLES)
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not 0 <= float(n) <= MAX_NUM_EXAMPLES:
        raise ReplyError(f"{NUM_EXAMPLES} {n!r} must be a number in [0, 2**53]")
    pid = _int(metrics.get(PARTITION_ID, -1), PARTITION_ID) if PARTITION_ID in metrics else -1
    _check_feature_record(content[FEATURE_STATS], num_classes)
    features = read_features(content)
    if features is None:  # not reached: the record was checked above; for the type checker
        raise ReplyError(f"reply lacks its {FEATURE_STATS!r} record")
    reason = features.check(num_classes)
    if reason:
        raise ReplyError(reason)
    if features.counts.sum() != float(n):
        raise ReplyError(f"{FEATURE_STATS} counts sum to {features.counts.sum():g}, {NUM_EXAMPLES} says {n:g}")
    return MomentsReply(pid, float(n), features)


def _check_declared(arr: Array, key: str, shape: tuple[int, ...], dtype: str) -> None:
    """An array's declared shape and dtype, and its byte length, before it is deserialised."""
    if tuple(arr.shape) != tuple(shape):
        raise ReplyError(f"{key}: shape {tuple(arr.shape)}, expected {tuple(shape)}")
    if str(arr.dtype) != dtype:
        raise ReplyError(f"{key}: dtype {arr.dtype}, expected {dtype}")
    limit = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize + NPY_HEADER_SLACK
    if len(arr.data) > limit:
        raise ReplyError(f"{key}: {len(arr.data)} bytes, at most {limit} expected for shape {tuple(shape)}")


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ReplyError(f"{key} {value!r} is not an integer")
    return int(value)


def _kind(value: Any) -> str:
    if value not in KINDS:
        raise ReplyError(f"{KIND} {value!r} is not one of {', '.join(KINDS)}")
    return str(value)
