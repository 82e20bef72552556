"""Experiment configs: `ml_collections` files under `configs/`, each with `get_config()`, plus overrides.

`load_config("configs/demo.py", ["optim.lr=1e-3", "steps=200"])` imports the file, calls `get_config()`, and
applies `key.sub=value` overrides (values parsed as Python literals, checked against the existing type).
List elements are addressed by index (`stages.0.steps=50`); dicts in a value (`stages=[{...}]`) become
ConfigDicts. Unknown keys and bad values raise `ConfigError` naming the key.
"""

from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections


class ConfigError(ValueError):
    """A missing or malformed experiment config, or a bad override."""


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    spec = importlib.util.spec_from_file_location(f"rsground_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a config file is user code: report where it failed
        raise ConfigError(f"{path}: the config file failed to load ({type(e).__name__}: {e})") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: a config file must define get_config()")
    cfg = module.get_config()
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict, got {type(cfg).__name__}")
    for item in overrides:
        apply_override(cfg, item)
    return cfg


def apply_override(cfg: ml_collections.ConfigDict, item: str) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip().removeprefix("--").removeprefix("config.")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    *parents, leaf = key.split(".")
    node = cfg
    for i, part in enumerate(parents):
        node = _child(node, part)
        if node is None:
            raise ConfigError(f"unknown config key {'.'.join(parents[: i + 1])!r} in override {item!r}")
    if isinstance(node, (list, tuple)):  # stages.0=...: replace one element of a list
        if not (leaf.isdigit() and int(leaf) < len(node)):
            raise ConfigError(f"override {item!r}: {leaf!r} is not an index of the {len(node)}-element list "
                              f"{'.'.join(parents)}")
    elif not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ConfigError(f"unknown config key {key!r} in override {item!r}; known here: {known}")
    try:
        value = _config_dict(ast.literal_eval(raw))
    except (ValueError, SyntaxError):
        value = raw  # a bare string
    old = node[int(leaf)] if isinstance(node, (list, tuple)) else node[leaf]
    if old is not None and not isinstance(value, type(old)):
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(old, (tuple, list)) and isinstance(value, (tuple, list)):
            value = type(old)(value)
        else:
            raise ConfigError(f"override {item!r}: {key} is a {type(old).__name__}, got {type(value).__name__}")
    try:
        if isinstance(node, tuple):
            raise TypeError(f"{'.'.join(parents)} is a tuple; override it whole")
        if isinstance(node, list):
            node[int(leaf)] = value
        else:
            node[leaf] = value
    except (TypeError, ValueError) as e:
        raise ConfigError(f"override {item!r}: {e}") from None


def _child(node, part: str):
    """`node.part` for a ConfigDict, `node[int(part)]` for a list or tuple; None where there is none."""
    if isinstance(node, ml_collections.ConfigDict):
        return node[part] if part in node else None
    if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    return None


def _config_dict(value):
    """Dicts inside an override value (e.g. a list of stages) become ConfigDicts, like the config file's."""
    if isinstance(value, dict):
        return ml_collections.ConfigDict({k: _config_dict(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_config_dict(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_config_dict(v) for v in value)
    return value
