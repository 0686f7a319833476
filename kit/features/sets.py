"""Feature sets as data: named groups of ops (per competition) plus explicit ops from TOML.

    [features]
    groups = ["raw", "imbalance", "ewm"]
    ops = [{op = "rolling_std", inputs = ["p0", "p6"], window = 20}]

A set has two faces like its ops: `batch_frame` (Polars, whole sequences) and `stream_module`
(one torch module: guard -> ops -> the selected outputs, with the stream contract).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import tomllib
from collections.abc import Collection
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import polars as pl
import torch
from torch import Tensor, nn

from kit.competition import (
    GROUPS_SUFFIX,
    CompetitionSpec,
    expand_columns,
    is_column_range,
    spec_argument,
)
from kit.data.contract import listed_names, value_dtype
from kit.errors import DataError, KitError, SpecError
from kit.features.guard import Guard, guard_frame
from kit.features.kernels import LIMIT, steps_of
from kit.features.ops import (
    OPS,
    POS,
    START,
    FeatureOp,
    FeatureSpecError,
    HistoryOp,
    Pairwise,
    PerColumn,
    Raw,
    Reduce,
    default_reduce_name,
)
from kit.toml_file import read_toml

ALL_FEATURES = "@features"  # in group files: every raw feature column of the spec
MAX_REACH = 100_000  # steps a lag or window may reach back when sequences have no fixed length


class FeatureConfigError(KitError):
    """A feature set entry is malformed; the message names the entry."""


def _groups_file(spec: CompetitionSpec) -> dict:
    folder = resources.files("kit.features") / "groups"
    name = f"{spec.name}.toml" if (folder / f"{spec.name}.toml").is_file() else "generic.toml"
    return tomllib.loads((folder / name).read_text(encoding="utf-8"))["groups"]


def user_groups_file(spec: CompetitionSpec) -> Path | None:
    """NAME.groups.toml beside a spec read from NAME.toml: the user's own groups, without
    touching kit (a spec from a preset or a dict has none)."""
    if not spec.source.endswith(".toml") or spec.source.endswith(GROUPS_SUFFIX):
        return None
    source = Path(spec.source)
    path = source.with_name(source.name.removesuffix(".toml") + GROUPS_SUFFIX)
    return path if path.is_file() else None


def _user_groups(path: Path) -> dict[str, dict]:
    table = read_toml(path, FeatureConfigError)
    groups = table.get("groups")
    unknown = sorted(set(table) - {"groups"})
    if unknown or not isinstance(groups, dict) or not groups:
        raise FeatureConfigError(f"{path}: a groups file holds [groups.NAME] tables only, each "
                                 "with ops = [...] and an optional description"
                                 + (f"; unknown key(s) {unknown}" if unknown else ""))
    for name, group in groups.items():
        if (not isinstance(group, dict) or not isinstance(group.get("ops"), list)
                or set(group) - {"ops", "description"}):
            raise FeatureConfigError(f"{path}: [groups.{name}] must hold ops = [...] (a list "
                                     "of op tables) and an optional description, got "
                                     f"{sorted(group) if isinstance(group, dict) else group!r}")
        if not isinstance(group.get("description", ""), str):
            raise FeatureConfigError(f"{path}: [groups.{name}] description must be text")
    # `source`: op errors name the file (kit's own groups have none)
    return {name: {"description": "", **group, "source": str(path)}
            for name, group in groups.items()}


def available_groups(spec: CompetitionSpec) -> dict[str, dict]:
    """Group name -> {"description": ..., "ops": [...]} for this competition: kit's groups for
    it (generic ones for a spec kit has none for), then the user's file beside the spec, whose
    groups are added and replace kit's of the same name."""
    groups = _groups_file(spec)
    if (path := user_groups_file(spec)) is not None:
        groups = groups | _user_groups(path)
    return groups


