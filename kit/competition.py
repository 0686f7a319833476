"""Competition specs: the contract a data file and a submission must follow.

A spec is a small TOML file. Presets ship in kit/specs/; a user adds one without touching
code by passing a path (`--spec my.toml`) or by dropping NAME.toml into ./competitions/ or a
folder listed in $KIT_SPEC_PATH, then using `--spec NAME`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from kit.config import did_you_mean, finite_number
from kit.errors import KitError, SpecError
from kit.toml_file import parse_toml, read_toml

DEFAULT_SPEC = "predictorium"
PROTOCOLS = ("targets", "next-state")
METRICS = ("weighted_pearson", "r2", "mae", "rmse")

_RANGE = re.compile(r"^(?P<prefix>.*?)(?P<lo>\d+)\.\.(?P=prefix)?(?P<hi>\d+)$")


MAX_RANGE = 100_000
MAX_SEQ_LEN = 10_000_000


# what of a spec may differ between blended runs: words, the metric (select warns: the blends
# are scored on the first's) and the limits (the package's time budget only)
BLEND_FREE_SPEC_KEYS = frozenset({"description", "metric", "limits", "limits_unset"})


def blend_spec_difference(spec: CompetitionSpec, first: CompetitionSpec) -> str | None:
    """The first setting (`key value, first's value`) in which two versions of one spec
    differ beyond BLEND_FREE_SPEC_KEYS, or None. The package takes the first member's spec:
    another warm-up set its smoothing start and the need rule by the members' order."""
    mine, theirs = spec.to_dict(), first.to_dict()
    for key in sorted(mine.keys() - BLEND_FREE_SPEC_KEYS):
        if mine[key] != theirs.get(key):
            shown = [repr(list(v)) if isinstance(v, tuple) else repr(v)
                     for v in (mine[key], theirs.get(key))]
            return f"{key} {shown[0]}, against {shown[1]}"
    return None


def spec_argument(spec: CompetitionSpec | str | os.PathLike) -> CompetitionSpec:
    """The `spec` argument of an API function as a CompetitionSpec: a preset name or a TOML
    path is loaded (score_submission and dataset_stats take them; elsewhere a name raised
    AttributeError). None is refused: load_spec(None) is the default competition, which a
    missing spec must not silently become."""
    if isinstance(spec, CompetitionSpec):
        return spec
    if not isinstance(spec, str | os.PathLike):
        got = "None" if spec is None else f"a {type(spec).__name__}"
        raise SpecError(f"spec must be a CompetitionSpec, a preset name or a TOML path "
                        f"(kit.competition.load_spec), got {got}")
    return load_spec(spec)


@dataclass(frozen=True)
class SpecFileCheck:
    """What current_scoring found in a stored spec's file: what it took anew ("[metric]",
    "[limits]"), the file it read (None: a built-in preset), and why it took nothing from a
    file that is there (`unread`: it does not load, or now describes another competition)."""

    changed: tuple[str, ...] = ()
    file: str | None = None
    unread: str | None = None
    broken: bool = False  # unread because it does not load (else: another competition's)

    def unread_text(self, spec_name: str, kept: str) -> str:
        """The warning for a file not taken: what is wrong with it, what `kept` the stored
        [metric] and [limits], and what to do (r307: a typo was told to rename a competition)."""
        where = self.file or f"kit's built-in {spec_name!r}"
        advice = ("fix the file" if self.broken else
                  "this kit's preset changed; the runs keep the copy they trained with"
                  if self.file is None else
                  "give that other competition a name of its own")
        return f"spec {spec_name!r}: {where} {self.unread}; {kept}: {advice}"

    def changed_text(self, spec_name: str, since: str, taken: str) -> str:
        """The warning for a file whose [metric] or [limits] changed `since` (a run trained, a
        package was packed): the file read, what changed, and what `taken` the file's as now."""
        return (f"spec {spec_name!r} ({self.file or 'built-in'}): its "
                f"{' and '.join(self.changed)} changed since {since}; {taken}")


