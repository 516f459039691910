"""What Flower (and fedcmi's run machinery) costs on top of the training itself, in one process.

(a) ``fedcmi.runtime.simulation.simulate`` of a config (default: the ``make run`` setting): start-up = seconds from
    this script's start to the end of round 1 (imports, Ray, client actors, data, the discovery query, one
    round); steady state = mean wall time of rounds 2..N (each round's ``wall_s``: sampling, messages,
    client training in the Ray actors, screening, aggregation, central evaluation, results and checkpoint
    files).
(b) the same server and client code in one process, without Flower's runtime (no SuperLink, no Ray, no
    message queue): ``server.app.run_server`` drives the rounds on an in-process grid that hands each message
    to the ClientApp (``clients.app.app``) of its node, one after another. Sampling, screening, aggregation,
    the run's server side (``fedcmi.methods.server_step.ServerSide``: guidance with momentum and tau_min, CCVR,
    a server optimiser) and central evaluation are the code that runs in (a), not a copy; evaluation is
    sequential, and the results files are written to a temporary directory as in (a).

Both (a) and (b) include aggregation and central evaluation; (b)'s messages + client training part is printed
too. ``overhead_ratio`` = steady-state s/round of (a) / s/round of (b). (b) trains with ``--plain-threads`` torch
threads (its ``client-num-cpus``; default: all CPUs, what a plain loop on this machine would use); (a) runs
``client-num-cpus`` threads per actor and as many actors in parallel as fit.

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

from procmem import GIB, PeakMemory  # noqa: E402

from fedcmi.config import RunConfig, parse_overrides, resolve  # noqa: E402

# --- (a) the Flower simulation, with per-round timers on the server's steps ----------------------------


class StepTimers:
    """Exclusive seconds per (step, round), by wrapping the server's steps (benchmark-only monkeypatching).

    A step called inside another counts for itself, not for its caller; inside the discovery query
    everything counts as discovery.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        self.round = 0
        self.wrapped: list[tuple[Any, str, Any]] = []  # (owner, name, original): what restore() puts back
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

        self.wrapped.append((owner, name, original))
        setattr(owner, name, timed)

    def restore(self) -> None:
        """Put the original steps back (a test that ran the benchmark leaves the server as it found it)."""
        for owner, name, original in reversed(self.wrapped):
            setattr(owner, name, original)
        self.wrapped.clear()


_TIMERS: list[StepTimers] = []


def uninstrument() -> None:
    """Undo :func:`instrument`."""
    while _TIMERS:
        _TIMERS.pop().restore()


def instrument() -> StepTimers:
    """Wrap the server's steps once per process; later calls get the same timers, cleared."""
    if _TIMERS:
        _TIMERS[0].seconds.clear()
        return _TIMERS[0]
    import server.app
    from fedcmi.runs.run_dir import RunDirectory
    from fedcmi.runtime.interrupt import StoppableGrid
    from server.membership import Roster
    from server.strategy import FedCMIStrategy

    timers = StepTimers()
    timers.wrap(FedCMIStrategy, "configure_train", "sample+configure", sets_round=True)
    timers.wrap(Roster, "discover", "discovery")  # the strategy's sampling calls its roster's discovery
    # run_server wraps whatever grid it gets in a StoppableGrid (push + poll, or the grid's own call): the one
    # grid class every message goes through, in (a) and (b)
    timers.wrap(StoppableGrid, "send_and_receive", "messages+client training")
    timers.wrap(FedCMIStrategy, "aggregate_train", "screen+aggregate")
    timers.wrap(server.app, "evaluate", "central evaluation")
    timers.wrap(RunDirectory, "add_round", "results files")
    timers.wrap(server.app, "save_checkpoint", "checkpoint")
    _TIMERS.append(timers)
    return timers


def simulate_flower(cfg: RunConfig, reporter: Callable[[dict[str, Any]], None]) -> None:
    """(a)'s engine: Flower's simulation (Ray actors, the in-memory SuperLink), as ``fedcmi simulate`` runs it."""
    from fedcmi.runtime.simulation import simulate

    simulate(cfg, reporter)


def run_flower(cfg: RunConfig, t0: float = T0) -> dict[str, Any]:
    """One simulation of ``cfg``; start-up counts from ``t0`` (default: this script's start, imports included)."""
    timers = instrument()
    rows: list[dict[str, Any]] = []
    ends: dict[int, float] = {}

    def reporter(row: dict[str, Any]) -> None:
        ends[row["round"]] = time.monotonic()
        rows.append(row)

    simulate_flower(cfg, reporter)
    steady = [r["wall_s"] for r in rows if r["round"] >= 2]
    return {"rows": rows, "startup": ends[1] - t0, "round0": ends[0] - t0, "round1": rows[1]["wall_s"],
            "steady": steady, "timers": timers, "seconds": {k: dict(v) for k, v in timers.seconds.items()}}


# --- (b) the same server and client code in one process ------------------------------------------------

FIRST_NODE = 100  # node ids of the in-process grid: partition i is node FIRST_NODE + i


class InProcessGrid:
    """A Flower ``Grid`` without Flower's runtime: each message goes to its node's ClientApp, in this process,
    one after another; the node config is the simulation engine's (``partition-id``, ``num-partitions``)."""

    def __init__(self, client_app: Any, num_nodes: int) -> None:
        self.client_app, self.num_nodes = client_app, num_nodes

    def get_node_ids(self) -> list[int]:
        return [FIRST_NODE + i for i in range(self.num_nodes)]

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        from flwr.app import Context, RecordDict

        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            context = Context(run_id=1, node_id=node, state=RecordDict(), run_config={},
                              node_config={"partition-id": node - FIRST_NODE, "num-partitions": self.num_nodes})
            replies.append(self.client_app(msg, context))
        return replies


