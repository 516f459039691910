"""The CLI stops bad input before anything starts: one line naming key and rule, exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedcmi.cli import main


@pytest.mark.parametrize("args, needle", [
    (["simulate", "dirichlet-alpha=0"], "dirichlet-alpha=0.0: must be > 0"),
    (["simulate", "multimodal-ratio=2"], "multimodal-ratio=2.0: must be in [0, 1]"),
    (["simulate", "clients-per-round=50"], "clients-per-round=50: must be <= num-clients (20)"),
    (["simulate", "dataset=cifar"], "dataset='cifar': must be one of synthetic-av, digits-cg"),
    (["simulate", "num-clients=abc"], "num-clients='abc': must be an integer"),
    (["simulate", "learning-rate=0.1"], "unknown key 'learning-rate'"),
    (["simulate", "lr"], "'lr': overrides are written key=value"),
    (["simulate", "--config", "/nonexistent/run.toml"], "does not exist"),
    (["simulate", "client-num-cpus=64"], "client-num-cpus=64.0: must be <= the"),
    (["partitions", "num-clients=0"], "num-clients=0: must be >= 1"),
])
def test_bad_configuration_exits_2_with_one_line(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_non_empty_out_dir_is_refused(tmp_path, capsys):
    (tmp_path / "old.csv").write_text("x")
    assert main(["simulate", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_out_dir_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert main(["simulate", "--out", str(target)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_partitions_table(capsys):
    assert main(["partitions", "num-clients=6", "clients-per-round=2", "multimodal-ratio=0.5"]) == 0
    out = capsys.readouterr().out
    assert out.count("audio+visual") == 3
    assert "label counts" in out


def test_console_script_help_is_for_newcomers():
    out = subprocess.run([sys.executable, "-m", "fedcmi.cli", "simulate", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for key in ("dirichlet-alpha", "multimodal-ratio", "unimodal-split", "clients-per-round", "proximal-mu"):
        assert key in out
    assert "examples:" in out


def test_version(capsys):
    from fedcmi import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fedcmi {__version__}"


def test_partitions_does_not_check_clients_per_round(capsys):
    """partitions trains nothing: num-clients below the default clients-per-round (10) is fine there ..."""
    assert main(["partitions", "num-clients=8"]) == 0
    assert "8 clients" in capsys.readouterr().out
    assert main(["simulate", "num-clients=8"]) == 2  # ... but not for a run
    assert "clients-per-round=10: must be <= num-clients (8)" in capsys.readouterr().err


def test_cuda_without_a_gpu_is_refused_before_anything_starts(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    started = []
    monkeypatch.setattr("fedcmi.runtime.simulation.simulate", lambda *a, **k: started.append(1))
    assert main(["simulate", "device=cuda", "num-clients=2", "clients-per-round=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "fedcmi: error: device='cuda': no CUDA GPU is visible on this machine (use device=auto or cpu)"
    assert started == []


def test_a_signal_while_the_command_imports_ends_with_one_line(monkeypatch, capsys):
    """During the imports a signal only sets the stop flag (raising inside torch's import can abort)."""
    import os
    import signal
    import time

    import fedcmi.cli as cli

    real = cli._parser

    def parser_hit_by_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs here and must not raise
        return real()

    monkeypatch.setattr(cli, "_parser", parser_hit_by_sigterm)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["partitions", "num-clients=4"]) == 143
    assert capsys.readouterr().err.strip() == "fedcmi: interrupted (SIGTERM)"
    assert signal.getsignal(signal.SIGTERM) == before


TINY_RUN = ["num-clients=4", "clients-per-round=2", "num-server-rounds=3", "train-size=600", "test-size=200"]


def _rows(rejected_in: int) -> list[dict]:
    """Rounds 0-2 of a 2-clients-a-round run; in round ``rejected_in`` partition 1's reply is rejected."""
    return [{"round": r, "acc_mm": 0.5, "acc_audio": 0.4, "acc_visual": 0.3, "acc_audio_zero": 0.3,
             "acc_visual_zero": 0.2, "worst_class_acc": 0.1, "dominant": "audio", "ratio": 1.5,
             "clients_ok": 0 if r == 0 else 2 - (r == rejected_in), "clients_failed": 0,
             "clients_rejected": int(r == rejected_in), "clients_timeout": 0, "clients_capped": 0,
             "skipped": 0, "wall_s": 1.0,
             "faults": "partition 1: rejected: update norm 99 exceeds 10 x the round's median (group a)"
             if r == rejected_in else ""} for r in range(3)]


def _fake_simulate(monkeypatch, end: str):
    """`simulate` without Ray: writes the rows a run would have written, then ends as ``end`` says."""
    import json
    import signal
    from pathlib import Path
    from types import SimpleNamespace

    from fedcmi.runtime.interrupt import Interrupted
    from fedcmi.runtime.simulation import SimulationFailed

    def simulate(cfg, reporter, verbose=False, resume=False, client_app=None):
        out = Path(cfg.output.out_dir)
        out.mkdir(parents=True)
        rows = _rows(rejected_in=2)
        for row in rows:
            reporter(row)
        (out / "metrics.json").write_text(json.dumps(rows))
        if end == "interrupted":
            (out / "status.json").write_text(json.dumps({"status": "interrupted", "rounds": 2, "signal": "SIGINT"}))
            raise Interrupted(signal.SIGINT)
        if end == "failed":
            raise SimulationFailed("the simulation ended before its last round (see the log above)")
        (out / "status.json").write_text(json.dumps({"status": "complete", "rounds": 2}))
        return SimpleNamespace(path=out, rows=rows)

    monkeypatch.setattr("fedcmi.runtime.simulation.simulate", simulate)