def current_scoring(stored: CompetitionSpec, reference: str | None = None
                    ) -> tuple[CompetitionSpec, SpecFileCheck]:
    """A stored copy of a spec (a run's spec.json, a package's manifest) with the [metric] and
    [limits] its file holds now, where that file still loads (`reference`: the name or path
    the run was given, else the spec's name) and describes the same competition otherwise.
    Neither changes what a model trained on, and limits added after training were ignored:
    kit pack's time budget and kit score's projection read the old ones without a word
    (r270). A file that is there but not taken is said (`unread`): a typo or a reordered
    target list kept the old limits without a word (r305)."""
    key = reference or stored.name
    found = spec_file(key)
    file = None if found is None else str(found)
    try:
        now = load_spec(key)
    except (KitError, OSError) as exc:  # gone (the copy is all there is), or broken since
        unread = None if found is None else f"does not load ({exc})"
        return stored, SpecFileCheck(file=file, unread=unread, broken=True)
    other = blend_spec_difference(now, stored)
    if other is not None:  # another competition of that name
        return stored, SpecFileCheck(file=file, unread=f"now differs in {other}")
    changed = tuple(f"[{key}]" for key in ("metric", "limits")
                    if getattr(now, key) != getattr(stored, key))
    # which limits are Predictorium's is no change of value: taken without a word (a package
    # packed before the spec recorded it learns it here)
    if not changed and now.limits_unset == stored.limits_unset:
        return stored, SpecFileCheck(file=file)
    return dataclasses.replace(stored, metric=now.metric, limits=now.limits,
                               limits_unset=now.limits_unset), SpecFileCheck(changed, file)


def is_column_range(pattern: str) -> bool:
    """Whether pattern is written as a column range (PREFIX<low>..PREFIX<high>), valid or not
    in its bounds."""
    return _RANGE.match(pattern) is not None


def expand_columns(patterns: list[str]) -> list[str]:
    """Expand range patterns: "p0..p11" -> p0, p1, ..., p11; "0..31" -> "0" ... "31";
    "f001..f100" -> f001 ... f100 (a zero-padded start keeps its width). The right-hand
    prefix may be left out: "p0..11" is "p0..p11"."""
    out: list[str] = []
    for pattern in patterns:
        match = _RANGE.match(pattern)
        if match is None:
            if ".." in pattern:  # "p0..v11", "p0...p5": a typo, not a column name
                raise SpecError(f"column range {pattern!r} is not PREFIX<low>..PREFIX<high> "
                                "(one prefix on both sides, e.g. \"p0..p11\")")
            out.append(pattern)
            continue
        lo, hi = int(match["lo"]), int(match["hi"])
        if hi < lo:
            raise SpecError(f"column range {pattern!r} runs backwards; write it low..high")
        if hi - lo >= MAX_RANGE:  # a typo such as p0..p1000000000 would fill the memory
            raise SpecError(f"column range {pattern!r} names {hi - lo + 1:,} columns; at most "
                            f"{MAX_RANGE:,} are allowed")
        width = len(match["lo"]) if match["lo"].startswith("0") and len(match["lo"]) > 1 else 0
        out.extend(f"{match['prefix']}{i:0{width}d}" for i in range(lo, hi + 1))
    return out


@dataclass(frozen=True)
class MetricSpec:
    name: str = "weighted_pearson"
    clip: tuple[float, float] | None = None  # predictions are clipped, targets never

    @property
    def higher_is_better(self) -> bool:
        return self.name in ("weighted_pearson", "r2")

    @property
    def scale_free(self) -> bool:
        """Whether scaling every prediction leaves the score as it is: a correlation, unless
        the predictions are clipped first (a scale then moves rows into or out of the clip)."""
        return self.name == "weighted_pearson" and self.clip is None


@dataclass(frozen=True)
class Limits:
    cpus: int = 1
    memory_gb: float = 16.0
    time_limit_s: float = 5400.0
    test_rows: int = 1_500_000
    python: str | None = None  # the scorer's Python, "MAJOR.MINOR" (kit score notes another)


# the [limits] keys whose defaults are Predictorium's values (python's, None, checks nothing)
DEFAULTED_LIMITS = ("cpus", "memory_gb", "time_limit_s", "test_rows")


def limits_label(unset: tuple[str, ...] | list[str], used: tuple[str, ...]) -> str:
    """Whose limits a figure read from the `used` limits is of: "the spec's [limits]", or, where
    the spec left some unset, that they are Predictorium's and which to set (r288: a spec with
    no [limits] was projected on 1.5M rows and 5,400 s, labelled as its own)."""
    taken = [key for key in used if key in unset]
    if not taken:
        return "the spec's [limits]"
    if set(DEFAULTED_LIMITS) <= set(unset):
        # (not "sets no [limits]": a [limits] table may set python alone)
        return (f"Predictorium's limits: the spec sets no {', '.join(DEFAULTED_LIMITS[:-1])} "
                f"or {DEFAULTED_LIMITS[-1]}; set {' and '.join(used)} for yours")
    named = " and ".join(taken)
    sets, them = ("neither", "them") if len(taken) > 1 else (f"no {named}", "it")
    return f"Predictorium's {named}: the spec's [limits] sets {sets}; set {them} for yours"


