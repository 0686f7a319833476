"""`kit parity SUBMISSION --data FILE`: proof that a package computes what the trained model does.

Three paths over the same sequences:
  sequence  the PyTorch model over whole sequences on the Polars batch features (training's path);
  step      the PyTorch stream modules (guard, features, normaliser, model) one step at a time;
  package   the packaged solution.py, driven row by row by the local scorer in its 1-CPU sandbox.
and four checks of the runtime's behaviour, each on the package:
  order     sequences in shuffled order (some fed again) and rows of several sequences
            interleaved give the same predictions: state is reset/kept per sequence;
  warm-up   changing the warm-up rows changes the predictions after them, exactly as the step
            path says it should: warm-up rows are processed;
  NaN/inf   rows with NaN/inf values give finite predictions equal to the step path's.
Any difference above atol + rtol * |prediction|, or a failed check, fails parity and names the
check and the row.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from kit.atomic import atomic_bytes
from kit.competition import CompetitionSpec, spec_from_dict
from kit.config import finite_number, validation_file
from kit.data.arrays import build_arrays
from kit.ensemble import check_postprocess
from kit.errors import SubmissionError, os_error_text
from kit.export.ensemble import Weighted, postprocess_numpy
from kit.export.frozen import Member, load_member, stream_steps, warn_spec_changed
from kit.export.pack import (
    MANIFEST_FILE,
    PACK_FILES,
    PackError,
    check_manifest_columns,
    check_replaceable_zip,
    exclusive,
    hash_mismatches,
    other_format_note,
    package_lock,
    read_manifest,
    write_manifest,
)
from kit.features import FEATURE_FORMAT, FIRST_RECORDED_FORMAT
from kit.json_safe import json_safe
from kit.metrics import SHOWN_OUTPUTS, evaluate
from kit.models import known_class
from kit.parity_defaults import DEFAULT_ATOL, DEFAULT_RTOL, DEFAULT_SEQS
from kit.run_record import relocated
from kit.scoring.sandbox import other_form, snapshot_submission
from kit.scoring.score import (
    FLOAT_EXACT,
    key_text,
    load_rows,
    nonfinite_truth_note,
    replay_rows,
)
from kit.submission import write_submission_zip, zip_path_of
from kit.temp import owned_temp_dir
from kit.torch_state import kit_torch

PATHS = ("sequence", "step", "package")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class ParityReport:
    submission: str
    data: str
    sequences: int
    rows: int
    scored_rows: int
    atol: float
    rtol: float
    metrics: dict  # path -> {"score", "per_target"}
    diffs: list[dict]  # {"pair", "max_abs", "per_target": {t: {max_abs, max_rel, seq, step}}}
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the numbers above do not say
    # what to do first when it fails (a package of another format; a model whose own float32
    # rounding exceeds the tolerance: float32_advice)
    advice: str | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def max_abs(self) -> float:
        return max((d["max_abs"] for d in self.diffs), default=math.nan)

    def to_dict(self) -> dict:
        return json_safe({
            "ok": self.ok, "submission": self.submission, "data": self.data,
            "sequences": self.sequences, "rows": self.rows, "scored_rows": self.scored_rows,
            "atol": self.atol, "rtol": self.rtol, "max_abs": self.max_abs, "metrics": self.metrics,
            "diffs": self.diffs, "checks": [vars(c) for c in self.checks], "notes": self.notes,
            "advice": None if self.ok else self.advice,
        })

    def format(self) -> str:
        lines = [f"parity of {self.submission} on {self.data}: {self.sequences} sequence(s), "
                 f"{self.rows:,} rows, {self.scored_rows:,} scored; atol {self.atol:g}, "
                 f"rtol {self.rtol:g}"]
        targets = list(next(iter(self.metrics.values()))["per_target"])
        many = len(targets) > SHOWN_OUTPUTS  # (a next-state spec's 32: one line each, 1.7 KB)
        heads = ["min", "max"] if many else targets
        lines.append(f"{'path':<10}{'score':>10}" + "".join(f"{t:>10}" for t in heads))
        for path, m in self.metrics.items():
            values = list(m["per_target"].values())
            shown = [np.nanmin(values), np.nanmax(values)] if many else values
            lines.append(f"{path:<10}{m['score']:>10.5f}" + "".join(f"{v:>10.5f}" for v in shown))
        for d in self.diffs:
            items = list(d["per_target"].items())
            if many:  # the output furthest apart
                items = [max(items, key=lambda item: item[1]["max_abs"])]
            # the location is the largest absolute difference's; the largest relative one is
            # often elsewhere (a prediction near 0), and the check is atol + rtol * |y|
            per = "  ".join(f"{t} max abs {v['max_abs']:.2e} at seq {key_text(v['seq'])} step "
                            f"{key_text(v['step'])}, max rel {v['max_rel']:.2e}"
                            for t, v in items)
            worst = f"worst of {len(targets)} outputs: " if many else ""
            lines.append(f"{d['pair']:<20} {worst}{per}")
        lines += [f"note: {n}" for n in self.notes]
        for c in self.checks:
            lines.append(f"[{'PASS' if c.ok else 'FAIL'}] {c.name}: {c.detail}")
        lines.append(f"parity {'OK' if self.ok else 'FAILED'}: max abs difference "
                     f"{self.max_abs:.2e}" + ("" if self.ok or not self.advice
                                             else f"; {self.advice}"))
        return "\n".join(lines)


# --- the three paths ----------------------------------------------------------------------


@dataclass
class Rows:
    """The sample as the scorer sees it, with each row's place in the (N, T) layout."""

    values: np.ndarray  # (rows, 3 + F) float64: id, step, need, features
    seq: np.ndarray  # (rows,) sequence index 0..N-1
    pos: np.ndarray  # (rows,) position within the sequence
    lengths: np.ndarray  # (N,)

    @classmethod
    def of(cls, values: np.ndarray) -> Rows:
        ids = values[:, 0]
        starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
        lengths = np.diff(np.append(starts, len(ids)))
        seq = np.repeat(np.arange(len(starts)), lengths)
        pos = np.arange(len(ids)) - np.repeat(starts, lengths)
        return cls(values, seq, pos, lengths)

    @property
    def need(self) -> np.ndarray:
        return self.values[:, 2] != 0

    def with_features(self, features: np.ndarray) -> Rows:
        values = self.values.copy()
        values[:, 3:] = features
        return Rows(values, self.seq, self.pos, self.lengths)

    def grid(self) -> np.ndarray:
        """Raw features as (N, T, F) float32 (padding zeros; it comes after every real step)."""
        x = np.zeros((len(self.lengths), self.lengths.max(), self.values.shape[1] - 3),
                     dtype=np.float32)
        x[self.seq, self.pos] = self.values[:, 3:]
        return x

    def scored(self, grid: np.ndarray) -> np.ndarray:
        """The (scored rows, K) predictions of an (N, T, K) grid, in row order."""
        need = self.need
        return grid[self.seq[need], self.pos[need]].astype(np.float64)

    def frame(self, spec: CompetitionSpec) -> pl.DataFrame:
        """A Polars frame of the rows as kit's batch face reads files (targets zero)."""
        v = self.values
        cols = {spec.id_col: pl.Series(v[:, 0].astype(np.int64)),
                spec.step_col: pl.Series(v[:, 1].astype(np.int64)),
                spec.need_col: pl.Series(v[:, 2] != 0)}
        cols |= {name: pl.Series(v[:, 3 + i]) for i, name in enumerate(spec.features)}
        cols |= {name: pl.Series(np.zeros(len(v), np.float32)) for name in spec.targets}
        return pl.DataFrame(cols)


