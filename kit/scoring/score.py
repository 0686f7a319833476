"""`kit score`: replay the competition's step-by-step scorer on a submission, locally, on 1 CPU."""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from kit.competition import CompetitionSpec, limits_label
from kit.data.contract import (
    PASS_SPEC,
    check_frame,
    check_schema,
    extra_columns_among,
    listed_names,
)
from kit.data.io import (
    file_schema,
    pandas_column_types,
    pandas_index_columns,
    read_frame,
    refuse_index_columns,
    scan_parquet,
    unreadable_data,
)
from kit.errors import DataError, KitError, SubmissionError
from kit.json_safe import json_safe
from kit.metrics import SHOWN_OUTPUTS, MetricReport, evaluate, outputs_summary, scored_truth
from kit.scoring.sandbox import choose_cpu, run_child, snapshot_submission
from kit.temp import owned_temp_dir


@dataclass
class ScoreResult:
    """The score, the speed, and the projection of the speed onto the competition's test set."""

    submission: str
    data: str
    spec: str
    report: MetricReport
    rows: int
    scored_rows: int
    sequences: int
    init_s: float  # import solution.py + PredictionModel(), inside the child
    loop_s: float  # the row loop, inside the child
    rows_per_s: float  # after the first row (see projected_time)
    us_per_row: float
    projected_s: float  # init_s + first_s + (spec.limits.test_rows - 1) / rows_per_s
    limit_s: float
    projected_fraction: float
    cpu: int | None  # the CPU the child was pinned to
    sandbox: dict = field(default_factory=dict)  # what the child reported about itself
    nonfinite: int = 0  # NaN/inf values among the predictions
    # of those, the values the official metric cannot use: NaN, and inf when it has no clip
    # (a clip turns inf into its bound, which is scored like any other value)
    unusable: int = 0
    warnings: list[str] = field(default_factory=list)
    output_tail: str = ""  # the end of what the submission printed
    test_rows: int = 0  # spec.limits.test_rows, what projected_s is of
    # spec.limits_unset: the limits that are Predictorium's, the spec setting none of its own
    limits_unset: list[str] = field(default_factory=list)
    first_s: float = 0.0  # the first row's predict(), inside loop_s
    predictions: np.ndarray | None = field(default=None, repr=False)  # (scored_rows, K)
    # the data file's sequences: more than `sequences` when --seqs replayed its first ones
    file_sequences: int = 0

    @property
    def score(self) -> float:
        return self.report.score

    @property
    def fails(self) -> list[str]:
        """Why the official scorer would not accept this run: a score that is not a number,
        a projected time past the limit, peak memory past the limit (empty when none)."""
        reasons = []
        if self.unusable:  # (NaN truth in the local file is a data problem, warned of)
            reasons.append("NaN or inf predictions the metric cannot use (NaN, or inf where it "
                           "has no clip)")
        if self.projected_fraction > 1:
            reasons.append("the projected time exceeds the limit")
        mem = self.sandbox.get("projected_peak_mb", self.sandbox.get("peak_rss_mb"))
        limit_gb = self.sandbox.get("memory_limit_gb")
        if mem is not None and limit_gb and mem > limit_gb * 1024:
            reasons.append("peak memory exceeds the limit")
        return reasons

    def to_dict(self) -> dict:
        out = {k: v for k, v in vars(self).items() if k not in ("predictions", "report")}
        out["report"] = self.report.to_dict()
        out["fails"] = self.fails
        return json_safe(out)

    def format(self, said: Collection[str] = ()) -> str:
        r = self.report
        per = ", ".join(f"{name} {_fmt(v)}" for name, v in r.per_target.items())
        if len(r.per_target) > SHOWN_OUTPUTS:
            per = outputs_summary(r.per_target)
        mem = self.sandbox.get("peak_rss_mb")
        limit_gb = self.sandbox.get("memory_limit_gb")
        lines = [
            f"{self.submission}  on {self.data}  [spec {self.spec}]",
            f"score {_fmt(r.score)}  ({r.metric}: {per})",
            f"rows {self.rows:,} ({self.scored_rows:,} scored) in {self.sequences_text()}; "
            f"child pinned to CPU {self.cpu}",
            f"init {self.init_s:.2f} s   loop {self.loop_s:.2f} s   "
            f"{self.rows_per_s:,.0f} rows/s   {self.us_per_row:.1f} us/row"
            + (f"   (first row {self.first_s:.2f} s, counted once)" if self.first_s > max(
                0.01, 100e-6 * self.us_per_row) else ""),
            f"projected on the test set ({self.test_rows:,} rows, "
            f"{limits_label(self.limits_unset, ('test_rows', 'time_limit_s'))})"
            f"{self.subset_text()}: {seconds_text(self.projected_s)} = "
            f"{100 * self.projected_fraction:.1f}% of the {seconds_text(self.limit_s)} limit "
            "(on this machine's CPU)",
        ]
        projected = self.sandbox.get("projected_peak_mb")
        held = self.sandbox.get("rows_mb", 0.0) + self.sandbox.get("kept_mb", 0.0)
        if mem is not None and projected is not None:
            lines.append(
                f"peak memory {mem:,.0f} MiB here ({held:,.0f} MiB of it this file's rows and "
                f"the predictions kept); projected on the test set's rows: {projected:,.0f} MiB"
                + (f" of {limit_gb:g} GiB" if limit_gb else "")
            )
        elif mem is not None:
            lines.append(
                f"peak memory {mem:,.0f} MiB" + (f" of {limit_gb:g} GiB" if limit_gb else "")
            )
        if self.sandbox.get("imports"):  # here they were installed; the scorer must have them
            lines.append(f"imports beyond the standard library and numpy: "
                         f"{', '.join(self.sandbox['imports'])} (the scorer must provide them)")
        lines += [f"warning: {w}" for w in self.warnings if w not in said]
        return "\n".join(lines)

    @property
    def subset(self) -> bool:
        """Whether --seqs replayed only the first sequences of the file."""
        return self.file_sequences > self.sequences

    def sequences_text(self) -> str:
        """The sequences replayed, as a part of the file's when --seqs kept some (r312: "in
        50 sequence(s)" of a 10,721-sequence file read as the whole file)."""
        if not self.subset:
            return f"{self.sequences:,} sequence(s)"
        return (f"the first {self.sequences:,} of the file's {self.file_sequences:,} sequences "
                "(--seqs)")

    def subset_text(self) -> str:
        """What the projection is extrapolated from, when that is a --seqs subset."""
        if not self.subset:
            return ""
        return (f", extrapolated from the first {self.sequences:,} sequence(s) alone (a short "
                "run includes warm-up effects)")


