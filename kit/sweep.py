"""`kit sweep`: Optuna studies over an experiment's [sweep] search space.

The search space is the experiment's [sweep] table; every trial is an ordinary run directory
trained by the same recipe as `kit train`, reporting its validation score per epoch to Optuna so
the pruner can stop it. Scale-out is Optuna's own: any number of workers, on one machine or many,
run the same study on one storage (SQLite file by default; a PostgreSQL URL or a journal file on
a shared disk unchanged). docs/sweeps.md has the format and the multi-machine recipe.

    [sweep]
    trials = 30                      # default for --trials
    pruner = "median"                # median | hyperband | none
    sampler = "tpe"                  # tpe | random
    seed = 7                         # optional: reproducible proposals
    [sweep.params]
    "train.lr" = { type = "float", low = 1e-4, high = 1e-2, log = true }
    "model.hidden" = { type = "int", low = 32, high = 256, step = 32 }
    "features.groups" = { type = "categorical", choices = [["raw"], ["raw", "ewm"]] }
    "model.window" = { type = "int", low = 8, high = 64, when = { "model.type" = "attention_gru" } }
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import tomli_w

from kit.config import (
    ConfigError,
    added_at_default,
    did_you_mean,
    experiments_dir,
    finite,
    flatten,
    parse_override,
    resolve,
    set_path,
    validation_file,
)
from kit.errors import KitError
from kit.torch_state import kit_torch
from kit.train.runs import RUNS_DIR, RunFiles
from kit.workers import (
    SIGPIPE,
    WorkerGroup,
    caught,
    kit_command,
    stdout_closed,
    worker_pythonpath,
)

if TYPE_CHECKING:  # the trainer imports torch: only a sweep's workers pay for it
    from kit.train.trainer import EpochEnd

KINDS = ("float", "int", "categorical")
TABLE_KEYS = ("trials", "pruner", "sampler", "seed", "params")
PRUNERS = ("median", "hyperband", "none")
SAMPLERS = ("tpe", "random")
# RDB storages: a worker silent for 2 heartbeats has its running trial marked failed by the
# next worker that starts a trial (tests shorten it through the environment)
HEARTBEAT_S = int(os.environ.get("KIT_SWEEP_HEARTBEAT_S", "10"))


class SweepError(ConfigError):
    """A malformed [sweep] table or storage; the message names the entry."""


@dataclass
class Param:
    name: str  # dotted config path, e.g. train.lr
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list = field(default_factory=list)
    when: dict = field(default_factory=dict)  # dotted path -> allowed value(s)

    @property
    def labels(self) -> list:
        """Optuna stores scalars; tables and lists are offered by their JSON text."""
        return [c if isinstance(c, str | int | float | bool) else json.dumps(c, sort_keys=True)
                for c in self.choices]

    def values(self) -> list:
        """Values that span the range (for checking the space before training): with a step,
        the top is the last step at or under high, as Optuna draws it."""
        if self.kind == "categorical":
            return list(self.choices)
        top = self.high
        if self.step:
            steps = math.floor((self.high - self.low) / self.step + 1e-9)
            top = min(self.low + steps * self.step, self.high)  # 0.1 * 3 is 0.30000000000000004
        # as Optuna gives them: a float parameter written with whole bounds draws floats
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(top)]

    def distribution(self):
        """The Optuna distribution `suggest` draws this parameter from (to compare it with a
        study's earlier trials)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return CategoricalDistribution(self.labels)


def check_table(table: dict) -> None:
    """The [sweep] keys around the params: unknown ones (a typo would be silently ignored) and
    bad values fail naming the key."""
    unknown = sorted(set(table) - set(TABLE_KEYS))
    if unknown:
        raise SweepError(f"[sweep]: unknown key(s) {unknown}"
                         f"{did_you_mean(unknown[0], list(TABLE_KEYS), 'sweep.')}; allowed: "
                         f"{list(TABLE_KEYS)}")
    for key in ("trials", "seed"):
        value = table.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < (1 if key == "trials" else 0)):
            raise SweepError(f"sweep.{key}: a {'positive' if key == 'trials' else 'non-negative'}"
                             f" integer, got {value!r}")
    if table.get("pruner", "median") not in PRUNERS:
        raise SweepError(f"sweep.pruner: one of {list(PRUNERS)}, got {table['pruner']!r}")
    if table.get("sampler", "tpe") not in SAMPLERS:
        raise SweepError(f"sweep.sampler: one of {list(SAMPLERS)}, got {table['sampler']!r}")


def parse_space(table: dict) -> list[Param]:
    """[sweep.params] -> Params; each error names `sweep.params."NAME"` and what is wrong."""
    check_table(table)
    raw = table.get("params")
    if not isinstance(raw, dict) or not raw:
        raise SweepError("[sweep.params] is missing or empty: declare at least one parameter, "
                         'e.g. "train.lr" = { type = "float", low = 1e-4, high = 1e-2, log = '
                         "true }")
    params = []
    for name, spec in raw.items():
        where = f'sweep.params."{name}"'
        if not isinstance(spec, dict):
            raise SweepError(f"{where}: must be a table like {{ type = \"float\", low = .., "
                             f"high = .. }}, got {spec!r}")
        kind = spec.get("type")
        if kind not in KINDS:
            missing = (" (an entry in an experiment that extends another replaces the parent's "
                       "entry whole: give its type and bounds or choices there)"
                       if kind is None else "")
            raise SweepError(f"{where}.type: one of {list(KINDS)}, got {kind!r}{missing}")
        allowed = {"type", "when"} | ({"choices"} if kind == "categorical"
                                      else {"low", "high", "log", "step"})
        extra = sorted(set(spec) - allowed)
        if extra:
            raise SweepError(f"{where}: unknown key(s) {extra} for type {kind!r}; allowed: "
                             f"{sorted(allowed)}")
        when = spec.get("when", {})
        if not isinstance(when, dict):
            raise SweepError(f"{where}.when: a table of dotted key = value(s), got {when!r}")
        for key, allowed in when.items():
            if allowed == []:
                raise SweepError(f'{where}.when."{key}": an empty list matches nothing; give a '
                                 "value or a non-empty list of values")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise SweepError(f"{where}.choices: a non-empty list, got {choices!r}")
            param = Param(name, kind, choices=list(choices), when=when)
            labels = param.labels
            for i, label in enumerate(labels):
                twin = next((other for other in labels[i + 1:] if other == label), None)
                if twin is not None:  # Optuna keeps one of equal choices (true == 1 too)
                    raise SweepError(f"{where}.choices: {label!r} and {twin!r} are equal, so "
                                     "Optuna would offer one of them; drop one, or write "
                                     "them as strings")
            params.append(param)
            continue
        low, high = spec.get("low"), spec.get("high")
        numbers = (int,) if kind == "int" else (int, float)
        if not all(isinstance(v, numbers) and not isinstance(v, bool) and finite(v)
                   for v in (low, high)):  # (inf, nan, 10**400: Optuna fails every trial)
            raise SweepError(f"{where}: low and high must be finite {kind}s, got {low!r}, "
                             f"{high!r}")
        if low > high:
            raise SweepError(f"{where}: low ({low}) > high ({high})")
        if kind == "float" and not finite(float(high) - float(low)):  # Optuna's uniform
            raise SweepError(f"{where}: the range {low}..{high} is wider than a float holds")
        log, step = spec.get("log", False), spec.get("step")
        if not isinstance(log, bool):
            raise SweepError(f"{where}.log: true or false (a TOML boolean), got {log!r}")
        if log and low <= 0:
            raise SweepError(f"{where}: log = true needs low > 0, got {low}")
        if log and step is not None:
            raise SweepError(f"{where}: log and step do not combine (Optuna)")
        if step is not None and (not isinstance(step, numbers) or isinstance(step, bool)
                                 or not finite(step) or step <= 0):
            raise SweepError(f"{where}.step: a positive {kind}, got {step!r}")
        if step is not None and step > high - low > 0:
            raise SweepError(f"{where}: step {step} is wider than the range {low}..{high}, so "
                             f"every trial would train {low}; a smaller step or a wider range")
        params.append(Param(name, kind, low, high, log, step, when=when))
    return _conditions_last(params)


def _within(key: str, name: str) -> bool:
    """Whether dotted `key` is `name` or lies inside it ("model.type" inside "model")."""
    return key == name or key.startswith(f"{name}.")


def _needs(p: Param, q: Param) -> bool:
    """p is set after q: its `when` reads what q sets (a key inside q, or a table that holds
    q), or q sets a whole table p sets a key of (a categorical over [model] tables, then
    "model.hidden" into the chosen table)."""
    return p is not q and (any(_within(k, q.name) or _within(q.name, k) for k in p.when)
                           or _within(p.name, q.name))


def _conditions_last(params: list[Param]) -> list[Param]:
    """Order so that a parameter comes after the parameters it depends on (_needs)."""
    ordered: list[Param] = []
    pending = list(params)
    while pending:
        ready = [p for p in pending
                 if all(q in ordered for q in params if _needs(p, q))]
        if not ready:
            cycle = ", ".join(p.name for p in pending)
            raise SweepError(f"sweep.params: the `when` conditions of {cycle} form a cycle")
        ordered += ready
        pending = [p for p in pending if p not in ready]
    return ordered


def get_dotted(config: dict, name: str):
    node = config
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_dotted(config: dict, name: str, value) -> dict:
    return set_path(config, name.split("."), value, f'sweep.params."{name}"')


def applies(param: Param, config: dict) -> bool:
    """A conditional parameter applies when every `when` key has one of its values (a model
    key the experiment leaves out has its default)."""
    config = with_model_defaults(config) if any(k.startswith("model.") for k in param.when) \
        else config
    return all(_allows(allowed, get_dotted(config, key)) for key, allowed in param.when.items())


def _allows(allowed, value) -> bool:
    return value in (allowed if isinstance(allowed, list) else [allowed])


def with_model_defaults(config: dict) -> dict:
    """The config with the defaults of the [model] keys it leaves out filled in, so a condition
    on such a key sees the value the model is built with. Defaults only, nothing checked: a
    table drawn key by key may be invalid between two draws. The width key is left out under
    a `params` budget (the budget solves it)."""
    from kit.models import BUDGET_KEY, known_class

    model = config.get("model")
    cls = known_class(model.get("type")) if isinstance(model, dict) else None
    if cls is None:
        return config
    defaults = {name: key.default for name, key in cls.all_keys().items()
                if not (name == cls.width_key and BUDGET_KEY in model)}
    return {**config, "model": {**defaults, **model}}


