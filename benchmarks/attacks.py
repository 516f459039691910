"""Attack tables: final accuracy of each aggregation rule under attack, against that rule's clean run.

Two presets. All runs of one call go one after another through one simulated federation (Ray and the client
actors start once). The attackers are a Flower mod around fedcmi's ClientApp (``tests/support/attacks.py``;
nothing of it ships in the product; its module doc defines every kind and the spec syntax).

``--preset rules`` (the default; the table of docs/robustness.md): 10 clients, all 10 per round, 8 rounds,
train-size 1500, test-size 600, seed 0; partitions 4 and 2 (both multimodal; 4 holds the most samples) attack
with ``noise`` (Gaussian noise aimed under the relative bound), ``count`` (num-examples 1e9), ``stats`` (forged
class statistics) or ``metrics`` (a list where the loss belongs), one or both of them.

``--preset claims`` (lies about size and identity, scaled updates): 6 clients, all 6 per round, 5 rounds,
synthetic-av with train-size 1200 and test-size 400 (the setting in which one multimodal client holds 69
samples), fedcmi, per seed (default 0 and 1). Roles are chosen per seed from the federation the seed builds:
the *attacker* is the smallest multimodal client (seed 0: partition 3, 69 samples); the *audio pair* the two
largest holders of the first modality ("a"); the *victim* of ``steal`` the largest client other than the
attacker. Scenarios (name: spec):

* ``clean``; ``sizelie``, ``sizelie-zero``, ``sizelie-scale-3`` (F = -3), ``sizelie-stats``: the attacker
  claims 2**53 samples (at discovery and in its replies) with an honest, zero, x(-3) update or forged
  statistics;
* ``scale-5``, ``scale-9``: the attacker's update x(-5), x(-9), no lie;
* ``scale-group-a-50``: the audio pair multiply only their "a" encoder's update by -50;
* ``clean-cpr2``, ``plus1000-cpr2``: clients-per-round 2, the attacker adds 1000 to every floating array;
* ``steal``: the attacker claims the victim's partition id at discovery (and in its replies);
  ``clean-cpr5``, ``steal-cpr5``: the same with clients-per-round 5 (so the run can go on without a node).

Cells: final ``acc_mm`` (of the last round recorded: "at round k" when a run ended early) and its difference to
the same rule's and seed's clean run (``clean-cprK`` for the ``-cprK`` scenarios); rejected replies
(``clients_rejected`` summed over the rounds); the sum of the ``clients_capped`` column where the metrics
rows have it; rounds whose dominant modality differs from the clean run's; the run's status.
The long table also lists ``acc_mm`` per round, the dominant modality per round (first letter of its name) and the
number of rounds each partition was asked to train (from the mod's trace).

Each run is an ordinary run directory under ``--out`` (a finished one, ``complete`` or ``failed``, is reused
when the benchmark is run again; ``--rerun-failed`` repeats the failed ones; an unfinished one is set aside as
``<dir>.replaced`` and run again). The table (markdown) goes to stdout and to ``--out``/table.md.

    python benchmarks/attacks.py                          # rules: 4 rules x 9 scenarios, 8 rounds each
    python benchmarks/attacks.py --rules mean,median --rounds 3 --kinds noise
    python benchmarks/attacks.py --preset claims --out /tmp/attack-runs --rules mean,median --seeds 0,1
    python benchmarks/attacks.py --preset claims --kinds sizelie,steal --seeds 0
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests" / "support"))

RULES = "mean,median,trimmed-mean,clipped-mean"
ATTACKERS = (4, 2)
BASE = {"num-clients": 10, "clients-per-round": 10, "train-size": 1500, "test-size": 600, "seed": 0}
CLAIMS_BASE = {"num-clients": 6, "clients-per-round": 6, "train-size": 1200, "test-size": 400}
# name -> (spec template over the roles {x} attacker, {a1}/{a2} audio pair, {v} victim; config overrides)
CLAIMS: dict[str, tuple[str, dict[str, Any]]] = {
    "clean": ("", {}),
    "sizelie": ("sizelie:{x}", {}),
    "sizelie-zero": ("sizelie-zero:{x}", {}),
    "sizelie-scale-3": ("sizelie-scale=-3:{x}", {}),
    "sizelie-stats": ("sizelie-stats:{x}", {}),
    "scale-group-a-50": ("scale-group=a,-50:{a1}, scale-group=a,-50:{a2}", {}),
    "scale-5": ("scale=-5:{x}", {}),
    "scale-9": ("scale=-9:{x}", {}),
    "clean-cpr2": ("", {"clients-per-round": 2}),
    "plus1000-cpr2": ("plus=1000:{x}", {"clients-per-round": 2}),
    "steal": ("steal={v}:{x}", {}),
    "clean-cpr5": ("", {"clients-per-round": 5}),
    "steal-cpr5": ("steal={v}:{x}", {"clients-per-round": 5}),
}
FINISHED = ("complete", "failed")


@dataclass
class Run:
    rule: str
    seed: int
    name: str  # the scenario
    spec: str  # the attack spec (roles filled in)
    path: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    baseline: str = "clean"  # the scenario whose run of the same rule and seed it is compared with


def scenarios(kinds: list[str]) -> list[tuple[str, str]]:
    """Issue 12: (name, attack spec) pairs: the clean run, then 1 and 2 attackers of each kind."""
    out = [("clean", "")]
    for kind in kinds:
        for n in (1, 2):
            out.append((f"{kind}-{n}", ",".join(f"{kind}:{p}" for p in ATTACKERS[:n])))
    return out


def baseline_of(name: str) -> str:
    return "clean" + name[name.rindex("-cpr"):] if "-cpr" in name else "clean"


def claims_names(kinds: list[str] | None) -> list[str]:
    """The scenarios asked for, in table order, with the clean runs they are compared with."""
    if not kinds:
        return list(CLAIMS)
    unknown = [k for k in kinds if k not in CLAIMS]
    if unknown:
        raise SystemExit(f"--kinds: unknown claims scenario {unknown[0]!r}; one of {', '.join(CLAIMS)}")
    wanted = set(kinds) | {baseline_of(k) for k in kinds}
    return [n for n in CLAIMS if n in wanted]


def roles(seed: int) -> dict[str, Any]:
    """Who attacks in the claims scenarios of this seed (see the module's doc), with the partitions' sizes."""
    from fedcmi.config import effective
    from fedcmi.data.partition import federation

    fed = federation(effective({**CLAIMS_BASE, "seed": seed}))
    size = {c.partition_id: len(c.indices) for c in fed}
    kind = {c.partition_id: c.kind for c in fed}
    x = min((p for p in size if kind[p] == "mm"), key=lambda p: (size[p], p))
    audio = sorted((p for p in size if kind[p] in ("mm", "a")), key=lambda p: (-size[p], p))
    victim = min((p for p in size if p != x), key=lambda p: (-size[p], p))
    return {"x": x, "a1": audio[0], "a2": audio[1], "v": victim, "size": size, "kind": kind,
            "audio": sorted(audio)}


def final(path: Path) -> dict:
    """What a run directory says: status (and error), rows, and the columns the tables use."""
    from fedcmi.runs.layout import METRICS_JSON, STATUS_FILE

    status, error = "?", ""
    if (path / STATUS_FILE).is_file():
        st = json.loads((path / STATUS_FILE).read_text())
        status, error = st["status"], st.get("error", "")
    rows = json.loads((path / METRICS_JSON).read_text()) if (path / METRICS_JSON).is_file() else []
    trained: dict[int, int] | None = None  # partition -> rounds it was sent a TRAIN message (from the mod's trace)
    if (path / "attack-trace.txt").is_file():
        trained = {}
        for line in set((path / "attack-trace.txt").read_text().splitlines()):
            if line.startswith("train "):
                trained[int(line.split()[4])] = trained.get(int(line.split()[4]), 0) + 1
    return {"status": status, "error": error, "rows": rows, "acc": rows[-1]["acc_mm"] if rows else float("nan"),
            "rejected": sum(r.get("clients_rejected", 0) or 0 for r in rows),
            "capped": sum(r.get("clients_capped", 0) or 0 for r in rows) if any("clients_capped" in r for r in rows)
            else None,
            "rounds": len(rows) - 1, "trained": trained}


def run_all(runs: list[Run], base: dict[str, Any], rounds: int, out: Path, rerun_failed: bool) -> None:
    """Run every run not finished yet, one after another, in one simulation."""
    import attacks
    import ray.cloudpickle
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    from fedcmi.config import effective
    from fedcmi.runtime.simulation import run_app
    from server.app import run_server

    done = ("complete",) if rerun_failed else FINISHED
    todo = [r for r in runs if final(r.path)["status"] not in done]
    if not todo:
        return
    ray.cloudpickle.register_pickle_by_value(attacks)  # Ray actors cannot import this test-only module
    out.mkdir(parents=True, exist_ok=True)
    spec_file, trace_file = out.resolve() / "current-attack.txt", out.resolve() / "current-trace.txt"
    first = effective({**base, "seed": todo[0].seed, "num-server-rounds": rounds})
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        for i, run in enumerate(todo):
            if run.path.exists():  # unfinished, or failed and asked again: set aside, a run directory is written once
                old = run.path.with_name(run.path.name + ".replaced")
                shutil.rmtree(old, ignore_errors=True)
                run.path.rename(old)
            spec_file.write_text(run.spec)
            trace_file.write_text("")
            cfg = effective({**base, "seed": run.seed, "num-server-rounds": rounds, "aggregation": run.rule,
                             **run.overrides, "out-dir": str(run.path)})
            t0 = time.monotonic()
            try:
                run_server(grid, cfg)
            except Exception as exc:  # noqa: BLE001 - an aborted run is a result of the table
                print(f"{run.rule} {run.name} seed {run.seed}: {type(exc).__name__}: {exc}", file=sys.stderr)
            wall = time.monotonic() - t0
            if run.path.is_dir():
                shutil.copyfile(trace_file, run.path / "attack-trace.txt")
                (run.path / "attack.json").write_text(json.dumps({"spec": run.spec, "wall_s": round(wall, 1)}) + "\n")
            f = final(run.path)
            print(f"[{i + 1}/{len(todo)}] {run.rule:>13} seed {run.seed} {run.name:<17} {f['status']:<8} "
                  f"acc_mm {f['acc']:.3f} rejected {f['rejected']} {wall:.0f} s", file=sys.stderr, flush=True)
        spec_file.write_text("")

    run_app(server, first, client_app=attacks.attacked_client_app(
        str(spec_file), first.reliability.update_norm_multiple, str(trace_file)))


# --- rules -----------------------------------------------------------------------------------------------------
def rules_table(args: argparse.Namespace, rules: list[str]) -> str:
    kinds = [k.strip() for k in (args.kinds or "noise,count,stats,metrics").split(",")]
    scen = scenarios(kinds)
    out = args.out.resolve()
    runs = [Run(rule, 0, name, spec, out / f"{rule}__{name}") for rule in rules for name, spec in scen]
    run_all(runs, BASE, args.rounds or 8, out, args.rerun_failed)
    header = "| scenario | " + " | ".join(rules) + " |"
    lines = [header, "|" + "---|" * (len(rules) + 1)]
    clean = {rule: final(out / f"{rule}__clean")["acc"] for rule in rules}
    for name, _ in scen:
        cells = []
        for rule in rules:
            f = final(out / f"{rule}__{name}")
            cell = f"{f['acc']:.3f}"
            if name != "clean":
                cell += f" ({f['acc'] - clean[rule]:+.3f})"
            if f["rejected"]:
                cell += f", {f['rejected']} rej."
            if f["status"] != "complete":
                cell += f", {f['status']}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- claims ----------------------------------------------------------------------------------------------------
def _dominant_flips(rows: list[dict], clean: list[dict]) -> tuple[int, int]:
    """(rounds whose dominant modality differs from the clean run's, rounds compared)."""
    ref = {r["round"]: r.get("dominant") for r in clean if r["round"] > 0}
    pairs = [(r.get("dominant"), ref[r["round"]]) for r in rows if r["round"] > 0 and r["round"] in ref]
    return sum(a != b for a, b in pairs), len(pairs)


def claims_table(args: argparse.Namespace, rules: list[str]) -> str:
    seeds = [int(s) for s in (args.seeds or "0,1").split(",")]
    rounds = args.rounds or 5
    names = claims_names([k.strip() for k in args.kinds.split(",")] if args.kinds else None)
    who = {seed: roles(seed) for seed in seeds}
    out = args.out.resolve()
    runs = [Run(rule, seed, name, CLAIMS[name][0].format(**who[seed]), out / f"seed{seed}" / f"{rule}__{name}",
                dict(CLAIMS[name][1]), baseline_of(name))
            for seed in seeds for rule in rules for name in names]
    run_all(runs, CLAIMS_BASE, rounds, out, args.rerun_failed)

    res = {(r.seed, r.rule, r.name): final(r.path) for r in runs}
    lines = [f"Setting: synthetic-av, fedcmi, 6 clients (train-size 1200, test-size 400), {rounds} rounds, "
             "clients-per-round 6 unless the scenario says cprK.", ""]
    for seed in seeds:
        w = who[seed]
        lines.append(f"* seed {seed}: attacker partition {w['x']} ({w['kind'][w['x']]}, {w['size'][w['x']]} samples); "
                     f"audio pair {w['a1']}, {w['a2']} (of the audio holders {w['audio']}); steal victim {w['v']} "
                     f"({w['kind'][w['v']]}, {w['size'][w['v']]} samples)")
    lines += ["", "Final acc_mm per seed (difference to the rule's clean run of that seed); `rej` rejected replies "
              "summed over the rounds (per seed).", ""]
    lines += ["| scenario | " + " | ".join(rules) + " |", "|" + "---|" * (len(rules) + 1)]
    for name in names:
        cells = []
        for rule in rules:
            parts = []
            for seed in seeds:
                f, c = res[(seed, rule, name)], res[(seed, rule, baseline_of(name))]
                cell = f"{f['acc']:.3f}" + (f" ({f['acc'] - c['acc']:+.3f})" if name != baseline_of(name) else "")
                if f["rounds"] < rounds:
                    cell += f" at round {max(f['rounds'], 0)}"
                if f["rejected"]:
                    cell += f" {f['rejected']} rej"
                if f["status"] != "complete":
                    cell += f" **{f['status']}**"
                parts.append(cell)
            cells.append(" / ".join(parts))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Every run: `dom≠clean` rounds whose dominant modality differs from the clean run's; capped: "
              "the sum of clients_capped (`-` where the metrics have no such column); `trained rounds`: "
              "rounds in which each partition (0..5, by its real id) was sent a TRAIN message, from the mod's trace.",
              "",
              "| scenario | spec | rule | seed | acc_mm | Δ clean | rejected | capped | dom≠clean | "
              "acc_mm by round | dominant by round | trained rounds per partition | status |",
              "|" + "---|" * 13]
    for run in runs:
        f, c = res[(run.seed, run.rule, run.name)], res[(run.seed, run.rule, run.baseline)]
        flips, n = _dominant_flips(f["rows"], c["rows"])
        delta = f"{f['acc'] - c['acc']:+.3f}" if run.name != run.baseline else ""
        by_round = " ".join(f"{r['acc_mm']:.2f}" for r in f["rows"][1:]) or "-"
        dom = "".join((r.get("dominant") or "-")[0] for r in f["rows"][1:]) or "-"
        idle = "-" if f["trained"] is None else " ".join(str(f["trained"].get(p, 0)) for p in range(6))
        status = f["status"] + (f": {f['error'][:120]}" if f["error"] else "")
        acc = f"{f['acc']:.3f}" + (f" (round {max(f['rounds'], 0)})" if f["rounds"] < rounds else "")
        lines.append(f"| {run.name} | `{run.spec or '-'}` | {run.rule} | {run.seed} | {acc} | {delta} | "
                     f"{f['rejected']} | {'-' if f['capped'] is None else f['capped']} | "
                     f"{flips}/{n} | {by_round} | {dom} | {idle} | "
                     f"{status.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("rules", "claims"), default="rules")
    parser.add_argument("--rules", default=RULES)
    parser.add_argument("--kinds", default=None, help="rules: attack kinds (default noise,count,stats,metrics); "
                        "claims: scenario names (default all; their clean runs are added)")
    parser.add_argument("--seeds", default=None, help="claims only (default 0,1)")
    parser.add_argument("--rounds", type=int, default=None, help="default 8 (rules), 5 (claims)")
    parser.add_argument("--out", type=Path, default=None, help="default runs/attacks (rules), "
                        "runs/attacks-claims (claims)")
    parser.add_argument("--rerun-failed", action="store_true", help="run failed runs again (default: reuse them)")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.preset == "rules" and args.seeds not in (None, "0"):
        parser.error("--seeds: the rules table is seed 0 only")
    args.out = args.out or Path("runs/attacks" if args.preset == "rules" else "runs/attacks-claims")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    rules = [r.strip() for r in args.rules.split(",")]
    table = rules_table(args, rules) if args.preset == "rules" else claims_table(args, rules)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