def package_changes(folder: Path) -> list[str]:
    """For a package with kit pack's manifest: its files that changed since pack (or went
    missing); nothing to say for a submission without one."""
    from kit.export.pack import MANIFEST_FILE, hash_mismatches, manifest_of

    if not (Path(folder) / MANIFEST_FILE).is_file():
        return []
    try:
        manifest = manifest_of(folder)
    except KitError:
        return []  # a manifest that is not kit's: nothing it could vouch for
    # kit's (kit_version), or with the file list kit writes: one whose list was deleted by
    # hand is no longer vouched for (parity fails it; kit score said nothing, r263)
    ours = isinstance(manifest, dict) and ("kit_version" in manifest or "files" in manifest)
    return hash_mismatches(folder, manifest) if ours else []


def check_cpu(cpu: int | None) -> int | None:
    """A CPU this process may run on: the child pins itself to it before anything else, and
    an invalid one would read as a submission that failed to start."""
    if cpu is None:
        return None
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if isinstance(cpu, bool) or not isinstance(cpu, numbers.Integral) or cpu < 0 or (
            allowed is not None and cpu not in allowed):  # (numpy integers are fine)
        raise SubmissionError(f"cpu={cpu!r}: not a CPU this process may use "
                              f"({'allowed: ' + str(allowed) if allowed else 'an integer'}); "
                              "leave it out to take the least busy one")
    return int(cpu)  # a numpy integer becomes one the job's JSON holds


