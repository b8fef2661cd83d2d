"""Configuration: the schema (every key with default and meaning) and its loader."""
from .loader import ALL_KEYS, CfgNode, ConfigError, config_items, load_config, save_config, with_values
from .schema import SCHEMA, Key

__all__ = ["ALL_KEYS", "CfgNode", "ConfigError", "config_items", "Key", "SCHEMA", "load_config", "save_config", "with_values"]
