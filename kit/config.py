"""Experiment configs: TOML files in experiments/, composed with `extends = "base"`.

A child's tables are merged into its parent's key by key (nested tables recursively); any other
value in the child replaces the parent's. `exp=NAME`, `NAME` and a .toml path all work.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from kit.errors import KitError


class ConfigError(KitError):
    """An experiment config is missing, malformed or extends in a cycle."""


def experiments_dir() -> Path:
    return Path(os.environ.get("KIT_EXPERIMENTS", "experiments"))


def experiment_path(name: str) -> Path:
    name = name.removeprefix("exp=")
    path = Path(name) if name.endswith(".toml") else experiments_dir() / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in experiments_dir().glob("*.toml"))
        raise ConfigError(f"no experiment {name!r} ({path} does not exist); known: {known}")
    return path


def deep_merge(parent: dict, child: dict) -> dict:
    out = dict(parent)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_experiment(name: str, _seen: tuple[str, ...] = ()) -> dict:
    """The fully resolved config of an experiment (parents merged in, `name` set)."""
    path = experiment_path(name)
    key = str(path.resolve())
    if key in _seen:
        raise ConfigError(f"experiment {name!r} extends itself through {list(_seen)}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    parent_name = raw.pop("extends", None)
    if parent_name is not None:
        parent = load_experiment(str(parent_name), (*_seen, key))
        parent.pop("name", None)
        raw = deep_merge(parent, raw)
    return {"name": path.stem, **raw}