def sequence_path(member: Member, rows: Rows) -> np.ndarray:
    """Training's path: batch features (Polars) -> normaliser -> model over whole sequences."""
    return _whole_sequences(member, rows)


def float64_path(member: Member, rows: Rows) -> np.ndarray:
    """The sequence path with the model in float64: how far float32 rounding alone moves the
    model's predictions (float32_advice)."""
    return _whole_sequences(member, rows, double=True)


@torch.no_grad()
def _whole_sequences(member: Member, rows: Rows, double: bool = False) -> np.ndarray:
    """With `double`, a float64 copy of the model on the same (float32) inputs."""
    spec, names = member.spec, member.feature_set.outputs
    arrays = build_arrays(member.feature_set.batch_frame(rows.frame(spec)), spec, names,
                          seq_len=int(rows.lengths.max()))
    x = torch.from_numpy(np.ascontiguousarray(member.normaliser.transform(arrays.x)))
    if not double:
        y, _ = member.model(x, member.model.init_state(x.shape[0]))
        return y.numpy()
    model = copy.deepcopy(member.model).double()  # (the member's own stays float32)
    y, _ = model(x.double(), [s.double() for s in model.init_state(x.shape[0])])
    return y.numpy()


def step_path(member: Member, rows: Rows) -> np.ndarray:
    """The stream modules one step at a time on the raw rows: what the graph should compute."""
    y = stream_steps(member.stream_module(), torch.from_numpy(rows.grid()))
    return y.numpy()


@dataclass
class Reference:
    """What the package should compute: members with per-target weights, then the
    post-processing, evaluated member by member on one of the PyTorch paths."""

    members: list[Weighted]
    postprocess: dict | None

    def predict(self, path, rows: Rows) -> np.ndarray:
        """Scored predictions (rows, K) of the weighted members on `path` (a grid function)."""
        grid = sum(np.asarray(w.weights) * path(w.member, rows).astype(np.float64)
                   for w in self.members)
        if self.postprocess:
            grid = postprocess_numpy(grid, self.postprocess["smoothing"],
                                     self.postprocess["scale"],
                                     self.members[0].member.spec.warmup)
        return rows.scored(grid)


