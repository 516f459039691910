"""A method's settings are defaults: a key the user set always reaches the objective that trains, a key that
contradicts what defines the method is refused, and config.json holds the values that ran."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedcmi.config import ConfigError, defaults, effective, resolve, unused_keys
from fedcmi.methods.base import TrainSettings
from fedcmi.methods.registry import METHOD_NAMES, method_spec
from fedcmi.methods.remedies import KEYS as REMEDY_KEYS
from fedcmi.methods.remedies import Remedies
from fedcmi.models import ModelSpec
from server.app import build_strategy

ROOT = Path(__file__).parents[1]

# Where each method key shows up in what trains: the local method object, the optimiser settings, or the
# server strategy (which sends the warm-up switch).
WHERE = {"proximal-mu": ("settings", "proximal_mu"), "lambda-self": ("method", "lambda_self"),
         "lambda-cmi": ("method", "lambda_cmi"), "lambda-cross": ("method", "lambda_cross"),
         "class-wise-temperature": ("method", "class_wise_temperature"), "temperature": ("method", "temperature"),
         "gamma": ("method", "gamma"), "dominance": ("method", "dominance"),
         "warmup-rounds": ("strategy", "warmup_rounds"), "ogm-alpha": ("method", "alpha"),
         "pmr-alpha": ("method", "alpha"), "pmr-momentum": ("method", "momentum"),
         "unimodal-zero-fill": ("method", "unimodal_zero_fill"), "normalize-loss": ("method", "normalize_loss"),
         "dominance-momentum": ("strategy", "dominance_momentum"), "tau-min": ("strategy", "tau_min"),
         "ratio-mean": ("strategy", "ratio_mean"),
         "logit-adjust": ("remedy", "tau"), "restricted-softmax": ("remedy", "alpha"),
         "ntd-beta": ("remedy", "beta"), "ntd-temperature": ("remedy", "temperature")}
# Keys of a remedy that only acts while another of its keys switches it on
SWITCHED_BY = {"ntd-temperature": {"ntd-beta": 1.0}}
CANDIDATES = {"proximal-mu": [0.0, 0.37], "lambda-self": [0.0, 1.3], "lambda-cmi": [0.0, 2.5],
              "lambda-cross": [0.0, 2.0], "class-wise-temperature": [False, True], "temperature": [0.7],
              "gamma": [3.5], "dominance": ["global", "local"], "warmup-rounds": [3], "ogm-alpha": [0.3],
              "pmr-alpha": [0.6], "pmr-momentum": [0.45], "unimodal-zero-fill": [0.5], "normalize-loss": [True],
              "dominance-momentum": [0.8], "tau-min": [0.3], "ratio-mean": ["geometric"], "logit-adjust": [0.0, 1.0],
              "restricted-softmax": [0.5],
              "ntd-beta": [1.0], "ntd-temperature": [2.0]}


def _user_value(name: str, key: str):
    """A value the user might set: one the method allows, different from its default where possible."""
    spec = method_spec(name)
    allowed = [v for v in CANDIDATES[key] if key not in spec.defining or spec.defining[key].check(v)]
    default = spec.defaults.get(key, defaults()[key])
    return next((v for v in allowed if v != default), allowed[0])


def _trained_value(cfg, key: str):
    spec = method_spec(cfg.method.strategy)
    where, attr = WHERE[key]
    if where == "settings":
        return getattr(TrainSettings.of(cfg, spec), attr)
    if where == "strategy":
        from fedcmi.methods.guidance import DominanceGuidance

        return getattr(build_strategy(cfg, ModelSpec(2, (1,), (1,))).server.find(DominanceGuidance), attr)
    if where == "remedy":
        return next(getattr(r, attr) for r in Remedies.from_config(cfg).on if hasattr(r, attr))
    return getattr(spec.build(cfg), attr)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_key_a_method_reads_reaches_what_trains_when_set(name):
    spec = method_spec(name)
    assert set(spec.uses) <= set(WHERE), "a new method key needs a row in WHERE"
    for key in (*spec.uses, *REMEDY_KEYS):  # the label-skew remedies combine with every method
        value = _user_value(name, key)
        cfg = effective({"strategy": name, **SWITCHED_BY.get(key, {}), key: value})
        assert cfg.to_dict()[key] == value, (name, key)
        assert _trained_value(cfg, key) == value, (name, key)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_defaults_fill_only_keys_the_user_did_not_set(name):
    spec = method_spec(name)
    cfg = effective({"strategy": name})
    for key, value in spec.defaults.items():
        assert cfg.to_dict()[key] == value
        assert _trained_value(cfg, key) == value


def test_the_three_reported_overrides_now_train_with_the_users_values():
    assert TrainSettings.of(resolve(overrides={"strategy": "fedavg", "proximal-mu": 0.5}),
                            method_spec("fedavg")).proximal_mu == 0.5
    assert method_spec("fedcmi").build(resolve(overrides={"strategy": "fedcmi", "lambda-cross": 2})).lambda_cross == 2
    with pytest.raises(ConfigError, match=r"strategy=fedcmi-noinf is defined by lambda-cmi = 0.0; lambda-cmi=3.0"):
        resolve(overrides={"strategy": "fedcmi-noinf", "lambda-cmi": 3})


@pytest.mark.parametrize("name, key, bad", [("fedcmi-noprox", "proximal-mu", 0.1),
                                            ("fedcmi-fixedtemp", "class-wise-temperature", True),
                                            ("fedcmi-local", "dominance", "global"),
                                            ("fedcmi-plus", "lambda-cross", 0.0), ("fedprox", "proximal-mu", 0.0),
                                            ("ogm-ge", "fusion", "sgmft")])  # it splits the concat head's fc
def test_contradicting_a_defining_key_is_refused(name, key, bad):
    with pytest.raises(ConfigError, match=f"strategy={name} is defined by {key}"):
        effective({"strategy": name, key: bad})


def test_a_preset_sits_under_the_methods_defaults():
    cfg = resolve(overrides={"strategy": "fedcmi-noprox"}, preset={"proximal-mu": 1.0})
    assert cfg.method.proximal_mu == 0.0  # the preset does not contradict the method: the method's value wins
    cfg = resolve(overrides={"strategy": "fedavg", "proximal-mu": 0.2}, preset={"proximal-mu": 1.0})
    assert cfg.method.proximal_mu == 0.2


def test_unused_keys_are_the_method_keys_it_does_not_read():
    fedavg = unused_keys(effective({"strategy": "fedavg"}))
    assert "lambda-self" in fedavg and "ogm-alpha" in fedavg and "proximal-mu" not in fedavg
    assert "lambda-self" not in unused_keys(effective({"strategy": "fedcmi"}))


def test_cli_refuses_a_contradiction_with_one_line_and_exit_2_and_writes_effective_config(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "fedcmi.cli", "simulate", "strategy=fedcmi-noinf", "lambda-cmi=3"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "fedcmi: error: strategy=fedcmi-noinf is defined by lambda-cmi = 0.0; lambda-cmi=3.0 contradicts it "
        "(drop lambda-cmi= or choose another strategy)"]
    from fedcmi.runs.run_dir import RunDirectory

    cfg = effective({"strategy": "fedavg"})
    RunDirectory(tmp_path / "run", cfg, ("audio", "visual"))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["proximal-mu"] == 0.0 and saved["strategy"] == "fedavg"
    assert "lambda-cmi" in saved["unused-keys"] and saved["modalities"] == ["audio", "visual"]
