"""Label-skew partitions (flwr-datasets) and the modality each client holds (the FedCMI paper's setting:
Dirichlet label skew, a share of clients with one modality); or natural federations: one client per natural
group of a prepared data set (the FSDD speaker, the CREMA-D actor, the CrisisMMD event), each group optionally
split IID into ``natural-splits`` clients. Modality kinds are assigned on top either way.

Deterministic by seed: the same config gives the same partition and the same modality kinds.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedcmi import npy
from fedcmi.config import ConfigError, RunConfig
from fedcmi.data.base import ClientData, MultimodalData
from fedcmi.data.registry import load_data
from fedcmi.modalities import MM, A, B, modalities_of


@dataclass(frozen=True)
class ClientSpec:
    """One client: its partition id, modality kind (``mm``, ``a`` or ``b``), training-row indices and, in a
    natural federation, its group (e.g. the speaker)."""

    partition_id: int
    kind: str
    indices: np.ndarray
    group: str = ""

    @property
    def modalities(self) -> tuple[str, ...]:
        return modalities_of(self.kind)


def assign_modalities(num_clients: int, multimodal_ratio: float, unimodal_split: float, seed: int) -> list[str]:
    """Kind per client: ``int(ratio * N)`` multimodal; of the rest ``int(split * rest)`` hold only ``a``.

    Which clients get which kind is a seeded permutation, independent of the label partition.
    """
    n_mm = int(multimodal_ratio * num_clients + 1e-9)
    rest = num_clients - n_mm
    n_a = int(unimodal_split * rest + 1e-9)
    kinds = [MM] * n_mm + [A] * n_a + [B] * (rest - n_a)
    order = np.random.default_rng(seed + 7_919).permutation(num_clients)
    out = [""] * num_clients
    for slot, client in enumerate(order):
        out[client] = kinds[slot]
    return out


def partition_indices(data: MultimodalData, cfg: RunConfig) -> list[np.ndarray]:
    """Training-row indices per client, by flwr-datasets' Dirichlet or IID partitioner.

    IID: the rows are shuffled by the run seed first. flwr-datasets' IidPartitioner cuts contiguous shards
    (``FederatedDataset`` shuffles before it, a bare partitioner does not), and a prepared split is stored sorted
    (CREMA-D by clip name, so by actor): unshuffled, every seed would get the same shards, each a block of actors.
    """
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner  # here: ~1 s of imports

    fed = cfg.federation
    table = data.train.select_columns(["idx", "label"])
    if fed.partitioner == "iid":
        part = IidPartitioner(num_partitions=fed.num_clients)
        table = table.shuffle(seed=fed.seed)
    else:
        part = DirichletPartitioner(num_partitions=fed.num_clients, partition_by="label",
                                    alpha=fed.dirichlet_alpha, min_partition_size=fed.min_partition_size,
                                    self_balancing=fed.partitioner == "dirichlet-balanced", shuffle=True,
                                    seed=fed.seed)
    part.dataset = table
    try:
        with warnings.catch_warnings():  # its retry warnings; failure becomes our own one-line error
            warnings.simplefilter("ignore", UserWarning)
            return [np.sort(np.asarray(part.load_partition(i)["idx"], dtype=np.int64)) if fed.partitioner == "iid"
                    else np.asarray(part.load_partition(i)["idx"], dtype=np.int64) for i in range(fed.num_clients)]
    except ValueError as exc:
        raise ConfigError(
            f"dirichlet-alpha={fed.dirichlet_alpha}, min-partition-size={fed.min_partition_size}, "
            f"num-clients={fed.num_clients}: the partitioner could not give every client "
            f"{fed.min_partition_size} of {len(table)} samples ({exc}); lower min-partition-size or "
            "num-clients") from None


def natural_group_kind(name: str) -> str | None:
    """What the natural groups of data set ``name`` are (``speaker``, ``actor``, ``event``), or None: its
    preparer module's ``NATURAL_GROUP``."""
    from fedcmi.data.sources import PREPARED_SOURCES

    if name not in PREPARED_SOURCES:
        return None
    return getattr(importlib.import_module(PREPARED_SOURCES[name]), "NATURAL_GROUP", None)


def natural_groups(data: MultimodalData) -> tuple[str, np.ndarray]:
    """(what a group is, the group of every training row). Read from the data set's group column, or for a
    directory without it (prepared before fedcmi kept it, or a ``fedcmi features`` directory) from the sample
    keys where the preparer can tell the group from a key (FSDD, CREMA-D)."""
    from fedcmi.data.sources import PREPARED_SOURCES

    kind = natural_group_kind(data.name)
    if kind is None:
        known = ", ".join(f"{n}: {k}s" for n in PREPARED_SOURCES if (k := natural_group_kind(n)))
        raise ConfigError(f"partitioner=natural: dataset={data.name!r} has no natural groups ({known})")
    columns = data.train.column_names
    if kind in columns:
        return kind, np.asarray(data.train[kind], dtype=str)
    from_key = getattr(importlib.import_module(PREPARED_SOURCES[data.name]), "group_of_key", None)
    if from_key is not None and "key" in columns:
        return kind, np.asarray([from_key(str(k)) for k in data.train["key"]], dtype=str)
    where = getattr(data, "path", data.name)
    raise ConfigError(f"partitioner=natural: {where} has no {kind!r} column (prepared before fedcmi kept the "
                      f"{kind}); prepare it again with `fedcmi prepare {data.name} --root RAW --out NEW_DIR` (and "
                      "run `fedcmi features` on that, for a features directory)")


