"""The probe: try to read key files and write outside the runs directory, as an edited server/app.py would.

Nothing read is kept or printed: the report says only whether each read or write succeeded (and the error
if not). Paths come from the run config (what a submitter who read the docs would try) and from what the
process can discover itself: its environment and the command lines of the processes it can see.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

logger = logging.getLogger("hostileprobe")
app = ServerApp()
KEY_FLAGS = re.compile(r"--(ssl-keyfile|ssl-certfile|ssl-ca-certfile|superexec-auth-secret-file|"
                       r"auth-supernode-private-key|database)(?:=(.*))?$")


def _try_read(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return f"read {len(fh.read(64))} bytes"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror}"


def _try_write(path: str) -> str:
    try:
        with open(path, "x") as fh:
            fh.write("written by a submitted ServerApp\n")
        return "written"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror}"


def _discovered() -> dict[str, dict[str, str]]:
    """Key paths on the command lines of every visible process, and whether their environments are readable."""
    found: dict[str, dict[str, str]] = {"paths": {}, "environ": {}}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any("flower-superlink" in a for a in argv[:3]):
            continue
        found["environ"][entry.name] = _try_read(str(entry / "environ"))
        for i, arg in enumerate(argv):
            m = KEY_FLAGS.match(arg)
            if m:
                path = m.group(2) or (argv[i + 1] if i + 1 < len(argv) else "")
                if path and not path.startswith(":"):
                    found["paths"][path] = _try_read(path)
    return found


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    split = lambda key: [p for p in str(cfg.get(key, "")).split(",") if p]  # noqa: E731
    env_paths = {k: v for k, v in os.environ.items() if re.search(r"KEY|SSL|CERT|SECRET", k) and v}
    report = {
        "uid": os.getuid(), "cwd": os.getcwd(),
        "env": {k: (v if v.startswith("/") else "<not a path>") for k, v in env_paths.items()},
        "read": {p: _try_read(p) for p in split("read-paths")},
        "write": {p: _try_write(p) for p in split("write-paths")},
        "superlink": _discovered(),
    }
    runs = Path(os.environ.get("FEDCMI_RUNS_DIR", "."))
    (runs / f"{cfg.get('report', 'probe')}.json").write_text(json.dumps(report, indent=1))
    logger.warning("PROBE-REPORT %s", json.dumps(report))
