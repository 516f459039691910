"""A real Flower deployment on one machine: SuperLink + SuperNodes on 127.0.0.1, then ``flwr run``.

What ``make deploy-demo`` and ``tests/test_deployment.py`` run, and a worked example of the steps on real
machines (docs/deployment.md): certificates (``make-certs.sh``, shipped in this package), SuperNode keys and
their registration, node configs, ports, a connection in ``$FLWR_HOME/config.toml``. Every process is
started here, tracked by PID and stopped by PID (with its children: the ``flower-superexec`` and app
processes Flower spawns), also when something fails.

Flower 1.42 facts this relies on (checked against flwr 1.42.0): the SuperLink serves its Fleet,
Control and Runtime APIs on one HTTPS port (``--port``, default 8000; the 9091-9093 gRPC ports of older
releases are gone); a SuperNode serves its own Runtime API on ``--port`` (default 9094); connections live
in ``$FLWR_HOME/config.toml``; node authentication needs TLS and OpenSSH EC keys.

This module starts processes only; it never imports Flower.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from fedcmi.runs.layout import COMPLETE, run_status
from fedcmi.runtime.apps import CLIENT_APP, CLIENT_WORKER, SERVER_APP
from fedcmi.runtime.processes import alive, descendants, free_port, stop_pids

logger = logging.getLogger("fedcmi.loopback")

ROOT = Path(__file__).resolve().parents[2]  # the source checkout, or site-packages for an installed wheel
# The certificate script ships in this package (an installed wheel has no deploy/ folder); deploy/make-certs.sh
# runs this same file, so the compose stack, the docs and the loopback deployment make their keys alike.
CERT_SCRIPT = resources.files("fedcmi.runtime").joinpath("make-certs.sh")
FEDERATION = "fedcmi-loopback"
ISOLATIONS = ("warm", "subprocess", "process")
SERVERAPP_ISOLATIONS = ("subprocess", "process")
SECRET = "superexec.secret"  # the SuperLink <-> ServerApp SuperExec shared secret (make-certs.sh)
# How often a SuperExec asks for new tasks (Flower's default is 1 s; each round waits for it twice).
POLL_INTERVAL_S = "0.2"


@dataclass
class Loopback:
    """One SuperLink and its SuperNodes on 127.0.0.1, each in its own working directory under ``work``.

    Parameters
    ----------
    work : Path
        Logs, certificates, keys, and one ``FLWR_HOME`` per process (the CLI's holds ``config.toml``).
    tls : bool
        Serve the SuperLink over HTTPS with certificates from ``make-certs.sh`` (:data:`CERT_SCRIPT`).
    auth : bool
        SuperNode authentication (needs ``tls``): only nodes whose public key is registered may join.
    isolation : str
        ``warm`` (default): SuperNodes run with ``--isolation process`` and one long-lived
        ``python -m clients.worker`` next to each runs every message in the same process.
        ``subprocess``: each SuperNode spawns its own ``flower-superexec``, which starts one ClientApp
        process per message (Flower's default). ``process``: ``--isolation process`` with a
        ``flower-superexec`` started here next to each SuperNode (still one process per message).
    serverapp : str
        Where the submitted ServerApp runs. ``subprocess``: a child of the SuperLink (Flower's default),
        with the SuperLink's user, working directory and environment. ``process``: the SuperLink runs with
        ``--isolation process`` and a ``flower-superexec`` started here, with only ``ca.crt`` and the
        SuperExec secret, its own working directory ``serverapp_dir``, an environment that names no key
        file, and the run directories; the SuperLink's environment has no ``FEDCMI_*`` setting.
    serverapp_user : str | None
        With ``serverapp="process"`` and when started as root: run that SuperExec (and so every ServerApp)
        as this user (``setpriv``), which cannot read the SuperLink's 0600 key files. ``serverapp_dir`` and
        the runs directory are given to it; nothing else is.
    """

    work: Path
    tls: bool = False
    auth: bool = False
    isolation: str = "warm"
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    superlink_port: int = 0
    runs_dir: Path | None = None  # the ServerApp's run directories (FEDCMI_RUNS_DIR); default work/runs
    server_config: Path | None = None  # the server's own keys (FEDCMI_SERVER_CONFIG), e.g. the node registry
    serverapp: str = "subprocess"
    serverapp_user: str | None = None
    serverapp_dir: Path | None = None  # the ServerApp SuperExec's cwd and FLWR_HOME; default work/serverapp

    def __post_init__(self) -> None:
        if self.auth and not self.tls:
            raise ValueError("SuperNode authentication needs TLS (Flower refuses it over an insecure link)")
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"isolation={self.isolation!r}: must be one of {', '.join(ISOLATIONS)}")
        if self.serverapp not in SERVERAPP_ISOLATIONS:
            raise ValueError(f"serverapp={self.serverapp!r}: must be one of {', '.join(SERVERAPP_ISOLATIONS)}")
        if self.serverapp_user and (self.serverapp != "process" or os.geteuid() != 0):
            raise ValueError("serverapp_user needs serverapp='process' and a launcher running as root")
        self.work = Path(self.work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.runs_dir = Path(self.runs_dir or self.work / "runs").resolve()
        self.serverapp_dir = Path(self.serverapp_dir or self.work / "serverapp").resolve()
        self.certs = self.work / "certs"

    # --- environment ----------------------------------------------------------------------------
    def env(self, home: str | Path, server: bool = False) -> dict[str, str]:
        """Offline and quiet: no telemetry, no update check, no runtime ``uv sync`` of the app's deps.

        ``server``: the process that runs ServerApps, which alone gets the server's settings."""
        base = {k: v for k, v in os.environ.items() if k not in ("FEDCMI_RUNS_DIR", "FEDCMI_SERVER_CONFIG")}
        settings = {"FEDCMI_RUNS_DIR": str(self.runs_dir),
                    **({"FEDCMI_SERVER_CONFIG": str(self.server_config)} if self.server_config else {})}
        return {**base, "FLWR_HOME": str(self.work / home), "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": POLL_INTERVAL_S, "HF_DATASETS_OFFLINE": "1",
                **(settings if server else {}),
                "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}

    def _tool(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _spawn(self, name: str, cmd: list[str], home: str | Path, server: bool = False) -> subprocess.Popen:
        cwd = self.work / home  # an absolute ``home`` stays as it is
        cwd.mkdir(parents=True, exist_ok=True)
        env = self.env(home, server)
        if server and self.serverapp == "process":
            env["HOME"] = str(cwd)
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - closed when the process is stopped
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        log.close()
        self.procs[name] = proc
        logger.info("started %s (pid %s): %s", name, proc.pid, " ".join(cmd))
        return proc

    def log_of(self, name: str) -> str:
        path = self.work / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- certificates and keys --------------------------------------------------------------------
    def make_certs(self, num_keys: int) -> None:
        """CA, SuperLink certificate and ``num_keys`` SuperNode key pairs, by the package's script."""
        with resources.as_file(CERT_SCRIPT) as script:  # a real file even where the package is zipped
            subprocess.run(["bash", str(script), str(self.certs), str(num_keys)], check=True,
                           capture_output=True, text=True)

    def key(self, i: int) -> Path:
        return self.certs / f"supernode-{i}"

    # --- processes --------------------------------------------------------------------------------
    def start_superlink(self) -> None:
        """The SuperLink: one port for all its APIs. The ServerApp of each run is started by its own SuperExec
        (``serverapp="subprocess"``) or by the one :meth:`start_serverapp_executor` starts (``"process"``)."""
        self.superlink_port = free_port()
        cmd = [self._tool("flower-superlink"), "--host", "127.0.0.1", "--port", str(self.superlink_port),
               "--disable-runtime-dependency-installation"]
        if self.tls:
            cmd += ["--ssl-ca-certfile", str(self.certs / "ca.crt"), "--ssl-certfile", str(self.certs / "server.pem"),
                    "--ssl-keyfile", str(self.certs / "server.key")]
        else:
            cmd += ["--insecure"]
        if self.auth:
            cmd += ["--enable-supernode-auth"]
        if self.serverapp == "process":
            cmd += ["--isolation", "process", "--superexec-auth-secret-file", str(self._secret())]
        self._spawn("superlink", cmd, "superlink", server=self.serverapp == "subprocess")
        self._write_connection()
        self._wait_for_port(self.superlink_port, "superlink")
        if self.serverapp == "process":
            self.start_serverapp_executor()

    def _secret(self) -> Path:
        """The SuperExec secret: ``make-certs.sh`` writes it with the certificates; made here otherwise."""
        secret = self.certs / SECRET
        if not secret.exists():
            self.certs.mkdir(mode=0o700, parents=True, exist_ok=True)
            secret.write_text(os.urandom(32).hex())
            secret.chmod(0o600)
        return secret

    def start_serverapp_executor(self) -> subprocess.Popen:
        """The SuperExec that runs every ServerApp, away from the SuperLink (``--isolation process``).

        It gets what a ServerApp container gets: ``ca.crt`` (to check the SuperLink's certificate) and a copy of
        the SuperExec secret in its own directory, the run directories, the server's settings. With
        ``serverapp_user`` it runs as that user, which owns ``serverapp_dir`` and the runs directory only."""
        home = self.serverapp_dir
        home.mkdir(parents=True, exist_ok=True)
        secret = home / SECRET
        shutil.copyfile(self._secret(), secret)
        secret.chmod(0o400)
        cmd = [self._tool("flower-superexec"), "--runtime-api-address", f"127.0.0.1:{self.superlink_port}",
               "--superexec-auth-secret-file", str(secret)]
        if self.tls:
            shutil.copyfile(self.certs / "ca.crt", home / "ca.crt")
            cmd += ["--root-certificates", str(home / "ca.crt")]
        else:
            cmd += ["--insecure"]
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        if self.serverapp_user:
            pw = pwd.getpwnam(self.serverapp_user)
            for path in (home, self.runs_dir, *home.iterdir()):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--", *cmd]
        return self._spawn("serverapp-superexec", cmd, home, server=True)

    def _write_connection(self) -> None:
        """``$FLWR_HOME/config.toml`` of the CLI: where ``flwr run . fedcmi-loopback`` connects."""
        home = self.work / "cli"
        home.mkdir(parents=True, exist_ok=True)
        security = (f'root-certificates = "{self.certs / "ca.crt"}"' if self.tls else "insecure = true")
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n\n'
            f'[superlink.{FEDERATION}]\naddress = "127.0.0.1:{self.superlink_port}"\n{security}\n')

    def _wait_for_port(self, port: int, name: str, timeout_s: float = 600.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited with code {self.procs[name].returncode}: "
                                   f"{self.log_of(name)[-1500:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not open 127.0.0.1:{port} within {timeout_s:.0f} s")

    def flwr(self, *args: str, timeout_s: float = 600.0) -> subprocess.CompletedProcess:
        """The ``flwr`` CLI with this deployment's ``FLWR_HOME``."""
        return subprocess.run([self._tool("flwr"), *args], capture_output=True, text=True, env=self.env("cli"),
                              cwd=self.work, timeout=timeout_s)

    def register(self, i: int) -> int:
        """Register SuperNode ``i``'s public key with the SuperLink (``flwr supernode register``); its node id."""
        proc = self.flwr("supernode", "register", str(self.key(i)) + ".pub", FEDERATION, timeout_s=600)
        found = re.search(r"SuperNode (\d+) registered", proc.stdout)
        if proc.returncode != 0 or not found:
            raise RuntimeError(f"registering supernode-{i} failed: {proc.stdout[-800:]} {proc.stderr[-800:]}")
        return int(found.group(1))

    def write_registry(self, entries: list[tuple[int, int, int]]) -> Path:
        """The operator's node registry (node id, partition id, exact size) and the server configuration that
        names it (``$FEDCMI_SERVER_CONFIG``): the ServerApp admits exactly these nodes with these sizes."""
        registry = self.work / "node-registry.toml"
        registry.write_text("".join(f"[[node]]\nnode-id = {n}\npartition-id = {p}\nexamples = {size}\n\n"
                                    for n, p, size in entries))
        self.server_config = self.work / "server.toml"
        self.server_config.write_text(f"node-registry = {json.dumps(str(registry))}\n")
        return registry

    def start_supernode(self, name: str, node_config: str, key: Path | None = None,
                        executor: bool = True, rejoin: bool = False) -> subprocess.Popen:
        """A SuperNode with its node config; ``key`` is its private key when authentication is on.

        ``executor=False`` starts no worker/SuperExec next to it (a node expected to be refused). ``rejoin``: under
        ``python -m fedcmi.runtime.rejoin``, which retries while the SuperLink still holds the key's old session.
        """
        port = free_port()
        cmd = [self._tool("flower-supernode"), "--superlink", f"127.0.0.1:{self.superlink_port}",
               "--port", str(port), "--node-config", node_config,
               "--isolation", "subprocess" if self.isolation == "subprocess" else "process"]
        cmd += ["--root-certificates", str(self.certs / "ca.crt")] if self.tls else ["--insecure"]
        if key is not None:
            cmd += ["--auth-supernode-private-key", str(key)]
        if rejoin:
            cmd = [sys.executable, "-m", "fedcmi.runtime.rejoin", "--every", "2", "--", *cmd]
        proc = self._spawn(name, cmd, name)
        if executor and self.isolation != "subprocess":  # the SuperNode spawns nothing: run its executor next to it
            self._wait_for_port(port, name)
            executor = ([self._tool("flower-superexec")] if self.isolation == "process"
                        else [sys.executable, "-m", CLIENT_WORKER])
            self._spawn(f"{name}-{self.isolation}", [*executor, "--insecure", "--runtime-api-address",
                                                     f"127.0.0.1:{port}"], name)
        return proc

    def wait_ready(self, timeout_s: float = 900.0) -> None:
        """Wait until every warm worker has loaded its imports (as on real machines, started before runs).

        Waits on the workers' own "serving" line (or one of them exiting); ``timeout_s`` is only a backstop for a
        worker that hangs: a loaded machine takes minutes to import torch in several processes at once."""
        deadline = time.monotonic() + timeout_s
        workers = [n for n in self.procs if n.endswith("-warm")]
        while any("serving ClientApp tasks" not in self.log_of(n) for n in workers):
            for n in workers:
                if self.procs[n].poll() is not None:
                    raise RuntimeError(f"{n} exited: {self.log_of(n)[-1500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"warm workers not ready within {timeout_s:.0f} s")
            time.sleep(0.2)

    def wait_exit(self, name: str, timeout_s: float = 60.0) -> int | None:
        """The exit code of process ``name`` once it ends, or ``None`` if it still runs after ``timeout_s``."""
        try:
            return self.procs[name].wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def run(self, run_config: dict[str, object], timeout_s: float = 600.0) -> subprocess.CompletedProcess:
        """``flwr run APP fedcmi-loopback --stream`` (APP: :func:`app_dir`): returns when the run has finished
        (or failed)."""
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        app = app_dir(self.work / "app")
        return self.flwr("run", str(app), FEDERATION, "--stream", "--run-config", overrides, timeout_s=timeout_s)

    def stop(self) -> None:
        """Stop every process started here and all their children, by PID."""
        pids: list[int] = []
        for proc in self.procs.values():
            pids += [proc.pid, *descendants(proc.pid)]
        stop_pids(list(dict.fromkeys(pids)))
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def kill9(self, *names: str) -> None:
        """``kill -9`` these processes and their children, as a crash would (no deactivation is sent)."""
        for name in names:
            for pid in [self.procs[name].pid, *descendants(self.procs[name].pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.procs[name].wait(timeout=10)

    def pids(self) -> list[int]:
        """Live PIDs of the started processes and their children."""
        out = []
        for proc in self.procs.values():
            out += [p for p in [proc.pid, *descendants(proc.pid)] if alive(p)]
        return out


def app_dir(spare: Path) -> Path:
    """The Flower app directory ``flwr run`` packages into a FAB.

    From a source checkout it is the checkout's root, whose pyproject.toml is the app's. An installed wheel has
    no pyproject.toml (its root is site-packages), so one is written into ``spare``: the installed apps as
    components and every run-config key at its default (what the checkout's ``[tool.flwr.app.config]`` holds,
    tests/test_config.py). The FAB then carries that file only and the apps load from the installed package.
    """
    if _declares_flower_app(ROOT / "pyproject.toml"):
        return ROOT
    from importlib.metadata import PackageNotFoundError, metadata

    from fedcmi.config import defaults

    try:  # the installed distribution's own description and licence (Flower recommends both)
        meta = metadata("fedcmi")
        about = {"version": meta["Version"], "description": meta["Summary"], "license": meta["License-Expression"]}
    except PackageNotFoundError:  # the package copied without its metadata
        about = {"version": "0.0.0"}
    lines = ["[project]", 'name = "fedcmi"', *(f"{k} = {json.dumps(v)}" for k, v in about.items() if v),
             "dependencies = []", "",
             "[tool.flwr.app]", 'publisher = "fedcmi"', "", "[tool.flwr.app.components]",
             f"serverapp = {json.dumps(SERVER_APP)}", f"clientapp = {json.dumps(CLIENT_APP)}", "",
             "[tool.flwr.app.config]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in defaults().items()]
    spare.mkdir(parents=True, exist_ok=True)
    (spare / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return spare


def _declares_flower_app(pyproject: Path) -> bool:
    import tomllib

    try:
        return "app" in tomllib.loads(pyproject.read_text()).get("tool", {}).get("flwr", {})
    except (OSError, tomllib.TOMLDecodeError):
        return False


def _toml_value(value: object) -> str:
    """A TOML literal of a run-config default (bool, int, float or str; JSON spells strings the TOML way)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def partition_sizes(run_config: dict[str, object]) -> list[int]:
    """The sample count of each partition of the embedded federation a demo config builds (imports torch)."""
    from fedcmi.config import effective
    from fedcmi.data.partition import federation

    return [len(spec.indices) for spec in federation(effective(dict(run_config)))]


def demo(work: Path, out: Path, *, tls: bool, isolation: str, rounds: int = 2, num_nodes: int = 3,
         extra: dict[str, object] | None = None, serverapp: str = "process",
         serverapp_user: str | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Start a loopback federation, run ``rounds`` rounds of fedcmi, stop everything; (flwr run, wall s)."""
    dep = Loopback(work, tls=tls, auth=tls, isolation=isolation, runs_dir=out.parent, serverapp=serverapp,
                   serverapp_user=serverapp_user)
    try:
        if tls:
            dep.make_certs(num_nodes)
        config: dict[str, object] = {"num-server-rounds": rounds, "num-clients": num_nodes,
                                     "clients-per-round": min(2, num_nodes), "train-size": 600, "test-size": 200,
                                     "run-name": out.name, **(extra or {})}
        if tls:  # authenticated nodes: the operator binds each registered node id to its partition and size
            sizes = partition_sizes(config)
            dep.server_config = dep.work / "server.toml"  # written below, read by the SuperLink's ServerApp
        dep.start_superlink()
        entries = []
        for i in range(num_nodes):
            if tls:
                entries.append((dep.register(i), i, sizes[i]))
            dep.start_supernode(f"supernode-{i}", f"partition-id={i} num-partitions={num_nodes}",
                                dep.key(i) if tls else None)
        if tls:
            dep.write_registry(entries)
        dep.wait_ready()
        start = time.monotonic()
        proc = dep.run(config)
        return proc, time.monotonic() - start
    finally:
        dep.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedcmi.runtime.loopback",
                                     description="fedcmi on a loopback Flower deployment (SuperLink + SuperNodes)")
    parser.add_argument("--tls", action="store_true", help="HTTPS + SuperNode authentication")
    parser.add_argument("--isolation", choices=ISOLATIONS, default="warm")
    parser.add_argument("--serverapp", choices=SERVERAPP_ISOLATIONS, default="process",
                        help="process (default): the ServerApp runs under its own SuperExec, not the SuperLink's")
    parser.add_argument("--serverapp-user", default=None,
                        help="run that SuperExec as this user (launcher started as root; docs/deployment.md)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("runs/deploy-demo/work"))
    parser.add_argument("--out", type=Path, default=None, help="run directory (default runs/deploy-demo/<time>)")
    args = parser.parse_args(argv)
    args.out = args.out or Path("runs/deploy-demo") / time.strftime("%Y%m%d-%H%M%S")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    proc, wall = demo(args.work, args.out, tls=args.tls, isolation=args.isolation, rounds=args.rounds,
                      num_nodes=args.nodes, serverapp=args.serverapp, serverapp_user=args.serverapp_user)
    status = run_status(args.out) or "missing"
    print(proc.stdout[-3000:])
    if status != COMPLETE and proc.stderr.strip():  # flwr's own error (a bad app, a refused run) is on stderr
        print(proc.stderr[-3000:], file=sys.stderr)
    print(f"deploy-demo: {args.rounds} rounds, {args.nodes} SuperNodes, tls={args.tls}, isolation={args.isolation}: "
          f"run {status} in {wall:.1f} s; results in {args.out}")
    return 0 if status == COMPLETE else 1


if __name__ == "__main__":
    sys.exit(main())
