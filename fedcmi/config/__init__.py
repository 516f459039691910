"""Configuration: the typed keys (``run_config``), parsing and the method's defaults (``parse``), presets."""

from fedcmi.config.parse import (
    META_KEYS,
    effective,
    from_mapping,
    load_toml,
    normalize,
    parse_overrides,
    parse_value,
    resolve,
    set_by_flower_run,
    unused_keys,
)
from fedcmi.config.run_config import RunConfig, config_keys, defaults, key_of
from fedcmi.errors import ConfigError

__all__ = ["META_KEYS", "ConfigError", "RunConfig", "config_keys", "defaults",
           "effective", "from_mapping", "key_of", "load_toml", "normalize", "parse_overrides", "parse_value",
           "resolve", "set_by_flower_run", "unused_keys"]
