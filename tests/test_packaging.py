"""What an installed fedcmi has without the repository around it: the wheel ships the packages only (no deploy/
folder), so whatever the package runs must be found from the package itself.

The package is copied alone into a temporary folder (as the wheel installs it: every file under fedcmi/) and
imported from there in a fresh interpreter whose working directory holds nothing else."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

LOCATE = """
import sys
from importlib import resources
from pathlib import Path

from fedcmi.runtime import loopback

site = Path(sys.argv[1]).resolve()
assert site in Path(loopback.__file__).resolve().parents, loopback.__file__  # the copy, not the repository
with resources.as_file(loopback.CERT_SCRIPT) as script:
    assert script.is_file(), script
    assert site in script.resolve().parents, script
if len(sys.argv) > 2:
    work = Path(sys.argv[2])
    loopback.Loopback(work).make_certs(1)
    print(" ".join(sorted(p.name for p in (work / "certs").iterdir())))
"""


def _installed(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    shutil.copytree(ROOT / "fedcmi", site / "fedcmi", ignore=shutil.ignore_patterns("__pycache__"))
    return site


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    here = tmp_path / "cwd"
    here.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "FLWR_TELEMETRY_ENABLED": "0"}
    return subprocess.run([sys.executable, "-c", LOCATE, *args], cwd=here, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_certificate_script_is_found_from_the_package_alone(tmp_path):
    site = _installed(tmp_path)
    proc = _run(tmp_path, str(site))
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("ssh-keygen") is None,
                    reason="needs openssl and ssh-keygen")
def test_the_loopback_makes_its_certificates_from_the_package_alone(tmp_path):
    site = _installed(tmp_path)
    proc = _run(tmp_path, str(site), str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ca.crt", "ca.key", "ca.srl", "server.key", "server.pem", "superexec.secret",
                                   "supernode-0", "supernode-0.pub"]


def test_deploy_make_certs_runs_the_package_script():
    """One source: the compose stack's and the docs' deploy/make-certs.sh runs the script the package ships."""
    wrapper = (ROOT / "deploy" / "make-certs.sh").read_text()
    assert "fedcmi/runtime/make-certs.sh" in wrapper and "openssl" not in wrapper


APP_DIR = """
import sys
from pathlib import Path

from fedcmi.runtime import loopback

print(loopback.app_dir(Path(sys.argv[1])))
"""


def test_the_loopback_app_of_a_checkout_is_the_checkout():
    from fedcmi.runtime import loopback

    assert loopback.app_dir(Path("/nonexistent-spare")) == ROOT


def test_an_installed_package_writes_a_flower_app_that_flower_accepts(tmp_path):
    """A wheel has no pyproject.toml: flwr run gets one written from the package (its apps, every key at its
    default), and Flower's own loader and FAB builder accept it."""
    import tomllib

    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.config_utils import load_and_validate

    from fedcmi.config import defaults
    from fedcmi.runtime import apps

    site = _installed(tmp_path)
    here = tmp_path / "cwd"
    here.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-c", APP_DIR, str(tmp_path / "app")], cwd=here, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    app = Path(proc.stdout.strip())
    assert app == tmp_path / "app"
    written = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert written["components"] == {"serverapp": apps.SERVER_APP, "clientapp": apps.CLIENT_APP}
    assert written["config"] == defaults()
    checked = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert written["config"] == checked  # the same app config as the checkout's
    _, warnings = load_and_validate(app / "pyproject.toml", check_module=False)  # raises on an invalid app
    assert warnings == []
    assert build_fab_from_disk(app)  # the FAB flwr run would send