def _choices_meeting(param: Param, when: dict) -> list[dict]:
    """The table choices of a categorical parameter (`model`: whole [model] tables) whose keys
    meet `when`'s conditions on keys inside it, read as a trial reads them (a [model] table
    with its keys' defaults); none when no condition is inside it."""
    inner = {k[len(param.name) + 1:]: a for k, a in when.items()
             if k.startswith(param.name + ".")}
    if param.kind != "categorical" or not inner:
        return []
    tables = [c for c in param.choices if isinstance(c, dict)]
    read = [with_model_defaults({"model": c})["model"] if param.name == "model" else c
            for c in tables]
    return [c for c, r in zip(tables, read, strict=True)
            if all(_allows(a, get_dotted(r, k)) for k, a in inner.items())]


def _meet(config: dict, params: list[Param], when: dict) -> dict:
    """The config with every `when` key set to a value it allows; the keys inside a categorical
    parameter over whole tables (`model`: [model] tables) take one choice that has them all, so
    the table's other keys are the choice's, not the experiment's."""
    left = dict(when)
    for q in params:
        if met := _choices_meeting(q, when):
            config = set_dotted(config, q.name, met[0])
            left = {k: a for k, a in left.items() if not k.startswith(q.name + ".")}
    for key, allowed in left.items():
        config = set_dotted(config, key, allowed[0] if isinstance(allowed, list) else allowed)
    return config


def _reachable(key: str, allowed, base: dict, params: list[Param]) -> bool:
    """Whether `key` can take a value `allowed` lists: a choice (or the range) of a parameter
    that sets it or the table around it, or the experiment's own value where no unconditional
    parameter replaces it. A key inside it that a parameter varies (a `when` on `loss.terms`
    with `loss.terms.pearson` swept) is left to the trials."""
    options = allowed if isinstance(allowed, list) else [allowed]
    experiment_value_stays = True
    for q in params:
        if q.name.startswith(key + "."):
            return True
        if q.name == key:
            if q.kind == "categorical" and any(_allows(allowed, c) for c in q.choices):
                return True
            if q.kind != "categorical" and any(
                    isinstance(v, int | float) and not isinstance(v, bool)
                    and q.low <= v <= q.high for v in options):
                return True
        elif key.startswith(q.name + ".") and q.kind == "categorical":
            if _choices_meeting(q, {key: allowed}):
                return True
        else:
            continue
        experiment_value_stays = experiment_value_stays and bool(q.when)
    return experiment_value_stays and _allows(allowed, get_dotted(with_model_defaults(base), key))


def covered(name: str, settings: tuple[str, ...]) -> bool:
    """Whether a dotted key is one of these settings or inside one of them (a table)."""
    return any(name == s or name.startswith(s + ".") for s in settings)


def check_space(base: dict, params: list[Param]) -> None:
    """Fail before any training: each parameter's extreme values and choices must make a
    valid config (conditional ones with their conditions met)."""
    from kit.train.recipe import check_config

    filled = with_model_defaults(base)
    for p in params:
        where = f'sweep.params."{p.name}"'
        for key, allowed in p.when.items():
            if not any(covered(key, (q.name,)) for q in params) \
                    and get_dotted(filled, key) is None:
                raise SweepError(f"{where}.when: {key!r} is neither a parameter nor a key of "
                                 "the experiment")
            holds_lists = isinstance(get_dotted(base, key), list) or any(
                q.name == key and any(isinstance(c, list) for c in q.choices) for q in params)
            if holds_lists and isinstance(allowed, list) and not all(
                    isinstance(a, list) for a in allowed):
                raise SweepError(f'{where}.when."{key}" = {allowed!r}: {key} holds a list, and '
                                 "a list in `when` means one of these values; to match that "
                                 f"one list write [{allowed!r}]")
            if not _reachable(key, allowed, base, params):  # it would never be sampled
                raise SweepError(f'{where}.when."{key}" = {allowed!r}: {key} never takes that '
                                 "value (neither the experiment nor a parameter's choices "
                                 "give it), so the parameter would never be sampled")
        config = _meet(base, params, p.when)
        trained = []
        for value in p.values():
            try:
                trained.append(check_config(set_dotted(config, p.name, value)))
            except KitError as exc:  # config, model, feature and loss errors alike
                if any(q.name != p.name and covered(q.name, exc.settings) for q in params):
                    continue  # a combination another parameter may fix: judged per trial
                raise SweepError(f"{where} = {value!r} makes an invalid experiment: {exc}"
                                 ) from None
        distinct = len({json.dumps(v, sort_keys=True, default=str) for v in p.values()}) > 1
        judged = len(trained) == len(p.values())  # (not when a combination was left to trials)
        if distinct and judged and all(t == trained[0] for t in trained):
            hint = (" (a [model] params budget solves the width whatever it says: sweep "
                    "model.params instead)" if p.name.startswith("model.") else "")
            raise SweepError(f"{where} has no effect: its values {p.values()} all train the "
                             f"same experiment{hint}; drop the parameter")


# --- parameters that change the rows trials are scored on (r313) -----------------------------


SEQ_LEN_HINT = ("; data.seq_len cuts the validation sequences as well as the training ones, and "
                "no setting shortens the training sequences alone: sweep train.chunk (the steps "
                "back-propagated at once, the state carried over whole sequences) or "
                "train.max_train_seqs (how many sequences train), which validate every trial "
                "on the same rows")


# the keys validated_rows reads: a parameter that sets none of them (nor a table holding one)
# validates every trial on the same rows
ROW_KEYS = ("spec", "seed", "data.train", "data.valid", "data.split", "data.valid_fraction",
            "data.split_seed", "data.group", "data.stratify", "data.fold", "data.seq_len",
            "data.truncate", "train.max_valid_seqs")


class _Sequences:
    """The longest sequence and the sequence count of a data file, read once (None when the
    file does not read: the refusal then assumes a cut)."""

    def __init__(self):
        self._read: dict[tuple, tuple[int, int] | None] = {}

    def _lengths(self, path: str, id_col: str) -> tuple[int, int] | None:
        key = (str(Path(path).resolve()), id_col)
        if key not in self._read:
            try:
                import polars as pl

                lengths = pl.scan_parquet(path).group_by(id_col).len().collect()["len"]
                self._read[key] = int(lengths.max() or 0), len(lengths)
            except Exception:  # a missing or unreadable file: named by the data checks
                self._read[key] = None
        return self._read[key]

    def longest(self, path: str, id_col: str) -> int | None:
        found = self._lengths(path, id_col)
        return found[0] if found else None

    def count(self, path: str, id_col: str) -> int | None:
        found = self._lengths(path, id_col)
        return found[1] if found else None


def validated_rows(config: dict, sequences: _Sequences) -> dict:
    """What decides the rows a config's runs are scored on, and against what metric, in named
    parts (as kit/train/data.py load_train_data builds the validation set): the file, the
    held-out part or fold of the train file, the steps data.seq_len keeps, the sequences
    train.max_valid_seqs keeps, the spec's scoring rules and metric."""
    from kit.competition import load_spec
    from kit.reports import SCORING_SPEC_KEYS, metric_settings

    data, spec = config["data"], load_spec(config["spec"])
    fold, held_out = data["fold"], data["split"] != "file"
    source = validation_file(config)
    parts: dict[str, object] = {"the file validated on": str(Path(source).resolve())}
    by = [data["split"], data["group"], data["stratify"]]
    if fold:  # the run's seed places the folds
        parts["the fold (data.fold, placed by the seed)"] = [fold, config["seed"], *by]
    elif held_out:
        parts["the held-out part of the train file"] = [*by, data["valid_fraction"],
                                                        data["split_seed"]]
    longest = spec.seq_len or sequences.longest(source, spec.id_col)
    seq_len = data["seq_len"]
    cut = seq_len if seq_len and (longest is None or seq_len < longest) else 0
    parts["the steps kept (data.seq_len, data.truncate)"] = [cut, data["truncate"] if cut else ""]
    limit = 0 if fold else config["train"]["max_valid_seqs"]
    count = None if held_out else sequences.count(source, spec.id_col)
    parts["the sequences kept (train.max_valid_seqs)"] = (
        limit if limit and (count is None or limit < count) else 0)
    scoring = spec.to_dict()
    parts["the spec's scoring rules and metric"] = [
        [scoring[key] for key in SCORING_SPEC_KEYS], metric_settings(spec)]
    return parts


def _probes(p: Param) -> list:
    """Values of p that show whether its trials validate on different rows: the choices, or a
    range's ends and its least value past the low end (0 keeps every step of data.seq_len and
    every sequence of train.max_valid_seqs; the next value cuts them)."""
    values = p.values()
    if p.kind == "int" and values[0] + (p.step or 1) < values[1]:
        values.append(int(values[0] + (p.step or 1)))
    elif p.kind == "float":
        values.append(values[0] + p.step if p.step else (values[0] + values[1]) / 2)
    return values


def refuse_row_changing_params(base: dict, params: list[Param]) -> None:
    """Refuse, before any trial, a parameter whose values validate trials on different rows or
    under another metric (data.seq_len cutting the validation sequences, data.valid, the split
    settings, train.max_valid_seqs, spec): the study ranks trials by their scores and writes
    the best file from that ranking, and such scores do not compare (r313: data.seq_len 1000
    scored on 7,208 rows ranked above 200 on 808). Values that keep the same rows (data.seq_len
    at or past the spec's sequence length) pass."""
    sequences = _Sequences()
    row_params = [p for p in params if any(covered(key, (p.name,)) for key in ROW_KEYS)]
    for p in row_params:
        for config in _row_contexts(base, params, row_params, p):
            seen: dict[str, list] = {}  # json of the rows' parts -> the values that give them
            parts_of: dict[str, dict] = {}
            for value in _probes(p):
                try:
                    parts = validated_rows(resolve(set_dotted(config, p.name, value)), sequences)
                except KitError:  # an invalid value: check_space names it
                    continue
                key = json.dumps(parts, sort_keys=True, default=str)
                seen.setdefault(key, []).append(value)
                parts_of[key] = parts
            if len(seen) > 1:
                raise SweepError(_rows_differ_text(p, list(seen.values()),
                                                   list(parts_of.values())))


