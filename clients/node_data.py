"""What data a SuperNode holds, from its node config (``flower-supernode --node-config``).

Two modes, so the same ClientApp runs in simulation, in a loopback demo and on real machines:

* **embedded** (demos, and what the simulation engine injects): ``partition-id`` and ``num-partitions``;
  the node trains on that partition of the run's embedded data set, with the modality kind the run's
  seeded federation assigns to it.
* **prepared** (real clients): ``partition-id``, ``data-dir`` (a directory made by ``fedcmi prepare``, or
  by ``fedcmi features`` for ``encoder=features``:
  a ``datasets.DatasetDict`` saved with ``save_to_disk`` plus ``fedcmi.json``) and ``modalities`` (the
  modalities this node holds, comma-separated names such as ``"audio,visual"``, or ``a``/``b``).
  ``partition-id`` is still required: it is the node's stable, unique id that the server samples by.

Every problem raises :class:`NodeConfigError` with one line naming the key or path, so a misconfigured
node fails its own replies (the server counts them as failed) instead of training on the wrong data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedcmi.config import ConfigError, RunConfig
from fedcmi.data import ClientData, MultimodalData
from fedcmi.data.corruption import corrupt
from fedcmi.data.features import check_encoder
from fedcmi.data.partition import ClientSpec, client_data, federation
from fedcmi.data.prepared import load_prepared
from fedcmi.data.registry import load_data
from fedcmi.modalities import MODALITIES, modalities_of
from fedcmi.modalities import kind_of as kind_of_codes

HINT = ('start the SuperNode with --node-config "partition-id=<i> num-partitions=<n>" or '
        '--node-config "partition-id=<i> data-dir=\'/path\' modalities=\'<m1>,<m2>\'"')


class NodeConfigError(ValueError):
    """The SuperNode's node config is incomplete or points at data that is not there."""


@dataclass(frozen=True)
class NodeData:
    """One node's identity (partition id, modality kind) and how to load its training tensors."""

    partition_id: int
    kind: str  # "mm", "a" or "b"
    num_examples: int
    data_dir: Path | None = None
    indices: np.ndarray | None = None  # embedded mode: training rows of the partition

    @property
    def modalities(self) -> tuple[str, ...]:
        return modalities_of(self.kind)

    def client_data(self, cfg: RunConfig) -> ClientData:
        """The node's training tensors; only the modalities it holds are ever loaded. The run's per-sample
        corruption (missing modalities, missing labels, label noise) is applied here, by partition id."""
        if self.data_dir is None:
            data = load_data(cfg)
            held = client_data(data, ClientSpec(self.partition_id, self.kind, self.indices))
        else:
            data = _open(self.data_dir)
            held = _prepared_client_data(self.data_dir, self.modalities)
        return corrupt(held, cfg, self.partition_id, data.num_classes)


def _int_key(node_config: Mapping[str, Any], key: str) -> int:
    if key not in node_config:
        raise NodeConfigError(f"node config has no {key!r}; {HINT}")
    value = node_config[key]
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise NodeConfigError(f"node config {key}={value!r}: must be a non-negative integer")
    return int(value)


def kind_of(held: str, names: list[str], where: str) -> str:
    """``"audio,visual"`` -> ``"mm"``; a name or code of one modality -> ``"a"`` or ``"b"``."""
    codes = set()
    for item in (s.strip() for s in str(held).split(",")):
        if item in MODALITIES:
            codes.add(item)
        elif item in names:
            codes.add(MODALITIES[names.index(item)])
        else:
            raise NodeConfigError(f"node config modalities={held!r}: {item!r} is not one of {names} "
                                  f"(the modalities of {where})")
    return kind_of_codes(codes)


def node_data(node_config: Mapping[str, Any], cfg: RunConfig) -> NodeData:
    """Parse and check the node config; embedded mode without ``data-dir``, prepared mode with it."""
    pid = _int_key(node_config, "partition-id")
    if "data-dir" in node_config:
        return _prepared_node(node_config, pid, cfg)
    parts = _int_key(node_config, "num-partitions")
    if parts != cfg.federation.num_clients:
        raise NodeConfigError(f"node config num-partitions={parts} differs from the run's "
                              f"num-clients={cfg.federation.num_clients}")
    if pid >= parts:
        raise NodeConfigError(f"node config partition-id={pid} is outside [0, num-partitions={parts})")
    spec = federation(cfg)[pid]
    return NodeData(pid, spec.kind, len(spec.indices), indices=spec.indices)


def _prepared_node(node_config: Mapping[str, Any], pid: int, cfg: RunConfig) -> NodeData:
    data_dir = Path(str(node_config["data-dir"])).expanduser()
    if not data_dir.is_dir():
        raise NodeConfigError(f"node config data-dir={str(data_dir)!r}: no such directory")
    if "modalities" not in node_config:
        raise NodeConfigError(f"node config has no 'modalities' (the modalities this node holds in {data_dir})")
    data = _open(data_dir)
    try:  # a features directory (`fedcmi features`) needs encoder=features, and the other way round
        check_encoder(getattr(data, "manifest", {}), cfg.model.encoder, f"node config data-dir={str(data_dir)!r}")
    except ConfigError as exc:
        raise NodeConfigError(str(exc)) from None
    kind = kind_of(str(node_config["modalities"]), list(data.modalities), str(data_dir))
    return NodeData(pid, kind, len(data.train), data_dir=data_dir)


def _open(data_dir: Path) -> MultimodalData:
    """The prepared data set (``fedcmi.data.prepared``: checked, cached, memory-mapped, nothing copied)."""
    try:
        return load_prepared(data_dir)
    except ConfigError as exc:
        raise NodeConfigError(f"node config data-dir={str(data_dir)!r}: {exc}") from None


def _prepared_client_data(data_dir: Path, modalities: tuple[str, ...]) -> ClientData:
    """All training rows of the node's directory, only the modalities it holds."""
    train = _open(data_dir).train
    table = train.select_columns([*modalities, "label"]).with_format("numpy")[:]

    def tensor(code: str) -> torch.Tensor | None:
        return torch.from_numpy(np.asarray(table[code], dtype=np.float32)) if code in modalities else None

    return ClientData(tensor("a"), tensor("b"), torch.from_numpy(np.asarray(table["label"], dtype=np.int64)))