def score_submission(
    submission: Path,
    data: Path,
    spec: CompetitionSpec | str | Path | None = None,
    *,
    seqs: int | None = None,
    progress: bool = True,
    timeout_s: float | None = None,
    cpu: int | None = None,
    limit_memory: bool = False,
) -> ScoreResult:
    """Run SUBMISSION (folder or zip) over DATA row by row in a 1-CPU child process and score it.

    spec: a CompetitionSpec, or a preset name or TOML path as `kit score --spec` takes; None
    as kit score without --spec (the package's manifest, else the default preset).
    cpu: pin to this CPU (default: the least busy one). limit_memory: cap the child's address
    space at spec.limits.memory_gb (off by default: address space overstates real use).
    """
    submission, data = Path(submission), Path(data)
    if not isinstance(spec, CompetitionSpec):  # (a name raised AttributeError on .limits)
        from kit.export.pack import submission_spec

        spec = submission_spec(submission, None if spec is None else str(spec))
    if timeout_s is not None and not timeout_s > 0:
        raise SubmissionError(f"--timeout must be a number of seconds > 0, got {timeout_s}")
    cpu = check_cpu(cpu)
    notes = []
    if spec.limits.cpus > 1:  # the time projection is then an upper bound for threaded code
        notes.append(f"the spec gives the scorer {spec.limits.cpus} CPUs (limits.cpus); kit "
                     "score replays on one, so a submission that uses more threads runs slower "
                     "here than there (a kit package runs on one thread either way)")
        warnings.warn(notes[-1], RuntimeWarning, stacklevel=2)
    with owned_temp_dir("score") as tmp:
        # the submission first: a zip with its solution.py in a subfolder is named as such, not
        # as data that breaks a spec guessed for a package without a manifest
        # (a folder runs on a copy, as the scorer runs a fresh unzip)
        solution_dir = snapshot_submission(submission, Path(tmp))
        # scored as it is (an experiment), but not what kit pack wrote and checked; said before
        # the replay, which it may explain (a truncated model.onnx fails to load)
        changed = package_changes(solution_dir)
        if changed:
            notes.append(f"{'; '.join(changed)}: this is not the package kit pack wrote (kit "
                         "parity checked that one); re-pack it, or run kit parity on this one")
            warnings.warn(notes[-1], RuntimeWarning, stacklevel=2)
        rows = load_rows(data, spec, seqs, packed=packed_for(submission))
        truth, sequences, n_rows = rows.truth, rows.sequences, len(rows.values)
        file_sequences = rows.file_sequences
        dtypes, rows_path = rows.column_dtypes, Path(tmp) / "rows.npy"
        scored_keys = rows.values[rows.values[:, 2].astype(bool)][:, :2]  # (id, step) per pred
        np.save(rows_path, rows.values)
        del rows  # the child memory-maps the file: the parent need not hold the rows too
        child = replay_file(solution_dir, rows_path, n_rows, spec, cpu=cpu,
                            limit_memory=limit_memory, timeout_s=timeout_s, progress=progress,
                            column_dtypes=dtypes)
    result, preds = child.result, child.predictions
    moved = 0 if child.truth is None else int(
        ((child.truth != truth) & ~(np.isnan(child.truth) & np.isnan(truth))).any(axis=1).sum())
    if moved:
        notes.append(f"predict() changed dp.state in place on {moved:,} scored row(s)' next "
                     "rows: the next-state scorer keeps those very arrays as its targets, so "
                     "this run is scored against the changed values, as it would be there "
                     "(copy the state before changing it)")
        warnings.warn(notes[-1], RuntimeWarning, stacklevel=2)
        truth = child.truth
    nonfinite = int(np.size(preds) - np.count_nonzero(np.isfinite(preds)))
    if nonfinite:
        first = int(np.flatnonzero(~np.isfinite(preds).all(axis=1))[0])
        seq, step = scored_keys[first]
        notes.append(
            f"{nonfinite:,} prediction value(s) are NaN or inf, the first at seq "
            f"{key_text(seq)} step {key_text(step)}; they are scored as they are (clip tames inf, "
            "a NaN makes its output's metric NaN), as the official scorer would"
        )
        warnings.warn(notes[-1], RuntimeWarning, stacklevel=2)
    truth_note = nonfinite_truth_note(truth, spec, data)
    if truth_note:
        notes.append(truth_note)
    if spec.metric.name == "r2" and len(truth) == 1:  # NaN, as sklearn's, but not unsaid (r308)
        notes.append(f"{data}: one scored row: r2 is not defined below two (NaN, as sklearn's "
                     "r2_score gives it); score a file or --seqs with more scored rows")
        warnings.warn(notes[-1], RuntimeWarning, stacklevel=2)
    peak, rows_mb = result["sandbox"].get("peak_rss_mb"), result.get("rows_mb")
    if peak is not None and rows_mb is not None:
        # the scorer holds every row of its test set, as the child held this file's, and what
        # it keeps per scored row: the returned predictions, and a view of each row's labels
        kept, labels = result.get("kept_mb", 0.0), result.get("labels_mb", 0.0)
        result["sandbox"] |= {"rows_mb": rows_mb, "kept_mb": kept, "labels_mb": labels}
        result["sandbox"]["projected_peak_mb"] = (
            peak - rows_mb - kept + (rows_mb + kept + labels) * spec.limits.test_rows / n_rows)
    verdict = result["sandbox"].get("projected_peak_mb", peak)
    if verdict is not None and verdict > spec.limits.memory_gb * 1024:
        notes.append(
            f"peak memory projected on the test set's {spec.limits.test_rows:,} rows, "
            f"{verdict:,.0f} MiB, exceeds the competition's {spec.limits.memory_gb:g} GiB"
        )
    result["sandbox"]["memory_limit_gb"] = spec.limits.memory_gb
    here = "{}.{}".format(*sys.version_info[:2])  # the child runs this interpreter
    if spec.limits.python and spec.limits.python != here:
        notes.append(f"this replay ran Python {here}; the competition's scorer runs "
                     f"{spec.limits.python}: syntax or library behaviour one has and the other "
                     "lacks passes here and fails there")
    reused = int(result.get("reused") or 0)
    if reused:
        seq, step = scored_keys[int(result["first_reused"])]
        notes.append(
            f"predict() returned an object it had returned before on {reused:,} scored row(s), "
            f"the first at seq {key_text(seq)} step {key_text(step)}: the scorer keeps the "
            "object, so each of them is scored with the values last written into it, here as "
            "there (return a new array each row, e.g. buffer.copy(); an object or table that "
            "predict() only reads is scored as returned)")
        warnings.warn(notes[-1], RuntimeWarning, stacklevel=2)
    report = evaluate(spec, truth, preds)
    loop_s = max(float(result["loop_s"]), 1e-9)
    init_s, first_s = float(result["init_s"]), result.get("first_s")
    rows_per_s, projected = projected_time(init_s, loop_s, first_s, n_rows,
                                           spec.limits.test_rows)
    if projected > spec.limits.time_limit_s:
        notes.append(
            f"projected time {projected:,.0f} s exceeds the {spec.limits.time_limit_s:,.0f}"
            " s limit (measured on this machine's CPU)"
        )
    return ScoreResult(
        submission=str(submission),
        data=str(data),
        spec=spec.name,
        report=report,
        rows=n_rows,
        scored_rows=int(preds.shape[0]),
        sequences=sequences,
        init_s=init_s,
        loop_s=loop_s,
        rows_per_s=rows_per_s,
        us_per_row=1e6 / rows_per_s,
        projected_s=projected,
        limit_s=spec.limits.time_limit_s,
        projected_fraction=projected / spec.limits.time_limit_s,
        cpu=result["sandbox"].get("cpu"),
        sandbox=result["sandbox"],
        nonfinite=nonfinite,
        unusable=int(np.isnan(preds).sum()) if spec.metric.clip else nonfinite,
        warnings=notes,
        output_tail=child.output_tail,
        test_rows=spec.limits.test_rows,
        limits_unset=list(spec.limits_unset),
        first_s=float(first_s or 0.0),
        predictions=preds,
        file_sequences=file_sequences,
    )


