"""What Flower (and fedcmi's run machinery) costs on top of the training itself, in one process.

(a) ``fedcmi.runtime.simulation.simulate`` of a config (default: the ``make run`` setting): start-up = seconds from
    this script's start to the end of round 1 (imports, Ray, client actors, data, the discovery query, one
    round); steady state = mean wall time of rounds 2..N (each round's ``wall_s``: sampling, messages,
    client training in the Ray actors, screening, aggregation, central evaluation, results and checkpoint
    files).
(b) the same work in a plain sequential PyTorch loop, no Flower, no Ray, no files: the same sampled
    partitions (the strategy's seeded ``random.Random(seed).sample`` over sorted partition ids), the same
    per-client data and model, the same client step (``fedcmi.federated.client_step``, which the ClientApp
    calls), then the same server work: the run's aggregation rule, the dominance guidance, central evaluation.

Both (a) and (b) include aggregation and central evaluation; (b)'s training-only part is printed too.
``overhead_ratio`` = steady-state s/round of (a) / s/round of (b). (b) trains with ``--plain-threads`` torch
threads (default: all CPUs, what a plain loop on this machine would use); (a) runs ``client-num-cpus``
threads per actor and as many actors in parallel as fit.

    python benchmarks/overhead.py                      # make run's setting (40 rounds)
    python benchmarks/overhead.py client-num-cpus=2    # one actor, sequential, like (b)
    python benchmarks/overhead.py num-server-rounds=10 --plain-threads 1
    python benchmarks/overhead.py num-server-rounds=15 --no-plain   # only (a), pipelined and sequential

(a) runs twice, the second time with ``pipelined-eval`` flipped (``--no-compare-eval`` skips it): the
steady-state s/round of pipelined and sequential central evaluation from the same invocation, their ratio
(``pipelined_ratio``) and whether the two runs' metrics are identical. ``--baseline key=value`` (repeatable)
sets keys of the sequential run only, to compare against an older default in the same invocation:

    python benchmarks/overhead.py num-server-rounds=20 --no-plain --baseline eval-batch-size=512
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # before the heavy imports: start-up counts them

import argparse  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from procmem import GIB, PeakMemory  # noqa: E402

from fedcmi.config import RunConfig, parse_overrides, resolve  # noqa: E402
from fedcmi.data import load_data  # noqa: E402
from fedcmi.data.partition import client_data, federation  # noqa: E402
from fedcmi.federated.aggregation import ClientUpdate, aggregate, rule  # noqa: E402
from fedcmi.federated.client_step import client_step  # noqa: E402
from fedcmi.federated.dominance import ClassStats, Guidance, dominance  # noqa: E402
from fedcmi.federated.evaluation import evaluate  # noqa: E402
from fedcmi.methods.registry import method_spec  # noqa: E402
from fedcmi.models import ModelSpec, group_of, model_for  # noqa: E402
from fedcmi.runtime.devices import device_of  # noqa: E402

# --- (a) the Flower simulation, with per-round timers on the server's steps ----------------------------


class StepTimers:
    """Exclusive seconds per (step, round), by wrapping the server's steps (benchmark-only monkeypatching).

    A step called inside another counts for itself, not for its caller; inside the discovery query
    everything counts as discovery.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        self.round = 0
        self._local = threading.local()  # the pipelined evaluation thread has its own stack

    @property
    def stack(self) -> list[str]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def wrap(self, owner: Any, name: str, step: str, sets_round: bool = False) -> None:
        original = getattr(owner, name)
        timers = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            if sets_round:
                timers.round = args[1]  # configure_train(self, server_round, ...)
            label = "discovery" if "discovery" in timers.stack else step
            timers.stack.append(label)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                took = time.perf_counter() - start
                timers.stack.pop()
                timers.seconds[label][timers.round] += took
                if timers.stack:
                    timers.seconds[timers.stack[-1]][timers.round] -= took

        setattr(owner, name, timed)


