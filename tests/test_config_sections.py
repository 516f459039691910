"""RunConfig in typed sections: every key in exactly one section, a flat edge that did not change, no flat reads."""

import dataclasses
import pickle

import pytest

from fedcmi.config import ConfigError, RunConfig, defaults, from_mapping, normalize
from fedcmi.config.run_config import (
    FIELDS,
    SECTION_TYPES,
    SECTIONS,
    SERVER_ONLY_SECTIONS,
    DataConfig,
    ModelConfig,
    TrainingConfig,
    section_of,
)

# config.json's keys, in the order the one flat RunConfig had them (2b3245e): the order must not move
KEYS_BEFORE = """
dataset data-root num-classes train-size test-size signal-a signal-b noise missing-a-rate missing-b-rate
missing-label-rate label-noise-rate label-noise-model num-clients partitioner natural-splits dirichlet-alpha
min-partition-size multimodal-ratio unimodal-split seed local-epochs lr momentum weight-decay batch-size
strategy proximal-mu lambda-self lambda-cmi class-wise-temperature temperature gamma dominance warmup-rounds
lambda-cross ogm-alpha pmr-alpha pmr-momentum unimodal-zero-fill normalize-loss dominance-momentum tau-min
ratio-mean logit-adjust restricted-softmax ntd-beta ntd-temperature ccvr-steps ccvr-samples ccvr-lr
ccvr-moments scaffold encoder projector feature-dim fusion sgmft-tokens sgmft-heads sgmft-layers text-encoder
encoder-weights client-num-cpus device bf16 num-server-rounds clients-per-round aggregation server-opt
server-lr server-beta1 server-beta2 server-tau scaffold-lr eval-batch-size client-num-gpus ray-address
pipelined-eval round-timeout discovery-timeout min-replies max-consecutive-skips max-update-norm
update-norm-multiple membership node-registry run-name out-dir tensorboard wandb wandb-project
""".split()


def test_every_key_is_a_field_of_exactly_one_section():
    assert tuple(SECTION_TYPES) == SECTIONS
    assert [f.name for f in dataclasses.fields(RunConfig)] == list(SECTIONS)
    owners: dict[str, list[str]] = {}
    for section, cls in SECTION_TYPES.items():
        assert cls.SECTION == section and dataclasses.is_dataclass(cls)
        assert cls.__dataclass_params__.frozen, section
        for f in dataclasses.fields(cls):
            owners.setdefault(f.name.replace("_", "-"), []).append(section)
            assert FIELDS[f.name.replace("_", "-")] is f  # the flat view is the sections' own fields
    assert set(owners) == set(FIELDS) and len(FIELDS) == len(KEYS_BEFORE)
    for key, sections in owners.items():
        assert sections == [section_of(key)], key


def test_the_flat_edge_keeps_its_keys_order_and_defaults():
    cfg = RunConfig()
    assert list(cfg.to_dict()) == KEYS_BEFORE == list(defaults())
    assert cfg.to_dict() == defaults()
    assert all(getattr(getattr(cfg, section_of(k)), FIELDS[k].name) == v for k, v in defaults().items())
    assert list(cfg.client_dict()) == [k for k in KEYS_BEFORE if section_of(k) not in SERVER_ONLY_SECTIONS]