def replay_rows(solution_dir: Path, values: np.ndarray, spec: CompetitionSpec, **options):
    """Run a prepared submission folder over float64 rows (id, step, need, features...) in
    the 1-CPU child, in the order given; returns the child's run (result, predictions).
    column_dtypes (Rows.column_dtypes) types them there as the scorer's DataFrame.values."""
    if spec.next_state and len(values) and values[-1, 2]:  # its truth would be the next row
        raise DataError(f"the last of the {len(values):,} rows to replay needs a prediction, "
                        "but the next-state protocol has no truth for it (no next row): replay "
                        "whole sequences, whose last row needs none")
    with owned_temp_dir("replay") as tmp:
        rows_path = Path(tmp) / "rows.npy"
        np.save(rows_path, np.ascontiguousarray(values, dtype=np.float64))
        return replay_file(solution_dir, rows_path, len(values), spec, **options)


def replay_file(solution_dir: Path, rows_path: Path, n_rows: int, spec: CompetitionSpec, *,
                cpu: int | None = None, limit_memory: bool = False,
                timeout_s: float | None = None, progress: bool = False,
                column_dtypes: list[str] | None = None):
    """replay_rows over rows already saved as a float64 .npy file."""
    memory = int(spec.limits.memory_gb * 2**30) if limit_memory else None
    return run_child(
        Path(solution_dir).resolve(),  # the child changes directory
        Path(rows_path),
        n_rows,
        spec.n_outputs,
        Path(rows_path).parent,
        cpu=cpu if cpu is not None else choose_cpu(),
        memory_limit_bytes=memory,
        timeout_s=timeout_s,
        progress=progress,
        column_dtypes=column_dtypes,
        next_state=spec.next_state,
    )


