"""docker-compose.yml, the Dockerfile and the key handling, checked without a container engine.

What an engine run needs and what can be checked here: the services, ports, networks, healthchecks and
start order of the compose file; which key files each container mounts; the modes deploy/make-certs.sh
gives them; and that the image's entrypoint hands root-only keys of any host user to the unprivileged
user it then runs as (run here for real, as root, with `nobody` in the role of the image's `app`).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
CERT_SCRIPT = ROOT / "deploy" / "make-certs.sh"
ENTRYPOINT = ROOT / "deploy" / "docker-entrypoint.sh"
STAGE = "/run/fedcmi/certs"  # where the compose file mounts key files; the entrypoint copies them to /app/certs
CERTS = "/app/certs"

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("ssh-keygen") is None,
                                   reason="needs openssl and ssh-keygen")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def certs(tmp_path_factory, compose) -> Path:
    if shutil.which("openssl") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("needs openssl and ssh-keygen")
    out = tmp_path_factory.mktemp("certs") / "certs"
    subprocess.run(["bash", str(CERT_SCRIPT), str(out), str(len(_supernodes(compose)))],
                   check=True, capture_output=True)
    return out


def _cmd(service: dict) -> list[str]:
    cmd = service["command"]
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def _flag(cmd: list[str], name: str) -> str | None:
    for i, arg in enumerate(cmd):
        if arg == name:
            return cmd[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _supernodes(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if _cmd(s)[0] == "flower-supernode"}


def _workers(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if _cmd(s)[:3] == ["python", "-m", "clients.worker"]}


def _mounts(service: dict) -> list[dict]:
    """Every volume entry in long form: type, source, target, read_only (+ bind options)."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            kind = "bind" if parts[0].startswith((".", "/", "~")) else "volume"
            v = {"type": kind, "source": parts[0], "target": parts[1],
                 "read_only": len(parts) > 2 and "ro" in parts[2].split(",")}
        out.append(v)
    return out


def _key_mounts(service: dict) -> dict[str, dict]:
    """The key/certificate files a service mounts, by file name (the name the entrypoint copies to)."""
    return {Path(m["target"]).name: m for m in _mounts(service) if m["target"].startswith(STAGE + "/")}


def _networks(service: dict) -> dict[str, dict]:
    nets = service.get("networks", ["default"])
    return {n: {} for n in nets} if isinstance(nets, list) else {n: (d or {}) for n, d in nets.items()}


def _health_code(service: dict) -> str:
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1:3] == ["python", "-c"], test
    compile(test[3], "healthcheck", "exec")  # a syntax error would leave the service unhealthy forever
    return test[3]


def test_one_superlink_on_port_8000_with_tls_auth_and_no_serverapp(compose):
    links = [s for s in compose["services"].values() if _cmd(s)[0] == "flower-superlink"]
    assert len(links) == 1
    link = links[0]
    cmd = _cmd(link)
    assert _flag(cmd, "--port") == "8000" and _flag(cmd, "--host") == "0.0.0.0"
    assert link["ports"] == ["127.0.0.1:8000:8000"]  # loopback only unless the user opens it on purpose
    assert "--enable-supernode-auth" in cmd and "--disable-runtime-dependency-installation" in cmd
    assert "--insecure" not in cmd
    assert not any(re.search(r"909[123]", str(x)) for x in [*cmd, *link["ports"]])  # legacy gRPC ports
    volumes = [m for m in _mounts(link) if m["type"] == "volume"]
    assert {m["target"] for m in volumes} == {"/app/state"}  # no results volume: the ServerApp runs elsewhere
    assert _flag(cmd, "--database").startswith("/app/state/")
    assert {m["source"] for m in volumes} <= set(compose["volumes"])
    assert _flag(cmd, "--isolation") == "process"  # it starts no ServerApp itself
    assert _flag(cmd, "--superexec-auth-secret-file") == f"{CERTS}/superexec.secret"
    assert "FEDCMI_RUNS_DIR" not in link["environment"]


