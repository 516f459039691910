"""Start a SuperNode that rejoins after a crash: retry while the SuperLink still holds its old session.

Why: Flower 1.42's SuperLink keeps a node ONLINE until ``2 x 30 s`` (heartbeat patience x heartbeat interval,
neither configurable from the SuperNode) after its last heartbeat. A SuperNode killed with ``kill -9`` sends
no deactivation, so the same key restarted within that window is refused (the SuperLink logs ``SuperNode with
node ID ... could not be activated``; Flower's exit code 305, process exit status 1), and ``flower-supernode``
does not retry it. This wrapper runs the command, passes its output through, and on that refusal starts it
again every ``--every`` seconds until ``--within`` seconds have passed. The node sees only ``[code: 2004]
Failed to activate SuperNode``, the same answer as for an unregistered key (the reason stays in the
SuperLink's log), so an unregistered key is also retried until ``--within`` and then fails with the same exit
status. Any other exit (a bad flag, a clean stop) is final.

    python -m fedcmi.runtime.rejoin [--within 120] [--every 5] -- flower-supernode ARGS...

A SuperNode killed at time 0 and restarted at once is back at most ``60 s + --every`` plus one start-up later
(measured in docs/deployment.md). SIGTERM and SIGINT are passed to the SuperNode; the wrapper exits with its
exit status.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

logger = logging.getLogger("fedcmi.rejoin")

REFUSED_EXIT = 1  # what the OS sees: Flower prints "Exit Code: 305" but exits with 1 on any error
# What the node is told while its old session has not expired (and for an unregistered key: the SuperLink logs
# "SuperNode with node ID ... could not be activated" or "No SuperNode found with the given public key").
STILL_ONLINE = "Failed to activate SuperNode"
HEARTBEAT_WINDOW_S = 60.0  # flwr 1.42: HEARTBEAT_PATIENCE (2) x HEARTBEAT_DEFAULT_INTERVAL (30 s)


def run_once(cmd: Sequence[str], on_start: Callable[[subprocess.Popen], None]) -> tuple[int, bool]:
    """Run ``cmd`` once, echoing its output; (exit code, whether it was refused as still online)."""
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    on_start(proc)
    refused = False
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        refused = refused or STILL_ONLINE in line
    return proc.wait(), refused


def supervise(cmd: Sequence[str], within_s: float = 2 * HEARTBEAT_WINDOW_S, every_s: float = 5.0) -> int:
    """Run ``cmd``; while its activation is refused (its old session still online), wait and run it again."""
    current: list[subprocess.Popen] = []
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for proc in current:
            if proc.poll() is None:
                proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    start = time.monotonic()
    tries = 0
    while True:
        tries += 1
        code, refused = run_once(cmd, lambda p: (current.clear(), current.append(p)))
        waited = time.monotonic() - start
        if stopping or code != REFUSED_EXIT or not refused:
            if tries > 1 and not stopping:
                logger.warning("rejoin: the SuperNode ran after %d refusal(s), %.1f s after the first try", tries - 1,
                               waited)
            return code
        if waited + every_s > within_s:
            logger.error("rejoin: still refused as online after %.1f s (%d tries); giving up", waited, tries)
            return code
        logger.warning("rejoin: the SuperLink still holds this node's old session (%.1f s since the first try); "
                       "retrying in %.0f s", waited, every_s)
        time.sleep(every_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedcmi.runtime.rejoin", description=__doc__.split("\n")[0])
    parser.add_argument("--within", type=float, default=2 * HEARTBEAT_WINDOW_S,
                        help="give up after this many seconds of refusals (default %(default)s)")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between tries (default %(default)s)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- flower-supernode ARGS...")
    args = parser.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        parser.error("no command: python -m fedcmi.runtime.rejoin -- flower-supernode ARGS...")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return supervise(cmd, args.within, args.every)


if __name__ == "__main__":
    sys.exit(main())