def _row_contexts(base: dict, params: list[Param], row_params: list[Param],
                  p: Param) -> list[dict]:
    """The experiment with p's conditions met, under each combination of the probed values of
    the other parameters that set validation rows (where they apply and leave p applying):
    judged on the experiment alone, a swept data.split = "random" let a swept
    data.split_seed through, each trial validated on another held-out part (r320)."""
    watched = [*ROW_KEYS, *(k for q in row_params for k in q.when)]

    def key(config: dict) -> str:  # (contexts alike in what decides rows are one: r328)
        return json.dumps([get_dotted(config, k) for k in watched], default=str)

    met = _meet(base, params, p.when)
    contexts = {key(met): met}
    for q in row_params:
        if q is p:
            continue
        grown = {}
        for config in contexts.values():
            # where q does not apply as things stand, also where its conditions are met (r328:
            # a `when` on model.type hid its values)
            for start in (config, _meet(config, params, q.when)):
                for value in (_probes(q) if applies(q, start) else [None]):
                    changed = start if value is None else set_dotted(start, q.name, value)
                    if applies(p, changed):
                        grown.setdefault(key(changed), changed)
        contexts = grown or contexts
    return list(contexts.values())


def _rows_differ_text(p: Param, values: list[list], parts: list[dict]) -> str:
    """The refusal: the key, what differs between its values' validation rows, what to do."""
    differ = [name for name in parts[0]
              if any(q[name] != parts[0][name] for q in parts[1:])] or ["their settings"]
    shown = " against ".join(repr(v[0]) for v in values[:2])
    hint = SEQ_LEN_HINT if "data.seq_len" in differ[0] or p.name == "data.seq_len" else ""
    return (f'sweep.params."{p.name}": its values validate the trials on different rows or '
            f"under another metric ({shown} differ in {' and '.join(differ)}), so their "
            "scores do not compare, yet the study would rank them and write the best file "
            f"from that ranking; take {p.name} out of sweep.params and set it in the "
            "experiment, one value per study (an override of a swept key is refused: a "
            f"child experiment or a copy for each value, with --study NAME){hint}")


def suggest(trial, params: list[Param], base: dict) -> dict:
    """The trial's values (dotted name -> value), conditionals in declaration order."""
    config, values = base, {}
    for p in params:
        if not applies(p, config):
            continue
        if p.kind == "float":
            value = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
        elif p.kind == "int":
            value = trial.suggest_int(p.name, p.low, p.high, log=p.log, step=p.step or 1)
        else:
            label = trial.suggest_categorical(p.name, p.labels)
            value = p.choices[p.labels.index(label)]
        values[p.name] = value
        config = set_dotted(config, p.name, value)
    return values


def trial_config(base: dict, values: dict) -> dict:
    config = base
    for name, value in values.items():
        config = set_dotted(config, name, value)
    return resolve(config)


# --- storage, study ----------------------------------------------------------------------


DEFAULT_STORAGE = "the default storage (RUNS/EXP/sweep.db)"  # older best files' origin
STORAGE_ENV = "KIT_SWEEP_STORAGE"  # the storage URL when --storage is not given
CHILD_ENV = "KIT_SWEEP_CHILD"  # set in the --workers processes a sweep starts


def default_storage(experiment: str, runs_dir: Path = RUNS_DIR) -> str:
    from urllib.parse import quote  # SQLAlchemy unquotes: a ? or % in a folder name stays

    return f"sqlite:///{quote(str((runs_dir / experiment / 'sweep.db').resolve()))}"


def _in_memory(url: str) -> bool:
    """sqlite://, sqlite+pysqlite://, sqlite:///:memory: ... (any driver, no file)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not a URL: make_storage names it
        return False
    database = parsed.database or ""
    return (database in ("", ":memory:") or database.startswith("file::memory:")
            or parsed.query.get("mode") == "memory")  # SQLite URIs: file:NAME?mode=memory


def storage_file(url: str) -> Path | None:
    """The file a sqlite:/// or journal: storage keeps its study in, None for a server's."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:"))
    if url.startswith("sqlite"):  # sqlite:///, sqlite+pysqlite:/// ...
        from sqlalchemy.engine import make_url

        try:
            parsed = make_url(url)
        except Exception:  # not a URL: make_storage names it
            return None
        database = parsed.database
        if parsed.get_backend_name() == "sqlite" and database and not _in_memory(url):
            return Path(database)
    return None


def storage_forms(path: str = "PATH") -> str:
    """The storage URLs kit takes, for an error's advice (docs/sweeps.md, Storages)."""
    return (f"sqlite:///{path} (a SQLite file), journal:{path} (an append-only journal file) "
            "or a server's URL such as postgresql://user:password@host:5432/db")


def check_storage_url(url: str) -> None:
    """What a URL alone says cannot hold a study, before anything is opened or written (and
    before the best file's check, whose refusal would name it as if it were a storage)."""
    if not url.startswith("journal:") and "://" not in url:
        # a bare path: taking it for SQLite would let a typo'd scheme start a new study file
        looks_like_path = ":" not in url and "@" not in url
        # a mistyped server URL: all between its first ':' and its last '@' may be password
        head, at, host = url.rpartition("@")
        shown = f"{head.split(':', 1)[0]}:***@{host}" if at and ":" in head else url
        raise SweepError(f"storage {shown!r} is not a storage URL: give "
                         f"{storage_forms(url if looks_like_path else 'PATH')}")
    if not url.startswith("journal:"):
        from sqlalchemy.engine import make_url

        try:
            parsed = make_url(url)
        except Exception as exc:  # a port that is no number, ...
            raise SweepError(f"storage {shown_url(url)!r} is not a URL kit can read "
                             f"({type(exc).__name__}: {masked(str(exc), url)}): give "
                             f"{storage_forms()}") from None
        if "@" in (parsed.host or ""):  # the password's tail, read as the host
            raise SweepError(f"storage {shown_url(url)!r}: its password holds an unescaped "
                             "'@', so the driver would take the part after it for the host: "
                             "write it as %40 (e.g. postgresql://user:p%40ss@host:5432/db)")
    if url.startswith("sqlite") and _in_memory(url):
        raise SweepError(f"storage {shown_url(url)!r} is an in-memory database: the study would "
                         "be lost when the process ends (and each worker would have its own); "
                         "give a file, e.g. sqlite:///runs/EXP/sweep.db")
    file = storage_file(url)
    if url.startswith("journal:") and file is not None and (not file.name or file.is_dir()):
        raise SweepError(f"storage {shown_url(url)!r} does not open: {file} is a folder; give a "
                         "file, e.g. journal:runs/EXP/sweep.log")


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FULL_TEXTS = ("database or disk is full", "no space left on device")  # SQLite's, the OS's
NEARLY_FULL = 1 << 20  # bytes: SQLite says only "disk I/O error" when even its journal fails


def free_bytes(path: Path) -> int | None:
    """The free space on the disk that holds `path` (its nearest existing folder)."""
    for folder in (path, *path.parents):
        with contextlib.suppress(OSError):
            if folder.exists():
                return shutil.disk_usage(folder).free
    return None


def nearly_full(folder: Path) -> bool:
    free = free_bytes(folder)
    return free is not None and free < NEARLY_FULL


