"""Experiment configs: TOML files in experiments/, composed with `extends = "base"`.

A child's tables are merged into its parent's key by key (nested tables recursively); any other
value in the child replaces the parent's. [model] and [loss] are the exception: a child that has
one replaces the parent's whole table (a transformer must not inherit a GRU's `hidden`, nor a
loss its parent's extra terms), and so does each `[sweep.params]` entry of the child (a
categorical must not inherit an int range's `low`, nor a range its parent's `step`).
`exp=NAME`, `NAME` and a .toml path all work.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from kit.errors import KitError
from kit.toml_file import read_toml

REPLACED_SECTIONS = {"model", "loss"}  # not merged with the parent's: replaced whole


class ConfigError(KitError):
    """An experiment config is missing, malformed or extends in a cycle."""


EXPERIMENTS_FOLDER = "experiments"  # the default of KIT_EXPERIMENTS; also what kit init writes
DEFAULT_SPEC = "predictorium"  # the competition of an experiment that names none
# the preset made for each built-in competition, as README and experiments/README.md name them:
# kit demo --spec NAME trains it (r314: gru_base trained rnn-challenge on Predictorium's loss)
SPEC_PRESETS = {"predictorium": "gru_base", "rnn-challenge": "rnn_gru"}


@dataclass(frozen=True)
class SectionOrigin:
    """Where a replaced-whole section of an experiment was written: the file, and the spec in
    force there (its own, or its parents')."""

    file: Path
    spec: str


def experiments_dir() -> Path:
    return Path(os.environ.get("KIT_EXPERIMENTS", EXPERIMENTS_FOLDER))


def experiment_file_exists(name: str) -> bool:
    return (experiments_dir() / f"{name.removeprefix('exp=')}.toml").is_file()


def experiment_path(name: str) -> Path:
    name = name.removeprefix("exp=")
    path = Path(name) if name.endswith(".toml") else experiments_dir() / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in experiments_dir().glob("*.toml"))
        raise ConfigError(f"no experiment {name!r} ({path} does not exist); known: {known}"
                          f"{_missing_experiment_advice(name)}")
    return path


def _missing_experiment_advice(name: str) -> str:
    """What to do about an experiment not found: a pip install has no checkout to run from,
    so `kit init` copies the presets kit ships (r302: the advice was "run from the kit
    checkout")."""
    from kit.presets import preset_names

    if name.endswith(".toml"):
        return ""
    folder = experiments_dir()
    if "KIT_EXPERIMENTS" in os.environ and not folder.is_dir():
        return (f"; there is no {folder} folder here: KIT_EXPERIMENTS names it; point "
                "KIT_EXPERIMENTS at a folder of experiments, or unset it and run `kit init` "
                "to copy kit's preset experiments into ./experiments/")
    if not folder.is_dir():
        return (f"; there is no {folder} folder here: run `kit init` to copy kit's preset "
                f"experiments into {folder}/, or set KIT_EXPERIMENTS to a folder of experiments")
    if "KIT_EXPERIMENTS" not in os.environ and name in preset_names():  # (init writes here)
        return (f"; {name} is one of kit's presets: `kit init` copies the presets {folder}/ "
                "lacks (it overwrites none)")
    return ""


def known_experiment(name) -> str | None:
    """`name` when `kit train NAME` finds it (experiments/NAME.toml is here), else None: advice
    then says EXP, not a command that fails (a run trained from a TOML path elsewhere)."""
    try:
        return name if isinstance(name, str) and experiment_path(name).is_file() else None
    except KitError:
        return None


def deep_merge(parent: dict, child: dict) -> dict:
    out = dict(parent)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def flatten(config: dict, prefix: str = "") -> dict:
    """Dotted leaf key -> value (lists and empty tables are leaves)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(a, b) -> list[str]:
    """Dotted keys whose values differ between two configs (a key on one side only too, but
    for a key ADDED_LATER at its default: the record from before the key is the same config)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else ["the config"]
    flat_a, flat_b, missing = flatten(a), flatten(b), object()
    return sorted(key for key in flat_a.keys() | flat_b.keys()
                  if flat_a.get(key, ADDED_LATER.get(key, missing))
                  != flat_b.get(key, ADDED_LATER.get(key, missing)))


