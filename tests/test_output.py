"""What a user reads: one plain line per round, summaries without a spread for one seed, readable plots,
run files with the user's umask."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from fedcmi.bench.report import strategy_colours, summary_markdown
from fedcmi.cli.display import closing_lines
from fedcmi.config import RunConfig
from fedcmi.metrics import reply_totals, round_line
from fedcmi.runs import files
from fedcmi.runs.run_dir import RunDirectory

NAMES = ("audio", "visual")


def _row(r: int, **extra) -> dict:
    return {"round": r, "acc_mm": 0.5 + r / 100, "acc_audio": 0.4, "acc_visual": 0.3, "acc_audio_zero": 0.35,
            "acc_visual_zero": 0.25, "worst_class_acc": 0.1, "per_class_acc": [0.1, 0.9], "dominant": "audio",
            "ratio": 2.0, "clients_ok": 10, "clients_failed": 0, "clients_rejected": 0, "clients_timeout": 0,
            "skipped": 0, "faults": "", "wall_s": 2.345, **extra}


def test_round_line_is_one_plain_line_with_accuracies_replies_and_time():
    line = round_line(_row(4), 40, NAMES)
    assert line == ("round 4/40  mm 0.540  audio 0.400  visual 0.300  worst class 0.100  replies 10/10  2.3 s")
    assert round_line(_row(0), 40, NAMES).endswith("(initial model)")
    bad = round_line(_row(5, clients_ok=7, clients_failed=1, clients_timeout=2, skipped=1), 40, NAMES)
    assert "replies 7/10 (1 failed, 2 timeout)" in bad and bad.endswith("skipped: global model kept")
    assert "\n" not in bad and "\x1b" not in bad


def _replies(r: int, ok: int, failed: int = 0, rejected: int = 0, timeout: int = 0, capped: int = 0,
             faults: str = "", skipped: int = 0) -> dict:
    return _row(r, clients_ok=ok, clients_failed=failed, clients_rejected=rejected, clients_timeout=timeout,
                clients_capped=capped, faults=faults, skipped=skipped)


def test_closing_lines_total_the_replies_and_name_each_fault():
    norm = "partition 3: rejected: update norm 1.2e+03 exceeds 10 x the round's median (group a)"
    nan = "partition 7: rejected: enc_a.net.0.weight: contains NaN or Inf"
    rows = [_replies(0, 0),                                        # the initial model: no replies
            _replies(1, 10),
            _replies(2, 8, rejected=2, capped=1, faults=f"{norm}; {nan}"),
            _replies(3, 9, failed=1, faults="partition 0: failed: RuntimeError: a; b"),  # "; " inside a reason
            _replies(4, 9, timeout=1, capped=2, faults="partition 2: no reply within round-timeout"),
            _replies(5, 0, rejected=10, skipped=1, faults="; ".join(f"partition {p}: rejected: x" for p in range(10)))]
    # asked 10 a round, rounds 1-5: 50; accepted 10 + 8 + 9 + 9 + 0 = 36; rejected 2 + 10, failed 1, timed out 1
    assert reply_totals(rows) == {"clients_ok": 36, "clients_failed": 1, "clients_rejected": 12, "clients_timeout": 1,
                                  "clients_capped": 3, "skipped": 1}
    lines = closing_lines(rows)
    assert lines == [
        "replies: 36 accepted of 50 (12 rejected, 1 failed, 1 timed out; 3 weights capped); "
        "1 round skipped (global model kept)",
        f"  round 2: {norm}",
        f"  round 2: {nan}",
        "  round 2: 1 accepted reply with its sample weight capped",
        "  round 3: partition 0: failed: RuntimeError: a; b",
        "  round 4: partition 2: no reply within round-timeout",
        # not shown: round 4's 2 capped replies, round 5's 10 rejected ones
        "  ... and 11 more; see metrics.csv (faults)"]
    assert closing_lines(rows[:5], shown=10)[-1] == "  round 4: 2 accepted replies with their sample weight capped"
    assert all("\n" not in line for line in lines)


def test_closing_lines_of_a_clean_run_and_of_one_without_a_round():
    rows = [_replies(0, 0)] + [_replies(r, 1000) for r in (1, 2)]
    assert closing_lines(rows) == [
        "replies: all 2,000 accepted as sent (none rejected, failed, timed out or capped)"]
    assert closing_lines(rows[:1]) == []  # interrupted before round 1 ended: nothing to total
    # rows written before clients_capped existed count 0 there; a fault the server names is not counted twice
    old = {k: v for k, v in _replies(1, 4, rejected=1, faults="partition 1: rejected: x").items()
           if k != "clients_capped"}
    capped = _replies(2, 5, capped=1, faults="partition 4: capped: num-examples 900 > 300 reported")
    assert closing_lines([old, capped]) == [
        "replies: 9 accepted of 10 (1 rejected, 0 failed, 0 timed out; 1 weight capped)",
        "  round 1: partition 1: rejected: x", "  round 2: partition 4: capped: num-examples 900 > 300 reported"]


def _final(strategy: str, seed: int, acc: float) -> dict:
    keys = {"strategy": strategy, "seed": seed, "dirichlet_alpha": "1", "multimodal_ratio": 0.5,
            "unimodal_split": 0.5}
    accs = {k: acc for k in ("acc_mm", "acc_audio", "acc_visual", "acc_audio_zero", "acc_visual_zero",
                             "worst_class_acc")}
    return {**keys, **accs, **{f"{k}_last5": v for k, v in accs.items()}}


def test_summary_shows_no_spread_for_one_seed():
    md = summary_markdown([_final("fedavg", 0, 0.5), _final("fedavg", 1, 0.7), _final("fedcmi", 0, 0.8)], NAMES,
                          "fedcmi bench")
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| fed")}
    assert "| 0.600 ± 1.271 |" in lines["fedavg"]
    assert "**0.800**" in lines["fedcmi"] and "±" not in lines["fedcmi"]
    assert lines["fedcmi"].endswith("| +0.300, n/a (1 seed) | – |")  # one common seed: no interval, no verdict
    assert "tie" not in lines["fedcmi"]


def test_a_strategy_keeps_its_colour_in_every_plot():
    everything = strategy_colours(["fedavg", "unimodal-audio", "unimodal-visual", "fedcmi", "pmr", "fedavg-la"],
                                  NAMES)
    some = strategy_colours(["pmr", "fedcmi"], NAMES)
    assert some["pmr"] == everything["pmr"] and some["fedcmi"] == everything["fedcmi"]
    assert len({tuple(map(float, matplotlib_rgb(c))) for c in everything.values()}) == len(everything)
    other_names = strategy_colours(["unimodal-image", "unimodal-text"], ("image", "text"))
    assert other_names["unimodal-image"] == everything["unimodal-audio"]


def matplotlib_rgb(colour):
    from matplotlib.colors import to_rgb

    return to_rgb(colour)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    files.file_mode.cache_clear()
    yield
    os.umask(old)
    files.file_mode.cache_clear()


def test_run_files_get_the_users_umask(tmp_path, umask_027):
    run = RunDirectory(tmp_path / "run", RunConfig(), NAMES)
    for r in range(3):
        run.add_round(_row(r))
    run.save_model({"w": torch.zeros(2)})
    run.plot()
    run.finish("complete", rounds=2)
    written = [p for p in (tmp_path / "run").iterdir() if p.is_file()]
    assert {p.name for p in written} >= {"config.json", "metrics.csv", "metrics.json", "model.safetensors",
                                         "accuracy.png", "status.json"}
    for p in written:
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p.name
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "complete"


def test_each_round_goes_through_flowers_logger():
    """What `flwr run --stream` shows: the ServerApp logs every round on Flower's logger."""
    import logging

    from server.app import log_round

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    flwr_logger = logging.getLogger("flwr")
    handler, level = Keep(level=logging.INFO), flwr_logger.level
    flwr_logger.addHandler(handler)
    flwr_logger.setLevel(logging.INFO)
    try:
        log_round(_row(7), 40, NAMES)
    finally:
        flwr_logger.removeHandler(handler)
        flwr_logger.setLevel(level)
    assert seen == [round_line(_row(7), 40, NAMES)]


def test_status_json_names_the_last_recorded_round(tmp_path):
    """status.json follows the run: "running" with the last round on disk, updated every round (not 0 until
    the end), then how it ended."""
    run = RunDirectory(tmp_path / "run", RunConfig(), NAMES)

    def status() -> dict:
        return json.loads((tmp_path / "run" / "status.json").read_text())

    assert status() == {"status": "running", "rounds": None}  # nothing recorded yet
    for r in range(4):
        run.add_round(_row(r))
        assert status() == {"status": "running", "rounds": r}
    run.finish("complete", rounds=3)
    assert status() == {"status": "complete", "rounds": 3}
    run.release()
    resumed = RunDirectory(tmp_path / "run", RunConfig(), NAMES, resume_after=2)  # rows past the checkpoint go
    assert status() == {"status": "running", "rounds": 2}
    resumed.release()