def test_submitted_serverapps_run_in_their_own_container_without_the_superlinks_keys(compose):
    """Whoever submits a run runs its ServerApp; it runs in `serverapp`, which holds ca.crt and
    the SuperExec secret only, writes only to the results volume (read-only root, tmpfs scratch), reaches only
    the SuperLink (an internal network of the two) and keeps no capability after the entrypoint."""
    services = compose["services"]
    [(name, app)] = [(n, s) for n, s in services.items() if _cmd(s)[0] == "flower-superexec"]
    cmd, link = _cmd(app), _cmd(services["superlink"])
    assert _flag(cmd, "--runtime-api-address") == "superlink:8000"
    assert _flag(cmd, "--root-certificates") == f"{CERTS}/ca.crt" and "--insecure" not in cmd
    assert _flag(cmd, "--superexec-auth-secret-file") == _flag(link, "--superexec-auth-secret-file")
    assert set(_key_mounts(app)) == {"ca.crt", "superexec.secret"}
    assert [(m["source"], m["target"]) for m in _mounts(app) if m["type"] == "volume"] == [
        ("fedcmi-results", "/app/runs")]
    assert app["environment"]["FEDCMI_RUNS_DIR"] == "/app/runs"
    assert app["read_only"] is True and "/app/certs" in app["tmpfs"]  # the entrypoint's copies: tmpfs
    assert app["cap_drop"] == ["ALL"] and "no-new-privileges" in app["security_opt"]
    assert set(app["cap_add"]) <= {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID"}
    assert list(_networks(app)) == ["server"] and compose["networks"]["server"]["internal"] is True
    assert sorted(n for n, s in services.items() if "server" in _networks(s)) == sorted([name, "superlink"])
    assert "ports" not in app


def test_at_least_three_supernodes_mixing_multimodal_and_unimodal(compose):
    from fedcmi.data.partition import assign_modalities

    nodes = _supernodes(compose)
    assert len(nodes) >= 3
    configs = [dict(kv.split("=", 1) for kv in _flag(_cmd(s), "--node-config").split()) for s in nodes.values()]
    assert sorted(int(c["partition-id"]) for c in configs) == list(range(len(nodes)))
    assert {int(c["num-partitions"]) for c in configs} == {len(nodes)}
    kinds = {assign_modalities(len(nodes), 0.5, 0.5, 0)[int(c["partition-id"])] for c in configs}
    assert "mm" in kinds and kinds & {"a", "b"}  # the default seed's kinds: multimodal and unimodal nodes
    for name, node in nodes.items():
        cmd = _cmd(node)
        assert _flag(cmd, "--superlink") == "superlink:8000", name
        assert _flag(cmd, "--root-certificates") == f"{CERTS}/ca.crt" and "--insecure" not in cmd
        assert _flag(cmd, "--auth-supernode-private-key") == f"{CERTS}/{name}", name
        assert _flag(cmd, "--isolation") == "process"  # the worker below runs its ClientApp


def test_every_supernode_has_one_long_lived_worker(compose):
    nodes = _supernodes(compose)
    targets = [_flag(_cmd(s), "--runtime-api-address") for s in _workers(compose).values()]
    assert sorted(targets) == sorted(f"{_flag(_cmd(s), '--host')}:{_flag(_cmd(s), '--port')}"
                                     for s in nodes.values())


def test_runtime_api_is_reachable_by_its_worker_only(compose):
    """The plain-HTTP Runtime API (port 9094) binds to an alias of a private internal network per node."""
    services, nodes, workers = compose["services"], _supernodes(compose), _workers(compose)
    for name, node in nodes.items():
        host = _flag(_cmd(node), "--host")
        assert host not in (None, "", "0.0.0.0", "::", "[::]"), name
        assert "ports" not in node, name
        nets = _networks(node)
        private = [n for n, d in nets.items() if host in (d.get("aliases") or [])]
        assert len(private) == 1, (name, nets)  # the bind alias exists on exactly one network
        assert (compose["networks"][private[0]] or {}).get("internal") is True, private
        assert "default" in nets  # the SuperNode itself must still reach the SuperLink
        members = sorted(s for s, svc in services.items() if private[0] in _networks(svc))
        worker = [w for w, svc in workers.items() if _flag(_cmd(svc), "--runtime-api-address").startswith(host)]
        assert members == sorted([name, *worker]) and len(worker) == 1, members
        assert list(_networks(services[worker[0]])) == [private[0]]  # the worker: nothing but its node
        assert "ports" not in services[worker[0]]
    aliases = [a for svc in services.values() for d in _networks(svc).values() for a in d.get("aliases") or []]
    assert len(aliases) == len(set(aliases))


def test_each_container_mounts_only_the_key_files_it_uses(compose):
    for name, service in compose["services"].items():
        keys = _key_mounts(service)
        used = {Path(p).name for arg in _cmd(service) for p in re.findall(rf"{CERTS}/[\w.-]+", arg)}
        used |= {Path(p).name for p in re.findall(rf"{CERTS}/[\w.-]+", _health_code(service))}
        assert set(keys) == used, name
        for file, mount in keys.items():
            assert mount["type"] == "bind" and mount["read_only"] is True, (name, file)
            assert mount["source"] == f"./deploy/certs/{file}", (name, file)
            assert mount.get("bind", {}).get("create_host_path") is False, (name, file)  # no dirs for missing keys
        for mount in _mounts(service):  # nothing else from the key directory, never the whole directory
            assert not mount["source"].rstrip("/").endswith("deploy/certs"), name
            assert "deploy/certs" not in mount["source"] or mount["target"].startswith(STAGE + "/"), name
        assert "ca.key" not in keys and not any(f.endswith(".pub") for f in keys), name
        private = {f for f in keys if f == "server.key" or f.startswith("supernode-")}
        if name.startswith("supernode-"):
            assert private == {name}, name  # a SuperNode gets its own key and no other node's
        elif name == "superlink":
            assert private == {"server.key"}
        elif _cmd(service)[0] == "flower-superexec":
            assert set(keys) == {"ca.crt", "superexec.secret"}, name  # the ServerApps' container: no TLS key
        else:
            assert not keys, name  # the workers need none


def test_healthchecks_and_start_order(compose):
    services, nodes = compose["services"], _supernodes(compose)
    link = _cmd(services["superlink"])
    code = _health_code(services["superlink"])
    assert f"https://localhost:{_flag(link, '--port')}/health" in code and f"{CERTS}/ca.crt" in code
    for name, node in nodes.items():
        assert node["depends_on"] == {"superlink": {"condition": "service_healthy"}}, name
        runtime = f"http://{_flag(_cmd(node), '--host')}:{_flag(_cmd(node), '--port')}/health"
        assert runtime in _health_code(node), name
    for name, worker in _workers(compose).items():
        node = next(n for n, s in nodes.items()
                    if _flag(_cmd(worker), "--runtime-api-address") == f"{_flag(_cmd(s), '--host')}:9094")
        assert worker["depends_on"] == {node: {"condition": "service_healthy"}}, name
        assert f"http://{_flag(_cmd(worker), '--runtime-api-address')}/health" in _health_code(worker)
    for name, service in services.items():
        health = service["healthcheck"]
        assert health["retries"] >= 1 and health["start_period"] and health["interval"], name


def test_documented_run_sets_the_number_of_rounds():
    text = (ROOT / "docker-compose.yml").read_text() + (ROOT / "docs" / "deployment-compose.md").read_text()
    runs = re.findall(r"flwr run [^\n]*", re.sub(r"\\\n[#\s]*", " ", text))  # continuation lines joined
    assert runs and all(re.search(r"num-server-rounds=\d+", r) for r in runs), runs


def test_image_is_built_from_the_repo_dockerfile_and_installs_nothing_at_runtime(compose):
    dockerfile = (ROOT / "Dockerfile").read_text()
    for service in compose["services"].values():
        assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert service["environment"]["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
        assert service["build"]["args"]["TORCH_INDEX"] == "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
    for path in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
        assert (ROOT / path).exists(), path
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in dockerfile
    # torch from the TORCH_INDEX build argument, CPU wheels unless told otherwise
    assert re.search(r"^ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu$", dockerfile, flags=re.M)
    assert re.search(r"pip install torch==\S+ torchvision==\S+ --index-url \"\$\{TORCH_INDEX\}\"", dockerfile)
    # the entrypoint script is installed and is the image's entrypoint
    assert re.search(r"^COPY deploy/docker-entrypoint.sh /usr/local/bin/fedcmi-entrypoint$", dockerfile, flags=re.M)
    assert re.search(r'^ENTRYPOINT \["fedcmi-entrypoint"\]$', dockerfile, flags=re.M)
    assert os.access(ENTRYPOINT, os.X_OK)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_makefile_torch_index_knob():
    def install_cmds(*args: str) -> list[str]:
        out = subprocess.run(["make", "-n", "-W", "pyproject.toml", *args, ".venv/.installed-stamp"], cwd=ROOT,
                             check=True, capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if "pip install" in line and "torch==" in line]

    [default] = install_cmds()
    assert "--index-url" not in default  # pip's configured index: works on a fresh machine as before
    [cpu] = install_cmds("TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    assert cpu.endswith("--index-url https://download.pytorch.org/whl/cpu")


def test_cert_script_modes_and_every_mounted_file(compose, certs):
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    private = ["ca.key", "server.key", "superexec.secret",
               *(f"supernode-{i}" for i in range(len(_supernodes(compose))))]
    public = ["ca.crt", "server.pem", *(f"supernode-{i}.pub" for i in range(len(_supernodes(compose))))]
    for name in private:
        assert stat.S_IMODE((certs / name).stat().st_mode) == 0o600, name
    for name in public:
        assert stat.S_IMODE((certs / name).stat().st_mode) == 0o644, name
    for service in compose["services"].values():
        for mount in _key_mounts(service).values():
            assert (certs / Path(mount["source"]).name).is_file(), mount["source"]


def _run_entrypoint(stage: Path, dst: Path, user: str, command: list[str], as_user: str | None = None):
    env = {**os.environ, "FEDCMI_CERTS_MOUNT": str(stage), "FEDCMI_CERTS_DIR": str(dst), "FEDCMI_USER": user}
    prefix = ["setpriv", f"--reuid={_uid(as_user)}", f"--regid={_gid(as_user)}", "--clear-groups"] if as_user else []
    return subprocess.run([*prefix, "sh", str(ENTRYPOINT), *command], env=env, capture_output=True, text=True)


@pytest.fixture
def staged(compose, certs):
    """The SuperLink's mounted files as the engine shows them: owner = some host uid, keys 0600."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("the entrypoint's root path needs root and setpriv")
    base = Path(tempfile.mkdtemp(prefix="fedcmi-entrypoint-"))
    base.chmod(0o755)  # the dropped user must be able to reach its copy
    stage = base / "stage"
    stage.mkdir()
    for file in _key_mounts(compose["services"]["superlink"]):
        shutil.copy2(certs / file, stage / file)
        os.chown(stage / file, 4321, 4321)  # a host user that is neither root nor the container's user
    yield base, stage
    shutil.rmtree(base)


def test_entrypoint_hands_keys_of_any_host_user_to_the_container_user(staged):
    base, stage = staged
    dst = base / "app-certs"
    probe = f"id -u; cat {dst}/server.key > /dev/null && echo key-readable"
    res = _run_entrypoint(stage, dst, "nobody", ["sh", "-c", probe])
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(_uid("nobody")), "key-readable"]  # ran as the user, not as root
    assert stat.S_IMODE(dst.stat().st_mode) == 0o700 and dst.stat().st_uid == _uid("nobody")
    assert sorted(p.name for p in dst.iterdir()) == sorted(p.name for p in stage.iterdir())
    for copy in dst.iterdir():
        assert stat.S_IMODE(copy.stat().st_mode) == 0o400 and copy.stat().st_uid == _uid("nobody")
        assert copy.read_bytes() == (stage / copy.name).read_bytes()
    for original in stage.iterdir():  # the host's files are left as they were
        assert original.stat().st_uid == 4321
    assert stat.S_IMODE((stage / "server.key").stat().st_mode) == 0o600
    # without the entrypoint, that user cannot read the mounted key (the service would crash at start, in a loop)
    plain = subprocess.run(["setpriv", f"--reuid={_uid('nobody')}", f"--regid={_gid('nobody')}", "--clear-groups",
                            "cat", str(stage / "server.key")], capture_output=True)
    assert plain.returncode != 0


def test_entrypoint_started_unprivileged_names_the_unreadable_key(staged):
    base, stage = staged
    dst = base / "app-certs"
    dst.mkdir()
    shutil.chown(dst, "nobody")
    res = _run_entrypoint(stage, dst, "nobody", ["true"], as_user="nobody")
    assert res.returncode == 77
    assert "cannot read" in res.stderr and "server.key" in res.stderr


def _uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def _gid(user: str) -> int:
    return pwd.getpwnam(user).pw_gid