_TIMERS: list[StepTimers] = []


def instrument() -> StepTimers:
    """Wrap the server's steps once per process; later calls get the same timers, cleared."""
    if _TIMERS:
        _TIMERS[0].seconds.clear()
        return _TIMERS[0]
    import server.app
    from fedcmi.runs.run_dir import RunDirectory
    from fedcmi.runtime.flower_dispatch import install
    from server.strategy import FedCMIStrategy

    install()  # what run_app does; before wrapping, so the grid class it installs is the one timed
    from flwr.superlink.grid import InMemoryGrid

    timers = StepTimers()
    timers.wrap(FedCMIStrategy, "configure_train", "sample+configure", sets_round=True)
    timers.wrap(FedCMIStrategy, "discover", "discovery")
    timers.wrap(InMemoryGrid, "send_and_receive", "messages+client training")
    timers.wrap(FedCMIStrategy, "aggregate_train", "screen+aggregate")
    timers.wrap(server.app, "evaluate", "central evaluation")
    timers.wrap(RunDirectory, "add_round", "results files")
    timers.wrap(server.app, "save_checkpoint", "checkpoint")
    _TIMERS.append(timers)
    return timers


def run_flower(cfg: RunConfig, t0: float = T0) -> dict[str, Any]:
    """One simulation of ``cfg``; start-up counts from ``t0`` (default: this script's start, imports included)."""
    from fedcmi.runtime.simulation import simulate

    timers = instrument()
    rows: list[dict[str, Any]] = []
    ends: dict[int, float] = {}

    def reporter(row: dict[str, Any]) -> None:
        ends[row["round"]] = time.monotonic()
        rows.append(row)

    simulate(cfg, reporter)
    steady = [r["wall_s"] for r in rows if r["round"] >= 2]
    return {"rows": rows, "startup": ends[1] - t0, "round0": ends[0] - t0, "round1": rows[1]["wall_s"],
            "steady": steady, "timers": timers, "seconds": {k: dict(v) for k, v in timers.seconds.items()}}


# --- (b) the same work in a plain loop ------------------------------------------------------------------


def run_plain(cfg: RunConfig, threads: int) -> dict[str, Any]:
    """Rounds 1..N of ``cfg`` without Flower: returns per-round seconds (total, training) and accuracies."""
    data = load_data(cfg)
    specs = federation(cfg)
    p = method_spec(cfg.strategy)
    spec = ModelSpec.of(data)
    torch.manual_seed(cfg.seed)  # the server model's initial weights, as server.app.run_server builds them
    server_model = model_for(cfg, spec, p.decomposed)
    client_model = model_for(cfg, spec, p.decomposed)
    device = device_of(cfg.device)  # as the clients choose theirs; the server evaluates on the CPU, as server.app does
    client_model.to(device)
    current = {k: v.detach().clone().numpy() for k, v in server_model.state_dict().items()}
    xa, xb, y = (torch.from_numpy(t) for t in data.arrays("test"))
    eligible = sorted(s.partition_id for s in specs if p.held(s.kind))
    k = min(cfg.clients_per_round, len(eligible))
    rng = random.Random(cfg.seed)
    guidance = None
    total, train, accs = [], [], []
    server_threads = torch.get_num_threads()
    for server_round in range(1, cfg.num_server_rounds + 1):
        start = time.perf_counter()
        torch.set_num_threads(threads)
        updates, all_stats = [], []
        for pid in sorted(rng.sample(eligible, k)):
            client = specs[pid]
            state = {n: torch.from_numpy(np.array(v)) for n, v in current.items()}
            sent = Guidance(infiltrate=server_round > cfg.warmup_rounds,
                            dominant=guidance.dominant if guidance else None,
                            tau=np.asarray(guidance.tau, dtype=np.float64) if guidance else None)
            result = client_step(client_model, state, sent, client_data(data, client), cfg,
                                 num_classes=data.num_classes, server_round=server_round, partition_id=pid)
            all_stats.append(result.stats)
            trained = {n: v.clone().numpy() for n, v in result.arrays.items()}
            updates.append(ClientUpdate(trained, float(result.num_examples), p.held(client.kind)))
        train.append(time.perf_counter() - start)
        torch.set_num_threads(server_threads)
        current, _ = aggregate(current, updates, group_of, rule(cfg.aggregation))
        stats = sum(all_stats, ClassStats.zeros(data.num_classes))
        if stats.counts.sum() > 0:
            guidance = dominance(stats, cfg.gamma) or guidance
        server_model.load_state_dict({n: torch.from_numpy(np.array(v)) for n, v in current.items()})
        res = evaluate(server_model, xa, xb, y, data.num_classes, data.modalities, cfg.eval_batch_size,
                       use_modalities=p.modalities, infiltration_path=p.infiltration_path)
        total.append(time.perf_counter() - start)
        accs.append(res["acc_mm"])
    return {"total": total, "train": train, "acc_mm": accs}


