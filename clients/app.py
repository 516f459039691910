"""The ClientApp: unpack the message, run ``fedcmi.federated.client_step`` on this node's data, pack the reply.

The server sends the clients' part of the run config, the model's classes and input shapes with every
message, so a client builds the same model and trains with exactly the server's settings from the message
and its own data alone, however it was launched (``fedcmi simulate``, ``flwr run``, a SuperNode).
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients.node_data import node_data
from fedcmi import protocol
from fedcmi.config import RunConfig, from_mapping, normalize
from fedcmi.config.run_config import FIELDS
from fedcmi.devices import device_of
from fedcmi.federated.client_step import client_moments, client_step
from fedcmi.methods.registry import method_spec
from fedcmi.models import ModelSpec, model_for, model_key

app = ClientApp()

_MODELS: dict[tuple, torch.nn.Module] = {}  # one model object per architecture, reloaded every message


def run_config_of(msg: Message, context: Context) -> RunConfig:
    """The run config carried by the message, over the node's run config (``flwr run`` fills it)."""
    merged: dict[str, Any] = {k: v for k, v in context.run_config.items() if k in FIELDS}
    merged.update(protocol.run_config_of(msg.content))
    return from_mapping(normalize(merged))


def cached_model(cfg: RunConfig, spec: ModelSpec) -> torch.nn.Module:
    """The run's model for these shapes on this client's device, built once per process."""
    decomposed = method_spec(cfg.method.strategy).decomposed
    device = device_of(cfg.runtime.device)
    key = (*model_key(cfg.model, spec, decomposed), str(device))
    if key not in _MODELS:
        _MODELS[key] = model_for(cfg.model, spec, decomposed).to(device)
    return _MODELS[key]


@app.query()
def describe(msg: Message, context: Context) -> Message:
    """Tell the server which partition and modality kind this node holds."""
    cfg = run_config_of(msg, context)
    node = node_data(context.node_config, cfg)  # embedded partition or prepared data-dir (clients/node_data.py)
    info = protocol.NodeInfo(node.partition_id, node.kind, node.num_examples)
    return Message(protocol.info_content(info), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local update on this node's data; replies with the trained groups and class statistics."""
    task = protocol.read_train(msg.content)
    cfg = run_config_of(msg, context)
    torch.set_num_threads(max(1, int(cfg.runtime.client_num_cpus)))
    node = node_data(context.node_config, cfg)
    scope = protocol.run_scope(cfg.client_dict())  # a bench cell's own node state (several share one Flower run)
    result = client_step(cached_model(cfg, task.model_spec), task.state, task.guidance, node.client_data(cfg), cfg,
                         num_classes=task.model_spec.num_classes, server_round=task.server_round,
                         partition_id=node.partition_id, kept=protocol.node_state(context.state, scope))
    protocol.keep_node_state(context.state, result.kept, scope)  # the run options' state, for the next round
    content = protocol.reply_content(result.arrays, result.num_examples, result.losses, result.stats,
                                     node.partition_id, node.kind, result.features, result.records)
    return Message(content, reply_to=msg)


@app.evaluate()
def moments(msg: Message, context: Context) -> Message:
    """CCVR (ccvr-moments=fresh): the moments of the fusion head's inputs under the weights the server just
    aggregated, on this node's data; the server pools them to calibrate the head it evaluates and saves."""
    task = protocol.read_train(msg.content)
    cfg = run_config_of(msg, context)
    torch.set_num_threads(max(1, int(cfg.runtime.client_num_cpus)))
    node = node_data(context.node_config, cfg)
    features = client_moments(cached_model(cfg, task.model_spec), task.state, node.client_data(cfg), cfg,
                              num_classes=task.model_spec.num_classes)
    return Message(protocol.moments_reply(features, node.partition_id), reply_to=msg)