def natural_partition(data: MultimodalData, cfg: RunConfig) -> tuple[list[str], list[np.ndarray]]:
    """(group, training-row indices) per client: the groups in sorted order, each split IID (seeded) into
    ``natural-splits`` clients; client ``g * natural-splits + j`` holds part ``j`` of group ``g``."""
    kind, groups = natural_groups(data)
    names = sorted(set(groups.tolist()))
    fed = cfg.federation
    k = fed.natural_splits
    if fed.num_clients != len(names) * k:
        raise ConfigError(f"partitioner=natural: {data.name} has {len(names)} {kind}s x natural-splits={k} = "
                          f"{len(names) * k} clients; set num-clients={len(names) * k} (not {fed.num_clients})")
    idx = np.asarray(data.train["idx"], dtype=np.int64)
    rng = np.random.default_rng([fed.seed, 6_101])
    owners: list[str] = []
    parts: list[np.ndarray] = []
    for name in names:
        rows = rng.permutation(idx[groups == name])
        if len(rows) < k:
            raise ConfigError(f"natural-splits={k}: {kind} {name!r} has only {len(rows)} training sample(s)")
        for part in np.array_split(rows, k):
            owners.append(name)
            parts.append(np.sort(part))
    return owners, parts


def build_federation(data: MultimodalData, cfg: RunConfig) -> list[ClientSpec]:
    fed = cfg.federation
    kinds = assign_modalities(fed.num_clients, fed.multimodal_ratio, fed.unimodal_split, fed.seed)
    if fed.partitioner == "natural":
        groups, parts = natural_partition(data, cfg)
    else:
        groups, parts = [""] * fed.num_clients, partition_indices(data, cfg)
    return [ClientSpec(i, kinds[i], parts[i], groups[i]) for i in range(fed.num_clients)]


def _federation_key(cfg: RunConfig) -> tuple:
    data, fed = cfg.data, cfg.federation
    return (data.dataset, data.num_classes, data.train_size, data.test_size, data.signal_a, data.signal_b, data.noise,
            fed.partitioner, fed.num_clients, fed.dirichlet_alpha, fed.min_partition_size,
            fed.multimodal_ratio, fed.unimodal_split, fed.seed, data.data_root, fed.natural_splits)


_FEDERATIONS: dict[tuple, list[ClientSpec]] = {}


def federation(cfg: RunConfig) -> list[ClientSpec]:
    """The federation of a config, built once per process (long-lived Ray actors reuse it)."""
    key = _federation_key(cfg)
    if key not in _FEDERATIONS:
        if len(_FEDERATIONS) >= 4:
            _FEDERATIONS.pop(next(iter(_FEDERATIONS)))
        _FEDERATIONS[key] = stored_federation(load_data(cfg), cfg)
    return _FEDERATIONS[key]


def _stored_path(data: MultimodalData, cfg: RunConfig) -> Path | None:
    """Where the federation of ``cfg`` is kept in the data set's cache folder: keyed by the config's
    federation keys, this file's source and flwr-datasets' version, so a changed partitioner is never served
    stale indices."""
    if data.cache_dir is None:
        return None
    from importlib.metadata import version

    text = json.dumps([list(map(str, _federation_key(cfg))), hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
                       version("flwr-datasets")])
    return data.cache_dir / "federations" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.npz"


def stored_federation(data: MultimodalData, cfg: RunConfig) -> list[ClientSpec]:
    """The federation from the machine's data cache, built and stored there first if missing. Why: a client
    actor then needs neither the Arrow table nor flwr-datasets (their imports' seconds and memory in every
    process: docs/scaling.md)."""
    path = _stored_path(data, cfg)
    if path is not None and path.is_file():
        f = npy.load_npz(path)
        kinds, sizes, flat = [str(k) for k in f["kinds"]], f["sizes"], f["indices"]
        groups = [str(g) for g in f["groups"]]
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        return [ClientSpec(i, kinds[i], flat[bounds[i]:bounds[i + 1]], groups[i]) for i in range(len(kinds))]
    specs = build_federation(data, cfg)
    if path is not None:
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, kinds=np.array([s.kind for s in specs]), sizes=np.array([len(s.indices) for s in specs]),
                     indices=np.concatenate([s.indices for s in specs]).astype(np.int64),
                     groups=np.array([s.group for s in specs]))
            os.replace(tmp, path)  # readers never see a half-written file
        except OSError as exc:
            logging.getLogger(__name__).warning("federation cache %s not writable (%s)", path.parent, exc)
            tmp.unlink(missing_ok=True)
    return specs


def client_data(data: MultimodalData, spec: ClientSpec) -> ClientData:
    """The tensors of one client. A unimodal client never receives the other modality's tensors."""
    xa, xb, y = data.arrays("train")
    idx = spec.indices
    a = torch.from_numpy(xa[idx]) if A in spec.modalities else None
    b = torch.from_numpy(xb[idx]) if B in spec.modalities else None
    return ClientData(a, b, torch.from_numpy(y[idx]))
