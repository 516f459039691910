"""The ClientApp: unpack records, call ``fedcmi.training.local_update``, pack the reply.

The server sends the full run config with every message, so a client trains with exactly the server's
settings however it was launched (``fedcmi simulate``, ``flwr run``, a SuperNode).
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.faults import active_faults, before_training, corrupt_reply
from clients.node_data import node_data
from fedcmi.config import RunConfig, config_keys, from_mapping
from fedcmi.data import ClientData, load_data
from fedcmi.models import build_model, group_of, model_options
from fedcmi.strategies import preset
from fedcmi.training import Guidance, Objective, class_statistics, local_update

app = ClientApp()

_MODELS: dict[tuple, torch.nn.Module] = {}  # one model object per architecture, reloaded every message


def run_config_of(msg: Message, context: Context) -> RunConfig:
    """The run config carried by the message (falling back to the node's run config)."""
    known = config_keys()
    merged: dict[str, Any] = {k: v for k, v in context.run_config.items() if k in known}
    if "config" in msg.content:
        merged.update({k: v for k, v in msg.content["config"].items() if k in known})
    return from_mapping(merged)


def device_of(cfg: RunConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def autocast(cfg: RunConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for ``bf16=true`` on CUDA (half the activation traffic); a no-op on CPU."""
    if cfg.bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def on_device(data: ClientData, device: torch.device) -> ClientData:
    """The client's tensors on ``device``; on CUDA from pinned memory, so the copies are asynchronous."""
    if device.type != "cuda":
        return data
    return ClientData(*(None if t is None else t.pin_memory() for t in (data.a, data.b, data.y))).to(device)


def model_for(cfg: RunConfig, device: torch.device) -> torch.nn.Module:
    data = load_data(cfg)
    options = model_options(cfg)
    key = (cfg.dataset, cfg.encoder, cfg.feature_dim, cfg.projector, preset(cfg.strategy).decomposed,
           data.num_classes, str(device), cfg.data_root, *options.values())
    if key not in _MODELS:
        _MODELS[key] = build_model(cfg.encoder, data.shapes(), data.num_classes, cfg.feature_dim,
                                   decomposed=key[4], projector=cfg.projector, **options).to(device)
    return _MODELS[key]


def round_seed(seed: int, server_round: int, partition_id: int) -> int:
    digest = hashlib.sha256(f"{seed}/{server_round}/{partition_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


@app.query()
def describe(msg: Message, context: Context) -> Message:
    """Tell the server which partition and modality kind this node holds."""
    cfg = run_config_of(msg, context)
    node = node_data(context.node_config, cfg)  # embedded partition or prepared data-dir (clients/node_data.py)
    info = ConfigRecord({"partition-id": node.partition_id, "kind": node.kind, "num-examples": node.num_examples})
    return Message(RecordDict({"info": info}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local update on this node's partition; replies with the trained groups and class statistics."""
    cfg = run_config_of(msg, context)
    torch.set_num_threads(max(1, int(cfg.client_num_cpus)))
    spec = node_data(context.node_config, cfg)
    pid = spec.partition_id
    sent = msg.content["config"]
    server_round = int(sent.get("server-round", 0))
    faults = active_faults(cfg, pid, server_round)  # test-only (inject-faults); empty in real runs
    before_training(faults, cfg)
    data = load_data(cfg)
    device = device_of(cfg)
    local = on_device(spec.client_data(cfg), device)
    model = model_for(cfg, device)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    guidance = Guidance(infiltrate=bool(sent.get("infiltrate", False)),
                        dominant=sent.get("dominant"),
                        tau=np.asarray(sent["tau"], dtype=np.float64) if "tau" in sent else None)
    seed = round_seed(cfg.seed, server_round, pid)
    with autocast(cfg, device):
        stats = class_statistics(model, local, data.num_classes)  # with the received global weights
        torch.manual_seed(seed)
        result = local_update(model, local, Objective.from_config(cfg), guidance, num_classes=data.num_classes,
                              epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                              momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                              generator=torch.Generator().manual_seed(seed))
    trains = preset(cfg.strategy).modalities  # unimodal baselines train one modality only
    held = (*[m for m in spec.modalities if m in trains], "shared")
    trained = {k: v.detach().cpu() for k, v in model.state_dict().items() if group_of(k) in held}
    if faults:
        trained, stats = corrupt_reply(faults, trained, stats)
    metrics = MetricRecord({"num-examples": result.num_examples, "partition-id": pid, **result.losses})
    class_stats = ArrayRecord({
        "sum-pa": Array(stats.sum_pa.astype(np.float64)), "sum-pb": Array(stats.sum_pb.astype(np.float64)),
        "counts": Array(stats.counts.astype(np.float64))})
    content = RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics, "class-stats": class_stats,
                          "info": ConfigRecord({"kind": spec.kind, "partition-id": pid})})
    return Message(content, reply_to=msg)