def projected_time(init_s: float, loop_s: float, first_s: float | None, rows: int,
                   test_rows: int) -> tuple[float, float]:
    """(rows per s, projected seconds on test_rows): start-up and the first row's predict()
    once (a model loaded lazily there, a JIT's first trace: scaled with the rows, 5 s once
    projected a 1-sequence replay to 7,500 s), the rate of the rows after it for the rest.
    first_s None (not timed): every row at the loop's mean rate."""
    if first_s is None or rows < 2:
        return rows / loop_s, init_s + test_rows * loop_s / max(rows, 1)
    rate = (rows - 1) / max(loop_s - first_s, 1e-9)
    return rate, init_s + first_s + (test_rows - 1) / rate


def first_sequences(ids: pl.Series, seqs: int) -> pl.Series:
    """The rows of the first `seqs` sequences in file order (what --seqs scores), as a mask."""
    if seqs < 1:
        raise DataError(f"--seqs must be >= 1, got {seqs}")
    return ids.is_in(ids.unique(maintain_order=True).head(seqs).implode())


class Rows(NamedTuple):
    """A data file's scorer input: float64 rows (id, step, need, features...), the truth of the
    rows that need a prediction, the sequence count, and the file's input column dtypes (the
    child types the rows from them as DataFrame.values does): the numpy dtype of each column's
    values, inputs first, then "object" when pandas reads one of them with an extension dtype
    (see pandas_dtypes)."""

    values: np.ndarray
    truth: np.ndarray
    sequences: int
    column_dtypes: list[str]
    file_sequences: int = 0  # the file's, of which --seqs replays the first `sequences`


def pandas_dtype(column: pl.Series) -> str:
    """The numpy dtype pandas reads a parquet column as: an integer column holding nulls
    becomes float64 (NaN), a bool one object (None); otherwise the column's own."""
    dtype = column.head(0).to_numpy().dtype
    if column.null_count() and dtype.kind in "iu":
        return "float64"
    if column.null_count() and dtype.kind == "b":
        return "object"
    return dtype.name


# numpy_type names in pandas' parquet metadata of plain numpy columns; any other (Int8,
# Float32, boolean, string, int64[pyarrow], datetime64[ns], object) is one pandas reads back as
# an extension dtype or as objects
PLAIN_NUMPY_TYPES = frozenset(
    ["bool", "float16", "float32", "float64"]
    + [f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64)])