class Package:
    """The unpacked package, run by the sandboxed scorer on rows in any order."""

    def __init__(self, folder: Path, spec: CompetitionSpec, column_dtypes: list[str],
                 timeout_s: float | None = None):
        # the rows typed as the scorer's DataFrame.values types the file's columns
        self.folder, self.spec, self.column_dtypes = folder, spec, column_dtypes
        self.timeout_s = timeout_s  # per replay; None: none for the first, then set by it
        self.us_per_row: float | None = None
        self.init_s = 0.0  # the first replay's start-up (import, PredictionModel())

    def _replay(self, values: np.ndarray) -> np.ndarray:
        run = replay_rows(self.folder, values, self.spec, column_dtypes=self.dtypes_of(values),
                          timeout_s=self.replay_timeout(len(values)))
        if self.us_per_row is None:
            self.us_per_row = 1e6 * float(run.result["loop_s"]) / max(1, len(values))
            self.init_s = float(run.result.get("init_s") or 0.0)
        return run.predictions

    def dtypes_of(self, values: np.ndarray) -> list[str]:
        """The file's column dtypes, but float64 for an integer, unsigned or bool feature
        column whose rows here hold values it cannot (NaN, fractions, -3 as uint, 0.5 as a
        bool: the hostile and altered warm-up rows), as pandas reads a column with nulls.
        Cast to int64, NaN became -2**63 and 12.7 became 12, which the step path never saw:
        a correct package failed."""
        dtypes = list(self.column_dtypes or [])
        for j in range(3, min(values.shape[1], len(dtypes))):
            dtype = np.dtype(dtypes[j])
            if dtype.kind in "iub":  # a value it cannot hold (NaN, 0.5 as a bool, -3 as uint)
                with np.errstate(invalid="ignore", over="ignore"):
                    kept = values[:, j].astype(dtype).astype(np.float64)
                if not (kept == values[:, j]).all():
                    dtypes[j] = "float64"
        return dtypes or self.column_dtypes

    def replay_timeout(self, rows: int) -> float | None:
        """The given timeout, else (after the first replay) 20x its start-up and time per row
        plus a minute: a package that hangs on the checks' odd rows fails them instead of
        parity never returning."""
        if self.timeout_s is not None or self.us_per_row is None:
            return self.timeout_s
        return 60.0 + 20 * (self.init_s + rows * self.us_per_row * 1e-6)

    def run(self, rows: Rows) -> np.ndarray:
        return self._replay(rows.values)

    def run_in_order(self, rows: Rows, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows fed in `order` (repeats allowed): the predictions as fed, and for each the
        index of its scored row in the rows' own order."""
        fed = order[rows.need[order]]
        scored_index = (np.cumsum(rows.need) - 1)[fed]
        return self._replay(rows.values[order]), scored_index


# --- comparisons and checks ---------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """|a - b| <= atol + rtol * (largest finite |a| or |b| of that target), per (row, target)."""

    atol: float
    rtol: float

    def close(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        sizes = np.abs(np.concatenate([a, b]))
        size = np.max(np.where(np.isfinite(sizes), sizes, 0.0), axis=0, initial=0.0)
        return np.abs(a - b) <= self.atol + self.rtol * size

    def __str__(self) -> str:
        return f"{self.atol:g} + {self.rtol:g} * max|y|" if self.rtol else f"{self.atol:g}"


def compare(pair: str, a: np.ndarray, b: np.ndarray, rows: Rows, targets: list[str],
            tol: Tolerance) -> dict:
    diff = np.abs(a - b)
    diff = np.where(np.isnan(diff), np.inf, diff)  # a NaN on one side is the worst difference
    # a non-finite side is an infinite relative difference (inf / inf, NaN / NaN were NaN,
    # and one such row hid the target's real maximum)
    finite = np.isfinite(a) & np.isfinite(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(finite, diff / np.maximum(np.fmax(np.abs(a), np.abs(b)), 1e-6), np.inf)
    where = rows.values[rows.need]
    per = {}
    for k, name in enumerate(targets):
        worst = int(np.argmax(diff[:, k]))
        per[name] = {"max_abs": float(diff[worst, k]), "max_rel": float(rel[:, k].max()),
                     "seq": float(where[worst, 0]), "step": float(where[worst, 1])}
    over = np.flatnonzero(~tol.close(a, b).all(axis=1))
    first = {"seq": float(where[over[0], 0]), "step": float(where[over[0], 1])} if len(over) \
        else None
    return {"pair": pair, "max_abs": max(v["max_abs"] for v in per.values()), "per_target": per,
            "rows_over": len(over), "first_over": first}


def first_difference(got: np.ndarray, want: np.ndarray, where: np.ndarray,
                     tol: Tolerance) -> str:
    """'' when got == want within tol, else how many rows differ and the first (seq, step);
    where[i] is the row (id, step, ...) of prediction i. NaN equals NaN here, and inf inf: a
    package that predicts them does so in any order (the finiteness and path checks name it)."""
    same = tol.close(got, want) | (got == want) | (np.isnan(got) & np.isnan(want))  # (inf)
    bad = np.flatnonzero(~same.all(axis=1))
    if not len(bad):
        return ""
    row = where[bad[0]]
    gap = np.abs(got - want)[~same]
    largest = np.max(np.where(np.isnan(gap), np.inf, gap))
    return (f"{len(bad):,} scored row(s) differ by more than {tol}; first at seq "
            f"{key_text(row[0])}, step {key_text(row[1])} (max {largest:.3g})")


def shuffled_order(rows: Rows, rng: np.random.Generator) -> np.ndarray:
    """Row order with the sequences permuted, the first of them fed again at the end (its id
    comes back after others) and the last fed twice in a row (the same id starts over with no
    other id between: only the step going back says it is a new run)."""
    seqs = rng.permutation(len(rows.lengths))
    # the sequences with the most scored rows come back and start over: a random one could
    # have a single scored row, which shows no state resumed (a ragged review's false pass)
    scored = np.bincount(rows.seq[rows.need].astype(np.int64), minlength=len(rows.lengths))
    ranked = seqs[np.argsort(-scored[seqs], kind="stable")]
    if len(ranked) > 1:
        seqs = np.array([ranked[0], *(s for s in seqs if s not in ranked[:2]), ranked[1]],
                        dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(rows.lengths)])
    blocks = [np.arange(starts[s], starts[s + 1]) for s in seqs]
    return np.concatenate(blocks + [blocks[-1], blocks[0]])


INTERLEAVED = 4  # sequences whose rows the interleaved check feeds in turn


def interleaved_order(rows: Rows, group: int = INTERLEAVED) -> np.ndarray:
    """Rows of `group` sequences at a time, one row of each in turn."""
    return np.lexsort((rows.seq, rows.pos, rows.seq // group))


def as_two_sequences(rows: Rows, reference: np.ndarray) -> tuple[Rows, np.ndarray]:
    """The one sequence with scored rows fed again, after the sample, under an id of its own:
    the order checks need two scored sequences to tell a state kept per sequence from one
    shared by all (the others, unscored, compare nothing)."""
    scored = rows.seq == rows.seq[rows.need][0]
    again = rows.values[scored].copy()
    ids = rows.values[:, 0]
    again[:, 0] = ids.max() + 1 if ids.max() + 1 < FLOAT_EXACT else ids.min() - 1
    return Rows.of(np.concatenate([rows.values, again])), np.concatenate([reference, reference])


def check_order(package: Package, rows: Rows, reference: np.ndarray, tol: Tolerance,
                rng: np.random.Generator) -> list[Check]:
    if len(np.unique(rows.seq[rows.need])) == 1:  # (--seqs 1, or a sample of short ones)
        rows, reference = as_two_sequences(rows, reference)
    checks = []
    for name, order, fine in (
        ("order: shuffled sequences", shuffled_order(rows, rng),
         f"{len(rows.lengths)} sequences in shuffled order, one fed again later and one twice "
         "in a row: same predictions (state reset on a new sequence)"),
        ("order: interleaved rows", interleaved_order(rows),
         f"rows of {min(INTERLEAVED, len(rows.lengths))} sequences at a time, one of each in "
         "turn: same predictions (state kept per sequence)"),
    ):
        def judge(order=order, name=name, fine=fine):
            got, index = package.run_in_order(rows, order)
            where = rows.values[order][rows.need[order]]
            problems = first_difference(got, reference[index], where, tol)
            return Check(name, not problems, problems or fine)

        checks.append(attempt(name, judge))
    return checks


def attempt(name: str, check) -> Check:
    """check(), or a failed Check when the package raised while it was being run."""
    try:
        return check()
    except SubmissionError as exc:
        return Check(name, False, f"the package failed: {exc}")


def first_scored(rows: Rows) -> np.ndarray:
    """Each sequence's position of its first scored row (int64 max when it has none)."""
    first = np.full(len(rows.lengths), np.iinfo(np.int64).max)
    need = rows.need
    np.minimum.at(first, rows.seq[need], rows.pos[need])
    return first


def warmup_rows(rows: Rows) -> np.ndarray:
    """Rows before each sequence's first scored row."""
    return rows.pos < first_scored(rows)[rows.seq]


def check_warmup(package: Package, ref: Reference, rows: Rows, reference: np.ndarray,
                 step_reference: np.ndarray, tol: Tolerance) -> Check:
    """`reference`: the package's predictions on `rows`; `step_reference`: the step path's."""
    warm = warmup_rows(rows)
    if not warm.any():
        return Check("warm-up processed", True, "n/a: no warm-up rows in this competition")
    features = rows.values[:, 3:].copy()
    donor = np.roll(np.arange(len(rows.lengths)), -1)
    starts = np.concatenate([[0], np.cumsum(rows.lengths)])
    noise = np.random.default_rng(1)
    for s in range(len(rows.lengths)):
        mine = np.flatnonzero(warm & (rows.seq == s))
        if donor[s] != s and rows.lengths[donor[s]] >= len(mine):
            features[mine] = rows.values[starts[donor[s]]:starts[donor[s]] + len(mine), 3:]
        else:  # one sequence, or a short donor: other values all the same
            features[mine] = features[mine] + noise.standard_normal(features[mine].shape)
    altered = rows.with_features(features)
    got = package.run(altered)
    expected = ref.predict(step_path, altered)
    problems = first_difference(got, expected, rows.values[rows.need], tol)
    if problems:
        return Check("warm-up processed", False, f"with other warm-up rows, {problems}")
    scored_seq = rows.seq[rows.need]
    changed = np.zeros(len(rows.lengths), bool)
    np.logical_or.at(changed, scored_seq, (got != reference).any(axis=1))
    # judged: sequences with warm-up and scored rows whose step-path predictions depend on the
    # warm-up rows (a model without memory, e.g. a one-row window, has none to show)
    judged = np.zeros(len(rows.lengths), bool)
    np.logical_or.at(judged, scored_seq, (~tol.close(expected, step_reference)).any(axis=1))
    judged &= np.bincount(rows.seq[warm], minlength=len(rows.lengths)) > 0
    if not judged.any():
        return Check("warm-up processed", True,
                     "n/a: the step path's predictions do not depend on the warm-up rows "
                     "beyond the tolerance")
    if not changed[judged].all():
        ids = rows.values[np.searchsorted(rows.seq, np.flatnonzero(judged & ~changed)), 0]
        return Check("warm-up processed", False,
                     f"predictions of sequence(s) {', '.join(key_text(i) for i in ids[:5])} "
                     "do not change when their warm-up rows change: the warm-up rows are not "
                     "run through the model")
    return Check("warm-up processed", True,
                 f"other warm-up rows change every sequence's predictions, as the step path "
                 f"predicts ({int(warm.sum()):,} warm-up rows)")


LEADING_NAN_PAST_WARMUP = 20  # scored rows covered by each sequence's leading NaN run
OUTLIER_STDS = 50.0  # far past any normaliser clip, small enough for float32 to stay exact


def corrupted(rows: Rows, rng: np.random.Generator) -> Rows:
    """The rows made hostile, so that each part of the graph that handles them shows:
    - NaN/+inf/-inf over 3% of the values, a whole-NaN row per sequence and a NaN in each
      sequence's first row (the guard's fill);
    - one column NaN from each sequence's start to 20 rows past its warm-up: a guard whose
      state (last finite value) is not reset carries the previous sequence's value into
      scored rows, which a NaN fading within the warm-up would not show;
    - 1% of the values at 50 standard deviations of their column: the normaliser's clip."""
    features = rows.values[:, 3:].copy()
    finite = np.where(np.isfinite(features), features, np.nan)
    with warnings.catch_warnings():  # a column with no finite value: its outliers are 0 +- 50
        warnings.simplefilter("ignore", RuntimeWarning)
        center = np.nan_to_num(np.nanmean(finite, axis=0))
        spread = np.nan_to_num(np.nanstd(finite, axis=0))
    r = rng.random(features.shape)
    far = r >= 0.99
    sign = np.where(rng.random(features.shape) < 0.5, -1.0, 1.0)
    outliers = center + sign * OUTLIER_STDS * np.maximum(spread, 1e-3)
    features[far] = outliers[far]
    features[r < 0.02] = np.nan
    features[(r >= 0.02) & (r < 0.025)] = np.inf
    features[(r >= 0.025) & (r < 0.03)] = -np.inf
    starts = np.concatenate([[0], np.cumsum(rows.lengths)])[:-1]
    features[starts, 0] = np.nan
    features[starts + rows.lengths // 2] = np.nan
    first = np.minimum(first_scored(rows), rows.lengths)  # no scored row: the whole sequence
    leading = rows.pos < first[rows.seq] + LEADING_NAN_PAST_WARMUP
    features[leading, 1 % features.shape[1]] = np.nan
    return rows.with_features(features)


def check_nonfinite(ref: Reference, dirty: Rows, got: np.ndarray, tol: Tolerance) -> Check:
    """`got`: the package's predictions on the corrupted rows `dirty`, in file order."""
    if not np.isfinite(got).all():
        bad = np.flatnonzero(~np.isfinite(got).all(axis=1))[0]
        row = dirty.values[dirty.need][bad]
        return Check("NaN/inf rows", False, f"non-finite prediction at seq {key_text(row[0])}, "
                                            f"step {key_text(row[1])} after NaN/inf inputs")
    problems = first_difference(got, ref.predict(step_path, dirty),
                                dirty.values[dirty.need], tol)
    return Check("NaN/inf rows", not problems,
                 problems or f"{int((~np.isfinite(dirty.values[:, 3:])).sum()):,} NaN/inf "
                             "values: finite predictions, equal to the step path")


# --- the command --------------------------------------------------------------------------


def manifest_members(manifest: dict) -> list[dict]:
    """The manifest's members: a non-empty list of tables, or a PackError naming the key."""
    entries, where = manifest.get("members"), f"{MANIFEST_FILE}: members"
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise PackError(f"{where} must be a list of tables, got {entries!r:.80}; re-pack the run")
    if not entries:
        raise PackError(f"{where} is empty; re-pack the run")
    return entries


def load_reference(manifest: dict, spec: CompetitionSpec, submission: Path) -> Reference:
    """The members the manifest names, each checked against it (a hand-edited manifest gets a
    message naming the key, not a traceback)."""
    entries, where = manifest_members(manifest), f"{MANIFEST_FILE}: members"
    check_manifest_columns(manifest, spec)
    members = []
    for i, entry in enumerate(entries):
        weights = entry.get("weights") if isinstance(entry, dict) else None
        if not (isinstance(entry, dict) and isinstance(entry.get("checkpoint"), str)
                and isinstance(entry.get("sha256"), str) and isinstance(weights, list)
                and len(weights) == spec.n_outputs and all(finite_number(w) for w in weights)):
            raise PackError(f"{where}[{i}] needs 'checkpoint', 'sha256' and {spec.n_outputs} "
                            "finite 'weights'; re-pack the run")
        path = member_checkpoint(entry["checkpoint"], submission)  # the sha256 decides below
        if not path.is_file():
            raise PackError(f"the run behind this package is gone ({path}); parity compares "
                            "against the trained PyTorch model, so it needs that checkpoint "
                            "(a moved project: run parity from its folder, where runs/ is)")
        member = load_member(path, warn=False)  # said once for all members, below
        if member.sha256 != entry["sha256"]:
            raise PackError(f"{path} changed since the package was made (sha256 differs): "
                            "re-pack the run, then check parity")
        members.append(Weighted(member, [float(w) for w in entry["weights"]]))
    warn_spec_changed([(w.member.checkpoint.parent, w.member.spec_check) for w in members],
                      spec.name)
    post = manifest.get("postprocess")
    if post is not None:
        post = check_postprocess(post, spec.n_outputs, MANIFEST_FILE)
    return Reference(members, post)


def refuse_missing(submission: Path) -> None:
    """A package that is not there is named as such ("no manifest.json" described a folder
    that did not exist), with the folder a killed pack set aside, where there is one (r271)."""
    if submission.exists():
        return
    aside = sorted(submission.parent.glob(f".{submission.name}.previous-*"))
    killed = (f"; a pack killed while it swapped the package in left the old one at "
              f"{aside[-1]}" if aside else "")
    raise SubmissionError(f"{submission}: no such package folder or zip"
                          f"{other_form(submission)}{killed}")


def default_data(submission: Path) -> Path:
    """The validation file of the package's first member (its training config says which)."""
    from kit.export.pack import manifest_of

    submission = Path(submission)
    refuse_missing(submission)
    # a folder's manifest read as kit reads it: a torn one is named as such; a zip's that
    # does not read (a torn manifest, a damaged zip, a file that is no zip) is named as
    # parity with --data names it, from its extracted copy, not as "no manifest.json"
    manifest = read_manifest(submission) if submission.is_dir() else manifest_of(submission)
    if manifest is None and not submission.is_dir():
        with owned_temp_dir("parity") as tmp:
            folder = snapshot_submission(submission, Path(tmp), copy=copy_package)
            manifest = read_manifest(folder, shown=submission)
    if manifest is None:
        raise PackError(f"{submission}: no {MANIFEST_FILE}; is this a package written by "
                        "kit pack?")
    config = manifest_members(manifest)[0].get("config", {})
    readable = isinstance(config, dict) and isinstance(config.get("data") or {}, dict)
    valid = validation_file(config) if readable else None  # (a hand-edited config: none)
    if not valid or not isinstance(valid, str):
        raise PackError(f"{submission}: the manifest names no validation file; pass --data")
    data = config["data"]
    if data.get("fold") or data.get("split", "file") != "file":  # its held-out part: not a file
        warnings.warn(f"the run validated on a held-out part of {valid}; parity runs the "
                      "file's first sequences, training sequences among them, so its scores "
                      "are not the run's validation score (the checks hold all the same)",
                      UserWarning, stacklevel=2)
    recorded = manifest_members(manifest)[0].get("checkpoint")
    run = member_checkpoint(recorded, submission) if isinstance(recorded, str) else None
    found = in_project(Path(valid), submission, run)
    if not found.exists():
        # the projects looked in (a relative path only), each once
        where = [] if Path(valid).is_absolute() else list(dict.fromkeys(
            str(p) for p in (package_project(submission), run_project(run)) if p))
        raise PackError(f"{submission}: the run's validation file {valid} (as its config names "
                        "it) is not here" + (f" nor in {' or '.join(where)}" if where else "")
                        + ": pass --data FILE")
    return found


def package_project(submission: Path) -> Path | None:
    """PROJECT of a package at PROJECT/submissions/NAME[.zip], where kit pack writes it."""
    packages = Path(submission).resolve().parent
    return packages.parent if packages.name == "submissions" else None


def run_project(checkpoint: Path | None) -> Path | None:
    """PROJECT of a checkpoint at PROJECT/runs/EXP/ID/FILE or PROJECT/runs/ID/FILE (kit train
    --run-dir runs/ID): a package written elsewhere with --out still knows its run's project.
    runs/EXP/ first, so an experiment named runs is no project."""
    if checkpoint is None:
        return None
    above = checkpoint.parents
    runs = next((above[i] for i in (2, 1) if len(above) > i + 1 and above[i].name == "runs"),
                None)
    return None if runs is None else runs.parent


def member_checkpoint(recorded: str, submission: Path) -> Path:
    """A member's checkpoint as the manifest recorded it, else under this folder's runs/,
    else under the runs/ of the project the package sits in (a moved checkout, parity run from
    PROJECT/submissions); the recorded path where none is there (for the error to name)."""
    path = relocated(recorded)
    project = package_project(submission)
    if not path.exists() and project is not None:
        path = relocated(recorded, project / "runs")
    return path


def in_project(path: Path, submission: Path, checkpoint: Path | None = None) -> Path:
    """A relative data path as the run's config wrote it: from here, else from the project
    the package sits in (PROJECT/submissions/NAME), else from its run's project (a package
    written with --out elsewhere): parity from a subfolder found no file. Else as it is."""
    if path.is_absolute() or path.exists():
        return path
    for project in (package_project(submission), run_project(checkpoint)):
        if project is not None and (project / path).exists():
            return project / path
    return path


def run_parity(submission: Path, data: Path, *, seqs: int = DEFAULT_SEQS,
               atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, seed: int = 0,
               record: bool = True, timeout_s: float | None = None) -> ParityReport:
    """Compare the three paths and run the checks; with `record`, a package folder's manifest
    gets the report (and its zip is rewritten)."""
    with kit_torch():  # (not a decorator: warnings name the caller)
        submission = Path(submission)
        refuse_missing(submission)
        for name, value in (("atol", atol), ("rtol", rtol)):
            if not (math.isfinite(value) and value >= 0):
                raise PackError(f"--{name} must be a finite number >= 0, got {value}")
        if timeout_s is not None and not (math.isfinite(timeout_s) and timeout_s > 0):
            raise PackError(f"--timeout must be a number of seconds > 0, got {timeout_s}")
        tol = Tolerance(atol, rtol)
        rng = np.random.default_rng(seed)
        with owned_temp_dir("parity") as tmp:
            folder = snapshot_submission(submission, Path(tmp), copy=copy_package)
            manifest = read_manifest(folder, shown=submission)
            spec = spec_from_dict(manifest["spec"], str(submission / MANIFEST_FILE))
            bad_files = hash_mismatches(folder, manifest)
            ref = load_reference(manifest, spec, submission)
            loaded = load_rows(Path(data), spec, seqs, packed=spec.name)
            truth, n_seqs = loaded.truth, loaded.sequences
            rows = Rows.of(loaded.values)
            package = Package(folder, spec, loaded.column_dtypes, timeout_s)
            preds = {"sequence": ref.predict(sequence_path, rows),
                     "step": ref.predict(step_path, rows)}
            checks = [Check("manifest", not bad_files,
                            "; ".join(bad_files) or "every file matches its sha256")]
            try:
                preds["package"] = package.run(rows)
            except SubmissionError as exc:  # reported as a failed check: the rest needs its output
                checks.append(Check("package runs", False, str(exc)))
            targets = list(spec.outputs)
            diffs = [compare(f"{a} vs {b}", preds[a], preds[b], rows, targets, tol)
                     for a, b in (("sequence", "step"), ("sequence", "package"),
                                  ("step", "package"))
                     if a in preds and b in preds]
            checks.append(paths_agree(diffs, tol))
            if "package" in preds:
                dirty = corrupted(rows, rng)
                try:
                    dirty_preds = package.run(dirty)
                    nonfinite = check_nonfinite(ref, dirty, dirty_preds, tol)
                except SubmissionError as exc:
                    dirty_preds, nonfinite = None, Check("NaN/inf rows", False,
                                                         f"the package failed: {exc}")
                # the order checks feed the hostile rows where the package runs them: a leading NaN
                # run shows a guard state carried into a sequence that starts over, which clean
                # rows (the model forgetting within a long warm-up) may not
                order_rows, order_reference = ((rows, preds["package"]) if dirty_preds is None
                                               else (dirty, dirty_preds))
                checks += [
                    *check_order(package, order_rows, order_reference, tol, rng),
                    attempt("warm-up processed",
                            lambda: check_warmup(package, ref, rows, preds["package"],
                                                 preds["step"], tol)),
                    nonfinite,
                ]
        metrics = {}
        for path in preds:
            report = evaluate(spec, truth, preds[path])
            metrics[path] = {"score": report.score, "per_target": report.per_target}
        # NaN scores beside passing checks: the truth, not the package (predictions are compared)
        truth_note = nonfinite_truth_note(truth, spec, Path(data))
        notes = ([f"{truth_note}; parity compares predictions, which it does not touch"]
                 if truth_note else [])
        failed = not all(c.ok for c in checks)
        format_notes, advice = format_note(manifest, submission, failed)
        # a failure of a package whose graph is of another format may be this kit's own change of
        # an op: it is not written into the user's (perhaps submitted) package; a pass is as true
        # as ever (and members that trained on another format change nothing parity compares)
        kept_out = advice is not None and failed
        notes[:0] = format_notes
        own = diffs[0] if diffs and diffs[0]["pair"] == "sequence vs step" else None
        off_float64 = package_off = None
        # only where rounding can be the whole story: the package ran (on the hostile rows too)
        # and every failed check compares values against the tolerance (r301)
        if own and own["rows_over"] and "package" in preds and dirty_preds is not None and all(
                c.ok or c.name in ROUNDING_CHECKS for c in checks):
            with contextlib.suppress(RuntimeError, TypeError, ValueError):  # advice only: a model
                off_float64, package_off = float64_distance(ref, rows, preds)  # float64 cannot run
        rounding = float32_advice(diffs, tol, [w.member.model_config for w in ref.members],
                                  off_float64, package_off)
        if rounding is not None:  # (a failure all the same: exit 1, and it is recorded)
            advice = rounding if advice is None else f"{advice}; also {rounding}"
        if kept_out and record and submission.is_dir():
            notes.append(f"the failed report is not recorded in {submission}'s manifest or zip: "
                         "the difference may come from this kit's features, not the package")
        result = ParityReport(str(submission), str(data), n_seqs, len(rows.values),
                              int(rows.need.sum()),
                              atol, rtol, metrics, diffs, checks, notes, advice)
        if record and submission.is_dir() and not bad_files and not kept_out:
            try:
                if not record_report(submission, manifest, result):
                    # an OK of the package as it was, with another at its path, let a script
                    # upload what parity never checked (r287): a failed check, exit 1
                    result.checks.append(Check(
                        "package unchanged", False, f"{submission} changed while parity ran "
                        "(re-packed?): the checks above describe the package as it was, not the "
                        "one there now, and nothing is recorded in it; run kit parity again"))
            except OSError as exc:  # a read-only package: the report is still the answer
                warnings.warn(f"the report could not be recorded in {submission}'s manifest "
                              f"({os_error_text(exc)}); the package is as it was", stacklevel=2)
        return result


def format_note(manifest: dict, submission: Path, failed: bool) -> tuple[list[str], str | None]:
    """The notes on a package of another FEATURE_FORMAT (docs/features.md) and the advice a
    failure ends with (None: none to give). A graph packed by a kit of another format: the
    reference paths compute this kit's features, so an op whose output changed since makes
    them differ from the package's graph, and parity blamed the package (r286); re-packing
    helps. Members that trained on another format (the manifest's members[i].feature_format,
    from r293): the graph and the paths compute alike, but not what the models learned on;
    only retraining helps. A pass says no more than that (the advice is a failure's)."""
    notes, advice = [], None
    packed = manifest.get("feature_format")
    if packed != FEATURE_FORMAT:
        if packed is None:  # kit pack writes the field since FIRST_RECORDED_FORMAT
            what = ("records no feature format (packed by a kit from before packages recorded "
                    f"it: format {FIRST_RECORDED_FORMAT} or older)")
        else:
            older = isinstance(packed, int) and packed < FEATURE_FORMAT
            what = (f"was packed with feature format {packed!r} "
                    f"({'an older' if older else 'another'} kit)")
        notes.append(f"this package {what}; this kit computes format {FEATURE_FORMAT}, so its "
                     "reference paths may differ from the package's graph where an op's output "
                     "changed (docs/features.md, FEATURE_FORMAT)"
                     + ("" if failed else "; parity passed all the same"))
        advice = ("the package's feature format is not this kit's: re-pack the run with this "
                  f"kit ({repack_command(manifest, submission)}) before judging parity")
    # (a manifest from before members recorded theirs: nothing known, nothing said)
    trained = [(member_name(e, i), e["feature_format"])
               for i, e in enumerate(manifest_members(manifest)) if "feature_format" in e]
    if (members := other_format_note(trained)) is not None:
        notes.append(f"in this package {members} (re-packing cannot change what was learned)")
    return notes, advice


def member_name(entry: dict, i: int) -> str:
    """EXP/ID of a manifest's member, as kit pack names it (members[i] for a hand-edited one)."""
    run = entry.get("run")
    return "/".join(Path(run).parts[-2:]) if isinstance(run, str) and run else f"members[{i}]"


def repack_command(manifest: dict, submission: Path) -> str:
    """The kit pack command that makes this package again with this kit, in its place (pack's
    default folder depends on where it runs: --out names this one), with absolute paths: it
    works from wherever it is run (`kit parity .` inside the package said `--name  --out .`)."""
    submission = submission.resolve()
    where = f"--name {submission.name.removesuffix('.zip')} --out {submission.parent}"
    ensemble = manifest.get("ensemble")
    if isinstance(ensemble, dict) and isinstance(ensemble.get("file"), str):
        # recorded as given to kit pack before r293 (relative to where it ran): as a run path
        # is found (runs/ensembles/ here, or in the package's project), absolute where found
        found = member_checkpoint(ensemble["file"], submission)
        return f"kit pack --ensemble {found.resolve() if found.exists() else found} {where}"
    entries = manifest_members(manifest)
    recorded = entries[0].get("checkpoint")
    if len(entries) > 1 or not isinstance(recorded, str):
        return f"kit pack RUN {where}"
    # the run parity compares with (a moved checkout's, found under runs/ here)
    return f"kit pack {member_checkpoint(recorded, submission).parent} {where}"


def paths_agree(diffs: list[dict], tol: Tolerance) -> Check:
    worst = max(diffs, key=lambda d: d["max_abs"])
    over = [d for d in diffs if d["rows_over"]]
    if not over:
        return Check("paths agree", True, f"max abs difference {worst['max_abs']:.2e} "
                                          f"({worst['pair']}) within {tol}")
    first = max(over, key=lambda d: d["rows_over"])
    own = next((d for d in over if d["pair"] == "sequence vs step"), None)
    mine = "" if own is None else (  # its own rounding, not the package: float32_advice
        f"; the two PyTorch paths differ themselves in {own['rows_over']:,} row(s) "
        "(sequence vs step)")
    return Check("paths agree", False,
                 f"{first['rows_over']:,} scored row(s) differ by more than {tol} "
                 f"({first['pair']}); first at seq {key_text(first['first_over']['seq'])}, "
                 f"step {key_text(first['first_over']['step'])}; max abs difference "
                 f"{worst['max_abs']:.2e} "
                 f"({worst['pair']}), " + _where(worst) + mine)


SAME_SIZE = 10.0  # differences within this factor of the model's own rounding: rounding
PACKAGE_SAME = 3.0  # a package within this factor of the paths' distance from float64
# the checks the model's own rounding can fail (they compare values against the tolerance)
ROUNDING_CHECKS = ("paths agree", "warm-up processed", "NaN/inf rows")


def float64_distance(ref: Reference, rows: Rows, preds: dict) -> tuple[float, float | None]:
    """How near the float32 predictions come to the model in float64: the nearer PyTorch path's
    largest difference from it, and the package's (None without one; inf for a non-finite
    value)."""
    exact = ref.predict(float64_path, rows)

    def off(path: str) -> float:
        with np.errstate(invalid="ignore"):  # (inf - inf: NaN, read as inf)
            gap = np.abs(preds[path] - exact)
        return float(np.max(np.where(np.isfinite(gap), gap, np.inf), initial=0.0))

    return (min(off("sequence"), off("step")),
            off("package") if "package" in preds else None)


def float32_advice(diffs: list[dict], tol: Tolerance, model_configs: list[dict],
                   off_float64: float | None, package_off: float | None = None) -> str | None:
    """What a failure says when the two PyTorch paths disagree beyond the tolerance by the
    model's own float32 rounding (None otherwise). Both run the same weights in float32, whole
    sequences against one step at a time; a tiny model's rounding (a d_model of 3: 3.1e-5
    apart, each 2.5e-5 from float64) exceeds 1e-5, a correct package shares it, and "paths
    agree" failing on it read as a broken package (r300). Rounding, not a bug of one path:
    neither path is nearer the model in float64 (`off_float64`, float64_distance) than a
    tenth of their difference."""
    own = next((d for d in diffs if d["pair"] == "sequence vs step"), None)
    if own is None or not own["rows_over"] or off_float64 is None:
        return None
    x = own["max_abs"]
    if not (math.isfinite(x) and x <= SAME_SIZE * off_float64):
        return None  # (a NaN on one path, or one path the float64 model's: no rounding)
    package = max((d["max_abs"] for d in diffs if "package" in d["pair"]), default=None)
    # the package judged against the model in float64 itself: within a few times the paths'
    # own distance it rounds as they do (its differences from them could be 10x and pass)
    alike = package_off is not None and package_off <= PACKAGE_SAME * off_float64
    if package is None:
        compared = ""
    elif alike:
        compared = (f"; the package is as near the model in float64 ({package_off:.2e}), its "
                    f"differences from the paths (up to {package:.2e}) of that size")
    else:
        far = f" ({package_off:.2e} from the model in float64)" if package_off is not None \
            else ""
        compared = (f"; the package is further off{far}, which this does not explain: look "
                    "at it as well")
    widths = sorted({f"model.{cls.width_key}" for c in model_configs if isinstance(c, dict)
                     and (cls := known_class(c.get("type"))) and cls.width_key}) or ["the width"]
    wider = f"train a larger width ({' or '.join(widths)})"
    if package is not None and not alike:  # a tolerance that would pass it excuses nothing
        return (f"the model itself is not stable in float32 at this size: its two PyTorch "
                f"paths (sequence vs step, the same weights) differ by {x:.2e}, beyond the "
                f"tolerance {tol}, and neither is nearer the model in float64 than "
                f"{off_float64:.2e}{compared}; {wider}")
    seen = max(x, package) if package is not None else x
    atol = 10.0 ** math.ceil(math.log10(2 * seen))  # a power of ten past twice what was seen
    return (f"the model itself is not stable in float32 at this size: its two PyTorch paths "
            f"(sequence vs step, the same weights) differ by {x:.2e}, beyond the tolerance "
            f"{tol}, and neither is nearer the model in float64 than {off_float64:.2e}"
            f"{compared}; {wider} or judge with a larger tolerance (--atol {atol:g})")


def copy_package(folder: Path, dest: Path) -> Path:
    """Parity checks the packed files and the zip: what else sits in the folder (a dotfile, a
    link to a virtualenv, a link to the folder itself) is left out of its copy, not refused
    as kit score refuses it, nor followed."""
    def left_out(directory: str, names: list[str]) -> set[str]:
        return {n for n in names if n.startswith(".") or n == "__pycache__"
                or os.path.islink(os.path.join(directory, n))}

    shutil.copytree(folder, dest, ignore=left_out)
    return dest


def record_report(submission: Path, tested: dict, result: ParityReport) -> bool:
    """The report into the package's manifest (and zip), only if the folder still holds the
    files that were tested: under kit pack's lock, so a pack cannot swap them in between.
    False when they changed while parity ran (re-packed, edited): nothing is recorded."""
    with exclusive(package_lock(submission.resolve())):
        try:
            now = read_manifest(submission)
        except PackError:
            now = {}
        if now.get("files") != tested["files"] or hash_mismatches(submission, now):
            return False
        zip_path = zip_path_of(submission)
        try:  # pack's rule: a NAME.zip of the user's own is never overwritten (r263)
            check_replaceable_zip(zip_path)
            own_zip = None
        except PackError:
            own_zip = zip_path
        manifest = submission / MANIFEST_FILE
        before = manifest.read_bytes()
        tested["parity"] = result.to_dict()
        write_manifest(submission, tested)
        if own_zip is not None:
            warnings.warn(f"the report is recorded in {manifest}, not in {own_zip}: that is not "
                          "a zip kit pack wrote, so it is left as it is (kit pack --name or --out "
                          "writes the package's zip elsewhere)", stacklevel=3)
            return True
        try:
            write_submission_zip(submission, files=PACK_FILES)
        except BaseException:  # the folder and its zip stay one package: the manifest as it was
            atomic_bytes(manifest, before)
            raise
        return True


def _where(diff: dict) -> str:
    name, v = max(diff["per_target"].items(), key=lambda kv: kv[1]["max_abs"])
    return f"worst at {name}, seq {key_text(v['seq'])}, step {key_text(v['step'])}"