@dataclass(frozen=True)
class CompetitionSpec:
    name: str
    features: tuple[str, ...]
    targets: tuple[str, ...]
    description: str = ""
    id_col: str = "seq_ix"
    step_col: str = "step_in_seq"
    need_col: str = "need_prediction"
    seq_len: int | None = 1000  # None: sequences may differ in length
    warmup: int = 0  # steps < warmup need no prediction (but still update the state)
    tail: int = 0  # the last `tail` steps of a sequence need no prediction
    protocol: str = "targets"
    metric: MetricSpec = field(default_factory=MetricSpec)
    limits: Limits = field(default_factory=Limits)
    source: str = "<builtin>"
    # the DEFAULTED_LIMITS keys the spec left out, which hold Predictorium's values (a spec
    # built in code sets them all)
    limits_unset: tuple[str, ...] = ()

    @property
    def next_state(self) -> bool:
        return self.protocol == "next-state"

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of the K values a prediction holds."""
        return self.features if self.next_state else self.targets

    @property
    def n_outputs(self) -> int:
        return len(self.outputs)

    @property
    def input_columns(self) -> list[str]:
        """Columns the scorer hands to predict(), in order: id, step, flag, features."""
        return [self.id_col, self.step_col, self.need_col, *self.features]

    @property
    def columns(self) -> list[str]:
        """Every column of a labelled data file, in the competition's order."""
        return self.input_columns + list(self.targets)

    def training_dict(self) -> dict:
        """to_dict without what only the scorer's environment is (limits.python): the key of
        what the spec makes a run train on, for feature caches and sweep identities, which
        must not change when only that does."""
        out = self.to_dict()
        out["limits"].pop("python", None)
        out.pop("limits_unset", None)
        return out

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "id_col": self.id_col,
            "step_col": self.step_col,
            "need_col": self.need_col,
            "features": list(self.features),
            "targets": list(self.targets),
            "seq_len": self.seq_len or 0,
            "warmup": self.warmup,
            "tail": self.tail,
            "protocol": self.protocol,
            "metric": {"name": self.metric.name}
            | ({"clip": list(self.metric.clip)} if self.metric.clip else {}),
            "limits": {k: v for k, v in vars(self.limits).items() if v is not None},
        } | ({"limits_unset": list(self.limits_unset)} if self.limits_unset else {})


# Helper columns the feature pipelines' batch face adds to a frame (kit/features/ops.py)
POS_COLUMN, START_COLUMN = "__pos", "__start"
KIT_COLUMNS = {POS_COLUMN: "the feature pipelines' step counter",
               START_COLUMN: "the feature pipelines' sequence-start flag"}