def pandas_dtypes(frame: pl.DataFrame, columns: list[str], data: Path) -> list[str]:
    """The dtypes of `columns` (the scorer's DataFrame.values holds all of them) as pandas reads
    this file: each column's values' numpy dtype, then "object" when the pandas metadata gives
    one of them an extension dtype. pandas restores those (a nullable Int8 need flag, Float32
    features, pyarrow-backed columns), and `.values` of a frame holding one is an object array
    of Python ints and floats, however plain the other columns are; typed from the Parquet
    dtypes alone, the replay fed float64 rows that such a file's scorer never gives (r304).
    (A null of such an integer column is pd.NA there, float NaN here.) A categorical column
    comes back a category only where its values are strings or bools: pyarrow reads a numeric
    one back as plain numbers (r325: such a file was replayed as object rows)."""
    dtypes = [pandas_dtype(frame[c]) for c in columns]
    written = pandas_column_types(data)
    if any(written[c][0] not in PLAIN_NUMPY_TYPES
           or (written[c][1] == "categorical" and not frame[c].dtype.is_numeric())
           for c in columns if c in written):
        dtypes.append("object")  # taken into the child's common type like a column's
    return dtypes


FLOAT_EXACT = 2**53  # integers a float64 holds exactly


def exact_ids(frame: pl.DataFrame, spec: CompetitionSpec, data: Path) -> pl.DataFrame:
    """The replay's rows are float64: integer ids past 2**53 would merge with their
    neighbours. Such ids are renumbered 0, 1, ... in file order (an id is only a key to the
    runtime), with a warning."""
    ids = frame[spec.id_col]
    if not ids.dtype.is_integer() or ids.len() == 0:
        return frame
    if max(abs(int(ids.min())), abs(int(ids.max()))) < FLOAT_EXACT:
        return frame
    warnings.warn(f"{data}: sequence ids past 2**53 are not exact as float64 rows; the "
                  "replay numbers the sequences 0, 1, ... in file order instead (reports name "
                  "those numbers)", stacklevel=3)
    renumbered = (ids != ids.shift(1)).fill_null(True).cum_sum() - 1
    return frame.with_columns(renumbered.cast(ids.dtype).alias(spec.id_col))


def nonfinite_truth_note(truth: np.ndarray, spec: CompetitionSpec, data: Path) -> str | None:
    """What NaN/inf truth on scored rows does to the metric (None: there is none)."""
    bad = int(np.size(truth) - np.count_nonzero(np.isfinite(truth)))
    if not bad:
        return None
    truth_of = ("truth value(s) (the next row's features)" if spec.next_state
                else "target value(s)")
    return (f"{bad:,} {truth_of} of {data} are NaN or inf on rows that need a prediction: the "
            "metric of their output is NaN or inf (kit data check warns of them)")


def packed_for(submission: Path) -> str | None:
    """The name of the spec kit pack packed the submission for (its columns are fixed: no
    --spec changes them); None for a submission kit pack did not write."""
    from kit.export.pack import kit_manifest_of

    spec = (kit_manifest_of(submission) or {}).get("spec")
    name = spec.get("name") if isinstance(spec, dict) else None
    return name if isinstance(name, str) else None