def full_disk_cause(exc: BaseException, *folders: Path | None) -> BaseException | None:
    """The error in exc's chain that says a disk is full (an OSError ENOSPC/EDQUOT, SQLite's
    "database or disk is full"), or SQLite's "disk I/O error" while one of `folders`' disks
    is nearly full; None when nothing in the chain is about a full disk (r303)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, TrialDiskFull):
            return exc.error
        text = str(exc).lower()
        if (isinstance(exc, OSError) and exc.errno in FULL_ERRNOS) or any(
                t in text for t in FULL_TEXTS):
            return exc
        if "disk i/o error" in text and any(nearly_full(f) for f in folders if f is not None):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def full_disk_text(cause: BaseException, url: str) -> tuple[str, Path | None]:
    """What filled up, in words (the file an OSError names, else the storage's file), and the
    folder whose disk it is."""
    if isinstance(cause, OSError) and cause.filename is not None:
        return f"{cause.filename}: {cause.strerror}", Path(cause.filename).parent
    file = storage_file(url)
    first = masked(str(cause).splitlines()[0] if str(cause) else type(cause).__name__, url)
    if file is None:
        return f"storage {shown_url(url)}: {first}", None
    return f"the study's storage {file}: {first}", file.parent


class SweepDiskFull(SweepError):
    """A disk the sweep writes to (its storage file, its trials' run folders) filled up: one
    line naming what filled and where, instead of Optuna's chained tracebacks (r303)."""


def disk_full_error(cause: BaseException, url: str, runs_dir: Path,
                    also: str = "") -> SweepDiskFull:
    """The error a sweep stops with when a disk filled: what failed to write (`also`: what
    that left behind), the free space on its disk, and what to do."""
    what, folder = full_disk_text(cause, url)
    folder = folder or runs_dir
    return SweepDiskFull(
        f"the disk is full: {what} ({_kib(free_bytes(folder.absolute()))} free on the disk of "
        f"{folder}){also}; free some space or give the sweep another --runs-dir (or "
        "--storage), then run the same command to continue the study (its finished trials "
        "are kept)")


def refuse_full_disk(exc: BaseException, url: str, file: Path | None) -> None:
    """A storage that does not open because its file's disk is full: SweepDiskFull."""
    if file is not None and (cause := full_disk_cause(exc, file.parent)):
        raise disk_full_error(cause, url, file.parent) from None


def _kib(size: int | None) -> str:
    return "unknown space" if size is None else f"{size // 1024} KiB"


# the engines of the storages a sweep() opened: their SQLite connections stayed open until a
# cyclic garbage collection, 8 file descriptors a sweep in a notebook's process (r306)
OPENED_ENGINES: list = []


def make_storage(url: str):
    """An Optuna storage from a URL: sqlite:///..., postgresql://..., mysql://..., or
    journal:PATH (an append-only file, e.g. on a shared disk)."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    shown = shown_url(url)  # what error messages show: never the password
    check_storage_url(url)
    file = storage_file(url)
    if file is not None:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            if url.startswith("journal:"):
                return JournalStorage(JournalFileBackend(str(file)))
        except OSError as exc:
            refuse_full_disk(exc, url, file)
            raise SweepError(f"storage {shown!r} does not open: {exc}") from None
    kwargs = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 120}}  # workers on one file wait for the lock
        _sqlite_pragmas()
    elif url.startswith(("postgresql://", "postgres://")):  # postgres:// is Heroku's spelling
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]
    attempts = 6
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
                                     grace_period=2 * HEARTBEAT_S)
            OPENED_ENGINES.append(storage.engine)  # closed when sweep() returns
            return storage
        except (optuna.exceptions.StorageInternalError, ImportError, ValueError) as exc:
            refuse_full_disk(exc, url, file)
            raise SweepError(f"storage {shown!r} does not open: {masked(str(exc), url)}"
                             ) from None
        except Exception as exc:  # SQLAlchemy's errors
            # workers starting together on an empty database race to create Optuna's tables:
            # the loser's IntegrityError, or "table ... already exists" (SQLite's
            # OperationalError, PostgreSQL's DuplicateTable), means they now exist; SQLite's
            # "database is locked" means another is creating them now: try again
            if attempt < attempts - 1 and (type(exc).__name__ == "IntegrityError" or (
                    type(exc).__name__ in ("OperationalError", "ProgrammingError")
                    and ("already exists" in str(exc) or "database is locked" in str(exc)))):
                time.sleep(0.5 + attempt)
                continue
            refuse_full_disk(exc, url, file)
            raise SweepError(f"storage {shown!r} does not open: {type(exc).__name__}: "
                             f"{masked(str(exc).splitlines()[0], url)}") from None
    raise AssertionError("unreachable")


def _on_sqlite_connect(dbapi_connection, _record) -> None:
    """WAL journal, fsync at checkpoints only: a trial's dozen small commits stop costing a
    disk flush each, and readers no longer block the writer (several workers on one file)."""
    import sqlite3

    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        for attempt in range(60):  # processes opening a new file at once: one switches it to
            try:  # WAL, the others may find it locked meanwhile ("database is locked")
                cursor.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 59:
                    raise
                time.sleep(0.25)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def _sqlite_pragmas() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", _on_sqlite_connect):
        event.listen(Engine, "connect", _on_sqlite_connect)


def worker_index() -> int:
    """KIT_SWEEP_WORKER: this worker's index, or a machine's first one (default 0)."""
    text = os.environ.get("KIT_SWEEP_WORKER", "0")
    if not (text.isascii() and text.isdigit()):
        raise SweepError(f"KIT_SWEEP_WORKER: a non-negative integer (this machine's first worker "
                         f"index: 0, 100, 200, ...), got {text!r}")
    return int(text)


def sampler_seed(table: dict, existing: int) -> int | None:
    """The sampler's seed from sweep.seed, this worker's index (KIT_SWEEP_WORKER, set by
    run_processes) and the number of trials already in the study, mixed: workers never propose
    the same points, a resumed study does not propose its first points again, and a sweep
    started over proposes the same ones. No sweep.seed: fresh entropy per worker, on any number
    of machines (a pid seed would repeat across machines and containers)."""
    import numpy as np

    seed = table.get("seed")
    if seed is None:
        return None
    worker = worker_index()
    # the seed as entropy, worker and count as the spawn key: no two (seed, worker, count)
    # triples can pad or split into the same words
    sequence = np.random.SeedSequence(seed, spawn_key=(worker, existing))
    return int(sequence.generate_state(1)[0])


# settings that do not change what a trial trains: left out of a study's config digest
NOT_TRAINING = ("name", "description", "sweep", "train.threads", "train.tensorboard",
                "data.cache_dir")


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def study_identity(setup: SweepSetup) -> dict:
    """What every trial of a study shares, recorded in the study's user attributes: the
    experiment, a digest of each parameter's declaration and of each config key the trials start
    from. Left out: NOT_TRAINING and the keys an unconditional parameter sets in every trial."""
    swept = [p.name for p in setup.params if not p.when]
    return {"kit_experiment": setup.experiment,
            "kit_space": {p.name: digest(asdict(p)) for p in setup.params},
            "kit_config": training_digests(setup.base, swept)}


def training_digests(base: dict, left_out: list[str] | tuple = ()) -> dict:
    """A digest per config key that changes what a run trains: NOT_TRAINING and `left_out`
    left out, spec and data files by content (by_content)."""
    return {key: digest(value) for key, value in flatten(by_content(base)).items()
            if not any(_within(key, n) for n in (*NOT_TRAINING, *left_out))
            and not added_at_default(key, value)}


def by_content(base: dict) -> dict:
    """The config with its spec and data files named by what they hold, not by their paths:
    the same files under another path (a relative spelling, another machine's mount) are the
    same sweep; another file under the same name is not."""
    from kit.competition import load_spec
    from kit.run_record import file_sha256

    data = dict(base.get("data") or {})
    for key in ("train", "valid"):
        if isinstance(data.get(key), str) and Path(data[key]).is_file():
            # the digests.json record spares re-reading a big file
            data[key] = f"sha256:{file_sha256(data[key], data.get('cache_dir'))}"
    return {**base, "spec": load_spec(base["spec"]).training_dict(), "data": data}


def identity_differences(stored: dict, identity: dict) -> list[str]:
    """What differs between a study's recorded identity and this sweep's, in words."""
    problems = []
    if stored.get("kit_experiment") != identity["kit_experiment"]:
        problems.append(f"it sweeps experiment {stored.get('kit_experiment')!r}, this command "
                        f"{identity['kit_experiment']!r}")
    for what, key in (("search space (sweep.params)", "kit_space"),
                      ("config keys", "kit_config")):
        old, new = stored.get(key) or {}, identity[key]
        parts = [f"{label} {names[:8]}" + (f" and {len(names) - 8} more" if len(names) > 8
                                           else "")
                 for label, names in (
                     ("changed", sorted(k for k in old.keys() & new.keys() if old[k] != new[k])),
                     ("added", sorted(new.keys() - old.keys())),
                     ("removed", sorted(old.keys() - new.keys()))) if names]
        if parts:
            # the data files' keys hold their sha256, not their paths: regenerated data under
            # the same path read as a renamed file (r317); the spec's are its settings, flat
            files = [k for k in ("data.train", "data.valid")
                     if k in old and k in new and old[k] != new[k]]
            how = (f" ({', '.join(files)} compared by content: the file holds other "
                   "data now, or another file is named)") if files else ""
            problems.append(f"{what} differ: {', '.join(parts)}{how}")
    return problems


IDENTITY_WAIT_S = 30.0  # how long a worker waits for another's identity before taking over


def check_identity(study, name: str, identity: dict, params: list[Param] = (),
                   storage=None) -> None:
    """Refuse to add trials to a study made for another experiment, search space or config:
    its trials would be ranked with these. A study without a recorded identity (new, or made
    before kit recorded one) takes this sweep's, with a note when it already has trials,
    unless a parameter's distribution cannot be one of theirs (Optuna would raise on it in
    every trial)."""
    if "kit_experiment" not in study.user_attrs:
        _record_identity(study, name, identity, params, storage or study._storage)
    problems = identity_differences(study.user_attrs, identity)
    wait = failed_only_for(study) if problems else None
    if wait:  # its last trial failed a moment ago (the command run again at once)
        print(f"note: study {name!r} holds failed trials only, the last {QUIET_S - wait:.0f}s "
              f"ago: waiting {wait:.0f}s for any worker still sampling it", file=sys.stderr,
              flush=True)
        time.sleep(wait)
        wait = failed_only_for(study)
    if problems and wait == 0:  # nothing to rank against: the fixed sweep goes on
        check_distributions(name, study.get_trials(deepcopy=False), params)
        print(f"note: study {name!r} holds failed trials only; it continues with this "
              f"sweep's changes ({'; '.join(problems)})", file=sys.stderr, flush=True)
        for key in ("kit_space", "kit_config", "kit_experiment"):
            study.set_user_attr(key, identity[key])
        return
    if problems:
        raise SweepError(f"study {name!r} in this storage was made for another sweep: "
                         f"{'; '.join(problems)}. Its trials would be ranked with this sweep's: "
                         "pick a new --study name, or put the old settings back")


QUIET_S = 10.0  # a study whose last trial failed this long ago has no worker sampling it


def failed_only_for(study) -> float | None:
    """For a study of failed trials only, the seconds until its last has been over for
    QUIET_S (0: now); None for any other study. The advice after a failing streak is to fix
    the cause and run the same command again: such a study takes the new settings, but not a
    new study (a worker that found it new first may be about to train: its identity stands),
    nor one whose worker is between two trials."""
    import datetime

    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if not trials or any(t.state != TrialState.FAIL for t in trials):
        return None
    ended = max((t.datetime_complete for t in trials if t.datetime_complete), default=None)
    if ended is None:
        return None
    since = (datetime.datetime.now() - ended).total_seconds()
    return max(0.0, QUIET_S - since) if since >= 0 else None  # (another clock: refuse)


def identity_lock(name: str) -> str:
    """The lock study's name: fixed length and plain characters, whatever the study's (a
    server's column holds 512)."""
    return f"kit identity lock {hashlib.sha256(name.encode()).hexdigest()[:16]}"


def _record_identity(study, name: str, identity: dict, params: list[Param], storage) -> None:
    """Record this sweep's identity on a study that has none, one worker at a time. Workers
    that found the study new at the same moment each wrote theirs and read back their own,
    so both trained into it. Creating a study is the storage's one atomic test-and-set: the
    worker that creates the lock study (identity_lock) writes; the others wait for what it
    wrote, then compare, reading only (a journal storage logs every create). The lock goes
    once the identity is in place; a holder that died is taken over after IDENTITY_WAIT_S."""
    import optuna

    lock = identity_lock(name)
    deadline = time.time() + IDENTITY_WAIT_S
    while True:
        try:
            optuna.create_study(study_name=lock, storage=storage)
            break
        except optuna.exceptions.DuplicatedStudyError:
            while (lock in optuna.get_all_study_names(storage)
                   and "kit_experiment" not in study.user_attrs and time.time() < deadline):
                time.sleep(0.2)
            if "kit_experiment" in study.user_attrs:  # the holder wrote it: compare
                return
            if time.time() >= deadline:  # the holder died before writing: take over
                break
            # the holder let go without writing (it failed): try for the lock again
    try:
        if "kit_experiment" in study.user_attrs:  # written before this worker got the lock
            return
        if trials := study.get_trials(deepcopy=False):
            check_distributions(name, trials, params)
            print(f"note: study {name!r} was made before kit recorded what a study sweeps; its "
                  "trials are taken as this sweep's and this sweep's experiment, search space "
                  "and config are recorded now (later runs must match them)",
                  file=sys.stderr, flush=True)
        # kit_experiment, the marker, last: a worker that reads it finds the other two set
        for key in ("kit_space", "kit_config", "kit_experiment"):
            study.set_user_attr(key, identity[key])
    finally:
        with contextlib.suppress(Exception):  # gone already (a worker that took over)
            optuna.delete_study(study_name=lock, storage=storage)


def check_distributions(name: str, trials, params: list[Param]) -> None:
    """Each parameter's distribution must be compatible with the one earlier trials drew it
    from (same kind; for a categorical, the same choices)."""
    from optuna.distributions import check_distribution_compatibility

    for p in params:
        earlier = next((t.distributions[p.name] for t in trials
                        if p.name in t.distributions), None)
        if earlier is None:
            continue
        try:
            check_distribution_compatibility(earlier, p.distribution())
        except ValueError as exc:
            raise SweepError(f"sweep.params.{p.name}: study {name!r} drew it from "
                             f"{earlier!r} in its earlier trials ({exc}); pick a new --study "
                             "name, or put the old declaration back") from None


def make_study(name: str, storage, direction: str, table: dict, epochs: int,
               identity: dict | None = None, params: list[Param] = ()):
    """Create or load the study; with `identity` (study_identity), refuse one made for another
    sweep before anything trains (`params`: checked against earlier trials' distributions)."""
    import optuna

    check_table(table)
    pruner_name = table.get("pruner", "median")
    pruner = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1,
                                                            max_resource=max(epochs, 1)),
        "none": optuna.pruners.NopPruner,
    }[pruner_name]()
    study = optuna.create_study(study_name=name, storage=storage, direction=direction,
                                pruner=pruner, load_if_exists=True)
    if study.direction.name.lower() != direction:  # an existing study of another metric
        raise SweepError(f"study {name!r} in this storage is set to "
                         f"{study.direction.name.lower()}, this experiment's metric to "
                         f"{direction}: pick another --study name")
    # a killed worker's trial: failed now, not when one starts, and before the identity check
    # (a study whose one trial was OOM-killed is a study of failed trials: it takes the fix)
    fail_stale_trials(study)
    if identity is not None:
        check_identity(study, name, identity, params, storage)
        record_search(study, name, table)
    existing = len(study.get_trials(deepcopy=False)) if table.get("seed") is not None else 0
    seed = sampler_seed(table, existing)
    study.sampler = (optuna.samplers.TPESampler(seed=seed)
                     if table.get("sampler", "tpe") == "tpe"
                     else optuna.samplers.RandomSampler(seed=seed))
    return study


def record_search(study, name: str, table: dict) -> None:
    """The sampler, pruner and sweep.seed that choose and stop this run's trials, kept as the
    study's `kit_search` attribute (shown in the summary). Another search on the same study is
    said, not refused: a study may switch from random sampling to TPE on purpose, but its
    trials are then ranked together whatever chose them."""
    search = {"sampler": table.get("sampler", "tpe"), "pruner": table.get("pruner", "median"),
              "seed": table.get("seed")}
    before = study.user_attrs.get("kit_search")
    if before == search:
        return
    if before is not None:
        print(f"note: study {name!r} chose and stopped its trials with {search_text(before)} so "
              f"far; this run uses {search_text(search)} (all its trials are ranked together)",
              file=sys.stderr, flush=True)
    study.set_user_attr("kit_search", search)


def search_text(search: dict) -> str:
    seed = "no seed" if search.get("seed") is None else f"seed {search['seed']}"
    return f"sampler {search.get('sampler')}, pruner {search.get('pruner')}, {seed}"


def finished_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


# --- the objective and the workers ---------------------------------------------------------


@dataclass
class SweepSetup:
    source: str  # the experiment as given (a name, exp=NAME or a TOML path): what best extends
    experiment: str
    base: dict
    params: list[Param]
    table: dict
    direction: str
    study_name: str
    storage_url: str
    runs_dir: Path
    overrides: list[str] = field(default_factory=list)
    # the warnings said so far (the experiment's, at the start): a trial's check says only
    # new ones (each trial repeated the experiment's warm-up or loss warning: r296)
    said: set[str] = field(default_factory=set)


def warn_once(said: set[str], check, quiet: bool = False):
    """check(), its warnings said where not said already (`said` grows; quiet: only noted,
    as a --workers child notes what its command said already)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            return check()
    finally:
        for w in caught:
            if str(w.message) not in said:
                said.add(str(w.message))
                if not quiet:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def prepare(exp: str, overrides: list[str] | None, study: str | None, storage: str | None,
            runs_dir: Path = RUNS_DIR) -> SweepSetup:
    from kit.competition import load_spec
    from kit.train.losses import warn_row_weights
    from kit.train.recipe import experiment_config

    base = experiment_config(exp, overrides)
    table = base.get("sweep") or {}
    params = parse_space(table)
    refuse_sampled_overrides(overrides, params)
    said: set[str] = set()
    warn_once(said, lambda: check_space(base, params), quiet=bool(os.environ.get(CHILD_ENV)))
    spec = load_spec(base["spec"])
    direction = "maximize" if spec.metric.higher_is_better else "minimize"
    name = base["name"]
    setup = SweepSetup(exp.removeprefix("exp="), name, base, params, table, direction,
                       study or name,
                       storage or storage_from_env() or default_storage(name, runs_dir),
                       runs_dir, list(overrides or []), said)
    try:
        refuse_row_changing_params(base, params)
    except SweepError as exc:  # a best file of an earlier kit's study came from such a
        # ranking, and the refusal comes before the summary that would say so (r317)
        best = best_path(setup)
        if not best.is_file():
            raise
        raise SweepError(f"{exc}. {best} is there already: if an earlier kit wrote it from "
                         "this space, it ranked trials scored on different rows; compare them "
                         f"with kit runs -e {name} (column validated) before building on "
                         "it") from None
    if not any(p.name == "loss" or p.name.startswith("loss.") for p in params):  # (r314)
        warn_once(said, lambda: warn_row_weights(exp.removeprefix("exp="), overrides, base),
                  quiet=bool(os.environ.get(CHILD_ENV)))
    return setup


def refuse_sampled_overrides(overrides: list[str] | None, params: list[Param]) -> None:
    """An override of a key every trial samples (of a key inside it, or of a table holding
    it) would be replaced without a word. A conditional parameter leaves the override where
    its condition fails, and a table around a swept key that leaves it out keeps its keys:
    both are allowed."""
    for text in overrides or []:
        path, value = parse_override(text)
        key = ".".join(path)
        for p in params:
            holds = (p.name.startswith(key + ".")
                     and get_dotted(value, p.name[len(key) + 1:]) is not None)
            if not p.when and (covered(key, (p.name,)) or holds):
                raise SweepError(f"override {text!r}: every trial samples {p.name}, which would "
                                 f'replace it; change sweep.params."{p.name}" to change what '
                                 "it samples, or leave it out of sweep.params to fix it")


def storage_from_env() -> str | None:
    """$KIT_SWEEP_STORAGE; said once (not by the workers it is handed to): a value left in a
    shell would otherwise send every sweep to that storage without a word."""
    url = os.environ.get(STORAGE_ENV) or None
    if url and CHILD_ENV not in os.environ:
        print(f"note: storage from ${STORAGE_ENV}: {shown_url(url)}", file=sys.stderr,
              flush=True)
    return url


class SweepStopped(KeyboardInterrupt):
    """A sweep stopped by a signal. A KeyboardInterrupt, so Optuna marks the trial failed
    (it passes other BaseExceptions through, leaving the trial running); `signum` says which
    signal, for the exit code (130 for Ctrl-C, 128 + the signal otherwise)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__()
        self.signum = signum


class GracefulInterrupt:
    """Ctrl-C during a sweep, or SIGTERM/SIGHUP (a scheduler, `kill`, a closed terminal),
    stops at the end of the current epoch, in kit's own code, never in the middle of a storage
    write (an interrupted SQLite transaction would hold its lock); a second signal stops at
    once. Either way the trial is marked failed (SweepStopped), not left running."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}

    @property
    def asked(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handle)
                             for sig in caught(self.SIGNALS)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.asked:
            raise SweepStopped(self.signum)
        self.signum = signum
        said = "interrupt" if signum == signal.SIGINT else signal.Signals(signum).name
        again = "Ctrl-C again" if signum == signal.SIGINT else "a second signal"
        # os.write, not print: print() re-entered while tqdm writes to stderr raises; a hung-up
        # terminal (SIGHUP) refuses the write (EIO), which must not raise wherever we are
        with contextlib.suppress(OSError):
            os.write(2, f"{said}: stopping at the end of this epoch ({again} to stop now)\n"
                     .encode())

    def check(self) -> None:
        if self.asked:
            raise SweepStopped(self.signum)


class EpochReports:
    """The trainer's per-epoch callback: reports the trial's best score so far (the value the
    trial returns if it stops there: its best epoch is what it keeps) and asks the pruner,
    except after the epoch the run ends on anyway (the last one, or one that exhausts
    train.patience): a run that trained all its epochs is complete, never pruned."""

    def __init__(self, trial, interrupt: GracefulInterrupt | None = None):
        self.trial, self.interrupt = trial, interrupt

    def __call__(self, end: EpochEnd) -> bool:
        if self.interrupt is not None:
            self.interrupt.check()  # a safe point: after the epoch's checkpoint
        self.trial.report(end.best_score, end.epoch)
        return not end.last and self.trial.should_prune()


def claim_folder(folder: Path) -> Path:
    """Create the trial's run folder, or one beside it: a study started over under the same
    name, or another study of the same folder name (`a/b` and `a-b`, one name on two
    storages), must never train into it. mkdir is the claim: two sweeps checking whether the
    folder exists both found it free, and the second crashed on the first's lock."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    name = folder.name
    for attempt in itertools.count():
        try:
            folder.mkdir()
            return folder
        except FileNotFoundError:  # a failed training group of the experiment removed its
            folder.parent.mkdir(parents=True, exist_ok=True)  # empty folder just now
            continue
        except FileExistsError:
            folder = folder.with_name(f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
                                      + (f"-{attempt}" if attempt else ""))


def objective(setup: SweepSetup, progress: bool, interrupt: GracefulInterrupt | None = None):
    import optuna

    from kit.train.recipe import check_config, train_one
    from kit.train.trainer import TrainingDiverged, TrainingOutOfMemory

    def run(trial) -> float:
        try:
            value = attempt(trial)
        except optuna.exceptions.UpdateFinishedTrialError:  # (its report, its attrs)
            value = None
        except optuna.TrialPruned:
            if not finished_elsewhere(trial):
                raise
            value = None
        except Exception as exc:  # a full disk: stop as Ctrl-C does, saying so in one line
            if (cause := full_disk_cause(exc, setup.runs_dir)) is None:
                raise
            full_trials.append(TrialDiskFull(trial, cause))
            raise full_trials[-1] from None
        if value is None or finished_elsewhere(trial):  # (also after its last report: the
            taken_over.append(trial.number)  # SWA model's validation, the return)
            raise TrialTakenOver(trial.number) from None
        return value

    def attempt(trial) -> float:
        try:
            values = suggest(trial, setup.params, setup.base)
            config = trial_config(setup.base, values)
            if os.environ.get(CHILD_ENV) and config["train"]["threads"] == 0:
                # a --workers child trains on its share of the cores: its config.toml, and
                # the best file, say so (with 0 the best file retrained on all of them, and
                # came out another model: r299)
                import torch

                config["train"]["threads"] = torch.get_num_threads()
            warn_once(setup.said, lambda: check_config(config))
        except KitError as exc:  # values valid alone, not together (d_model vs n_heads)
            reason = f"invalid combination of values: {exc}"
            trial.set_user_attr("invalid", reason)
            return failed_saying(trial, reason)  # as a diverged one: the study samples on
        config.pop("sweep", None)
        name = f"{safe_name(setup.study_name)}-t{trial.number:04d}"
        files = RunFiles(claim_folder(setup.runs_dir / setup.experiment / name))
        trial.set_user_attr("run_dir", str(files.root.resolve()))  # read from anywhere
        trial.set_user_attr("worker", os.getpid())

        try:
            metrics = train_one(config, files, progress=progress,
                                on_epoch=EpochReports(trial, interrupt))
        except BrokenPipeError as exc:  # `kit sweep ... | head -1`: stdout's reader exited
            if not stdout_closed(exc):
                raise
            raise SweepStopped(SIGPIPE) from None  # as an interrupt (no traceback)
        except TrainingDiverged as exc:  # these values diverge: a failed trial, not a failed sweep
            trial.set_user_attr("diverged", str(exc))
            return failed_saying(trial, str(exc))
        except TrainingOutOfMemory as exc:  # these values do not fit (a wide model, a large
            # batch): a failed trial said in one line, as a diverged one; smaller ones may fit
            trial.set_user_attr("out_of_memory", str(exc))
            return failed_saying(trial, str(exc))
        if metrics.get("pruned"):
            raise optuna.TrialPruned(f"pruned after epoch {metrics['epochs']}")
        return metrics["score"]

    return run


def finished_elsewhere(trial) -> bool:
    """Whether another sweep already ended this worker's trial (failed it as stale)."""
    return trial.study._storage.get_trial(trial._trial_id).state.is_finished()


class TrialTakenOver(Exception):
    """This worker's trial was failed by another sweep while this one did not beat (a paused
    process, a sleeping laptop): its reports are refused, and Optuna cannot tell it again."""


taken_over: list[int] = []  # trials of this process that TrialTakenOver ended


class TrialDiskFull(Exception):
    """A trial stopped by a full disk (its run folder's, or its storage's writes): Optuna marks
    it failed and raises it on, where the sweep stops with one line (SweepDiskFull), as on
    Ctrl-C; Optuna's own lines about it are dropped (_NoInterruptTracebacks). r303"""

    def __init__(self, trial, error: BaseException):
        super().__init__(f"trial {trial.number}: {error}")
        self.trial, self.error = trial, error


full_trials: list[TrialDiskFull] = []  # this process's: Optuna loses one whose tell failed


def fail_stale_trials(study) -> None:
    """Mark trials whose worker stopped beating (killed) as failed. Optuna does it only when
    a trial starts; a study that already has its trials starts none, and a killed trial would
    stay running for good. Storages without heartbeats (journal) are left as they are."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class _NoInterruptTracebacks(logging.Filter):
    """Optuna logs a trial ended by Ctrl-C (or SIGTERM) as failed, with the whole traceback:
    the sweep says itself what stopped and how to resume; and a failed trial's value."""

    def filter(self, record: logging.LogRecord) -> bool:
        kind = record.exc_info[0] if record.exc_info else None
        said = re.match(r"Trial (\d+) failed with ", record.getMessage())
        if kind and issubclass(kind, KeyboardInterrupt | SystemExit | TrialTakenOver
                               | TrialDiskFull):
            if said:  # (its "failed with value None." comes next)
                TRIALS_SAID.add(int(said[1]))
            return False
        # a failed trial whose reason kit printed: Optuna's two lines after it ("The value nan
        # is not acceptable", "failed with value nan") said nothing more (r266); a NaN kit
        # said nothing about is still logged
        return not (said and int(said[1]) in TRIALS_SAID)


TRIALS_SAID: set[int] = set()  # trials of this process that failed with their reason printed


def failed_saying(trial, reason: str) -> float:
    """A failed trial's value (NaN: Optuna records the trial as failed and samples on), its
    reason printed here, so Optuna's own lines about it are dropped (_NoInterruptTracebacks)."""
    print(f"trial {trial.number}: {reason}", file=sys.stderr, flush=True)
    TRIALS_SAID.add(trial.number)
    return float("nan")


def quiet_interrupts(logger: logging.Logger) -> None:
    """On the logger's handlers: the trial's record comes from a child logger (a logger's own
    filters see only what is logged through it)."""
    for handler in logger.handlers:
        if not any(isinstance(f, _NoInterruptTracebacks) for f in handler.filters):
            handler.addFilter(_NoInterruptTracebacks())


def run_worker(setup: SweepSetup, trials: int, timeout: float | None, progress: bool) -> None:
    """One worker: trials of the study until `trials` are finished in total (all workers)."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    quiet_interrupts(optuna.logging.get_logger("optuna"))
    study = make_study(setup.study_name, make_storage(setup.storage_url), setup.direction,
                       setup.table, setup.base["train"]["epochs"], study_identity(setup),
                       setup.params)
    left = trials - len(finished_trials(study))
    if left <= 0:
        return
    failing = FailureStreak()
    deadline = None if timeout is None else time.time() + timeout
    with GracefulInterrupt() as interrupt:
        while True:
            try:
                # no n_trials: failed trials (training that diverged) do not count, so the
                # study runs until `trials` are finished, or until this worker's trials keep
                # failing
                study.optimize(
                    objective(setup, progress, interrupt),
                    timeout=None if deadline is None else max(0.0, deadline - time.time()),
                    callbacks=[MaxTrialsCallback(trials, states=(TrialState.COMPLETE,
                                                                 TrialState.PRUNED)),
                               failing, lambda study, _: interrupt.asked and study.stop()],
                    catch=(), gc_after_trial=False)  # a full gc per trial cost ~0.2 s
                break
            except ValueError:  # Optuna's "Cannot tell a FAIL trial": one taken over?
                if not taken_over:
                    raise
                print(f"note: trial {taken_over.pop()} was marked failed by another sweep of "
                      f"the study while this worker did not beat (paused for over "
                      f"{2 * HEARTBEAT_S} s?); its folder is left unfinished and this worker "
                      "samples on", file=sys.stderr, flush=True)
                if interrupt.asked or trials - len(finished_trials(study)) <= 0:
                    break
    interrupt.check()  # asked between trials: the study stopped after the one finishing
    if failing.stopped:
        choices = ("; a categorical's choices stay those its trials drew: to change them, "
                   "pick a new --study name") if any(
                       p.kind == "categorical" for p in setup.params) else ""
        raise SweepError(f"{failing.stopped} ({failing.last}); the study keeps them as failed: "
                         "fix the cause (or narrow the search space) and re-run the same "
                         "command to continue (a study with no finished trial takes the "
                         f"changed settings{choices})")


FAILED_IN_A_ROW = 5  # a worker whose trials keep failing stops instead of sampling forever


class FailureStreak:
    """An Optuna callback that stops this worker when its own last FAILED_IN_A_ROW trials failed,
    or when the study's last FAILED_IN_A_ROW trials to end since this worker started (every
    worker's, on every machine) did: K workers on a search that always fails then spend about
    FAILED_IN_A_ROW + K trials between them, not FAILED_IN_A_ROW each. Failures from before the
    worker started do not count: the same command re-run after a fix starts a fresh streak."""

    def __init__(self):
        self.count, self.last, self.stopped = 0, "", ""
        self.started = time.time()

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        if trial.state != TrialState.FAIL:
            self.count = 0
            return
        self.count += 1
        attrs = trial.user_attrs
        self.last = attrs.get("diverged") or attrs.get("invalid") or "see the log above"
        if self.count >= FAILED_IN_A_ROW:
            self.stopped = f"this worker's last {self.count} trials all failed"
        elif study_failing(study, self.started):
            self.stopped = f"the study's last {FAILED_IN_A_ROW} finished trials all failed"
        if self.stopped:
            study.stop()


def study_failing(study, since: float) -> bool:
    """Whether the study's last FAILED_IN_A_ROW trials to end since `since` (a time.time())
    all failed."""
    from optuna.trial import TrialState

    ended = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                    TrialState.FAIL))
    # timestamp(): Optuna's end times are naive local times (or aware ones: right either way)
    ended = sorted((t for t in ended if t.datetime_complete is not None
                    and t.datetime_complete.timestamp() >= since),
                   key=lambda t: t.datetime_complete)[-FAILED_IN_A_ROW:]
    return len(ended) == FAILED_IN_A_ROW and all(t.state == TrialState.FAIL for t in ended)


def refuse_dangling_links(setup: SweepSetup) -> None:
    """A runs folder (or storage file) through a symbolic link to nothing is refused, as every
    other command refuses it (kit.errors.os_error_text): the default storage's resolved path
    created the link's target, and the sweep ran where `kit train` said 'File exists' (r303)."""
    from kit.errors import dangling_link, dangling_text

    for path in (setup.runs_dir, storage_file(setup.storage_url)):
        if path is not None and (link := dangling_link(path)):
            raise SweepError(dangling_text(link))


@contextlib.contextmanager
def stops_on_full_disk(setup: SweepSetup):
    """A disk that fills during the sweep stops it with one SweepDiskFull line, its trial
    failed where the storage still takes that, instead of Optuna's chained tracebacks that
    ended in `AssertionError: Should not reach.` and lost the trial's own error (r303)."""
    full_trials.clear()
    try:
        yield
    except SweepError:
        raise
    except Exception as exc:
        file = storage_file(setup.storage_url)
        cause = full_disk_cause(exc, file and file.parent, setup.runs_dir)
        stopped = full_trials[-1] if full_trials else None
        if stopped is None and cause is None:
            raise
        also = "" if stopped is None else failed_for_full_disk(stopped.trial)
        raise disk_full_error(stopped.error if stopped else cause, setup.storage_url,
                              setup.runs_dir, also) from None


def failed_for_full_disk(trial) -> str:
    """Mark a trial that a full disk stopped as failed, as Ctrl-C does (Optuna's own attempt
    failed where the storage is on the full disk); what is left otherwise, in words."""
    from optuna.trial import TrialState

    storage = trial.study._storage
    with contextlib.suppress(Exception):
        if not storage.get_trial(trial._trial_id).state.is_finished():
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        return f"; trial {trial.number} is marked failed"
    return (f"; trial {trial.number} stays running in the study until the next sweep finds "
            f"its worker gone ({2 * HEARTBEAT_S} s without a heartbeat) and fails it")


@contextlib.contextmanager
def caller_optuna_kept():
    """Optuna as the caller had it once sweep() returns (r306): its verbosity (the sweep sets
    WARNING), its handlers' filters (the sweep's dropped "Trial N failed" records by trial
    number, so a notebook's own study after it logged nothing of its failures), and no
    connection of the sweep's storages left open."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    handlers = optuna.logging.get_logger("optuna").handlers
    filters = {handler: list(handler.filters) for handler in handlers}
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)
        for handler, kept in filters.items():
            handler.filters[:] = kept
        TRIALS_SAID.clear()  # trial numbers of this sweep's study: another's are others
        while OPENED_ENGINES:
            OPENED_ENGINES.pop().dispose()


def sweep(exp: str, overrides: list[str] | None = None, *, trials: int | None = None,
          storage: str | None = None, study: str | None = None, workers: int = 1,
          timeout: float | None = None, progress: bool = True,
          runs_dir: Path = RUNS_DIR, summary: bool = True) -> dict:
    """Run (or resume) the study to `trials` finished trials; returns the summary (and writes
    the best experiment), or {} with summary=False: the workers of --workers leave both to
    their parent."""
    # (no decorators: a wrapper's frame would take the place of the caller in warnings)
    with kit_torch(grad=True), caller_optuna_kept():
        setup = prepare(exp, overrides, study, storage, runs_dir)
        trials = trials if trials is not None else int(setup.table.get("trials", 20))
        if trials < 1 or workers < 1:
            raise SweepError("--trials and --workers must be >= 1")
        if timeout is not None and not timeout > 0:
            raise SweepError(f"--timeout must be a number of seconds > 0, got {timeout}")
        worker_index()  # a malformed KIT_SWEEP_WORKER fails here, not in a worker
        from kit.train.data import check_data_files

        check_data_files(setup.base["data"])  # before any trial: each would fail on it
        check_storage_url(setup.storage_url)  # first: the best file's check named the storage
        refuse_dangling_links(setup)
        if summary:  # the best file it would write belongs to this study, or to none yet
            check_best_file(setup, best_path(setup))
        started = time.perf_counter()
        with stops_on_full_disk(setup):
            if workers == 1:
                run_worker(setup, trials, timeout, progress)
            else:
                run_processes(setup, exp, overrides, trials, workers, timeout)
            if not summary:
                return {}
            return summarize(setup, time.perf_counter() - started, trials, timeout)


def worker_command(setup: SweepSetup, exp: str, overrides, trials: int,
                   timeout: float | None) -> list[str]:
    # the storage URL goes in the environment (STORAGE_ENV), not argv: a password in argv is
    # readable by every user of the machine (ps), the environment only by its owner
    cmd = kit_command("sweep", exp, *list(overrides or []), "--trials", str(trials), "--study",
                      setup.study_name, "--workers", "1", "--runs-dir", str(setup.runs_dir),
                      "--quiet", "--no-summary")
    return cmd + (["--timeout", str(timeout)] if timeout else [])


def run_processes(setup: SweepSetup, exp: str, overrides, trials: int, workers: int,
                  timeout: float | None) -> None:
    """K worker processes on one study; the machine's threads shared between them."""
    # the study (and the storage's tables) exist before the workers start: no creation race
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # as in the workers
    make_study(setup.study_name, make_storage(setup.storage_url), setup.direction, setup.table,
               setup.base["train"]["epochs"], study_identity(setup), setup.params)
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                        "PYTHONPATH": worker_pythonpath()}
    first = worker_index()  # this machine's offset, if given
    with WorkerGroup() as group:
        for i in range(workers):
            group.start(worker_command(setup, exp, overrides, trials, timeout),
                        env | {"KIT_SWEEP_WORKER": str(first + i), CHILD_ENV: "1",
                               STORAGE_ENV: setup.storage_url})
        codes = group.wait()
    if any(codes):
        raise SweepError(f"worker exit codes {codes}; the study keeps every finished trial: "
                         "re-run the same command to continue")


