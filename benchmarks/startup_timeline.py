"""Where the start-up of a simulation goes: a timeline to the end of round 1, and the CPU it took per process.

Runs ``fedcmi.runtime.simulation.simulate`` at the make-run setting (2 rounds) and prints, in seconds from
this script's start: the driver's imports, Ray's start, the ServerApp's steps, each client actor's warm-up
(``warm_actor``: the ClientApp's imports) and every ClientApp call (``client_step``) of round 1; then the CPU
seconds each kind of process had used when round 1 was recorded (driver, Ray's daemons, client actors).
On a machine with few cores, start-up is bound by that CPU sum divided by the cores.

    python benchmarks/startup_timeline.py [key=value ...]
"""

import time

T0 = time.time()  # before the heavy imports: they are part of start-up

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402, F401
from procmem import _name, tree  # noqa: E402

EVENTS: list[tuple[float, str]] = []


def mark(name: str) -> None:
    EVENTS.append((time.time() - T0, name))


mark("imported torch")
import flwr.simulation  # noqa: E402, F401

mark("imported flwr.simulation")
import server.app as server_app  # noqa: E402
from fedcmi.config import parse_overrides, resolve  # noqa: E402
from fedcmi.runtime import simulation  # noqa: E402
from server.membership import Roster  # noqa: E402

mark("imported server.app")
ACTOR_LOG = tempfile.mktemp(prefix="fedcmi-actors-")


def timed_warm_actor() -> None:
    """Runs in each client actor (pickled by value from this script): the warm-up, then every ClientApp call
    of interest, timed into ACTOR_LOG (one JSON line each, wall-clock times)."""
    import json as json_
    import os as os_
    import time as time_

    stat = open(f"/proc/{os_.getpid()}/stat").read().rsplit(")", 1)[1].split()
    boot = next(float(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
    start = boot + int(stat[19]) / os_.sysconf("SC_CLK_TCK")  # field 22: start time, ticks after boot
    from fedcmi.runtime.simulation import warm_actor

    warm_actor()
    log = open(ACTOR_LOG, "a", buffering=1)  # noqa: SIM115 - lives as long as the actor
    log.write(json_.dumps({"pid": os_.getpid(), "what": "process start -> ClientApp imported", "t0": start,
                           "t1": time_.time()}) + "\n")
    import clients.app as client_module

    original = client_module.client_step

    def client_step(*args: Any, **kwargs: Any) -> Any:
        t = time_.time()
        try:
            return original(*args, **kwargs)
        finally:
            log.write(json_.dumps({"pid": os_.getpid(), "what": f"client_step round {kwargs['server_round']}",
                                   "t0": t, "t1": time_.time()}) + "\n")

    client_module.client_step = client_step


def timed(owner: Any, name: str, label: str) -> None:
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mark(f"{label} starts")
        try:
            return original(*args, **kwargs)
        finally:
            mark(f"{label} ends")

    setattr(owner, name, wrapper)


def cpu_by_kind() -> dict[str, float]:
    """CPU seconds (user + system) so far of this process, Ray's daemons and the client actors."""
    out: dict[str, float] = defaultdict(float)
    for pid in tree(os.getpid()):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # fields 14, 15: utime, stime
        name = _name(pid)
        kind = ("driver (this process)" if pid == os.getpid() else "client actors" if "ClientAppActor" in name
                else "Ray daemons and idle workers")
        out[kind] += cpu
    return dict(out)


def main() -> None:
    cfg = resolve(overrides={"num-server-rounds": 2, **parse_overrides(sys.argv[1:])})
    cfg = cfg.replace(out_dir=tempfile.mkdtemp(prefix="fedcmi-startup-") + "/run")
    simulation.warm_actor = timed_warm_actor
    timed(simulation, "_start_ray", "ray.init")
    timed(Roster, "discover", "discovery query")  # the strategy's sampling calls its roster's discovery
    timed(server_app, "evaluate", "central evaluation")
    cpu: dict[str, float] = {}

    def reporter(row: dict[str, Any]) -> None:
        mark(f"round {row['round']} recorded")
        if row["round"] == 1:
            cpu.update(cpu_by_kind())

    mark("simulate() starts")
    simulation.simulate(cfg, reporter)
    for line in open(ACTOR_LOG):
        e = json.loads(line)
        EVENTS.append((e["t0"] - T0, f"actor {e['pid']}: {e['what']} ({e['t1'] - e['t0']:.2f} s)"))
    os.unlink(ACTOR_LOG)
    for t, name in sorted(EVENTS):
        print(f"{t:7.2f}  {name}")
    total = sum(cpu.values())
    print(f"CPU seconds at the end of round 1 ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}):")
    for kind, sec in sorted(cpu.items()):
        print(f"  {kind}: {sec:.1f}")
    print(f"  total {total:.1f} s = {total / (os.cpu_count() or 1):.1f} s on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