def _expand(value, spec: CompetitionSpec, known: Collection[str] = ()):
    """Column patterns expanded; a name already defined (an earlier op's output such as
    "sum(a..c)", which reads like a range) is taken as it is."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        names = [n for v in value for n in (spec.features if v == ALL_FEATURES else [v])]
        return [n for v in names for n in ([v] if v in known else _expand_one(v))]
    return value


def _expand_one(pattern: str) -> list[str]:
    """A column range expanded. A reduction's output name that is not defined (yet), such as
    "sum(v0..v5)", is no range: it is kept, for the unknown-column error to name it with the
    names that do exist (a range's syntax error did). A range over outputs ("p0@lag1..
    p0@lag5") is a range, its errors a range's (written backwards, too long)."""
    try:
        return expand_columns([pattern])
    except SpecError:
        if "(" in pattern and not is_column_range(pattern):
            return [pattern]
        raise


def unknown_columns_text(unknown: list[str], columns: list[str], spec: CompetitionSpec,
                         made_by: dict[str, tuple[str, FeatureOp]]) -> str:
    """The unknown inputs, each with its likeliest meant name, and the outputs of earlier
    ops (their names are not guessable: an EWM asked for by span is named by its alpha, a
    group's sum has a name of its own)."""
    hints = []
    for name in unknown:
        # "sum(v0..v5)" asked for where the imbalance group made that sum as "bid_volume"
        renamed = [(made, where) for made, (where, op) in made_by.items()
                   if isinstance(op, Reduce) and made != name
                   and default_reduce_name(op.op, op.inputs) == name]
        close = difflib.get_close_matches(name, columns, n=2, cutoff=0.6)
        if renamed:
            made, where = renamed[0]
            hints.append(f"{name!r} is made as {made!r} by {where}")
        elif close:
            hints.append(f"{name!r}: did you mean {' or '.join(map(repr, close))}?")
    made = [c for c in columns if c not in spec.features]
    listed = listed_names(made) if made else "none yet"
    return (f"unknown column(s) {unknown}{' (' + '; '.join(hints) + ')' if hints else ''}; "
            f"known: the spec's features and the outputs of earlier ops ({listed}; "
            "`kit features build` lists a set's outputs, `kit features list` how each op "
            "names them)")


def make_op(entry: dict, spec: CompetitionSpec, where: str,
            known: Collection[str] = (), check_reach: bool = True) -> FeatureOp:
    """Build one op from its TOML table, expanding column patterns (`known`: the names defined
    so far, taken as they are)."""
    if not isinstance(entry, dict) or "op" not in entry:
        raise FeatureConfigError(f"{where}: each op is a table with an 'op' key, got {entry!r}")
    kind = entry["op"]
    if not isinstance(kind, str) or kind not in OPS:
        raise FeatureConfigError(f"{where}: unknown op {kind!r}; available: {sorted(OPS)}")
    cls = OPS[kind]
    takes_inputs = not cls.column_keys and kind != "position"
    unknown = sorted(set(entry) - {"op", "inputs", *cls.keys})
    if unknown:
        raise FeatureConfigError(f"{where} ({kind}): unknown key(s) {unknown}; {kind} takes "
                                 f"{['inputs'] * takes_inputs + list(cls.keys)}")
    if cls.column_keys and "inputs" in entry:  # it would be ignored
        raise FeatureConfigError(f"{where} ({kind}): takes its columns from "
                                 f"{list(cls.column_keys)}, not inputs; remove 'inputs'")
    for key in ("inputs", *cls.column_keys):
        names = entry.get(key, [])
        # a string would be read letter by letter; a list in the list is no column name
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise FeatureConfigError(f"{where} ({kind}): {key} must be a list of column names, "
                                     f"e.g. [\"p0\"] or [\"p0..p5\"], got {names!r}")
    if "name" in entry and not (isinstance(entry["name"], str) and entry["name"]):
        raise FeatureConfigError(f"{where} ({kind}): name must be a non-empty string, got "
                                 f"{entry['name']!r}")
    try:
        params = {k: _expand(v, spec, known) for k, v in entry.items()
                  if k not in ("op", "inputs")}
        inputs = _expand(entry.get("inputs", []), spec, known)
    except SpecError as exc:  # a bad column range
        raise FeatureConfigError(f"{where} ({kind}): {exc}") from None
    try:
        op = cls(inputs=inputs, params=params)
        op.outputs()  # validates parameters such as alpha
        if isinstance(op, HistoryOp):
            op.history()  # k and window: outputs() reads them per input column only
    except FeatureSpecError as exc:
        raise FeatureConfigError(f"{where} ({kind}): {exc}") from None
    if not op.input_columns() and kind not in ("position",):
        raise FeatureConfigError(f"{where} ({kind}): no input columns given")
    if check_reach and isinstance(op, HistoryOp):
        _check_reach(op, spec, where)
    if kind == "position" and entry.get("inputs"):  # [] is how a stored set writes it
        raise FeatureConfigError(f"{where} (position): takes no inputs (it counts the steps); "
                                 "remove 'inputs'")
    return op


def _check_reach(op: HistoryOp, spec: CompetitionSpec, where: str) -> None:
    """A lag or window reaches at most a sequence's length back (MAX_REACH without a fixed
    one): the stream face holds that many steps of each of its columns, and more would only
    repeat the first value or the whole past."""
    _, kind, size = op.history()
    key = "k" if kind in ("lag", "delta", "roc") else "window"
    limit = spec.seq_len or MAX_REACH
    if size > limit:
        whose = ("the competition's sequences hold" if spec.seq_len else
                 "kit allows for sequences of any length")
        raise FeatureConfigError(f"{where} ({op.op}): {key} = {size:,} is more than {whose} "
                                 f"({limit:,} steps): use at most {limit:,} (the stream face "
                                 f"holds {key} steps of each column)")


@dataclass
class FeatureSet:
    """The ordered ops of a feature set and the names of its output features."""

    spec: CompetitionSpec
    ops: list[FeatureOp]
    outputs: list[str]
    groups: list[str]

    def to_dict(self) -> dict:
        return {"groups": self.groups, "ops": [op.to_dict() for op in self.ops],
                "outputs": self.outputs}

    def computation(self) -> list:
        """What the set computes: each output in order with what makes it (`recipe_of`). Sets
        that differ only in how they were asked for (a group listed twice, span 19 for alpha
        0.1, the `raw` group for a raw op) compute the same and are equal here."""
        made = {n: op for op in self.ops for n in op.outputs()}
        return [[n, made[n].recipe_of(n)] for n in self.outputs]

    def digest(self) -> str:
        """Stable id of what the set computes (ensembles share one pipeline per digest): two
        spellings of one set had two, and an ensemble computed its features twice."""
        text = json.dumps({"spec": self.spec.name, "computes": self.computation()},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def batch_frame(self, df: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
        """Batch face: id, step, need, the output features (Float32), then the targets."""
        spec = self.spec
        present = set(df.collect_schema().names())
        missing = [c for c in (spec.id_col, spec.step_col, spec.need_col, *spec.features)
                   if c not in present]
        if missing:
            raise DataError(f"missing column(s) {missing}: the {spec.name} features read the "
                            f"id, step, need and every feature column; `kit data check` "
                            "checks a file against the competition")
        schema = df.collect_schema()
        text = [f"{c} ({schema[c]})" for c in spec.features if not value_dtype(schema[c])]
        if text:  # the contract's dtypes: Boolean and Decimal trained where check refused
            raise DataError(f"feature column(s) must be numeric (an integer or float dtype): "
                            f"{text}; `kit data check FILE` lists every problem of the file")
        if isinstance(df, pl.DataFrame) and df[spec.id_col].is_sorted():
            # Sorted ids let every `.over(id)` take Polars' sorted group-by path (~3x faster).
            df = df.with_columns(pl.col(spec.id_col).set_sorted())
        guarded = guard_frame(df, list(spec.features), spec.id_col)
        lazy = guarded.frame.with_columns(
            pl.int_range(pl.len(), dtype=pl.Int32).over(spec.id_col).alias(POS),
            (pl.col(spec.id_col) != pl.col(spec.id_col).shift(1)).fill_null(True).alias(START),
        )
        bounds = dict(guarded.bounds)  # column -> a bound on its |values|
        for layer in _layers(self.ops, list(spec.features)):
            exprs = []
            for op in layer:
                bound = op.output_bound(max((bounds[c] for c in op.input_columns()),
                                            default=0.0), guarded.rows)
                # the clip only where it can change a value (the margin covers rounding)
                clip = not op.bounded and not bound <= LIMIT / 2
                exprs += [e.clip(-LIMIT, LIMIT) if clip else e for e in op.batch(spec.id_col)]
                bounds |= {name: min(bound, LIMIT) for name in op.outputs()}
            if exprs:
                lazy = lazy.with_columns(exprs)
        present = lazy.collect_schema().names()
        targets = [t for t in spec.targets if t in present]
        if spec.next_state:  # the truth is the next row's (guarded) features
            targets = [f for f in spec.features if f not in self.outputs]
        return lazy.select(
            spec.id_col, spec.step_col, spec.need_col,
            *[pl.col(c).cast(pl.Float32) for c in self.outputs], *targets,
        ).collect()

    def stream_module(self) -> FeaturePipeline:
        return FeaturePipeline(list(self.spec.features), self.ops, self.outputs)


def _layers(ops: list[FeatureOp], raw: list[str]) -> list[list[FeatureOp]]:
    """Group ops so each group only reads columns made before it (one with_columns each)."""
    level = {c: 0 for c in raw}
    layers: list[list[FeatureOp]] = []
    for op in ops:
        depth = max((level[c] for c in op.input_columns()), default=0)
        while len(layers) <= depth:
            layers.append([])
        layers[depth].append(op)
        for name in op.outputs():
            level.setdefault(name, depth + 1)
    return layers


def build_feature_set(spec: CompetitionSpec | str, groups: list[str] | None = None,
                      ops: list[dict] | None = None, *, stored: bool = False) -> FeatureSet:
    """Resolve groups and explicit ops into a validated FeatureSet. `spec`: a CompetitionSpec,
    a preset name or a TOML path; `groups`: a list of group names (default ["raw"]; a bare
    string is refused, as the config's `groups = [...]` is a list). `stored`: the ops a run
    recorded, rebuilt as they were trained (limits added since, such as a lag's reach, guard
    new configs only)."""
    spec = spec_argument(spec)
    if isinstance(groups, str):  # it was read letter by letter ("unknown feature group 'r'")
        raise FeatureConfigError(f"features.groups must be a list of group names, got the "
                                 f"string {groups!r}: pass [{groups!r}]")
    groups = list(groups if groups is not None else ["raw"])
    known = available_groups(spec)
    entries: list[tuple[str, dict]] = []
    for i, group in enumerate(groups):
        if not isinstance(group, str):
            raise FeatureConfigError(f"features.groups[{i}]: a group name (a string), got "
                                     f"{group!r}; available: {sorted(known)}")
        if group not in known:
            raise FeatureConfigError(f"unknown feature group {group!r} for {spec.name}; "
                                     f"available: {sorted(known)}")
        where = f"group {group!r}" + (f" of {known[group]['source']}"
                                      if known[group].get("source") else "")
        entries += [(f"{where} op {i}", e) for i, e in enumerate(known[group]["ops"])]
    entries += [(f"features.ops[{i}]", e) for i, e in enumerate(ops or [])]
    columns = list(spec.features)
    # Names the batch frame already uses for other things: an output there would overwrite
    # the step counter (and break the op) or clash with the id, step, need or a target.
    reserved = {POS: "kit's step counter", START: "kit's sequence-start flag",
                **{c: "a column of the competition (id, step, need, target)"
                   for c in (spec.id_col, spec.step_col, spec.need_col, *spec.targets)}}
    built, outputs = [], []
    made_by: dict[str, tuple[str, FeatureOp]] = {}  # output -> (where, op) that defines it
    for where, entry in entries:
        entry = _as_trained(entry) if stored else entry
        op = make_op(entry, spec, where, columns, check_reach=not stored)
        unknown = [c for c in op.input_columns() if c not in columns]
        if unknown:
            raise FeatureConfigError(f"{where} ({op.op}): "
                                     f"{unknown_columns_text(unknown, columns, spec, made_by)}")
        names = op.outputs()
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise FeatureConfigError(f"{where} ({op.op}): makes {twice} more than once; list "
                                     "each input once")
        clash = [n for n in names if n in reserved]
        if clash:
            raise FeatureConfigError(f"{where} ({op.op}): output {clash[0]!r} is "
                                     f"{reserved[clash[0]]}; name the output otherwise")
        shared = [n for n in names if n in made_by
                  and made_by[n][1].recipe_of(n) == op.recipe_of(n)]
        if len(shared) == len(names):
            continue  # the same op twice (e.g. two groups sharing one): compute it once
        if shared and (rest := _without(op, shared, spec, where, columns)) is not None:
            op, names = rest, rest.outputs()  # made the same way already: only the new ones
        taken = [n for n in names if n in made_by or (n in spec.features and op.op != "raw")]
        if taken:
            first = taken[0]
            by = made_by[first][0] if first in made_by else "the competition's raw features"
            how = ("give this op's output another name" if "name" in op.keys else
                   "name an input another way first (e.g. a one-input sum with a name)")
            raise FeatureConfigError(f"{where} ({op.op}): output {first!r} is already defined "
                                     f"by {by} (from {_origin(made_by, first)}); this op makes "
                                     f"it from {_recipe_text(op.recipe_of(first))}; {how}")
        built.append(op)
        outputs += names
        columns += [o for o in names if o not in columns]
        made_by |= {n: (where, op) for n in names}
    if not outputs:
        raise FeatureConfigError("the feature set is empty: select at least one group or op")
    return FeatureSet(spec, built, outputs, groups)


def _as_trained(entry: dict) -> dict:
    """A stored op as it trained: a sum or mean recorded before names were pinned (to_dict)
    was named after its first and last inputs, whatever they were."""
    inputs = entry.get("inputs")
    if entry.get("op") in ("sum", "mean") and "name" not in entry and isinstance(inputs, list) \
            and inputs:
        return {**entry, "name": f"{entry['op']}({inputs[0]}..{inputs[-1]})"}
    return entry


def _without(op: FeatureOp, shared: list[str], spec: CompetitionSpec, where: str,
             known: Collection[str]):
    """The same op over only the inputs (or pairs) whose outputs are not in `shared`, for ops
    whose outputs follow their inputs one to one; None for the others."""
    entry = op.to_dict()
    if isinstance(op, Pairwise):
        pairs = [(a, b) for a, b, n in zip(op.a, op.b, op.outputs(), strict=True)
                 if n not in shared]
        entry |= {"a": [a for a, _ in pairs], "b": [b for _, b in pairs]}
    elif isinstance(op, Raw | PerColumn):
        entry["inputs"] = [c for c, n in zip(op.inputs, op.outputs(), strict=True)
                           if n not in shared]
    else:
        return None
    return make_op(entry, spec, where, known, check_reach=False)  # a part of a checked op


def _recipe_text(recipe: dict) -> str:
    return ", ".join(f"{k} {v!r}" for k, v in recipe.items())


def _origin(made_by: dict, output: str) -> str:
    if output not in made_by:
        return "the data file"
    return _recipe_text(made_by[output][1].recipe_of(output))


class FeaturePipeline(nn.Module):
    """Stream face of a feature set: guard, then one fused kernel per family and layer.

    State: the guard's last finite row, one step counter (zeros = a new sequence), then each
    kernel's own state. Kernels append their outputs to the working tensor, so a later layer
    reads what an earlier one made; the outputs are gathered in the set's order at the end.
    """

    def __init__(self, raw: list[str], ops: list[FeatureOp], outputs: list[str]):
        super().__init__()
        self.guard = Guard(len(raw))
        columns = list(raw)
        kernels = []
        self.layer_sizes = []  # kernels per dependency layer
        self.layer_clips = []  # whether a layer holds an op that can leave +-LIMIT
        for layer in _layers(ops, raw):
            families: dict[object, list[FeatureOp]] = {}
            for op in layer:
                if op.family is not None:  # raw columns need no kernel
                    families.setdefault(op.family, []).append(op)
            fused = [type(members[0]).fuse(members, columns) for members in families.values()]
            for kernel in fused:  # spare outputs get names no op can ask for
                columns += [n if n is not None else f"\0spare{len(columns) + i}"
                            for i, n in enumerate(kernel.names)]
            kernels += fused
            self.layer_sizes.append(len(fused))
            self.layer_clips.append(any(not op.bounded for op in layer if op.family is not None))
        self.kernels = nn.ModuleList(kernels)
        index = [columns.index(o) for o in outputs]
        # the step graph pays per node: no gather when the outputs are the columns as they are
        self.identity_out = index == list(range(len(columns)))
        self.register_buffer("_out", torch.tensor(index), persistent=False)
        self.state_sizes = [len(k.init_state(1)) for k in self.kernels]
        self.n_outputs = len(outputs)
        self.counts = bool(kernels)  # the step counter only exists for kernels to read

    def init_state(self, batch: int) -> list[Tensor]:
        state = self.guard.init_state(batch) + ([torch.zeros(batch, 1, 1)] if self.counts else [])
        for kernel in self.kernels:
            state += kernel.init_state(batch)
        return state

    def forward(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        w, new_state = self.guard(x, state[:1])
        if not self.counts:  # raw columns only: the guard is the whole pipeline
            return (w if self.identity_out else w.index_select(2, self._out)), new_state
        count = state[1]
        fresh = count == 0  # [B, 1, 1]: once for every kernel
        at, k = 2, 0
        for n_kernels, clip in zip(self.layer_sizes, self.layer_clips, strict=True):
            blocks = [w]
            for kernel, size in zip(self.kernels[k:k + n_kernels],
                                    self.state_sizes[k:k + n_kernels], strict=True):
                y, own = kernel(w, count, fresh, state[at:at + size])
                blocks += y if isinstance(y, list) else [y]
                new_state += own
                at += size
            if len(blocks) > 1:
                w = torch.cat(blocks, dim=2)  # one concat per layer: the next layer reads it
            if clip:  # one node for the layer (bounded columns are unchanged by it)
                w = w.clamp(-LIMIT, LIMIT)
            k += n_kernels
        out = w if self.identity_out else w.index_select(2, self._out)
        return out, [new_state[0], count + steps_of(x), *new_state[1:]]