# --- report ---------------------------------------------------------------------------------------------


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def report(cfg: RunConfig, a: dict[str, Any], b: dict[str, Any], mem_a: PeakMemory, mem_b: PeakMemory,
           threads: int, say: Callable[[str], None] = print) -> float:
    n = cfg.clients_per_round
    a_round, b_round = mean(a["steady"]), mean(b["total"][1:])
    b_train = mean(b["train"][1:])
    load = os.getloadavg()
    say(f"config: {cfg.num_clients} clients, {n} per round, {cfg.num_server_rounds} rounds, {cfg.local_epochs} "
        f"local epochs, strategy {cfg.strategy}, client-num-cpus {cfg.client_num_cpus}; plain loop: "
        f"{threads} torch thread(s); {os.cpu_count()} CPUs, load average now {load[0]:.2f} {load[1]:.2f}")
    say(f"(a) flower: start-up {a['startup']:.1f} s to the end of round 1 (round 0 = initial evaluation done at "
        f"{a['round0']:.1f} s; round 1 took {a['round1']:.1f} s, discovery query included)")
    say(f"(a) flower: steady state {a_round:.3f} s/round (median {statistics.median(a['steady']):.3f}, rounds "
        f"2..{cfg.num_server_rounds}), {n / a_round:.1f} client updates/s; {mem_a.line()}")
    steps = a["seconds"]
    parts = []
    for step in ("sample+configure", "messages+client training", "screen+aggregate", "central evaluation",
                 "results files", "checkpoint"):
        parts.append(f"{step} {mean([steps[step].get(r, 0.0) for r in range(2, cfg.num_server_rounds + 1)]):.3f}")
    accounted = sum(float(p.rsplit(" ", 1)[1]) for p in parts)
    say(f"(a) steady round, s: {', '.join(parts)}, other {a_round - accounted:.3f}")
    say(f"(a) discovery query (round 1, once per run): {sum(steps['discovery'].values()):.2f} s")
    say(f"(b) plain loop: {b_round:.3f} s/round (training {b_train:.3f}, aggregation + guidance + evaluation "
        f"{b_round - b_train:.3f}; rounds 2..{cfg.num_server_rounds}), {n / b_round:.1f} client updates/s; "
        f"{mem_b.line()}")
    diff = max(abs(x - y["acc_mm"]) for x, y in zip(b["acc_mm"], a["rows"][1:], strict=True))
    say(f"same work check: final acc_mm (a) {a['rows'][-1]['acc_mm']:.4f}, (b) {b['acc_mm'][-1]:.4f}; largest "
        f"per-round difference {diff:.4f} (0 = identical; thread counts can change float sums)")
    say(f"training_only_ratio={a_round / b_train:.3f}  (a's whole round / b's training)")
    ratio = a_round / b_round
    say(f"overhead_ratio={ratio:.3f}")
    return ratio