def changed_values(keys: list[str], before, after) -> list[str]:
    """`differences` keys as people read them: each with its value before and after."""
    flat_before, flat_after = (flatten(c) if isinstance(c, dict) else {} for c in (before, after))
    missing = object()

    def shown(flat: dict, key: str) -> str:
        value = flat.get(key, ADDED_LATER.get(key, missing))  # (a record from before the key:
        return "unset" if value is missing else repr(value)  # its default is how it behaved)

    return [key if key == "the config" else
            f"{key} (was {shown(flat_before, key)}, now {shown(flat_after, key)})" for key in keys]


def added_at_default(key: str, value) -> bool:
    """A key added after configs were recorded without it, holding the value that behaves as
    before it: left out of identities (groups, studies, ablations) so those still resume."""
    return key in ADDED_LATER and value == ADDED_LATER[key]


def load_experiment(name: str, _seen: tuple[str, ...] = (),
                    origins: dict[str, SectionOrigin] | None = None) -> dict:
    """The fully resolved config of an experiment (parents merged in, `name` set). `origins`
    (filled when given): for each section a child replaces whole ([model], [loss]), the file
    of the chain that wrote the one that trains and the spec in force in that file."""
    path = experiment_path(name)
    key = str(path.resolve())
    if key in _seen:
        raise ConfigError(f"experiment {name!r} extends itself through {list(_seen)}")
    raw = read_toml(path, ConfigError)
    parent_name = raw.pop("extends", None)
    own = set(raw)  # the sections this file writes itself
    if problem := unknown_keys(raw):
        raise ConfigError(f"{path}: {problem}")
    try:  # this file's own values: a wrong type is named with the file that set it
        resolve(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if parent_name is not None:
        if not isinstance(parent_name, str) or not parent_name:
            raise ConfigError(f"{path}: extends must be an experiment's name or a .toml path "
                              f"(a string), got {parent_name!r}")
        reference = parent_name
        beside = path.parent / reference  # a file path is read next to the file naming it
        relative_file = reference.endswith(".toml") and not Path(reference).is_absolute()
        if relative_file and beside.is_file():
            reference = str(beside)
        elif (not reference.endswith(".toml") and not experiment_file_exists(reference)
              and (path.parent / f"{reference}.toml").is_file()):
            # a file given by path, run from another folder: its sibling of that name
            reference = str(path.parent / f"{reference}.toml")
        try:
            experiment_path(reference)
        except ConfigError as exc:
            tried = f" (looked for {beside} next to it, then {reference} from here)" \
                if relative_file else "" if reference.endswith(".toml") else (
                f" (looked for {path.parent / f'{reference}.toml'} next to it, then in the "
                "experiments folder)")
            raise ConfigError(f"{path}: extends {parent_name!r}{tried}: {exc}") from None
        parent = load_experiment(reference, (*_seen, key), origins)
        parent.pop("name", None)
        for section in REPLACED_SECTIONS & set(raw):
            parent.pop(section, None)
        parent_params, child_params = (_sweep_params(c) for c in (parent, raw))
        for name in child_params if parent_params is not None and child_params else ():
            parent_params.pop(name, None)  # each of the child's entries replaces the parent's
        raw = deep_merge(parent, raw)
    if origins is not None:  # (a parent's entry stands where this file writes no such table)
        origins.update({section: SectionOrigin(path, raw.get("spec", DEFAULT_SPEC))
                        for section in REPLACED_SECTIONS & own})
    return {"name": path.stem, **raw}


def _sweep_params(config: dict) -> dict | None:
    sweep = config.get("sweep")
    params = sweep.get("params") if isinstance(sweep, dict) else None
    return params if isinstance(params, dict) else None


# Defaults of the sections the trainer reads; their types are the types a value must have.
# [model] and [loss] are validated by the models and the losses themselves.
DEFAULTS: dict[str, dict] = {
    "data": {"train": "data/synth/train.parquet", "valid": "data/synth/valid.parquet",
             "seq_len": 0, "truncate": "head", "cache_dir": "data/cache",
             # validate on the valid file, or on a held-out part of the train file
             "split": "file", "valid_fraction": 0.15, "group": "", "stratify": "",
             "split_seed": 0,
             "fold": []},  # [k, i]: written by kit train --folds into a fold run's config
    "features": {"groups": ["raw"], "ops": []},
    # targets: train on standardised targets, the model's outputs scaled back (kit/models/heads)
    "normaliser": {"method": "standard", "clip": 5.0, "targets": False},
    "train": {
        "epochs": 20, "batch_size": 32, "lr": 2e-3, "weight_decay": 0.01,
        "schedule": "cosine",  # cosine (with warm-up) | onecycle | plateau | constant
        "warmup_epochs": 1, "grad_clip": 1.0,
        "chunk": 0,  # truncated BPTT chunk length in steps; 0 = whole sequences
        "patience": 5, "ema": 0.0, "swa_start": 0, "amp": "auto", "threads": 0,
        "tensorboard": False, "max_train_seqs": 0, "max_valid_seqs": 0,
    },
}
# Keys added after runs, groups and studies were recorded without them, with the default that
# keeps the behaviour from before: a record without the key is the same config.
ADDED_LATER = {"normaliser.targets": False}
# String settings with a fixed set of values: checked when a config is loaded, so a typo fails
# at once and not after the feature arrays are built.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.truncate": ("head", "tail"),
    "data.split": ("file", "random", "group"),
    "normaliser.method": ("standard", "robust"),
    "train.schedule": ("cosine", "onecycle", "plateau", "constant"),
    "train.amp": ("auto", "bf16", "fp16", "off"),
}
# Numeric settings that only make sense in a range: checked with the types, so `epochs=0` or a
# negative seed fails when the config is read, not as a traceback after the data is built. The
# upper limits are far past any use: past them torch and numpy overflow (a batch of 1e20 was a
# numpy cast error, a thread count an OverflowError, 1e20 epochs a hang building the schedule).
MAX_EPOCHS, MAX_STEPS, MAX_BATCH, MAX_THREADS = 1_000_000, 10_000_000, 1_000_000, 4096
BOUNDS: dict[str, tuple[object, str]] = {
    "seed": (lambda v: 0 <= v < 2**32, "a whole number in [0, 2**32)"),
    "data.split_seed": (lambda v: 0 <= v < 2**32, "a whole number in [0, 2**32)"),
    "data.seq_len": (lambda v: 0 <= v <= MAX_STEPS,
                     f"in [0, {MAX_STEPS:,}] (0: the longest sequence)"),
    "data.valid_fraction": (lambda v: 0 < v < 1, "between 0 and 1"),
    "normaliser.clip": (lambda v: v > 0, "> 0 (deviations)"),
    "train.epochs": (lambda v: 1 <= v <= MAX_EPOCHS, f"in [1, {MAX_EPOCHS:,}]"),
    "train.batch_size": (lambda v: 0 <= v <= MAX_BATCH,
                         f"in [0, {MAX_BATCH:,}] (0: find the largest that fits)"),
    "train.lr": (lambda v: 0 < v < math.inf, "a finite number > 0"),
    "train.weight_decay": (lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    "train.warmup_epochs": (lambda v: 0 <= v <= MAX_EPOCHS, f"in [0, {MAX_EPOCHS:,}]"),
    "train.grad_clip": (lambda v: 0 <= v < math.inf, "a finite number >= 0 (0: off)"),
    "train.chunk": (lambda v: 0 <= v <= MAX_STEPS, f"in [0, {MAX_STEPS:,}] (0: whole sequences)"),
    "train.patience": (lambda v: 1 <= v <= MAX_EPOCHS,
                       f"in [1, {MAX_EPOCHS:,}] (epochs without a new best before stopping)"),
    "train.ema": (lambda v: 0 <= v < 1, "in [0, 1) (0: off)"),
    "train.swa_start": (lambda v: 0 <= v <= MAX_EPOCHS, f"in [0, {MAX_EPOCHS:,}] (0: off)"),
    "train.threads": (lambda v: 0 <= v <= MAX_THREADS,
                      f"in [0, {MAX_THREADS}] (0: torch's default)"),
    "train.max_train_seqs": (lambda v: v >= 0, ">= 0 (0: all)"),
    "train.max_valid_seqs": (lambda v: v >= 0, ">= 0 (0: all)"),
}
TOP_LEVEL = {"name": str, "spec": str, "seed": int, "description": str}


def finite(value) -> bool:
    """math.isfinite, False for a TOML int past float's range (not an OverflowError)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def finite_number(value) -> bool:
    """An int or float (not a bool) that is neither inf nor NaN: what a TOML number must be."""
    return isinstance(value, int | float) and not isinstance(value, bool) and finite(value)


def check_seeds(seeds: list[int], where: str = "seeds") -> None:
    """Seeds given outside the config (seeds=[...], --seeds) pass the config's own checks."""
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"{where}: each seed must be a whole number, got {seed!r}")
        try:
            _check_bounds("seed", seed)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _check_bounds(name: str, value) -> None:
    bound = BOUNDS.get(name)
    if bound is not None and not bound[0](value):
        raise ConfigError(f"{name} must be {bound[1]}, got {value!r}")