def spec_from_dict(raw: dict, source: str = "<dict>") -> CompetitionSpec:
    """Validate a parsed TOML table and build the spec; errors name the key and the file."""
    known = {
        "name", "description", "id_col", "step_col", "need_col", "features", "targets",
        "seq_len", "warmup", "tail", "protocol", "metric", "limits", "limits_unset",
    }  # fmt: skip
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SpecError(f"{source}: unknown key(s) {unknown}"
                        f"{did_you_mean(unknown[0], sorted(known))}; allowed: {sorted(known)}")
    for key in ("name", "features"):
        if key not in raw:
            raise SpecError(f"{source}: missing required key {key!r}")
    protocol = raw.get("protocol", "targets")
    if protocol not in PROTOCOLS:
        raise SpecError(f"{source}: protocol {protocol!r} is not one of {PROTOCOLS}")
    for key in ("features", "targets"):
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip()
                                                  for v in value):
            raise SpecError(f"{source}: {key} must be a list of column names (patterns such as "
                            f"\"p0..p11\" allowed), got {value!r}")
    for key in ("id_col", "step_col", "need_col", "name", "description", "protocol"):
        if key in raw and not isinstance(raw[key], str):
            raise SpecError(f"{source}: {key} must be a string, got {raw[key]!r}")
        if key in raw and key != "description" and not raw[key].strip():
            raise SpecError(f"{source}: {key} is empty; give it a name")
    for key in ("seq_len", "warmup", "tail"):
        value = raw.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SpecError(f"{source}: {key} must be a whole number >= 0, got {value!r}")
        if value > MAX_SEQ_LEN:  # arrays are sized by it: a typo would ask for terabytes
            raise SpecError(f"{source}: {key} = {value:,} is more than {MAX_SEQ_LEN:,} steps")
    expanded = {}
    for key in ("features", "targets"):
        try:
            expanded[key] = tuple(expand_columns(list(raw.get(key, []))))
        except SpecError as exc:  # a bad range: its message names neither file nor key
            raise SpecError(f"{source}: {key}: {exc}") from None
    features, targets = expanded["features"], expanded["targets"]
    if not features:  # every model and the scorer's rows need at least one input column
        raise SpecError(f"{source}: features must name at least one column")
    if protocol == "targets" and not targets:
        raise SpecError(f"{source}: protocol 'targets' needs a non-empty 'targets' list")
    if protocol == "next-state" and targets:
        raise SpecError(f"{source}: protocol 'next-state' scores against the next features; "
                        "leave 'targets' empty")
    if not isinstance(raw.get("metric", {}), dict):
        raise SpecError(f"{source}: metric must be a table, e.g. [metric] name = \"r2\", got "
                        f"{raw['metric']!r}")
    metric_raw = dict(raw.get("metric", {}))
    metric_name = metric_raw.pop("name", "weighted_pearson")
    if metric_name not in METRICS:
        raise SpecError(f"{source}: metric {metric_name!r} is not one of {METRICS}")
    clip = metric_raw.pop("clip", None)
    if clip is not None and (not isinstance(clip, list) or len(clip) != 2
                             or not all(finite_number(c) for c in clip) or clip[0] >= clip[1]):
        raise SpecError(f"{source}: metric.clip must be [low, high] with low < high, got {clip}")
    if metric_raw:
        raise SpecError(f"{source}: unknown metric key(s) {sorted(metric_raw)}")
    limits = _limits(raw.get("limits", {}), source)
    unset = _limits_unset(raw, limits, source)
    spec = CompetitionSpec(
        name=str(raw["name"]),
        description=str(raw.get("description", "")),
        id_col=raw.get("id_col", "seq_ix"),
        step_col=raw.get("step_col", "step_in_seq"),
        need_col=raw.get("need_col", "need_prediction"),
        features=features,
        targets=targets,
        seq_len=int(raw.get("seq_len", 0)) or None,
        warmup=int(raw.get("warmup", 0)),
        tail=int(raw.get("tail", 0)),
        protocol=protocol,
        metric=MetricSpec(metric_name, tuple(float(c) for c in clip) if clip else None),
        limits=limits,
        source=source,
        limits_unset=unset,
    )
    names = spec.columns
    duplicated = sorted(c for c, n in Counter(names).items() if n > 1)
    if duplicated:
        raise SpecError(f"{source}: column name(s) used twice: {duplicated}")
    taken = [c for c in names if c in KIT_COLUMNS]
    if taken:  # caught here, not by the first `kit train` after data check passed
        raise SpecError(f"{source}: column {taken[0]!r} is kit's own name for "
                        f"{KIT_COLUMNS[taken[0]]}; rename that column in the files and the spec")
    if spec.warmup < 0 or spec.tail < 0:
        raise SpecError(f"{source}: warmup and tail must be >= 0")
    if spec.seq_len is not None and spec.warmup + spec.tail >= spec.seq_len:
        raise SpecError(f"{source}: warmup + tail leaves no scored step in {spec.seq_len}")
    if spec.next_state and spec.tail < 1:
        raise SpecError(f"{source}: a next-state spec scores each step against the next one, so "
                        "the last step of a sequence cannot be scored: tail must be >= 1")
    return spec


def _limits(table, source: str) -> Limits:
    """[limits], each value a finite number > 0 (cpus and test_rows whole numbers)."""
    if not isinstance(table, dict):
        raise SpecError(f"{source}: limits must be a table, got {table!r}")
    unknown = sorted(set(table) - set(Limits.__dataclass_fields__))
    if unknown:
        raise SpecError(f"{source}: unknown [limits] key(s) {unknown}; allowed: "
                        f"{sorted(Limits.__dataclass_fields__)}")
    table = dict(table)
    python = table.pop("python", None)
    if python is not None and not (isinstance(python, str)
                                   and re.fullmatch(r"[1-9]\d*\.\d+", python)):
        raise SpecError(f"{source}: limits.python must be the scorer's Python as a "
                        f"\"MAJOR.MINOR\" string such as \"3.11\", got {python!r}")
    whole = ("cpus", "test_rows")  # the int fields; the others are floats
    for key, value in table.items():
        if not finite_number(value) or value <= 0 or (key in whole and not isinstance(value, int)):
            kind = "a whole number > 0" if key in whole else "a finite number > 0"
            raise SpecError(f"{source}: limits.{key} must be {kind}, got {value!r}")
    return Limits(**{k: (v if k in whole else float(v)) for k, v in table.items()},
                  python=None if python is None else str(python))