def compare_eval(cfg: RunConfig, a: dict[str, Any], o: dict[str, Any], mem_o: PeakMemory,
                 say: Callable[[str], None] = print) -> float:
    """Sequential against pipelined central evaluation, from two simulations of the same config: s/round and
    whether the metrics are the same (every column but wall_s)."""
    seq, pipe = (o, a) if cfg.pipelined_eval else (a, o)
    s_seq, s_pipe = mean(seq["steady"]), mean(pipe["steady"])
    same = all({k: v for k, v in x.items() if k != "wall_s"} == {k: v for k, v in y.items() if k != "wall_s"}
               for x, y in zip(seq["rows"], pipe["rows"], strict=True))
    say(f"(a') pipelined-eval={str(not cfg.pipelined_eval).lower()} (second run, imports warm): start-up "
        f"{o['startup']:.1f} s; steady state {mean(o['steady']):.3f} s/round; {mem_o.line()}")
    say(f"evaluation: sequential {s_seq:.3f} s/round, pipelined {s_pipe:.3f} s/round; metrics identical: {same}")
    ratio = s_pipe / s_seq
    say(f"pipelined_ratio={ratio:.3f}  (pipelined / sequential steady-state s/round; goal <= 0.85)")
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="key=value run-config overrides (default: make run)")
    parser.add_argument("--no-compare-eval", dest="compare_eval", action="store_false",
                        help="skip the second simulation with pipelined-eval flipped")
    parser.add_argument("--no-plain", dest="plain", action="store_false",
                        help="skip (b), the plain loop: only the Flower figures")
    parser.add_argument("--plain-threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of the plain loop's client training (default: all CPUs)")
    parser.add_argument("--baseline", action="append", default=[], metavar="key=value",
                        help="a key of the sequential run only (e.g. an older default); repeatable")
    args = parser.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="fedcmi-overhead-") as tmp:
        overrides = parse_overrides(args.overrides)
        cfg = resolve(overrides=overrides).replace(out_dir=str(Path(tmp) / "run"))
        other = cfg.replace(pipelined_eval=not cfg.pipelined_eval, out_dir=str(Path(tmp) / "other"))
        if args.baseline:
            if not (cfg.pipelined_eval and args.compare_eval):
                parser.error("--baseline sets keys of the second, sequential run: keep pipelined-eval on and the "
                             "comparison (no --no-compare-eval)")
            other = resolve(overrides={**overrides, **parse_overrides(args.baseline)}).replace(
                pipelined_eval=False, out_dir=other.out_dir)
            print(f"the sequential run also sets {' '.join(args.baseline)}")
        mem_a = PeakMemory().start()
        a = run_flower(cfg)
        mem_a.stop()
        if args.compare_eval:  # the same run with evaluation the other way, right after, in this process
            mem_o = PeakMemory().start()
            o = run_flower(other, time.monotonic())
            mem_o.stop()
    if args.plain:
        mem_b = PeakMemory().start()
        b = run_plain(cfg, args.plain_threads)
        mem_b.stop()
        print(f"peak memory in GiB: (a) {mem_a.peak_rss / GIB:.2f} RSS, (b) {mem_b.peak_rss / GIB:.2f} RSS")
        report(cfg, a, b, mem_a, mem_b, args.plain_threads)
    else:
        load = os.getloadavg()
        print(f"(a) flower: start-up {a['startup']:.1f} s to the end of round 1; steady state "
              f"{mean(a['steady']):.3f} s/round; discovery query {sum(a['seconds'].get('discovery', {}).values()):.2f} "
              f"s; {mem_a.line()}; {os.cpu_count()} CPUs, load average now {load[0]:.2f} {load[1]:.2f}")
    if args.compare_eval:
        compare_eval(cfg, a, o, mem_o)
    print(f"(a) where the memory goes at the PSS peak (benchmarks/procmem.py):\n{mem_a.roles()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