def load_rows(data: Path, spec: CompetitionSpec, seqs: int | None,
              packed: str | None = None) -> Rows:
    """The rows to replay; `packed`: the spec a kit package was packed for, when it is one
    (another competition's file is then no matter of --spec). With `seqs`, only the rows of the
    first `seqs` sequences are read and checked: memory and time follow them, not the file
    (r312: --seqs 50 of a 10.7M-row file peaked at 2.8 GB reading and checking all of it);
    the file's columns and dtypes, a property of every row, are checked all the same."""
    schema = file_schema(data)
    refuse_index_columns(data, spec.columns)
    # the spec's columns, by name: others (a train file's group column for data.split, one
    # Polars cannot decode) are no input of the scorer's and are not read, and the rows it
    # feeds keep the spec's order whatever the file's
    columns = [c for c in spec.columns if c in schema]
    advice = (f"the package was packed for spec {packed!r}: give a --data file of that "
              "competition" if packed else PASS_SPEC)
    if seqs is None:
        frame, source = read_frame(data, columns or None), str(data)
    else:
        # the spec's columns as read (in its order): refused before a row is read
        check_schema(pl.Schema({c: schema[c] for c in columns}), spec, str(data),
                     other_file_advice=advice)
        frame, source, file_sequences = read_first_sequences(data, spec, columns, seqs)
    check_frame(frame, spec, source=source, other_file_advice=advice)
    if position_warning := misplaced_columns_warning(data, list(schema), spec):
        warnings.warn(position_warning, RuntimeWarning, stacklevel=2)
    labelled = all(t in frame.columns for t in spec.targets)
    if not spec.next_state and not labelled:
        raise DataError(
            f"{data}: no target columns {list(spec.targets)}; scoring needs a labelled file"
        )
    sequences = frame[spec.id_col].n_unique()
    if seqs is None:
        file_sequences = sequences
    frame = exact_ids(frame, spec, data)
    values = frame.select(pl.col(c).cast(pl.Float64) for c in spec.input_columns).to_numpy()
    values = np.ascontiguousarray(values, dtype=np.float64)
    need = values[:, 2] != 0
    if not need.any():
        within = f" in the first {seqs} sequence(s) (--seqs {seqs})" if seqs is not None else ""
        raise DataError(f"{data}: no row needs a prediction{within}; nothing to score")
    targets = None
    if labelled and spec.targets:
        targets = frame.select(pl.col(t).cast(pl.Float64) for t in spec.targets).to_numpy()
    truth = scored_truth(values[:, 0], need, values[:, 3:], targets, spec)
    # the scorer's DataFrame.values holds the target columns too: their dtypes take part in
    # the common type (listed after the inputs; the rows hold the inputs only)
    dtypes = pandas_dtypes(frame, spec.input_columns
                           + [c for c in frame.columns if c not in spec.input_columns], data)
    return Rows(values, truth, sequences, dtypes, file_sequences)


PREFIX_ROWS = 2**16  # the first read of the id column when looking for --seqs' rows


class FirstSequences(NamedTuple):
    """What --seqs reads of a file: the rows of its first sequences, the name their checks
    report under, and the file's sequence count (distinct ids)."""

    frame: pl.DataFrame
    source: str
    file_sequences: int


def read_first_sequences(data: Path, spec: CompetitionSpec, columns: list[str],
                         seqs: int) -> FirstSequences:
    """The `columns` of the rows of the first `seqs` sequences in file order. Parquet reads
    only the row groups that hold them (r312); the id column alone is read past them, as a
    stream, to count the file's sequences and to refuse a file whose first sequences come back
    later (their rows would be missing from the replay; the checks of the whole file refused
    such a file, and still do on the rows kept)."""
    if seqs < 1:
        raise DataError(f"--seqs must be >= 1, got {seqs}")
    scan = scan_parquet(data)
    prefix = first_sequence_ids(data, scan, spec.id_col, seqs)
    kept = prefix.unique().implode()
    ids = pl.col(spec.id_col)
    whole = collected(data, scan.select(ids.n_unique().alias("sequences"),
                                        ids.is_in(kept).sum().alias("kept"), pl.len()))
    file_sequences, kept_rows, total = whole.row(0)
    if kept_rows != prefix.drop_nulls().len():
        refuse_sequences_later(data, scan, spec, kept, prefix.len())
    frame = collected(data, scan.select(columns).head(prefix.len()))
    if prefix.len() == total:
        return FirstSequences(frame, str(data), file_sequences)
    source = (f"{data} (its first {seqs:,} sequence(s), rows 0 to {prefix.len() - 1:,} of "
              f"{total:,}: --seqs {seqs} reads and checks only those)")
    return FirstSequences(frame, source, file_sequences)