def test_the_flat_constructor_and_replace_give_each_key_to_its_section():
    cfg = RunConfig(lr=0.1, strategy="fedavg", num_clients=7, out_dir="x")
    assert (cfg.training.lr, cfg.method.strategy, cfg.federation.num_clients) == (0.1, "fedavg", 7)
    assert cfg.output.out_dir == "x"
    assert cfg.training == TrainingConfig(lr=0.1) and cfg.data == DataConfig()
    assert cfg == RunConfig(training=TrainingConfig(lr=0.1), strategy="fedavg", num_clients=7, out_dir="x")
    assert RunConfig(training=TrainingConfig(lr=0.1), lr=0.3).training.lr == 0.3  # a flat name wins over its section
    again = cfg.replace(lr=0.5, seed=3)
    assert (again.training.lr, again.federation.seed, again.method.strategy) == (0.5, 3, "fedavg")
    assert cfg.replace(model=ModelConfig(feature_dim=32)).model.feature_dim == 32
    assert cfg.training.lr == 0.1  # frozen: replace made a new one
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.lr = 1.0  # type: ignore[misc]
    # to_dict -> from_mapping and -> the flat constructor both give back the same configuration
    assert from_mapping(again.to_dict()) == again
    assert RunConfig(**{FIELDS[k].name: v for k, v in again.to_dict().items()}) == again
    assert pickle.loads(pickle.dumps(again)) == again and hash(pickle.loads(pickle.dumps(again))) == hash(again)
    assert again.name == "synthetic-av-fedavg" and RunConfig(run_name="r").name == "r"
    assert RunConfig(round_timeout=40.0).reliability.discovery_seconds == 40.0


def test_an_unknown_flat_name_is_the_same_config_error_as_an_unknown_key():
    with pytest.raises(ConfigError) as flat:
        RunConfig(lrr=0.1)
    with pytest.raises(ConfigError) as key:
        normalize({"lrr": 0.1})
    assert str(flat.value) == str(key.value) == "unknown key 'lrr'; did you mean 'lr'?"
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        RunConfig().replace(nope=1)
    with pytest.raises(TypeError, match="a TrainingConfig"):
        RunConfig(training=DataConfig())


def test_reading_a_flat_attribute_is_an_attribute_error():
    cfg = RunConfig()
    for key, f in FIELDS.items():
        with pytest.raises(AttributeError, match=rf"cfg\.{section_of(key)}\.{f.name}"):
            getattr(cfg, f.name)
        assert not hasattr(cfg, f.name)
    with pytest.raises(AttributeError):
        cfg.no_such_thing  # noqa: B018


def test_rules_run_where_their_keys_live_with_the_messages_they_had():
    # a key's own rule and a section's own rule, from the flat constructor and from the section itself
    for build in (RunConfig, DataConfig):
        with pytest.raises(ConfigError, match=r"missing-a-rate=0.6 \+ missing-b-rate=0.6: must be <= 1"):
            build(missing_a_rate=0.6, missing_b_rate=0.6)
        with pytest.raises(ConfigError, match=r"num-classes=1: must be in \[2, 64\]"):
            build(num_classes=1)
    with pytest.raises(ConfigError, match="feature-dim=30: with fusion=sgmft"):
        ModelConfig(fusion="sgmft", feature_dim=30)
    # a rule between sections stays on RunConfig
    ModelConfig(encoder="features")  # the model section alone cannot know the data set
    with pytest.raises(ConfigError, match=r"encoder=features: dataset='synthetic-av' has no extracted features"):
        RunConfig(encoder="features")
    with pytest.raises(ConfigError, match=r"encoder=features: dataset='synthetic-av' has no extracted features"):
        RunConfig().replace(model=ModelConfig(encoder="features"))
    # every key's own rule first, in key order, as the one flat class checked them
    with pytest.raises(ConfigError, match="encoder='bogus'"):
        RunConfig(dataset="crema-d", encoder="bogus")  # not "needs data-root" (a data rule)
    # check_run: the rules of a run, between the server, the federation, the method and the output
    with pytest.raises(ConfigError, match=r"clients-per-round=30: must be <= num-clients \(20\)"):
        RunConfig(clients_per_round=30).check_run()
    with pytest.raises(ConfigError, match=r"scaffold-lr=0.5: only read with scaffold=true \(scaffold=false\)"):
        RunConfig(scaffold_lr=0.5).check_run()
    with pytest.raises(ConfigError, match=r"server-lr=0.5: only read with server-opt=adam, yogi or adagrad"):
        RunConfig(server_lr=0.5).check_run()
    assert RunConfig(scaffold=True, scaffold_lr=0.5).check_run().server.scaffold_lr == 0.5
