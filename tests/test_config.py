"""Configuration parsing and validation: every bad value names its key and rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcmi.config import ConfigError, RunConfig, config_keys, from_mapping, load_toml, parse_overrides, resolve


def test_defaults_are_valid_and_roundtrip():
    cfg = RunConfig()
    assert from_mapping(cfg.to_dict()) == cfg
    assert cfg.to_dict()["dirichlet-alpha"] == 0.5


def test_overrides_parse_toml_values_and_bare_words():
    out = parse_overrides(["lr=0.1", "dataset=digits-cg", "num-clients=12", "class-wise-temperature=false"])
    assert out == {"lr": 0.1, "dataset": "digits-cg", "num-clients": 12, "class-wise-temperature": False}
    cfg = from_mapping(out)
    assert (cfg.training.lr, cfg.data.dataset, cfg.federation.num_clients,
            cfg.method.class_wise_temperature) == (0.1, "digits-cg", 12, False)


@pytest.mark.parametrize("values, needle", [
    ({"dirichlet-alpha": 0}, "dirichlet-alpha=0.0: must be > 0"),
    ({"dirichlet-alpha": -1.5}, "dirichlet-alpha"),
    ({"multimodal-ratio": 1.5}, "multimodal-ratio=1.5: must be in [0, 1]"),
    ({"unimodal-split": -0.1}, "unimodal-split"),
    ({"clients-per-round": 30}, "clients-per-round=30: must be <= num-clients (20)"),
    ({"dataset": "mnist"}, "dataset='mnist': must be one of"),
    ({"strategy": "fedfoo"}, "strategy='fedfoo'"),
    ({"num-clients": "ten"}, "num-clients='ten': must be an integer"),
    ({"num-clients": True}, "must be an integer"),
    ({"lr": "fast"}, "lr='fast': must be a number"),
    ({"bogus-key": 1}, "unknown key 'bogus-key'"),
])
def test_bad_values_name_key_and_rule(values, needle):
    with pytest.raises(ConfigError) as err:
        from_mapping(values).check_run()
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_integer_given_for_float_and_float_integral_for_int():
    cfg = from_mapping({"lr": 1, "num-clients": 8.0, "clients-per-round": 2})
    assert cfg.training.lr == 1.0 and isinstance(cfg.training.lr, float)
    assert cfg.federation.num_clients == 8 and isinstance(cfg.federation.num_clients, int)


def test_toml_file_flat_and_pyproject(tmp_path):
    flat = tmp_path / "run.toml"
    flat.write_text('strategy = "fedavg"\nnum-server-rounds = 3\n')
    assert resolve(flat, {"seed": 4}).method.strategy == "fedavg"
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.flwr.app.config]\nlr = 0.2\n')
    assert load_toml(pyproject) == {"lr": 0.2}
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(tmp_path / "missing.toml")


def test_project_run_config_matches_config_keys():
    """Every key in [tool.flwr.app.config] is a known key (flwr run and the CLI share one vocabulary)."""
    from pathlib import Path

    cfg = load_toml(Path(__file__).parents[1] / "pyproject.toml")
    assert set(cfg) == set(config_keys())
    # at the built-in defaults: under `flwr run`, a key that differs from its default counts as set by the user
    assert from_mapping(cfg) == RunConfig()


values = st.one_of(st.none(), st.booleans(), st.integers(-5, 100), st.floats(allow_nan=True),
                   st.text(max_size=8), st.lists(st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*config_keys(), "nope", "x"]), values, max_size=6))
def test_random_configurations_accept_or_raise_config_error(mapping):
    try:
        cfg = from_mapping(mapping).check_run()  # the federation rules are checked before a run starts
    except ConfigError:
        return
    assert cfg.server.clients_per_round <= cfg.federation.num_clients
    assert cfg.federation.dirichlet_alpha > 0
