"""YAML files and ``KEY VALUE`` overrides merged onto the schema's defaults, with errors that name the key."""
from __future__ import annotations

import ast
import copy
import difflib
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..files import write_text_atomic
from .schema import SCHEMA, Key


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


class CfgNode(dict):
    """A dict with attribute access (``cfg.MODEL.DEVICE``), frozen once built so typos cannot add keys."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("configs are read-only; use sampling_free.config.load_config(overrides=...)")

    def to_dict(self) -> dict:
        return {k: (v.to_dict() if isinstance(v, CfgNode) else copy.deepcopy(v)) for k, v in self.items()}


def _leaves(tree: dict, prefix: str = "") -> Iterable[tuple[str, Key]]:
    for name, value in tree.items():
        full = f"{prefix}{name}"
        if isinstance(value, Key):
            yield full, value
        else:
            yield from _leaves(value, full + ".")


ALL_KEYS: dict[str, Key] = dict(_leaves(SCHEMA))


def _closest(key: str) -> str:
    match = difflib.get_close_matches(key, ALL_KEYS, n=1, cutoff=0.0)
    return match[0] if match else "?"


def _unknown(key: str, source: str) -> ConfigError:
    return ConfigError(f"{source}: unknown config key {key!r}; did you mean {_closest(key)!r}?")


def _type_name(spec: Key) -> str:
    item = "lists of numbers" if spec.item == "list" else f"{spec.item}s"
    name = f"list of {item}" if spec.kind == "list" else spec.kind
    return f"{name} or null" if spec.nullable else name


def _coerce_scalar(kind: str, value: Any) -> Any:
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "list" and isinstance(value, (list, tuple)):  # a list of numbers (anchor sizes, coder weights)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return list(value)
    raise TypeError


def coerce(key: str, spec: Key, value: Any, source: str) -> Any:
    """Check ``value`` against the key's type and choices; return it normalised (tuples to lists, ints to floats)."""
    if value is None and spec.nullable:
        return None
    try:
        if spec.kind == "list":
            if isinstance(value, str) and spec.item == "str":
                value = [value]  # one string stands for a one-element list
            if not isinstance(value, (list, tuple)):
                raise TypeError
            result = [_coerce_scalar(spec.item, v) for v in value]
        else:
            result = _coerce_scalar(spec.kind, value)
    except TypeError:
        raise ConfigError(
            f"{source}: {key} must be a {_type_name(spec)}, got {value!r} ({type(value).__name__})"
        ) from None
    if spec.choices is not None and result not in spec.choices:
        near = difflib.get_close_matches(str(result), [str(c) for c in spec.choices], n=1, cutoff=0.0)
        raise ConfigError(
            f"{source}: {key} = {result!r} is not one of {list(spec.choices)}"
            + (f"; did you mean {near[0]!r}?" if near else "")
        )
    return result


def _flatten(tree: Any, prefix: str, source: str) -> dict[str, Any]:
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(tree).__name__}")
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        full = f"{prefix}{name}"
        if full in ALL_KEYS:
            flat[full] = value
        elif isinstance(value, dict) and any(k.startswith(full + ".") for k in ALL_KEYS):
            flat.update(_flatten(value, full + ".", source))
        else:
            raise _unknown(full, source)
    return flat


def parse_override_value(text: str) -> Any:
    """Command-line values are Python/YAML literals (``"('a', 'b')"``, ``1e-4``, ``True``, ``null``); else strings."""
    if not text.strip():
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if value is None or isinstance(value, (bool, int, float, list)) else text


def _nest(flat: dict[str, Any]) -> CfgNode:
    root: dict = {}
    for key, value in flat.items():
        node = root
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value

    def freeze(d: dict) -> CfgNode:
        node = CfgNode()
        for k, v in d.items():
            dict.__setitem__(node, k, freeze(v) if isinstance(v, dict) else v)
        return node

    return freeze(root)


CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"  # the packaged configs/ (the repository's folder)
DEFAULT_CONFIG = CONFIG_ROOT / "quickstart" / "retinanet_mobilenet_v2_shapes.yaml"


def find_config(name: str | Path | None) -> Path:
    """A config file by path, or by its name inside the packaged ``configs/`` (``retinanet/retinanet_R_50_FPN_1x``);
    ``None`` is the quickstart."""
    if name is None:
        return DEFAULT_CONFIG
    path = Path(name)
    for candidate in (path, CONFIG_ROOT / path, CONFIG_ROOT / path.with_suffix(".yaml")):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"config file {str(name)!r} not found (looked in the current folder and {CONFIG_ROOT})")


def load_config(
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    values: dict[str, Any] | None = None,
) -> CfgNode:
    """Defaults <- YAML file <- command-line ``KEY VALUE`` strings <- ``values`` ({"MODEL.DEVICE": "cpu"})."""
    merged = {key: copy.deepcopy(spec.default) for key, spec in ALL_KEYS.items()}
    if config_file is not None:
        path = Path(config_file)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        for key, value in _flatten(data, "", str(path)).items():
            merged[key] = coerce(key, ALL_KEYS[key], value, str(path))
    if len(overrides) % 2:
        raise ConfigError(f"command line: overrides come in KEY VALUE pairs; {overrides[-1]!r} has no value")
    pairs = [(overrides[i], parse_override_value(overrides[i + 1])) for i in range(0, len(overrides), 2)]
    pairs += list((values or {}).items())
    for key, value in pairs:
        if key not in ALL_KEYS:
            raise _unknown(key, "command line")
        merged[key] = coerce(key, ALL_KEYS[key], value, "command line")
    return _nest(merged)


def save_config(cfg: CfgNode, path: str | Path) -> None:
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def with_values(cfg: CfgNode, values: dict[str, Any]) -> CfgNode:
    """A copy of ``cfg`` with some keys changed (validated like any override)."""
    flat = dict(config_items(cfg))
    for key, value in values.items():
        if key not in ALL_KEYS:
            raise _unknown(key, "with_values")
        flat[key] = coerce(key, ALL_KEYS[key], value, "with_values")
    return _nest(flat)


def config_items(node: dict, prefix: str = ""):
    """(dotted key, value) for every leaf of a config."""
    for name, value in node.items():
        if isinstance(value, dict):
            yield from config_items(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value