SECTIONS = {*DEFAULTS, "model", "loss", "sweep"}


def check_name(name: str) -> None:
    """An experiment name is the folder of its runs (runs/NAME/ID): one plain folder name."""
    if (not name or name in (".", "..", "ensembles") or name.startswith(".")
            or any(c in name for c in "/\\")):
        raise ConfigError(f"name {name!r}: the experiment's runs go to runs/NAME/, so it must "
                          "be one folder name (no / or \\, not starting with a dot, not "
                          "'ensembles', which holds ensemble files)")


def unknown_keys(config: dict) -> str | None:
    """What is misspelt in a config's key names (checked per file as it loads, so the error
    names the file, and again after the overrides), or None."""
    for key in config:
        if key == "extends":  # an override extends=NAME: files are read before overrides
            return ("extends is read from experiment files only, not as an override: name "
                    "the experiment to train (exp=NAME), or write a file that extends it")
        if key not in SECTIONS and key not in TOP_LEVEL:
            return (f"unknown config key {key!r}{did_you_mean(key, [*SECTIONS, *TOP_LEVEL])}"
                    f"; top-level keys: {sorted(TOP_LEVEL)}, sections: {sorted(SECTIONS)}")
    for section, defaults in DEFAULTS.items():
        given = config.get(section, {})
        unknown = sorted(set(given) - set(defaults)) if isinstance(given, dict) else []
        if unknown:
            meant = "".join(did_you_mean(k, list(defaults), f"{section}.",  # each, named (r319)
                                         f"{section}.{k}" if len(unknown) > 1 else None)
                            for k in unknown)
            return (f"unknown key(s) {[f'{section}.{k}' for k in unknown]}{meant}; allowed: "
                    f"{sorted(defaults)}")
    return None