def summarize(setup: SweepSetup, seconds: float, wanted: int | None = None,
              timeout: float | None = None) -> dict:
    """The study's counts and five best trials (and the best file written); with `wanted`
    (--trials) and `timeout`, whether the time limit stopped it short of them."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=setup.study_name,
                              storage=make_storage(setup.storage_url))
    fail_stale_trials(study)  # counted as failed, not as running for good
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    sign = 1 if setup.direction == "maximize" else -1
    best = sorted(done, key=lambda t: -sign * t.value)[:5]
    summary = {"study": setup.study_name, "storage": setup.storage_url, "seconds": seconds,
               "search": study.user_attrs.get("kit_search"),
               "counts": counts, "best": [{"number": t.number, "score": t.value,
                                           "params": t.params,
                                           "run_dir": trial_run_dir(setup, t)}
                                          for t in best]}
    for entry in summary["best"]:  # its recorded folder, not found under this runs/ either
        entry["gone"] = entry["run_dir"] is not None and not Path(entry["run_dir"]).is_dir()
    finished = counts.get("complete", 0) + counts.get("pruned", 0)
    if timeout is not None and wanted is not None and finished < wanted:
        # a worker returns short of --trials only at its --timeout (failing streaks, signals
        # and failed workers raise): said, since the exit code is 0 (the limit was asked for)
        summary["timed_out"] = {"timeout": timeout, "finished": finished, "wanted": wanted}
    if sets := validation_sets(setup, done):
        summary["validation_sets"] = sets
    if best:
        summary["best_experiment"] = str(write_best(setup, best[0]))
    return summary


def validation_sets(setup: SweepSetup, trials: list) -> dict[str, list[int]]:
    """{the rows' label: its trial numbers} when the complete trials were validated on more
    than one set of rows or metric (a study resumed after its experiment changed, one from an
    older kit), else {}: the ranking compares those scores all the same (r313)."""
    from kit.reports import validation_set_of

    cache: dict = {}
    sets: dict[str, tuple[str, list[int]]] = {}
    for t in trials:
        run_dir = trial_run_dir(setup, t)
        if run_dir is None or not Path(run_dir).is_dir():
            continue
        found = validation_set_of(Path(run_dir), cache)
        if found["validation_set"] is not None:
            label = found["validated"]
            sets.setdefault(found["validation_set"], (label, []))[1].append(t.number)
    if len(sets) < 2:
        return {}
    labels = [label for label, _ in sets.values()]
    return {(label if labels.count(label) == 1 else f"{label} ({key})"): numbers
            for key, (label, numbers) in sets.items()}


def write_best(setup: SweepSetup, trial) -> Path:
    """experiments/<exp>_best.toml: extends the swept experiment with the best trial's values;
    a touched section is written whole ([model] and [loss] replace their parent's)."""
    values = {}
    for p in setup.params:
        if p.name in trial.params:
            raw = trial.params[p.name]
            values[p.name] = p.choices[p.labels.index(raw)] if p.kind == "categorical" else raw
    config = trained_config(setup, trial, values)
    source = setup.source
    if source.endswith(".toml"):  # a file outside experiments/: extend it by absolute path
        source = str(Path(source).resolve())
    doc: dict = {"extends": source,
                 "description": f"best trial #{trial.number} of sweep {setup.study_name!r} "
                                f"(score {trial.value:.5f})"}
    # the swept sections, those changed on the command line, and any other the trial trained
    # differently from the experiment as it reads now (a resume with other overrides, an edit)
    from kit.train.recipe import experiment_config

    plain = without_none(experiment_config(setup.source, None))  # as config.toml holds it
    touched = [name.split(".")[0] for name in values]
    touched += [text.split("=", 1)[0].split(".")[0] for text in setup.overrides]
    touched += [top for top in config if top not in ("name", "description")
                and as_trained(top, config, plain) != as_trained(top, plain, plain)]
    for top in dict.fromkeys(touched):
        if top != "sweep" and top in config:
            doc[top] = without_none(config[top] if top != "loss" else
                                    loss_as_written(config["loss"], plain))
    path = best_path(setup)
    check_best_file(setup, path)
    # a sweep of an experiment file given by path, from a folder with no experiments/: its
    # trials trained, and the best file failed to write at the end
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # the origin as a comment: the loader ignores it, the next sweep reads it (check_best_file)
    partial.write_text(f"{ORIGIN}{json.dumps(best_origin(setup))}\n{tomli_w.dumps(doc)}",
                       encoding="utf-8")
    os.replace(partial, path)  # atomic: a reader never sees half a file
    return path


def as_trained(top: str, config: dict, plain: dict):
    """A config's section as it trains: [loss] with its defaults filled in, as a run's
    config.toml records it (an experiment without [loss] trains the same loss: its best file
    wrote the whole default [loss] as if it were swept)."""
    return config.get(top) if top != "loss" else resolved_for(config.get("loss"), plain)


def loss_as_written(loss: dict, plain: dict) -> dict:
    """A trial's [loss] (resolved, as its config.toml records it) without the keys at their
    defaults: [loss] replaces its parent's whole, so they come back as they were, and a
    `target_weights` of one 1.0 per target pinned the best file to today's target count."""
    default = resolved_for(None, plain)
    return {key: value for key, value in loss.items() if default.get(key) != value}


def resolved_for(loss: dict | None, plain: dict) -> dict:
    """A [loss] table with its defaults filled in for the experiment `plain`'s targets."""
    from kit.competition import load_spec
    from kit.train.losses import resolved_loss

    return resolved_loss(loss, load_spec(plain["spec"]).n_outputs)


def without_none(value):
    """TOML has no null: what a saved config.toml holds of a config."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    return value


def trial_run_dir(setup: SweepSetup, trial) -> str | None:
    """The trial's run folder: the absolute path it recorded, or where that run is under this
    checkout's runs/ once the checkout moved (the summary printed paths that were gone)."""
    from kit.run_record import relocated

    recorded = trial.user_attrs.get("run_dir")
    return str(relocated(recorded, setup.runs_dir)) if isinstance(recorded, str) else None


def trained_config(setup: SweepSetup, trial, values: dict) -> dict:
    """The config the trial trained (its run's config.toml), else the one its values give."""
    from kit.run_record import read_config

    run_dir = trial_run_dir(setup, trial)
    if run_dir and (Path(run_dir) / "config.toml").is_file():
        return read_config(Path(run_dir))
    return trial_config(setup.base, values)


def safe_name(study: str) -> str:
    """A study name as one file-name part: no separators, no '..' escaping runs/EXP/."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in study)


def best_name(setup: SweepSetup) -> str:
    """EXP_best, or EXP@STUDY_best for a study named otherwise, the study escaped one to one
    (+XX for each byte but A-Z a-z 0-9 - _): `a/b` and `a-b` get two files, and the '@' keeps
    `exp=fg --study x` apart from `exp=fg_x`."""
    if setup.study_name == setup.experiment:
        return f"{setup.experiment}_best"
    escaped = "".join(c if c.isascii() and (c.isalnum() or c in "-_")
                      else "".join(f"+{b:02x}" for b in c.encode()) for c in setup.study_name)
    return f"{setup.experiment}@{escaped}_best"


def best_path(setup: SweepSetup) -> Path:
    return experiments_dir() / f"{best_name(setup)}.toml"


ORIGIN = "# written by kit sweep for "  # the best file's first line, then its origin as JSON


BESIDE = "the best file's folder"  # what a recorded storage file's path is relative to


def best_origin(setup: SweepSetup) -> dict:
    """The study and storage a best file came from: the storage by what it points to (a
    file by its path relative to the best file's folder, whatever folder the sweep ran
    from: the checkout may move; a server by its masked URL), however the URL was written."""
    file = storage_file(setup.storage_url)
    if file is None:
        return {"study": setup.study_name, "storage": server_identity(setup.storage_url)}
    file = file.resolve()
    with contextlib.suppress(ValueError):  # another drive (Windows): absolute
        file = Path(os.path.relpath(file, experiments_dir().resolve()))
    return {"study": setup.study_name, "storage": f"file {file.as_posix()}",
            "relative_to": BESIDE}


def _same_origin(recorded: object, setup: SweepSetup) -> bool:
    if recorded == best_origin(setup):
        return True
    if not isinstance(recorded, dict) or recorded.get("study") != setup.study_name:
        return False
    storage, mine = recorded.get("storage"), storage_file(setup.storage_url)
    if isinstance(storage, str) and storage.startswith("file ") and mine is not None:
        # before 2026-12-04 relative to the folder the sweep ran from (another folder's sweep
        # of another storage matched it): the best guess for those is this folder
        base = experiments_dir() if recorded.get("relative_to") == BESIDE else Path.cwd()
        return (base / storage.removeprefix("file ")).resolve() == mine.resolve()
    # best files of kits before 2026-12-03: the default storage by a fixed label, any other
    # by its URL as written (masked): a server's by what it points to since 2026-12-04
    if storage == DEFAULT_STORAGE:
        return setup.storage_url == default_storage(setup.experiment, setup.runs_dir)
    return storage == shown_url(setup.storage_url) or (
        mine is None and isinstance(storage, str)
        and server_identity(storage) == server_identity(setup.storage_url))


def _shown_storage(origin: dict) -> str:
    """A recorded storage as a reader here finds it: a file relative to this folder."""
    storage = origin.get("storage")
    if not (isinstance(storage, str) and storage.startswith("file ")
            and origin.get("relative_to") == BESIDE):
        return str(storage)
    return _shown_file(experiments_dir() / storage.removeprefix("file "))


def _shown_file(file: Path) -> str:
    file = file.resolve()
    with contextlib.suppress(ValueError):
        file = file.relative_to(Path.cwd().resolve())
    return f"file {file.as_posix()}"


def _shown_own_storage(setup: SweepSetup) -> str:
    """This sweep's storage in the form a recorded one is shown in (_shown_storage), then the
    URL as given: two storages that differ never print alike (a file by its resolved path, a
    server by what it points to, as _same_origin compares them)."""
    file = storage_file(setup.storage_url)
    url = shown_url(setup.storage_url)
    pointed = _shown_file(file) if file is not None else server_identity(setup.storage_url)
    return pointed if pointed == url else f"{pointed} ({url})"


def check_best_file(setup: SweepSetup, path: Path) -> None:
    """Refuse to replace an experiment file that another study or storage wrote (one name can
    still come from two: an experiment named fg@x, or one study name on two storages), or that
    no sweep wrote. A best file of an older kit (no origin line) is this study's when its
    description names the study."""
    import tomllib

    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    first = text.split("\n", 1)[0]
    if first.startswith(ORIGIN):
        try:
            origin = json.loads(first.removeprefix(ORIGIN))
        except ValueError:
            origin = None
        if _same_origin(origin, setup):
            return
        owner = (f"study {origin.get('study')!r} on {_shown_storage(origin)}"
                 if isinstance(origin, dict) else f"an unreadable origin ({first!r})")
    else:
        try:
            description = str(tomllib.loads(text).get("description", ""))
        except tomllib.TOMLDecodeError:
            description = ""
        if (description.startswith("best trial #")
                and f" of sweep {setup.study_name!r} " in description):
            return
        owner = "no kit sweep of this study (it has no origin line)"
    raise SweepError(f"{path} was written by {owner}; this sweep is study {setup.study_name!r} "
                     f"on {_shown_own_storage(setup)} and does not replace it: move or delete "
                     "that file, or use another --study name")


SECRET_QUERY = re.compile(r"([?&][^=&#]*(?:pass|pwd|secret|token)[^=&#]*=)[^&#]*", re.I)


def masked(text: str, url: str) -> str:
    """`text` (a driver's error message) without the URL's secrets, should it quote them:
    the URL itself, then the password and secret query values as whole tokens (a password
    "p" is not masked inside "psycopg2")."""
    text = text.replace(url, shown_url(url))
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
    return text


def _secrets(url: str) -> list[str]:
    """The URL's password and secret query values, as written and decoded."""
    from urllib.parse import unquote

    found = [m.group(0).split("=", 1)[1] for m in SECRET_QUERY.finditer(url)]
    userinfo = _userinfo(url)
    if userinfo and ":" in userinfo:
        password = userinfo.split(":", 1)[1]
        # an unescaped "@" in it: the driver names the part after it as the host
        found += [password, *password.split("@")]
    return [v for raw in found if raw for v in {raw, unquote(raw)}]


USERINFO = re.compile(r"[^:/]*(?::[^@]*)?@")  # SQLAlchemy's: user [^:/]*, password [^@]*


def _userinfo(url: str) -> str | None:
    """What comes before the host, as the driver reads it: the user, and the password up to
    the first "@" (a "/" or "?" may be in it). A password with an unescaped "@" is read as
    ending there, the rest taken for the host: that rest is counted in, up to the host's
    last "@"."""
    if "://" not in url:
        return None
    rest = url.split("://", 1)[1]
    match = USERINFO.match(rest)
    if match is None:
        return None
    end = match.end()
    host = re.match(r"[^/:?]*", rest[end:]).group(0)
    if "@" in host:
        end += host.rindex("@") + 1
    return rest[:end - 1]


def shown_url(url: str) -> str:
    """A storage URL as it may be printed or written: the password and any secret query value
    (`?password=`, libpq and SQLAlchemy read it there too) masked, the rest as written."""
    if url.startswith("journal:") or storage_file(url) is not None:
        return url
    userinfo = _userinfo(url)
    if userinfo and ":" in userinfo:
        scheme, rest = url.split("://", 1)
        url = f"{scheme}://{userinfo.split(':', 1)[0]}:***{rest[len(userinfo):]}"
    return SECRET_QUERY.sub(r"\1***", url)


def server_identity(url: str) -> str:
    """A server storage as what it points to, however the URL spells it: the backend without
    its driver (postgres:// is postgresql), the user, host and default port, the database and
    the query's non-secret keys, as SQLAlchemy reads them; no password (it may come from
    $PGPASSWORD or ~/.pgpass on another run), nor any part of one."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        backend = {"postgres": "postgresql"}.get(parsed.get_backend_name(),
                                                 parsed.get_backend_name())
    except Exception:  # not a URL SQLAlchemy reads: as shown
        return shown_url(url)
    port = parsed.port or {"postgresql": 5432, "mysql": 3306}.get(backend)
    user = f"{parsed.username}@" if parsed.username else ""
    host = (parsed.host or "").lower()
    host = f"[{host}]" if ":" in host else host  # IPv6: its colons are not the port's
    query = "&".join(f"{k}={v}" for k, v in sorted(parsed.query.items())
                     if not SECRET_QUERY.search(f"?{k}="))  # host=/socket, options=...
    identity = (f"{backend}://{user}{host}{f':{port}' if port else ''}/{parsed.database or ''}"
                + (f"?{query}" if query else ""))
    return masked(identity, url)  # a password's tail the driver took for the host


def format_summary(summary: dict) -> str:
    c = summary["counts"]
    lines = [f"study {summary['study']} on {shown_url(summary['storage'])}: {c.get('complete', 0)} "
             f"complete, {c.get('pruned', 0)} pruned, {c.get('fail', 0)} failed, "
             f"{c.get('running', 0)} running ({summary['seconds']:.0f}s this session)"
             + (f"; {search_text(summary['search'])}" if summary.get("search") else "")]
    for t in summary["best"]:
        params = ", ".join(f"{k}={v}" for k, v in t["params"].items())
        gone = " (gone)" if t.get("gone") else ""
        # a trial added by hand or by another tool recorded no folder: not the word None
        run_dir = "(no run folder recorded)" if t["run_dir"] is None else t["run_dir"]
        lines.append(f"  #{t['number']:<4} {t['score']:>9.5f}  {params}  {run_dir}{gone}")
    if sets := summary.get("validation_sets"):
        shown = "; ".join(f"{label}: trial(s) {', '.join(f'#{n}' for n in numbers)}"
                          for label, numbers in sets.items())
        lines.append(f"warning: the trials ranked here were validated on {len(sets)} different "
                     f"sets of rows or metrics ({shown}): their scores do not compare, and the "
                     "best file follows that ranking; compare trials of one set (kit runs -e "
                     "EXP, column validated), or start a new --study")
    if "best_experiment" in summary:
        name = Path(summary["best_experiment"]).stem
        # kit, not just: the justfile is a checkout's, kit is on every install (r302)
        lines.append(f"wrote {summary['best_experiment']}: kit train exp={name}")
    if short := summary.get("timed_out"):
        lines.append(f"stopped at --timeout {short['timeout']:g}s with {short['finished']} of "
                     f"the {short['wanted']} trials wanted finished: run the same command to "
                     "continue the study")
    return "\n".join(lines)
