"""Configuration: the schema (every key with default and meaning) and its loader."""
from .loader import (ALL_KEYS, CONFIG_ROOT, DEFAULT_CONFIG, CfgNode, ConfigError, config_items, find_config,
                     load_config, save_config, with_values)
from .schema import SCHEMA, Key

__all__ = ["ALL_KEYS", "CONFIG_ROOT", "DEFAULT_CONFIG", "CfgNode", "ConfigError", "config_items", "find_config", "Key",
           "SCHEMA", "load_config", "save_config", "with_values"]