TOTALS = "replies: 3 accepted of 4 (1 rejected, 0 failed, 0 timed out; 0 weights capped)"
FAULT = "  round 2: partition 1: rejected: update norm 99 exceeds 10 x the round's median (group a)"


def test_a_run_ends_with_its_replies(tmp_path, monkeypatch, capsys):
    """Through `fedcmi simulate` (its rounds faked): the totals and the fault, then where the results are."""
    _fake_simulate(monkeypatch, "complete")
    assert main(["simulate", "--out", str(tmp_path / "run"), *TINY_RUN]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-3:-1] == [TOTALS, FAULT] and out[-1].startswith(f"results written to {tmp_path / 'run'}: ")
    assert out[-4].startswith("round 2/3 ") and "replies 1/2 (1 rejected)" in out[-4]


def test_an_interrupted_or_failed_run_ends_with_its_replies_too(tmp_path, monkeypatch, capsys):
    """The rounds on disk are totalled on stdout; stderr keeps its one line. A run without --out names its
    folder before it starts, so the interrupted line can say how to continue it."""
    monkeypatch.chdir(tmp_path)
    _fake_simulate(monkeypatch, "interrupted")
    assert main(["simulate", *TINY_RUN]) == 130
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-2:] == [TOTALS, FAULT]
    (run,) = (tmp_path / "runs").iterdir()
    assert captured.err.splitlines() == [
        f"fedcmi: interrupted (SIGINT) after round 2 of 3; continue with: fedcmi simulate --resume runs/{run.name}"]
    _fake_simulate(monkeypatch, "failed")
    assert main(["simulate", "--out", str(tmp_path / "failed"), *TINY_RUN]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-2:] == [TOTALS, FAULT]
    assert captured.err.splitlines() == ["fedcmi: run failed: SimulationFailed: the simulation ended before its last "
                                         "round (see the log above)"]


def test_unknown_keys_and_names_get_the_closest_one(capsys):
    assert main(["simulate", "num-round=5"]) == 2
    assert capsys.readouterr().err.strip() == ("fedcmi: error: unknown key 'num-round'; did you mean "
                                               "'num-server-rounds'?")
    assert main(["simulate", "xyzzy=1"]) == 2  # nothing close: where the keys are listed
    assert capsys.readouterr().err.strip() == ("fedcmi: error: unknown key 'xyzzy' (see `fedcmi simulate --help` "
                                               "for the keys)")
    for argv, close in ((["simulate", "strategy=fedprx"], "fedprox"), (["partitions", "strategy=pmrr"], "pmr"),
                        (["bench", "--strategies", "fedavg,fedcmi-nonif"], "fedcmi-noinf"),
                        (["methods", "ogm"], "ogm-ge"), (["simulate", "--preset", "papr"], "paper"),
                        (["bench", "--preset", "quik"], "quick")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.strip().endswith(f"; did you mean {close!r}?"), argv


def test_every_command_reports_an_error_in_one_line(capsys, tmp_path):
    """simulate --preset is checked like bench --preset (not by argparse's two-line usage error); argparse's own
    errors take the same one-line form."""
    for argv, rule in ((["simulate", "--preset", "nope"], "paper"), (["partitions", "--preset", "nope"], "paper"),
                       (["bench", "--preset", "nope"], "quick, default, label-skew, long")):
        assert main(argv) == 2
        assert capsys.readouterr().err.splitlines() == [f"fedcmi: error: --preset 'nope': must be one of {rule}"]
    for argv, line in ((["simulate", "--bogus"], "unrecognized arguments: --bogus (see `fedcmi simulate --help`)"),
                       (["simulat"], "did you mean 'simulate'? (see `fedcmi --help`)"),
                       # prepare and features take no key=value: a stray one is refused, not silently dropped
                       (["prepare", "fsdd", "--root", "r", "--out", "o", "seed=3"],
                        "unrecognized arguments: seed=3 (see `fedcmi prepare --help`)"),
                       (["features", "d", "--out", "o", "seed=3"],
                        "unrecognized arguments: seed=3 (see `fedcmi features --help`)")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("fedcmi: error: ") and err[0].endswith(line)
    assert main(["simulate", "--resume", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"fedcmi: error: --resume {tmp_path / 'nope'}: no such directory"
    (tmp_path / "file").write_text("x")
    assert main(["simulate", "--resume", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err.strip() == f"fedcmi: error: --resume {tmp_path / 'file'}: not a directory"


def test_methods_is_one_line_per_method_and_methods_name_its_keys(capsys):
    from fedcmi.methods.registry import METHODS

    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(METHODS) + 2  # a header, one line per method, the keys every method reads
    assert [line.split()[0] for line in lines[1:-1]] == list(METHODS)
    assert "fedcmi methods NAME" in lines[-1]
    assert main(["methods", "fedcmi-noinf"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fedcmi-noinf: ablation: no infiltration distillation\n")
    assert "  lambda-cmi=0.0* " in out and "  proximal-mu=0.01 " in out and "  tau-min=0.0 " in out
    assert "defined by (a value you set that contradicts it is refused): lambda-cmi = 0.0" in out
    assert main(["methods", "fedavg-la"]) == 0  # a default outside the keys the method reads is listed too
    assert "  logit-adjust=1.0* " in capsys.readouterr().out