def did_you_mean(key: str, known: list[str], prefix: str = "", of: str | None = None) -> str:
    """` (did you mean 'train'?)` for a near miss (`trian`), else nothing: the lists after it
    hold 11 to 20 names to scan. `of`: the key named in it, where several are unknown."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    if not close:
        return ""
    return f" (did you mean {prefix + close[0]!r}{f' for {of!r}' if of else ''}?)"


# settings that name a file or folder: empty, `data.cache_dir=` wrote the cache into the working
# folder, `data.train=` said "is a folder"
PATH_KEYS = {"data.train", "data.valid", "data.cache_dir"}


def resolve(config: dict) -> dict:
    """Fill defaults and check every key and type, naming the first offender."""
    out = {k: v for k, v in config.items()}
    for key, value in config.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}] must be a table, got {type(value).__name__}")
        elif key in TOP_LEVEL:
            if not isinstance(value, TOP_LEVEL[key]) or isinstance(value, bool):
                raise ConfigError(f"{key} must be {TOP_LEVEL[key].__name__}, got {value!r}")
            _check_bounds(key, value)
            if key == "name":
                check_name(value)
    if problem := unknown_keys(config):
        raise ConfigError(problem)
    for section, defaults in DEFAULTS.items():
        given = config.get(section, {})
        merged = dict(defaults)
        for key, value in given.items():
            want = type(defaults[key])
            ok = isinstance(value, want) and not (isinstance(value, bool) and want is not bool)
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                try:
                    value, ok = float(value), True
                except OverflowError:  # an int past float's range: no setting means it
                    raise ConfigError(f"{section}.{key} must be a finite number, got an "
                                      f"integer of {len(str(value))} digits") from None
            if not ok:
                raise ConfigError(f"{section}.{key} must be {want.__name__}, got {value!r}")
            allowed = CHOICES.get(f"{section}.{key}")
            if allowed and value not in allowed:
                raise ConfigError(f"{section}.{key} must be one of {list(allowed)}, "
                                  f"got {value!r}")
            _check_bounds(f"{section}.{key}", value)
            if f"{section}.{key}" in PATH_KEYS and not value.strip():  # `data.cache_dir=`: "."
                raise ConfigError(f"{section}.{key} is empty; give a path (the default is "
                                  f"{defaults[key]!r})")
            merged[key] = value
        out[section] = merged
    out.setdefault("seed", 42)
    out.setdefault("spec", DEFAULT_SPEC)
    out.setdefault("model", {})  # absent: the registry says "model.type is missing"
    if not out["spec"].strip():  # spec=$UNSET: not the default competition without a word
        raise ConfigError("spec is empty; give a preset name (kit spec list) or a TOML path")
    return out


def validation_file(config: dict, summary: dict | None = None) -> str | None:
    """The data file whose rows a run's val_rows.npy index: the train file for a fold run (its
    config's data.fold; `summary`, its metrics.json, for runs older than that key) or a run
    validated on a split of its train file, else the valid file."""
    data = config.get("data") or {}
    held_out = (bool(data.get("fold")) or "fold" in (summary or {})
                or data.get("split", "file") != "file")
    return data.get("train" if held_out else "valid")


def refuse_overrides(overrides: list[str] | None, owned: dict[str, str]) -> None:
    """Refuse overrides of keys a command sets itself ({key: the option to use instead}):
    they would be replaced without a word."""
    for text in overrides or []:
        key = ".".join(parse_override(text)[0])
        for setting, instead in owned.items():  # data={...} replaces data.train too
            if key == setting or setting.startswith(key + "."):
                raise ConfigError(f"override {text!r}: this command sets {setting} itself; "
                                  f"use {instead}")


def parse_override(text: str) -> tuple[list[str], object]:
    """`train.lr=3e-4` -> (["train", "lr"], 0.0003); values are TOML (strings may be bare)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. train.lr=3e-4)")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError as exc:
        if raw.lstrip()[:1] in ("[", "{"):  # meant as a list or table: say what TOML said
            raise ConfigError(
                f"override {text!r}: not a TOML value ({str(exc).split(' (')[0]}); quote the "
                f"strings in it, e.g. {key}=[\"raw\", \"lags\"] (and the whole argument "
                "in the shell)") from None
        if re.fullmatch(r"\s*[+-]?(\d+\.|\.\d+)([eE][+-]?\d+)?\s*", raw):  # .001, 1.
            raise ConfigError(f"override {text!r}: {raw.strip()} is not a TOML number; write "
                              f"{float(raw)!r}") from None
        value = raw.strip()  # a bare string such as schedule=onecycle (spaces around `=`
        # go, as around a TOML value)
    return _key_path(key.strip()), value


def _key_path(key: str) -> list[str]:
    """A dotted key as TOML reads one (`sweep.params."train.lr"` is three parts, the last
    with a dot in it); a key TOML does not read is split at its dots (its parts then get the
    usual messages)."""
    try:
        node = tomllib.loads(f"{key} = 0")
    except tomllib.TOMLDecodeError:
        return key.split(".")
    path = []
    while isinstance(node, dict) and len(node) == 1:
        (part, node), = node.items()
        path.append(part)
    return path


def set_path(config: dict, path: list[str], value, what: str) -> dict:
    """A deep copy of config with config[path[0]][path[1]]... = value (tables made as needed);
    `what` names the setting in the error when a part of the path is not a table."""
    out = copy.deepcopy(config)
    node = out
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{what}: {part!r} is not a table")
    node[path[-1]] = value
    return out


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        config = set_path(config, path, value, f"override {text!r}")
    return copy.deepcopy(config)