def _limits_unset(raw: dict, limits: Limits, source: str) -> tuple[str, ...]:
    """The DEFAULTED_LIMITS keys a spec file leaves out. A stored copy (spec.json, a package's
    manifest) holds every value and lists the unset ones as `limits_unset`; a copy without
    that list (written before it existed) counts as setting them all. A listed key whose value
    is no longer the default was set since (a `kit spec show` copy edited), so it is dropped."""
    table = raw.get("limits", {})
    if "limits_unset" not in raw:
        return tuple(k for k in DEFAULTED_LIMITS if k not in table)
    listed = raw["limits_unset"]
    if not isinstance(listed, list) or not set(listed) <= set(DEFAULTED_LIMITS):
        raise SpecError(f"{source}: limits_unset must be a list of [limits] keys among "
                        f"{list(DEFAULTED_LIMITS)}, got {listed!r}")
    default = Limits()  # (a key missing from the table is unset, listed or not: a
    # `kit spec show --json` copy edited down to a few limits kept the others' as its own)
    return tuple(k for k in DEFAULTED_LIMITS if k not in table
                 or (k in listed and getattr(limits, k) == getattr(default, k)))


def _search_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("KIT_SPEC_PATH", "").split(os.pathsep) if p]
    return [*dirs, Path("competitions")]


def spec_file(key: str) -> Path | None:
    """The TOML file load_spec reads for a name or a path: a path ending .toml, else NAME.toml
    in $KIT_SPEC_PATH's folders and ./competitions/ (the first found); None for a built-in
    preset or a name found nowhere."""
    if key.endswith(".toml"):
        return Path(key) if Path(key).is_file() else None
    return next((folder / f"{key}.toml" for folder in _search_dirs()
                 if (folder / f"{key}.toml").is_file()), None)


def builtin_spec_names() -> list[str]:
    files = resources.files("kit") / "specs"
    return sorted(f.name.removesuffix(".toml") for f in files.iterdir() if f.name.endswith(".toml"))


# NAME.groups.toml beside NAME.toml: the spec's own feature groups (kit.features.sets), no spec
GROUPS_SUFFIX = ".groups.toml"


def available_specs() -> dict[str, str]:
    """Spec name -> where it comes from (user folders shadow presets)."""
    found = {name: "<builtin>" for name in builtin_spec_names()}
    for folder in reversed(_search_dirs()):
        if folder.is_dir():
            found.update({p.stem: str(p) for p in sorted(folder.glob("*.toml"))
                          if not p.name.endswith(GROUPS_SUFFIX)})
    return found


def _own_columns(spec: CompetitionSpec) -> CompetitionSpec:
    """A user's spec named like a built-in one must have its columns (it may change limits or
    the metric): kit picks feature groups, synthetic data and realism checks by name."""
    if spec.name in builtin_spec_names():
        preset = builtin_spec(spec.name)
        if spec.columns != preset.columns:
            raise SpecError(f"{spec.source}: name {spec.name!r} is the built-in spec's, whose "
                            "feature groups, synthetic data and checks expect its columns; this "
                            "file has other columns: give it a name of its own")
    return spec


def builtin_spec(name: str) -> CompetitionSpec:
    """A built-in spec."""
    text = (resources.files("kit") / "specs" / f"{name}.toml").read_text(encoding="utf-8")
    source = f"<builtin {name}>"
    return spec_from_dict(parse_toml(text, source, SpecError), source)


def load_spec(name_or_path: str | Path | CompetitionSpec | None = None) -> CompetitionSpec:
    """Load a spec by preset/user name or from a TOML path (default: predictorium)."""
    if isinstance(name_or_path, CompetitionSpec):
        return name_or_path
    key = str(DEFAULT_SPEC if name_or_path is None else name_or_path)
    if not key.strip():  # --spec "$UNSET": not the default competition without a word
        raise SpecError("the spec is empty; give a preset name (kit spec list) or a TOML path")
    if key.endswith(".toml") and not Path(key).is_file():
        raise SpecError(f"spec file {key} does not exist")
    path = spec_file(key)
    if path is not None:  # (a path is named as given)
        source = key if key.endswith(".toml") else str(path)
        return _own_columns(spec_from_dict(read_toml(path, SpecError), source))
    if key in builtin_spec_names():
        return builtin_spec(key)
    raise SpecError(
        f"unknown competition spec {key!r}; available: {sorted(available_specs())}. "
        "Pass a TOML path or put NAME.toml in ./competitions/ (or a folder in $KIT_SPEC_PATH)."
    )
