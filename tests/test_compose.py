"""docker-compose.yml, checked without a Docker engine: services, ports, commands, volumes, files."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


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


def test_one_superlink_on_port_8000_with_tls_auth_and_a_results_volume(compose):
    links = [s for s in compose["services"].values() if _cmd(s)[0] == "flower-superlink"]
    assert len(links) == 1
    link = links[0]
    cmd = _cmd(link)
    assert _flag(cmd, "--port") == "8000" and _flag(cmd, "--host") == "0.0.0.0"
    assert any(p.endswith("8000:8000") for p in link["ports"])
    assert "--enable-supernode-auth" in cmd and "--disable-runtime-dependency-installation" in cmd
    assert "--insecure" not in cmd
    assert not any(re.search(r"909[123]", str(x)) for x in [*cmd, *link["ports"]])  # legacy gRPC ports
    assert any(v.endswith(":/app/runs") for v in link["volumes"])
    named = [v.split(":")[0] for v in link["volumes"] if not v.startswith(".")]
    assert set(named) <= set(compose["volumes"])


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
        assert _flag(cmd, "--root-certificates") == "/app/certs/ca.crt" and "--insecure" not in cmd
        assert _flag(cmd, "--auth-supernode-private-key") is not None
        assert _flag(cmd, "--isolation") == "process"  # the worker below runs its ClientApp


def test_every_supernode_has_one_long_lived_worker(compose):
    nodes = _supernodes(compose)
    targets = [_flag(_cmd(s), "--runtime-api-address") for s in compose["services"].values()
               if _cmd(s)[:3] == ["python", "-m", "clients.worker"]]
    assert sorted(targets) == sorted(f"{n}:{_flag(_cmd(s), '--port')}" for n, s in nodes.items())


def test_image_is_built_from_the_repo_dockerfile_and_installs_nothing_at_runtime(compose):
    for service in compose["services"].values():
        assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert service["environment"]["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    dockerfile = (ROOT / "Dockerfile").read_text()
    for path in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
        assert (ROOT / path).exists(), path
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in dockerfile


@pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("ssh-keygen") is None,
                    reason="needs openssl and ssh-keygen")
def test_referenced_files_exist_after_the_cert_script(compose, tmp_path):
    """Every host path the compose file mounts exists, and the cert script makes every file used from it."""
    certs = tmp_path / "certs"
    subprocess.run(["bash", str(ROOT / "deploy" / "make-certs.sh"), str(certs), str(len(_supernodes(compose)))],
                   check=True, capture_output=True)
    for service in compose["services"].values():
        mounts = {}
        for volume in service.get("volumes", []):
            host, container = volume.split(":")[:2]
            if host.startswith("./"):
                assert (ROOT / host).parent.is_dir(), host
                mounts[container] = certs if host == "./deploy/certs" else ROOT / host
        for arg in _cmd(service):
            for path in re.findall(r"(/app/certs/[\w.-]+)", arg):
                assert "/app/certs" in mounts, arg
                assert (mounts["/app/certs"] / Path(path).name).is_file(), path
