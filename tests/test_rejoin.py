"""fedcmi.runtime.rejoin: a restarted SuperNode is started again while the SuperLink still holds its old
session, and only then (a fake flower-supernode here; the real one in tests/test_deployment.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from fedcmi.runtime.rejoin import REFUSED_EXIT, STILL_ONLINE, supervise

FAKE = f"""import sys
from pathlib import Path
count = Path(sys.argv[1]); n = int(count.read_text()) if count.exists() else 0; count.write_text(str(n + 1))
refusals, message = int(sys.argv[2]), sys.argv[3]
if n < refusals:
    print("Failed to initialize the connection to the SuperLink.", message); sys.exit({REFUSED_EXIT})
print("joined"); sys.exit(0)
"""


def _fake(tmp_path: Path, refusals: int, message: str) -> tuple[list[str], Path]:
    script, count = tmp_path / "fake_supernode.py", tmp_path / "count"
    script.write_text(FAKE)
    return [sys.executable, str(script), str(count), str(refusals), message], count


def test_refused_while_still_online_is_retried_until_it_joins(tmp_path, capsys):
    cmd, count = _fake(tmp_path, 2, f"[code: 2004] {STILL_ONLINE}.")
    assert supervise(cmd, within_s=10, every_s=0.05) == 0
    assert count.read_text() == "3" and "joined" in capsys.readouterr().out


def test_other_failures_are_final(tmp_path):
    cmd, count = _fake(tmp_path, 5, "Connection refused")  # exit code 305 for another reason
    assert supervise(cmd, within_s=10, every_s=0.05) == REFUSED_EXIT
    assert count.read_text() == "1"


def test_gives_up_after_within_seconds(tmp_path):
    cmd, count = _fake(tmp_path, 1000, STILL_ONLINE)
    assert supervise(cmd, within_s=0.5, every_s=0.2) == REFUSED_EXIT
    assert 2 <= int(count.read_text()) <= 4
