"""One client's round without Flower: received weights + guidance + own data -> update, statistics, metrics.

The ClientApp (``clients/app.py``) unpacks a message, calls :func:`client_step` and packs the result; the
plain-loop benchmark calls the same function, so the round is written once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from fedcmi.config import RunConfig
from fedcmi.data.base import ClientData
from fedcmi.devices import autocast, device_of, on_device
from fedcmi.dominance import ClassStats, Guidance
from fedcmi.federated.calibration import FeatureStats, feature_statistics
from fedcmi.methods.base import TrainSettings, local_update, only
from fedcmi.methods.client_option import client_options, finish_options
from fedcmi.methods.registry import method_spec
from fedcmi.methods.remedies import Remedies
from fedcmi.methods.statistics import class_statistics
from fedcmi.modalities import MM, group_of, trained_groups


@dataclass
class ClientResult:
    """What a client sends back: its trained groups (CPU tensors), sample count, loss terms, statistics."""

    arrays: dict[str, torch.Tensor]
    num_examples: int
    stats: ClassStats
    losses: dict[str, float] = field(default_factory=dict)
    features: FeatureStats | None = None  # CCVR moments (multimodal clients, ccvr-steps > 0, ccvr-moments=received)
    kept: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # run option -> arrays for the node's
    # context.state (its next round's ``kept``)
    records: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # run option -> arrays for the reply


def round_seed(seed: int, server_round: int, partition_id: int) -> int:
    """The seed of one client's round: the same for the same run seed, round and partition, wherever it runs."""
    digest = hashlib.sha256(f"{seed}/{server_round}/{partition_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def client_step(model: nn.Module, state: Mapping[str, torch.Tensor], guidance: Guidance, data: ClientData,
                cfg: RunConfig, *, num_classes: int, server_round: int, partition_id: int,
                kept: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> ClientResult:
    """Load ``state``, measure the class statistics, train with the run's method, return the update.

    ``model`` must already be on the client's device (``fedcmi.devices.device_of(cfg.runtime.device)``). ``kept``: what
    the run options kept in the node's state after its last round (option name -> arrays; None or empty before
    its first); the options on (``fedcmi.methods.client_option``) train with it and with what the server sent
    them in ``guidance.records``.
    """
    spec = method_spec(cfg.method.strategy)
    device = device_of(cfg.runtime.device)
    local = on_device(data, device)
    model.load_state_dict(state)
    seed = round_seed(cfg.federation.seed, server_round, partition_id)
    with autocast(cfg.runtime.bf16, device):
        stats = class_statistics(model, local, num_classes)  # with the received global weights
        features = (feature_statistics(model, local, num_classes)
                    if cfg.method.ccvr_steps > 0 and cfg.method.ccvr_moments == "received" and local.kind == MM
                    and len(local) else None)
        torch.manual_seed(seed)
        options = client_options(cfg, guidance.records, kept or {})
        result = local_update(model, only(local, spec.modalities), spec.build(cfg), guidance,
                              TrainSettings.of(cfg, spec), num_classes=num_classes,
                              generator=torch.Generator().manual_seed(seed), remedies=Remedies.from_config(cfg),
                              options=tuple(options.values()))
    held = trained_groups(data.kind, spec.modalities)
    arrays = {k: v.detach().cpu() for k, v in model.state_dict().items() if group_of(k) in held}
    keep, records = finish_options(options)
    return ClientResult(arrays, result.num_examples, stats, result.losses, features, keep, records)


def client_moments(model: nn.Module, state: Mapping[str, torch.Tensor], data: ClientData, cfg: RunConfig, *,
                   num_classes: int) -> FeatureStats:
    """CCVR's fresh moments: the head-input moments of this node's data under ``state`` (the global weights
    just aggregated), so the server calibrates the head of the model it evaluates, not of the one before.

    Only a multimodal node has both slots to measure; any other raises (the server asks only those)."""
    if data.kind != MM:
        raise ValueError(f"CCVR moments need a multimodal node; this one holds {data.kind!r}")
    device = device_of(cfg.runtime.device)
    local = on_device(data, device)
    model.load_state_dict(state)
    with autocast(cfg.runtime.bf16, device):
        features = feature_statistics(model, local, num_classes)
    if features.counts.sum() == 0:
        raise ValueError("no labeled sample of this node holds both modalities: no CCVR moments to send")
    return features
