"""Attack table (issue 12): final accuracy of each aggregation rule with 0, 1 or 2 attackers of each kind
among 10 clients, against the clean run.

All scenarios run one after another in one simulated federation (Ray and the client actors start once).
The attackers are a Flower mod around fedcmi's ClientApp (``tests/support/attacks.py``; nothing of it
ships in the product): partitions 4 and 2 (both multimodal; 4 holds the most samples) attack with

* ``noise``: Gaussian noise aimed under the server's relative bound (0.5 x update-norm-multiple x their own
  honest update norm, per parameter group);
* ``count``: num-examples = 1e9;
* ``stats``: forged class statistics (the second modality always right, the first never);
* ``metrics``: a list where the loss belongs.

Each run is an ordinary run directory under ``--out`` (a finished one is reused when the benchmark is run
again). The table (markdown) goes to stdout and to ``--out``/table.md.

    python benchmarks/attacks.py                          # 4 rules x 9 scenarios, 8 rounds each
    python benchmarks/attacks.py --rules mean,median --rounds 3 --kinds noise
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests" / "support"))

ATTACKERS = (4, 2)
BASE = {"num-clients": 10, "clients-per-round": 10, "train-size": 1500, "test-size": 600, "seed": 0}


def scenarios(kinds: list[str]) -> list[tuple[str, str]]:
    """(name, attack spec) pairs: the clean run, then 1 and 2 attackers of each kind."""
    out = [("clean", "")]
    for kind in kinds:
        for n in (1, 2):
            out.append((f"{kind}-{n}", ",".join(f"{kind}:{p}" for p in ATTACKERS[:n])))
    return out


def final(path: Path) -> dict:
    status = json.loads((path / "status.json").read_text())["status"] if (path / "status.json").is_file() else "?"
    rows = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").is_file() else []
    return {"status": status, "acc": rows[-1]["acc_mm"] if rows else float("nan"),
            "rejected": sum(r.get("clients_rejected", 0) or 0 for r in rows), "rounds": len(rows) - 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", default="mean,median,trimmed-mean,clipped-mean")
    parser.add_argument("--kinds", default="noise,count,stats,metrics")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/attacks"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import attacks
    import ray.cloudpickle
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    from fedcmi.config import effective
    from fedcmi.runtime.simulation import run_app
    from server.app import run_server

    ray.cloudpickle.register_pickle_by_value(attacks)  # Ray actors cannot import this test-only module
    rules = [r.strip() for r in args.rules.split(",")]
    kinds = [k.strip() for k in args.kinds.split(",")]
    scen = scenarios(kinds)
    args.out.mkdir(parents=True, exist_ok=True)
    spec_file = args.out.resolve() / "current-attack.txt"
    base = effective({**BASE, "num-server-rounds": args.rounds})
    runs = [(rule, name, spec) for rule in rules for name, spec in scen]

    def run_dir(rule: str, name: str) -> Path:
        return args.out.resolve() / f"{rule}__{name}"

    todo = [r for r in runs if final(run_dir(r[0], r[1]))["status"] != "complete"]
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        for rule, name, spec in todo:
            spec_file.write_text(spec)
            cfg = effective({**BASE, "num-server-rounds": args.rounds, "aggregation": rule,
                             "out-dir": str(run_dir(rule, name))})
            t0 = time.monotonic()
            try:
                run_server(grid, cfg)
            except Exception as exc:  # noqa: BLE001 - an aborted run is a result of the table
                print(f"{rule} {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            print(f"{rule:>13} {name:<10} {final(run_dir(rule, name))} {time.monotonic() - t0:.0f} s",
                  file=sys.stderr, flush=True)
        spec_file.write_text("")

    if todo:
        run_app(server, base, client_app=attacks.attacked_client_app(str(spec_file), base.update_norm_multiple))
    header = "| scenario | " + " | ".join(rules) + " |"
    lines = [header, "|" + "---|" * (len(rules) + 1)]
    clean = {rule: final(run_dir(rule, "clean"))["acc"] for rule in rules}
    for name, _ in scen:
        cells = []
        for rule in rules:
            f = final(run_dir(rule, name))
            cell = f"{f['acc']:.3f}"
            if name != "clean":
                cell += f" ({f['acc'] - clean[rule]:+.3f})"
            if f["rejected"]:
                cell += f", {f['rejected']} rej."
            if f["status"] != "complete":
                cell += f", {f['status']}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (args.out / "table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
