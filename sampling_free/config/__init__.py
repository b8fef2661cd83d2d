"""Configuration: the schema (every key with default and meaning) and its loader."""
from .loader import CfgNode, ConfigError, load_config, save_config, with_values
from .schema import SCHEMA, Key

__all__ = ["CfgNode", "ConfigError", "Key", "SCHEMA", "load_config", "save_config", "with_values"]