def run_in_process(cfg: RunConfig, reporter: Callable[[dict[str, Any]], None]) -> None:
    """``server.app.run_server`` of ``cfg`` on an :class:`InProcessGrid` of ``clients.app.app``."""
    from flwr.supercore.task_identity import TaskIdentity

    from clients.app import app as client_app
    from server.app import run_server

    # Flower sets these ids inside a running app; a Message built outside one needs them
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    run_server(InProcessGrid(client_app, cfg.federation.num_clients), cfg, reporter)


def run_plain(cfg: RunConfig, threads: int) -> dict[str, Any]:
    """Rounds of ``cfg`` in one process (sequential evaluation, ``threads`` torch threads): per-round seconds
    (total; messages + client training) and accuracies of rounds 1..N."""
    timers = instrument()
    rows: list[dict[str, Any]] = []
    run_in_process(cfg.replace(pipelined_eval=False, client_num_cpus=threads), rows.append)
    trained = dict(timers.seconds["messages+client training"])
    rounds = rows[1:]
    return {"total": [r["wall_s"] for r in rounds], "train": [trained.get(r["round"], 0.0) for r in rounds],
            "acc_mm": [r["acc_mm"] for r in rounds]}


# --- report ---------------------------------------------------------------------------------------------


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def report(cfg: RunConfig, a: dict[str, Any], b: dict[str, Any], mem_a: PeakMemory, mem_b: PeakMemory,
           threads: int, say: Callable[[str], None] = print) -> float:
    n = cfg.server.clients_per_round
    a_round, b_round = mean(a["steady"]), mean(b["total"][1:])
    b_train = mean(b["train"][1:])
    load = os.getloadavg()
    say(f"config: {cfg.federation.num_clients} clients, {n} per round, {cfg.server.num_server_rounds} rounds, "
        f"{cfg.training.local_epochs} local epochs, strategy {cfg.method.strategy}, "
        f"client-num-cpus {cfg.runtime.client_num_cpus}; in-process: "
        f"{threads} torch thread(s); {os.cpu_count()} CPUs, load average now {load[0]:.2f} {load[1]:.2f}")
    say(f"(a) flower: start-up {a['startup']:.1f} s to the end of round 1 (round 0 = initial evaluation done at "
        f"{a['round0']:.1f} s; round 1 took {a['round1']:.1f} s, discovery query included)")
    say(f"(a) flower: steady state {a_round:.3f} s/round (median {statistics.median(a['steady']):.3f}, rounds "
        f"2..{cfg.server.num_server_rounds}), {n / a_round:.1f} client updates/s; {mem_a.line()}")
    steps = a["seconds"]
    parts = []
    for step in ("sample+configure", "messages+client training", "screen+aggregate", "central evaluation",
                 "results files", "checkpoint"):
        rounds = range(2, cfg.server.num_server_rounds + 1)
        parts.append(f"{step} {mean([steps[step].get(r, 0.0) for r in rounds]):.3f}")
    accounted = sum(float(p.rsplit(" ", 1)[1]) for p in parts)
    say(f"(a) steady round, s: {', '.join(parts)}, other {a_round - accounted:.3f}")
    say(f"(a) discovery query (round 1, once per run): {sum(steps['discovery'].values()):.2f} s")
    say(f"(b) in-process: {b_round:.3f} s/round (messages + client training {b_train:.3f}, sampling + "
        f"screening + aggregation + guidance + evaluation + files {b_round - b_train:.3f}; rounds "
        f"2..{cfg.server.num_server_rounds}), {n / b_round:.1f} client updates/s; "
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
    seq, pipe = (o, a) if cfg.server.pipelined_eval else (a, o)
    s_seq, s_pipe = mean(seq["steady"]), mean(pipe["steady"])
    same = all({k: v for k, v in x.items() if k != "wall_s"} == {k: v for k, v in y.items() if k != "wall_s"}
               for x, y in zip(seq["rows"], pipe["rows"], strict=True))
    say(f"(a') pipelined-eval={str(not cfg.server.pipelined_eval).lower()} (second run, imports warm): start-up "
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
                        help="skip (b), the in-process run: only the Flower figures")
    parser.add_argument("--plain-threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of (b), the in-process run (default: all CPUs)")
    parser.add_argument("--baseline", action="append", default=[], metavar="key=value",
                        help="a key of the sequential run only (e.g. an older default); repeatable")
    args = parser.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="fedcmi-overhead-") as tmp:
        overrides = parse_overrides(args.overrides)
        cfg = resolve(overrides=overrides).replace(out_dir=str(Path(tmp) / "run"))
        other = cfg.replace(pipelined_eval=not cfg.server.pipelined_eval, out_dir=str(Path(tmp) / "other"))
        if args.baseline:
            if not (cfg.server.pipelined_eval and args.compare_eval):
                parser.error("--baseline sets keys of the second, sequential run: keep pipelined-eval on and the "
                             "comparison (no --no-compare-eval)")
            other = resolve(overrides={**overrides, **parse_overrides(args.baseline)}).replace(
                pipelined_eval=False, out_dir=other.output.out_dir)
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
            b = run_plain(cfg.replace(out_dir=str(Path(tmp) / "in-process")), args.plain_threads)
            mem_b.stop()
    if args.plain:
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
