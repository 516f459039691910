"""Peak memory of a process and all its descendants (a local Ray's daemons and workers), sampled from /proc.

Why not the driver's own ``ru_maxrss``: in a simulation most memory sits in the Ray workers. Two sums are
kept: RSS (what the issue's targets are stated in; counts shared pages, e.g. torch's libraries, once per
process, so it over-states) and PSS (shared pages split between their processes: the machine's real cost).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

GIB = 1024 ** 3


def _children() -> dict[int, list[int]]:
    from fedcmi.runtime.processes import process_children

    return process_children()


def tree(root: int) -> list[int]:
    """``root`` and every descendant."""
    kids = _children()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def _kib(path: Path, field: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:400].strip()
    except OSError:
        return "?"


def tree_memory(root: int) -> tuple[int, int, list[tuple[str, int, int]]]:
    """(summed RSS bytes, summed PSS bytes, [(command, RSS, PSS) per process]) of ``root``'s tree now."""
    rss = pss = 0
    procs = []
    for pid in tree(root):
        r = _kib(Path(f"/proc/{pid}/status"), "VmRSS:") * 1024
        p = _kib(Path(f"/proc/{pid}/smaps_rollup"), "Pss:") * 1024
        rss, pss = rss + r, pss + p
        procs.append((_name(pid), r, p))
    return rss, pss, procs


def role(command: str) -> str:
    """The kind of process a command line is, for the breakdown: where the memory goes."""
    if "ClientAppActor" in command:
        return "client actors"
    head = command.split()[:3]
    if command.startswith("ray::IDLE") or any(h.endswith("default_worker.py") for h in head):
        return "idle Ray workers"
    if command.startswith("ray::") or any(h.endswith(("raylet", "gcs_server", "log_monitor.py", "monitor.py",
                                                       "dashboard.py", "agent.py", "main.py")) for h in head):
        return "Ray daemons"
    return "driver (ServerApp)"


def by_role(procs: list[tuple[str, int, int]]) -> dict[str, tuple[int, int, int]]:
    """role -> (process count, summed RSS, summed PSS)."""
    out: dict[str, tuple[int, int, int]] = {}
    for name, r, p in procs:
        n, rs, ps = out.get(role(name), (0, 0, 0))
        out[role(name)] = (n + 1, rs + r, ps + p)
    return out


class PeakMemory:
    """Samples ``tree_memory`` of a process tree every ``interval`` seconds in a thread; keeps the peaks."""

    def __init__(self, root: int | None = None, interval: float = 0.25) -> None:
        self.root = root or os.getpid()
        self.interval = interval
        self.peak_rss = self.peak_pss = self.peak_procs = 0
        self.at_peak: list[tuple[str, int, int]] = []
        self.at_pss_peak: list[tuple[str, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="peak-memory")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        rss, pss, procs = tree_memory(self.root)
        if rss > self.peak_rss:
            self.at_peak = sorted(procs, key=lambda p: -p[1])
        if pss > self.peak_pss:
            self.at_pss_peak = sorted(procs, key=lambda p: -p[2])
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(procs))

    def breakdown(self) -> str:
        """The processes at the RSS peak, largest first."""
        return "\n".join(f"  {r / GIB:6.2f} GiB RSS {p / GIB:6.2f} GiB PSS  {name[:60]}" for name, r, p in self.at_peak)

    def roles(self) -> str:
        """Where the memory goes at the PSS peak: per kind of process, and per process."""
        lines = [f"  {ps / GIB:5.2f} GiB PSS {rs / GIB:5.2f} GiB RSS  {n} x {name}"
                 for name, (n, rs, ps) in sorted(by_role(self.at_pss_peak).items(), key=lambda kv: -kv[1][2])]
        lines += [f"    {p / GIB:5.2f} GiB PSS {r / GIB:5.2f} GiB RSS  {name[:70]}"
                  for name, r, p in self.at_pss_peak[:8]]
        return "\n".join(lines)

    def reset(self) -> None:
        self.peak_rss = self.peak_pss = self.peak_procs = 0

    def start(self) -> PeakMemory:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def line(self) -> str:
        return (f"peak RSS {self.peak_rss / GIB:.2f} GiB, peak PSS {self.peak_pss / GIB:.2f} GiB "
                f"(sum over up to {self.peak_procs} processes)")
