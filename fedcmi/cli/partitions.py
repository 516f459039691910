"""``fedcmi partitions``: the federation a configuration builds, client by client, without training."""

from __future__ import annotations

import argparse
from typing import Any

from fedcmi.cli.config_args import add_config_arguments, resolve_config
from fedcmi.config import RunConfig

PARTITIONS_HELP = """\
Print the federation a configuration builds: per client its modality kind, sample count and classes (with
partitioner=natural also its group, e.g. the speaker, and each group's size and classes).
Takes the same --config and key=value overrides as `simulate`; trains nothing.
"""


def add_partitions_parser(sub: Any) -> None:
    p = sub.add_parser("partitions", help="show the clients a configuration builds",
                       description=PARTITIONS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p)
    p.set_defaults(run=cmd_partitions)


def cmd_partitions(args: argparse.Namespace) -> int:
    return show_partitions(resolve_config(args))


def show_partitions(cfg: RunConfig) -> int:
    """One table row per client; per-sample corruption columns and natural groups only where the run has them."""
    import numpy as np
    from rich.table import Table

    from fedcmi.cli.display import console
    from fedcmi.data import load_data
    from fedcmi.data.corruption import active, plan
    from fedcmi.data.partition import federation, natural_group_kind
    from fedcmi.modalities import MM, A, B

    data = load_data(cfg)
    _, _, y = data.arrays("train")
    names = {MM: "+".join(data.modalities), A: data.modalities[0], B: data.modalities[1]}
    specs = federation(cfg)
    natural = cfg.federation.partitioner == "natural"
    kind = natural_group_kind(cfg.data.dataset) if natural else None
    groups = sorted({s.group for s in specs})
    fed = cfg.federation
    setting = {"dirichlet": f" alpha={fed.dirichlet_alpha}",
               "natural": f" ({len(groups)} {kind}s x {fed.natural_splits})"}.get(fed.partitioner, "")
    table = Table(title=f"{cfg.data.dataset}: {fed.num_clients} clients, {fed.partitioner}{setting}")
    corrupted = active(cfg)  # per-sample corruption columns only when the run has some
    extra = (f"no {data.modalities[0]}", f"no {data.modalities[1]}", "unlabeled", "noisy") if corrupted else ()
    for col in ("client", *((kind,) if natural else ()), "modalities", "samples", *extra, "classes", "label counts"):
        table.add_column(col, justify="left" if col in ("modalities", "label counts", kind) else "right")
    for spec in specs:
        counts = [int(c) for c in np.bincount(y[spec.indices], minlength=data.num_classes)]
        lost = [str(v) for v in plan(len(spec.indices), spec.kind, cfg, spec.partition_id).counts().values()]
        table.add_row(str(spec.partition_id), *((spec.group,) if natural else ()), names[spec.kind],
                      str(len(spec.indices)), *(lost if corrupted else []), str(sum(c > 0 for c in counts)),
                      " ".join(f"{c:>3}" for c in counts))
    console().print(table)
    if natural:  # each group whole: its size and classes, whatever natural-splits cut it into
        lines = []
        for group in groups:
            rows = np.concatenate([s.indices for s in specs if s.group == group])
            held = np.bincount(y[rows], minlength=data.num_classes)
            lines.append(f"  {group}: {len(rows)} samples, {int((held > 0).sum())} classes")
        console().print(f"{len(groups)} {kind}s (natural groups):\n" + "\n".join(lines), markup=False,
                        highlight=False)
    if corrupted:
        console().print("label counts are the true labels; no <m>: samples of a multimodal client without that "
                        "modality; unlabeled and noisy: training samples (docs/missing-and-noise.md)")
    return 0
