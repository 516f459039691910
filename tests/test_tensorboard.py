"""TensorBoard event files of a run (tensorboard=true, the default): every round's numbers, the configuration,
and a resumed run that shows each round once."""

from __future__ import annotations

import math

import pytest

from fedcmi.config import RunConfig
from fedcmi.metrics import round_row
from fedcmi.runs.run_dir import RunDirectory

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402

NAMES = ("audio", "visual")
CFG = RunConfig(num_clients=4, clients_per_round=3, num_server_rounds=5)


def _row(r: int, shift: float = 0.0) -> dict:
    accs = {"acc_mm": 0.5 + r / 100 + shift, "acc_audio": 0.4, "acc_visual": 0.3 + shift, "acc_audio_zero": 0.35,
            "acc_visual_zero": 0.25, "worst_class_acc": 0.1, "per_class_acc": [0.125, math.nan, 0.875]}
    losses = {"loss": 1.5 - r / 10, "loss-fused": 1.0, "loss-self": 0.25, "loss-cmi": 0.125} if r else {}
    info = {"clients_ok": 2, "clients_failed": 1, "clients_rejected": 0, "clients_timeout": 0,
            "clients_capped": 1} if r else {}
    return round_row(r, accs, losses, "audio" if r else "", 1.75 + shift if r else math.nan, info, 3.0 + r)


def _shown(folder) -> event_accumulator.EventAccumulator:
    """What TensorBoard shows of a folder (its loader, with its purge rules)."""
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0,
                                                                        event_accumulator.TENSORS: 0})
    acc.Reload()
    return acc


def _series(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _record(run: RunDirectory, rounds, shift: float = 0.0) -> None:
    for r in rounds:
        run.add_round(_row(r, shift))


def test_every_round_is_logged_with_its_accuracies_losses_replies_and_ratio(tmp_path):
    run = RunDirectory(tmp_path / "run", CFG, NAMES)
    _record(run, range(3))
    run.release()
    acc = _shown(tmp_path / "run" / "tensorboard")
    tags = set(acc.Tags()["scalars"])
    expected = {"accuracy/acc_mm", "accuracy/acc_audio", "accuracy/acc_visual", "accuracy/acc_audio_zero",
                "accuracy/acc_visual_zero", "accuracy/worst_class_acc", "accuracy/per_class_acc_0",
                "accuracy/per_class_acc_2", "loss/loss", "loss/loss_fused", "loss/loss_self", "loss/loss_cmi",
                "replies/ok", "replies/failed", "replies/rejected", "replies/timeout", "replies/capped",
                "replies/skipped", "dominance/ratio", "time/wall_s"}
    assert expected <= tags, expected - tags
    assert "accuracy/per_class_acc_1" not in tags  # NaN (a class absent from the test set) is left out
    assert _series(acc, "accuracy/acc_mm") == [(0, pytest.approx(0.5)), (1, pytest.approx(0.51)),
                                               (2, pytest.approx(0.52))]
    assert _series(acc, "replies/ok") == [(0, 0.0), (1, 2.0), (2, 2.0)]
    assert _series(acc, "replies/capped")[1:] == [(1, 1.0), (2, 1.0)]
    assert [s for s, _ in _series(acc, "dominance/ratio")] == [1, 2]  # round 0 has no ratio
    assert [s for s, _ in _series(acc, "loss/loss")] == [1, 2]
    config = acc.Tensors("config/text_summary")
    assert [e.step for e in config] == [0]
    text = config[0].tensor_proto.string_val[0].decode()
    assert '"num-clients": 4' in text and '"modalities": [' in text


def test_a_resumed_run_shows_each_round_once_with_its_new_values(tmp_path):
    """The first attempt logged rounds 0-4, its checkpoint is at round 2 (it was killed in between): resumed
    from there, rounds 3 and 4 of the first attempt are hidden (purge marker), the resume's shown, each once."""
    out = tmp_path / "run"
    run = RunDirectory(out, CFG, NAMES)
    _record(run, range(5))
    run.release()
    resumed = RunDirectory(out, CFG.replace(num_server_rounds=6), NAMES, resume_after=2)
    _record(resumed, range(3, 7), shift=0.25)
    resumed.release()
    acc = _shown(out / "tensorboard")
    for tag in ("accuracy/acc_mm", "accuracy/acc_visual", "replies/ok", "dominance/ratio", "time/wall_s"):
        steps = [s for s, _ in _series(acc, tag)]
        assert steps == sorted(set(steps)) and steps[-1] == 6, (tag, steps)
    assert _series(acc, "accuracy/acc_visual") == [(0, pytest.approx(0.3)), (1, pytest.approx(0.3)),
                                                   (2, pytest.approx(0.3))] + [(r, pytest.approx(0.55))
                                                                               for r in range(3, 7)]
    config = acc.Tensors("config/text_summary")
    assert [e.step for e in config] == [0, 3]
    assert '"num-server-rounds": 6' in config[1].tensor_proto.string_val[0].decode()


def test_a_resumed_run_without_event_files_gets_its_earlier_rounds(tmp_path):
    out = tmp_path / "run"
    run = RunDirectory(out, CFG.replace(tensorboard=False), NAMES)
    _record(run, range(3))
    run.release()
    assert not (out / "tensorboard").exists()
    resumed = RunDirectory(out, CFG, NAMES, resume_after=2)  # e.g. a run from before TensorBoard logging
    _record(resumed, range(3, 5))
    resumed.release()
    acc = _shown(out / "tensorboard")
    assert [s for s, _ in _series(acc, "accuracy/acc_mm")] == [0, 1, 2, 3, 4]
    assert [e.step for e in acc.Tensors("config/text_summary")] == [0]


def test_a_finished_run_reopened_to_write_its_final_files_adds_no_step(tmp_path):
    """`--resume` of a run killed after its last checkpoint only writes the final files: no round, no config."""
    out = tmp_path / "run"
    run = RunDirectory(out, CFG, NAMES)
    _record(run, range(6))
    run.release()
    RunDirectory(out, CFG, NAMES, resume_after=5).release()
    acc = _shown(out / "tensorboard")
    assert [s for s, _ in _series(acc, "accuracy/acc_mm")] == [0, 1, 2, 3, 4, 5]
    assert [e.step for e in acc.Tensors("config/text_summary")] == [0]
