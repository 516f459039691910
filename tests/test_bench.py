"""`fedcmi bench`: every strategy through Flower, resumable grid, reports, bad input."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedcmi.bench.plan import Mix, make_plan, save_plan
from fedcmi.bench.report import replies_cell, replies_note, summary_markdown
from fedcmi.cli import main
from fedcmi.config import parse_overrides
from fedcmi.errors import ConfigError
from fedcmi.methods.registry import METHOD_NAMES as STRATEGY_NAMES

ROOT = Path(__file__).parents[1]
TINY = ["num-server-rounds=2", "num-clients=4", "clients-per-round=2", "train-size=600", "test-size=200"]


def test_summary_table_from_rows():
    rows = []
    for strategy, accs in (("fedavg", [0.5, 0.7]), ("fedcmi", [0.8, 0.8]), ("unimodal-audio", [0.6, 0.6])):
        for seed, acc in enumerate(accs):
            rows.append({"strategy": strategy, "seed": seed, "dirichlet_alpha": "0.1", "multimodal_ratio": 0.5,
                         "unimodal_split": 0.5, "acc_mm": acc, "acc_audio": acc - 0.1,
                         "acc_visual": math.nan if strategy.startswith("unimodal") else acc - 0.2,
                         "acc_audio_zero": acc, "acc_visual_zero": 0.3, "worst_class_acc": 0.1})
    md = summary_markdown(rows, ("audio", "visual"), "fedcmi bench --preset x")
    assert "## alpha = 0.1, multimodal-ratio = 0.5, unimodal-split = 0.5" in md
    assert "`fedcmi bench --preset x`" in md
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    # 0.5, 0.7: mean 0.6, sample sd 0.1414, t(0.975, 1 dof) = 12.706 -> half-width 12.706 * 0.1414 / sqrt(2)
    assert "| 0.600 ± 1.271 |" in lines["fedavg"]
    assert "**0.800 ± 0.000**" in lines["fedcmi"]  # best acc_mm in bold
    assert "| – |" in lines["unimodal-audio"]      # never sees visual
    assert lines["fedavg"].count("**") == 4         # ties on the last two columns are all bold
    # paired with fedavg per seed: fedcmi 0.8-0.5, 0.8-0.7 -> +0.2, half-width 12.706 * 0.1414 / sqrt(2)
    # Holm p: fedcmi t = 0.2 / (0.1414 / sqrt 2) = 2.0 with 1 dof, p = 0.295; unimodal-audio +0.1, -0.1: p = 1;
    # adjusted over the two: 2 x 0.295 = 0.590, then max(0.590, 1 x 1.0) = 1.000
    assert lines["fedcmi"].endswith("| +0.200 ± 1.271 (tie) | 0.590 |")
    assert lines["fedavg"].endswith("| (reference) | – |")
    assert lines["unimodal-audio"].endswith("| +0.000 ± 1.271 (tie) | 1.000 |")
    assert "Seeds: 0, 1." in md
    assert "own variant" not in md  # no fedcmi-plus here
    plus = summary_markdown([{**r, "strategy": "fedcmi-plus"} for r in rows if r["strategy"] == "fedcmi"] + rows,
                            ("audio", "visual"), "x")
    assert "`fedcmi-plus`: fedcmi's own variant, not a published method" in plus


def test_summary_paired_column_names_a_clear_win():
    rows = [{"strategy": s, "seed": seed, "dirichlet_alpha": "1", "multimodal_ratio": 1.0, "unimodal_split": 0.5,
             "acc_mm": acc, "acc_audio": acc, "acc_visual": acc, "acc_audio_zero": acc, "acc_visual_zero": acc,
             "worst_class_acc": acc}
            for seed, base in enumerate((0.50, 0.60, 0.55))
            for s, acc in (("fedavg", base), ("fedcmi", base + 0.1 + 0.01 * seed))]
    md = summary_markdown(rows, ("audio", "visual"), "x")
    fedcmi = next(line for line in md.splitlines() if line.startswith("| fedcmi"))
    # differences 0.10, 0.11, 0.12: mean 0.11, sd 0.01, t(0.975, 2) = 4.303 -> 4.303 * 0.01 / sqrt(3) = 0.0248
    # one comparison, so Holm changes nothing: t = 0.11 / (0.01 / sqrt 3) = 19.05 with 2 dof, p = 0.0027
    assert fedcmi.endswith("| +0.110 ± 0.025 (better) | 0.003 |")
    assert "Seeds: 0-2." in md


def _counted(strategy: str, seed: int, ok: int, rejected: int = 0, failed: int = 0, capped: int = 0) -> dict:
    """A final row with the reply counts summed over its run (what collect() writes to results.csv)."""
    accs = dict.fromkeys(("acc_mm", "acc_audio", "acc_visual", "acc_audio_zero", "acc_visual_zero",
                          "worst_class_acc"), 0.5)
    return {"strategy": strategy, "seed": seed, "dirichlet_alpha": "0.5", "multimodal_ratio": 0.5,
            "unimodal_split": 0.5, **accs, "clients_ok_total": ok, "clients_failed_total": failed,
            "clients_rejected_total": rejected, "clients_timeout_total": 0, "clients_capped_total": capped}


def test_summary_replies_column_sums_rounds_and_seeds():
    # 3 seeds of 25 replies asked each (5 rounds x 5 clients): fedavg rejected 0 + 2 + 1 of 75; fedcmi rejected
    # none, one reply failed, two were accepted with their weight capped
    rows = [_counted("fedavg", 0, 25), _counted("fedavg", 1, 23, rejected=2), _counted("fedavg", 2, 24, rejected=1),
            _counted("fedcmi", 0, 25, capped=2), _counted("fedcmi", 1, 25), _counted("fedcmi", 2, 24, failed=1)]
    assert replies_cell(rows[:3]) == "rejected 3 of 75"
    assert replies_cell(rows[3:]) == "rejected 0 of 75, failed 1, capped 2"
    assert replies_cell([{"strategy": "fedavg"}]) == "–"  # a row from before the counts
    md = summary_markdown(rows, ("audio", "visual"), "x")
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table[0].startswith("| strategy | n | replies | acc_mm |")
    assert table[2].startswith("| fedavg | 3 | rejected 3 of 75 | ")
    assert table[3].startswith("| fedcmi | 3 | rejected 0 of 75, failed 1, capped 2 | ")
    note = ("2 of 6 cells rejected replies (3 in all); 1 of 6 cells had failed replies (1 in all); 1 of 6 cells had "
            "sample weights capped (2 in all); 150 replies asked in all")
    assert f"Replies: {note}: see the replies column.\n" in md
    assert replies_note(rows) == f"replies: {note}: see summary.md (replies) and results.csv"
    clean = [_counted("fedavg", 0, 25), _counted("fedcmi", 0, 25)]
    assert replies_note(clean) == ("replies: all 50 replies in 2 cells accepted as sent (none rejected, failed, "
                                   "timed out or capped)")
    assert "| fedcmi | 1 | rejected 0 of 25 | " in summary_markdown(clean, ("audio", "visual"), "x")


def test_bench_reports_the_replies_of_finished_cells(tmp_path, capsys):
    """Through `fedcmi bench` with every cell already finished (no Ray): results.csv has each cell's counts summed
    over its rounds, summary.md the replies column, and the terminal a closing line."""
    out = tmp_path / "b"
    args = ["bench", "--strategies", "fedavg,fedcmi", "--alphas", "0.5", "--mixes", "0.5:0.5", "--seeds", "1",
            "--out", str(out), *TINY]
    plan = make_plan("quick", out, parse_overrides(TINY), "fedavg,fedcmi", 1, "0.5", "0.5:0.5")
    save_plan(plan, "fedcmi " + " ".join(args))
    rejected = "partition 1: rejected: update norm 50 exceeds 10 x the round's median (group a)"
    for cell in plan.cells():
        path = plan.cell_dir(cell)
        path.mkdir(parents=True)
        bad = cell.strategy == "fedcmi"
        rows = [{"round": r, "acc_mm": 0.5, "acc_audio": 0.4, "acc_visual": 0.3, "acc_audio_zero": 0.3,
                 "acc_visual_zero": 0.2, "worst_class_acc": 0.1, "clients_ok": 0 if r == 0 else 2 - bad,
                 "clients_failed": 0, "clients_rejected": int(bad and r > 0), "clients_timeout": 0,
                 "clients_capped": int(bad and r == 2), "skipped": 0,
                 "faults": rejected if bad and r else "", "wall_s": 1.0} for r in range(3)]
        (path / "metrics.json").write_text(json.dumps(rows))
        (path / "config.json").write_text(json.dumps({"modalities": ["audio", "visual"]}))
        (path / "status.json").write_text(json.dumps({"status": "complete", "rounds": 2}))
        (path / "model.safetensors").write_bytes(b"")  # a complete run has its final model
    assert main(args) == 0
    shown = capsys.readouterr().out
    assert ("replies: 1 of 2 cells rejected replies (2 in all); 1 of 2 cells had sample weights capped (1 in all); "
            f"8 replies asked in all: see {out / 'summary.md'} (replies) and results.csv") in " ".join(shown.split())
    with open(out / "results.csv") as fh:
        results = {r["strategy"]: r for r in csv.DictReader(fh)}
    assert {k: results["fedcmi"][f"clients_{k}_total"] for k in ("ok", "rejected", "capped", "failed")} == {
        "ok": "2", "rejected": "2", "capped": "1", "failed": "0"}
    assert results["fedavg"]["clients_ok_total"] == "4" and results["fedavg"]["clients_rejected_total"] == "0"
    md = (out / "summary.md").read_text()
    assert "| fedcmi | 1 | rejected 2 of 4, capped 1 | " in md and "| fedavg | 1 | rejected 0 of 4 | " in md


def test_bad_grids_are_refused_before_anything_runs(tmp_path, capsys):
    for args, needle in ((["--preset", "huge"], "--preset 'huge'"), (["--strategies", "fedfoo"], "fedfoo"),
                         (["--mixes", "2:1"], "must be in [0, 1]"), (["--alphas", "-1"], "must be > 0"),
                         (["--seeds", "0"], "--seeds 0"), (["lr=-1"], "lr=-1.0: must be > 0"),
                         (["--jobs", "0"], "--jobs 0: must be at least 1")):
        assert main(["bench", "--out", str(tmp_path / "b"), *args]) == 2
        assert needle in capsys.readouterr().err
    plan = make_plan("quick", tmp_path / "c", {})
    assert plan.seeds == (0,)
    assert make_plan("quick", tmp_path / "d", {}, seeds="21-23").seeds == (21, 22, 23)
    assert make_plan("quick", tmp_path / "e", {}, seeds="7,3,7").seeds == (7, 3)
    assert make_plan("quick", tmp_path / "f", {}, seeds="2").seeds == (0, 1)
    for bad in ("5-3", "x", "1-y", "-2"):
        with pytest.raises(ConfigError, match="--seeds"):
            make_plan("quick", tmp_path / "g", {}, seeds=bad)
    assert [str(m) for m in plan.mixes] == ["0.5:0.5", "1:0.5"] and Mix.parse("1:0.5") == Mix(1.0, 0.5)


def test_a_bench_started_under_another_default_names_the_key_and_how_to_continue(tmp_path):
    """A folder written when a default was different (eval-batch-size was 512) is refused with both values and
    the key=value that continues it; with that key set, the plan is accepted."""
    from fedcmi.bench.plan import save_plan
    from fedcmi.errors import ConfigError

    old = make_plan("quick", tmp_path / "b", {"eval-batch-size": 512})
    save_plan(old, "fedcmi bench --preset quick")
    with pytest.raises(ConfigError) as err:
        make_plan("quick", tmp_path / "b", {})
    assert "(eval-batch-size: 512 there, 256 now); continue it with eval-batch-size=512" in str(err.value)
    assert make_plan("quick", tmp_path / "b", {"eval-batch-size": 512}).base.server.eval_batch_size == 512


@pytest.mark.slow
def test_every_strategy_runs_through_flower_and_the_grid_resumes(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "fedcmi.cli", "bench", "--strategies", ",".join(STRATEGY_NAMES), "--alphas", "0.5",
           "--mixes", "0.5:0.5", "--seeds", "1", "--out", str(out), *TINY]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    with open(out / "results.csv") as fh:
        results = list(csv.DictReader(fh))
    assert {r["strategy"] for r in results} == {*STRATEGY_NAMES} - {"unimodal-a", "unimodal-b"} | {
        "unimodal-audio", "unimodal-visual"}
    assert all(r["round"] == "2" and float(r["acc_mm"]) > 0 for r in results)
    for col in ("strategy", "seed", "dirichlet_alpha", "multimodal_ratio", "unimodal_split", "acc_mm", "acc_audio",
                "acc_visual", "acc_audio_zero", "acc_visual_zero", "worst_class_acc", "wall_s"):
        assert col in results[0]
    with open(out / "rounds.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 3 * len(STRATEGY_NAMES)
    assert (out / "summary.md").is_file() and list(out.glob("rounds_*.png")) and list(out.glob("bars_*.png"))

    cells = sorted((out / "cells").iterdir())
    stamps = {c.name: (c / "metrics.json").stat().st_mtime_ns for c in cells}
    victim = cells[3]
    (victim / "status.json").unlink()  # as if the grid had been interrupted in this cell
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"1 cells run, {len(STRATEGY_NAMES) - 1} reused" in " ".join(second.stdout.split())
    for c in cells:
        changed = (c / "metrics.json").stat().st_mtime_ns != stamps[c.name]
        assert changed == (c == victim), c.name
    assert json.loads((victim / "status.json").read_text())["status"] == "complete"

    # The concat baseline has no infiltration path: alone = zero-filled, and its model has no such layer.
    fedavg = next(c for c in cells if c.name.startswith("fedavg__"))
    last = json.loads((fedavg / "metrics.json").read_text())[-1]
    assert last["acc_audio"] == last["acc_audio_zero"] and last["acc_visual"] == last["acc_visual_zero"]
    assert "inf_b.weight" not in load_file(str(fedavg / "model.safetensors"))

    # The first run had 3 cells at a time (the default); one at a time, from scratch in a new federation,
    # gives the same numbers and the same final models (the same seed, whatever runs beside it).
    alone = tmp_path / "alone"
    some = ["fedcmi", "fedcmi-plus", "unimodal-a"]
    cmd_alone = [*cmd[:cmd.index("--strategies") + 1], ",".join(some), *cmd[cmd.index("--alphas"):]]
    cmd_alone[cmd_alone.index("--out") + 1] = str(alone)
    third = subprocess.run([*cmd_alone, "--jobs", "1"], capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=900)
    assert third.returncode == 0 and "1 at a time" in third.stdout, third.stderr[-2000:]
    for c in sorted((alone / "cells").iterdir()):
        ours, theirs = (json.loads((d / c.name / "metrics.json").read_text()) for d in (alone / "cells", out / "cells"))
        assert [{k: v for k, v in r.items() if k != "wall_s"} for r in ours] == \
            [{k: v for k, v in r.items() if k != "wall_s"} for r in theirs], c.name
        ours, theirs = (load_file(str(d / c.name / "model.safetensors")) for d in (alone / "cells", out / "cells"))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), c.name
    assert len(list((alone / "cells").iterdir())) == len(some)


def test_default_jobs_fill_the_actors():
    """3 cells at once on a few cores; with more client actors than 2/3 of a round's clients, enough cells
    that their rounds keep every actor busy (2 x actors / clients-per-round)."""
    from fedcmi.cli.bench import default_jobs
    from fedcmi.config import RunConfig

    def backend(cpus, per_client):
        return {"client_resources": {"num_cpus": per_client}, "init_args": {"num_cpus": cpus}}

    cfg = RunConfig().replace(clients_per_round=5)
    assert default_jobs(cfg, backend(2, 1)) == 3
    assert default_jobs(cfg, backend(16, 1)) == 7  # 16 actors, 5 clients a round: ceil(32 / 5)
    assert default_jobs(cfg, backend(16, 4)) == 3  # 4 actors
    assert default_jobs(cfg, {"client_resources": {"num_cpus": 1}, "init_args": {"address": "ray://h:1"}}) == 3