def first_sequence_ids(data: Path, scan: pl.LazyFrame, id_col: str, seqs: int) -> pl.Series:
    """The id column up to the first row of the (seqs + 1)-th distinct id in file order (the
    whole column when the file has no more), read in growing prefixes: a file larger than
    memory is read only as far as those sequences go."""
    take = PREFIX_ROWS
    while True:
        ids = collected(data, scan.select(id_col).head(take))[id_col]
        starts = ids.is_first_distinct().arg_true()
        if starts.len() > seqs:
            return ids.head(int(starts[seqs]))
        if ids.len() < take:
            return ids
        take *= 4


def refuse_sequences_later(data: Path, scan: pl.LazyFrame, spec: CompetitionSpec,
                           kept: pl.Series, length: int) -> None:
    """Refuse a file where one of the kept sequences has rows after its first `length` rows,
    naming the first of them."""
    # the first row each comes back at, one line a sequence (r318: one sequence's next five
    # rows were named five times)
    again = collected(data, scan.select(spec.id_col).with_row_index("row").slice(length)
                      .filter(pl.col(spec.id_col).is_in(kept))
                      .unique(spec.id_col, keep="first", maintain_order=True).head(5))
    rows = ", ".join(f"seq {key_text(i)} again at row {r:,}" for r, i in again.iter_rows())
    raise DataError(f"{data}: rows of the first sequences that --seqs reads come back later in "
                    f"the file ({rows}): sort the file by ({spec.id_col}, {spec.step_col}), as "
                    f"kit data check {data} asks")


def collected(data: Path, query: pl.LazyFrame) -> pl.DataFrame:
    """The query's result, streamed; a data page that does not decode is a DataError."""
    try:
        return query.collect(engine="streaming")
    except pl.exceptions.PolarsError as exc:
        raise unreadable_data(data, exc) from None


def misplaced_columns_warning(data: Path, columns: list[str], spec: CompetitionSpec) -> str:
    """What kit score, reading the spec's columns by name, does not see and the competition's
    scorer, reading each row by position, does: a spec column of the file that is not at its
    spec index, whether the spec's columns are reordered or another column (a `row_id`) comes
    before or among them (r304). Columns after all of the spec's shift nothing; pandas' index
    columns are no columns of the scorer's rows. "" when every one is in its place. Called on
    a file check_frame passed: it holds all of the spec's columns, or all but the targets."""
    index = set(pandas_index_columns(data))
    read = [c for c in columns if c not in index]  # the columns of pandas' DataFrame, in order
    place = {c: i for i, c in enumerate(spec.columns)}
    held = [c for c in read if c in place]
    if all(read[place[c]:place[c] + 1] == [c] for c in held):
        return ""
    if held != sorted(held, key=place.__getitem__):  # kit data check refuses the file
        what = (f"the spec's columns are in another order in the file "
                f"({listed_names(held, 6)})")
    else:
        what = (f"column(s) not in the spec come before or among the spec's columns in the "
                f"file ({listed_names(extra_columns_among(read, place), 6)}), so the spec's "
                "columns are not at their positions")
    # the first position whose column is not the spec's there (one exists: see above)
    first = next(i for i, (have, want) in enumerate(zip(read, spec.columns, strict=False))
                 if have != want)
    return (f"{data}: {what}: kit score reads them by name, the competition's scorer reads "
            f"each row by position and would take column {first} ({read[first]!r}) as the "
            f"spec's {spec.columns[first]!r}; write the spec's columns first and in its order, "
            "e.g. pl.read_parquet(PATH).select(SPEC_COLUMNS, pl.exclude(SPEC_COLUMNS))")


def _fmt(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.4f}"


def key_text(value) -> str:
    """An id or step of the float64 rows as the file wrote it (5.0 -> 5)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else str(value)


def seconds_text(value: float) -> str:
    """Whole seconds where a tenth would not show (3,600 s), tenths below 100 s (0.1 s of a
    10 s limit read as "0 s"). One unit for a time and its limit (kit pack printed "91.9 s of
    the 90.0 min limit", which reads as over it at a glance)."""
    return f"{value:,.0f} s" if value >= 100 else f"{value:.1f} s"
