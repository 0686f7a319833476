"""The `kit` command: one thin typer command per verb, no logic of its own.

Imports of the heavy parts happen inside each command so that `kit --help` stays instant.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import signal
import warnings
import zipfile
from pathlib import Path

import typer
from typer.core import TyperGroup

from kit.errors import KitError, ScorerRefusal, os_error_text
from kit.parity_defaults import DEFAULT_ATOL, DEFAULT_RTOL, DEFAULT_SEQS
from kit.workers import (
    SIGPIPE,
    STDOUT_CLOSED,
    TRAIN_WORKER_ENV,
    ended_text,
    stdout_closed,
    stdout_reader_gone,
    stop_writing_stdout,
)


class _KitGroup(TyperGroup):
    """Print a KitError (or an OSError: a path that cannot be written) as one line on stderr
    and exit non-zero, without a traceback. SIGTERM and SIGHUP end a command as an exception
    (exit 128 + the signal), so its temporary folders and staging are removed on the way out;
    their default action ended it on the spot. A --jobs training worker keeps the default:
    its parent says what is left."""

    def invoke(self, ctx):
        from kit.workers import ended_by_signals

        stopping = (contextlib.nullcontext() if os.environ.get(TRAIN_WORKER_ENV)
                    else ended_by_signals())
        if ctx.parent is None:  # `kit ...` (a group of it, `kit data`, invokes under it)
            _JSON.update(mode=False, printed=False)
        try:
            with stopping, warnings.catch_warnings():  # restores showwarning after
                warnings.showwarning = _kit_warnings_as_lines(warnings.showwarning)
                return super().invoke(ctx)
        except KitError as exc:
            typer.echo(f"error: {exc}", err=True)
            _json_failure(str(exc), exc.exit_code, getattr(exc, "where", None))
            raise typer.Exit(exc.exit_code) from None
        except BrokenPipeError as exc:
            if not stdout_reader_gone():  # another pipe (a file the command writes) broke
                typer.echo(f"error: {os_error_text(exc)}", err=True)
                _json_failure(os_error_text(exc), 2)
                raise typer.Exit(2) from None
            # `kit runs | head`: the reader has all it wanted (stop_writing_stdout: Python's
            # flush at exit would fail the same way); 141 = 128 + SIGPIPE. (A long command
            # stopped so says what is left and how to resume: train, sweep, ablate.)
            stop_writing_stdout()
            raise typer.Exit(STDOUT_CLOSED) from None
        except OSError as exc:  # an output path under a file, a full disk: say which path
            typer.echo(f"error: {os_error_text(exc)}", err=True)
            _json_failure(os_error_text(exc), 2)
            raise typer.Exit(2) from None


KIT_DIR = str(Path(__file__).resolve().parent)
# this invocation's --json, and whether it printed its JSON (reset by each top-level command)
_JSON = {"mode": False, "printed": False}


def _json_failure(text: str, code: int, where: dict | None = None) -> None:
    """With --json, a command that failed before printing its JSON prints one on stdout all
    the same: `{"ok": false, "error": ...}` (a CI step's `kit score --json > result.json` got an
    empty file, and jq failed on it: r298). The error's first line, the rest as `detail` (a
    submission's traceback), and where a submission's predict() failed (`where`: seq, step,
    row; SubmissionError.where)."""
    if not _JSON["mode"] or _JSON["printed"]:
        return
    first, _, rest = text.partition("\n")
    payload = {"ok": False, "error": first, "exit_code": code}
    payload.update(where or {})
    if rest.strip():
        payload["detail"] = rest.strip("\n")
    with contextlib.suppress(OSError):  # (stdout gone as well: the stderr line stays)
        _print_json(payload)


def _kit_warnings_as_lines(show):
    """kit's own warnings as `warning: MESSAGE` lines, as its errors are `error: ...` lines
    (Python's format adds the file, the line number and the source line: it reads like a
    crash); other libraries' warnings keep theirs (`show`)."""

    def show_warning(message, category, filename, lineno, file=None, line=None):
        if str(filename).startswith(KIT_DIR) and issubclass(category, (UserWarning,
                                                                         RuntimeWarning)):
            typer.echo(f"warning: {message}", err=True)
        else:
            show(message, category, filename, lineno, file, line)

    return show_warning


def _stopped_exit(signum: int) -> typer.Exit:
    """The exit of a command `ended_text` names: 128 + the signal (130 for Ctrl-C); after a
    closed stdout, stdout pointed at /dev/null first (Python's flush at exit would fail too)."""
    if signum == SIGPIPE:
        stop_writing_stdout()
    return typer.Exit(128 + signum)


def overrides_of(ctx: typer.Context) -> list[str]:
    """The extra arguments of a command that takes experiment overrides (KEY=VALUE). One that
    starts with '-' is a mistyped or misplaced option: TOML would read `--stop-afer-epochs=1`
    as a key, and the error would speak of config keys."""
    import difflib

    from kit.config import ConfigError

    # a mistyped option before the experiment lands in the experiment's argument (its value
    # then in the overrides: "override '1' is not KEY=VALUE" blamed the wrong word)
    given = [ctx.params.get(param.name) for param in ctx.command.params
             if param.param_type_name == "argument"]
    given = [v for v in given if isinstance(v, str)]
    for text in [*given, *ctx.args]:
        if text.startswith("-"):
            options = [opt for param in ctx.command.params for opt in param.opts
                       if opt.startswith("--")]
            close = difflib.get_close_matches(text.split("=", 1)[0], options, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"{text!r} is not an option of `kit {ctx.command.name}` ({hint}"
                              "see --help); overrides are KEY=VALUE, e.g. train.lr=3e-4")
    for text in given:  # an override first: the experiment's name was called a bad override
        if "=" in text and not text.startswith("exp=") and not Path(text).is_file():
            raise ConfigError(f"{text!r} stands where the experiment goes: name the experiment "
                              f"first, then the overrides (kit {ctx.command.name} EXP {text})")
    return list(ctx.args)


def _typer(help_text: str) -> typer.Typer:
    return typer.Typer(cls=_KitGroup, help=help_text, no_args_is_help=True,
                       pretty_exceptions_enable=False, add_completion=False)


app = _typer("kit: features, training, ensembles, ONNX packs and a local scorer for "
             "streaming sequence-prediction competitions.")
data_app = _typer("Generate, check and describe competition data files.")
spec_app = _typer("Competition specs (presets and your own TOML files).")
features_app = _typer("Feature ops and groups: list them, build them on a data file.")
app.add_typer(data_app, name="data")
app.add_typer(spec_app, name="spec")
ensemble_app = _typer("Greedy-weighted ensembles (Caruana selection with replacement).")
app.add_typer(features_app, name="features")
app.add_typer(ensemble_app, name="ensemble")

SpecOption = typer.Option("predictorium", "--spec", "-s",
                          help="Competition spec: a preset name or a TOML path.")


def _json_mode(value: bool) -> bool:
    """--json's callback: an error of the command is then printed as JSON too (_json_failure)."""
    _JSON["mode"] = value
    return value


JsonOption = typer.Option(False, "--json", callback=_json_mode,
                          help="Print the result as JSON (a failure as {\"ok\": false, "
                          "\"error\": ...}).")


def _print_json(payload: dict | str) -> None:
    from kit.json_safe import dumps

    # strict JSON (NaN/inf as null) for jq and other readers; str() for paths and the like
    typer.echo(payload if isinstance(payload, str) else dumps(payload, indent=2, default=str))
    _JSON["printed"] = True


def _print_version(value: bool) -> None:
    if value:
        from kit import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _options(_version: bool = typer.Option(False, "--version", callback=_print_version,
                                           is_eager=True, help="Print the kit version.")):
    pass


@app.command()
def version() -> None:
    """Print the kit version."""
    from kit import __version__

    typer.echo(__version__)


@app.command()
def init(folder: Path = typer.Argument(Path("."), help="The project folder (created if "
                                       "missing; default: this one).")) -> None:
    """Start a project: kit's preset experiments into FOLDER/experiments/, then what to run.

    A file already there is kept, never overwritten (listed as skipped)."""
    from kit.presets import init_project

    typer.echo(init_project(folder).format(folder))


@spec_app.command("list")
def spec_list() -> None:
    """List the competition specs kit can load by name (a broken file is listed with its
    problem, and the others still are)."""
    from kit.competition import available_specs, load_spec

    broken = 0
    specs = available_specs()
    # columns as wide as their longest entry: a user spec's path ran into its description
    names, sources = (max(map(len, column), default=0) for column in (specs, specs.values()))
    for name, source in specs.items():
        try:
            about = load_spec(name if source == "<builtin>" else source).description
        except KitError as exc:
            about, broken = f"BROKEN: {exc}", broken + 1
        typer.echo(f"{name:<{max(names, 16)}} {source:<{max(sources, 12)}} {about}")
    if broken:
        raise typer.Exit(2)


@spec_app.command("show")
def spec_show(name: str = typer.Argument("predictorium", help="Preset name or TOML path."),
              as_json: bool = JsonOption) -> None:
    """Print a spec fully resolved (column ranges expanded), as TOML a new spec can start from."""
    import tomli_w

    from kit.competition import builtin_spec_names, load_spec

    spec = load_spec(name).to_dict()
    if as_json:
        _print_json(spec)
        return
    # a preset's feature groups, synth data and checks go by its name: a renamed copy of
    # predictorium gets the generic groups (no spreads or imbalance)
    keep = (f" (keep name = \"{spec['name']}\" to change only [limits] or [metric]: the "
            "preset's feature groups go by its name)"
            if spec["name"] in builtin_spec_names() else "")
    # the limits the spec left to Predictorium's, as a comment (a key of the stored copy, it
    # read as one to write; a copy that keeps the values below has set them)
    unset = spec.pop("limits_unset", [])
    text = tomli_w.dumps(spec)
    if unset:
        text = text.replace("\n[limits]\n", f"\n# {', '.join(unset)}: Predictorium's values, "
                            "the spec sets none; set yours\n[limits]\n", 1)
    typer.echo(f"# kit spec show {name}: save as competitions/NEW.toml, set name = \"NEW\", edit, "
               f"then --spec NEW{keep}\n" + text)


@data_app.command("cache")
def data_cache(
    cache_dir: Path = typer.Option(Path("data/cache"), "--dir", help="The cache folder "
                                   "(an experiment's data.cache_dir)."),
    clear: bool = typer.Option(False, "--clear", help="Remove every entry and temp folder "
                               "(they are rebuilt when next needed)."),
    clear_stale: bool = typer.Option(False, "--clear-stale", help="Remove only what no build "
                                     "reads again: an older kit's entries (a newer kit's "
                                     "stay), orphaned ones (their data file is gone or holds "
                                     "other bytes) and killed builds' temp folders."),
    as_json: bool = JsonOption,
) -> None:
    """The feature-array cache's entries, their size and data file, and its temp folders;
    --clear removes them all, --clear-stale what no build reads again (an older kit's
    entries, orphaned ones, killed builds' temp folders; a newer kit's sharing the cache are
    live for it: kept). Entries are never removed on their own: each feature set, spec and
    data file tried keeps one."""
    from kit import __version__
    from kit.data.cache import cache_entries, clear_cache, clear_dead_temp, temp_folders
    from kit.data.cache import clear_stale as remove_stale
    from kit.features import FEATURE_FORMAT

    def mb(items: list[dict]) -> str:
        return f"{sum(e['bytes'] for e in items) / 1e6:,.1f} MB"

    def plural(n: int, one: str, many: str) -> str:
        return f"{n} {one if n == 1 else many}"

    if cache_dir.exists() and not cache_dir.is_dir():
        raise KitError(f"--dir {cache_dir} is a file, not the cache folder (an experiment's "
                       "data.cache_dir; data/cache by default)")
    if clear and clear_stale:
        raise KitError("--clear removes every entry and --clear-stale only the stale ones: "
                       "pass one of them")
    # what kit.features puts in each feature key now: an entry with other values is dead
    live = {"kind": "features", "kit": __version__, "format": FEATURE_FORMAT}
    entries, temps = cache_entries(cache_dir, live), temp_folders(cache_dir)
    total = sum(e["bytes"] for e in entries)
    stale = [e for e in entries if e["stale"]]
    stale_bytes = sum(e["bytes"] for e in stale)
    newer = [e for e in entries if e["another_kit"]]  # live for a newer kit sharing the cache
    # (r315) entries of bytes no file holds now, and those that could not be told so
    orphaned = [e for e in entries if e["orphaned"] and not e["stale"]]
    unverified = [e for e in entries if e["unverified"]]
    if clear_stale:
        removed, removed_temps = remove_stale(cache_dir, live), clear_dead_temp(cache_dir)
        if as_json:
            _print_json({"dir": str(cache_dir), "removed": len(removed),
                         "bytes": sum(e["bytes"] for e in removed),
                         "entries": [e["name"] for e in removed],
                         "temp_removed": [t["name"] for t in removed_temps],
                         "temp_bytes": sum(t["bytes"] for t in removed_temps)})
            return
        dropped = [e for e in removed if e["orphaned"] and not e["stale"]]
        doubtful = [e for e in unverified if not e["stale"]]  # kept: maybe live
        kept = len(entries) - len(removed)
        typer.echo(f"removed {plural(len(removed), 'stale entry', 'stale entries')} from "
                   f"{cache_dir} ({mb(removed)}"
                   + (f", {len(dropped)} of them orphaned" if dropped else "") + "); "
                   f"{kept} live one(s) kept" + (f", {len(newer)} of them a newer kit's"
                                                 if newer else "")
                   + (f", {len(doubtful)} unverified" if doubtful else ""))
        if temps:
            typer.echo(f"removed {plural(len(removed_temps), 'temp folder', 'temp folders')} "
                       f"of killed builds ({mb(removed_temps)}); "
                       f"{len(temps) - len(removed_temps)} of running builds or another "
                       "host's kept")
        return
    if clear:
        removed = clear_cache(cache_dir)
        if as_json:
            _print_json({"dir": str(cache_dir), "removed": removed,
                         "bytes": total + sum(t["bytes"] for t in temps)})
            return
        typer.echo(f"removed {removed} entr{'y' if removed == 1 else 'ies'} and temp folders "
                   f"from {cache_dir} ({mb(entries + temps)})")
        return
    if as_json:
        _print_json({"dir": str(cache_dir), "bytes": total, "stale_bytes": stale_bytes,
                     "orphaned_bytes": sum(e["bytes"] for e in orphaned),
                     "temp_bytes": sum(t["bytes"] for t in temps),
                     "entries": entries, "temp": temps})
        return
    for e in entries:
        typer.echo(f"{e['bytes'] / 1e6:>10,.1f} MB  {e['created']:<24}  {e['name']}  "
                   f"{e['source'] or ''}" + "".join(
                       f"  ({e[k]})" for k in ("orphaned", "unverified", "stale", "another_kit")
                       if e[k]))
    for t in temps:  # builds in progress, or killed ones (r315: they were not listed)
        who = (f"process {t['pid']}, {t['writer']}" if t["pid"] is not None
               else "an unknown process")
        typer.echo(f"{t['bytes'] / 1e6:>10,.1f} MB  {'temp folder':<24}  {t['name']}  "
                   f"(build of {who}{', removable' if t['removable'] else ''})")
    typer.echo(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} in {cache_dir}, "
               f"{total / 1e6:,.1f} MB (kit data cache --clear removes them)")
    dead = [t for t in temps if t["removable"]]
    if temps:
        kept = len(temps) - len(dead)
        typer.echo(f"{plural(len(temps), 'temp folder', 'temp folders')}, {mb(temps)}: "
                   f"{len(dead)} of killed builds ({mb(dead)}"
                   + ("; kit data cache --clear-stale removes them)" if dead else ")")
                   + (f", {kept} of running builds or another host's" if kept else ""))
    if orphaned:  # its data file overwritten or deleted: no build finds these bytes again
        typer.echo(f"{len(orphaned)} of them orphaned, {mb(orphaned)}: their data file is gone "
                   "or holds other bytes now, so only those exact bytes coming back would read "
                   "them again; kit data cache --clear-stale removes them")
    if unverified:
        typer.echo(f"{len(unverified)} of them unverified: whether a file still holds their "
                   "data's bytes cannot be told here without hashing it (each line says why): "
                   "kept, as live ones are")
    if stale:  # an older kit's entries: never read again, kept until removed
        typer.echo(f"{len(stale)} of them stale, {stale_bytes / 1e6:,.1f} MB: built by an "
                   "older kit (an older feature format or version), never read again; kit data "
                   "cache --clear-stale removes " + ("them too" if orphaned or dead else
                                                     "only them"))
    if newer:  # data.cache_dir shared with a newer checkout: its entries are not this kit's
        typer.echo(f"{len(newer)} of them built by a newer kit that shares this cache (a newer "
                   "feature format or version): not read by this kit, live for that one; "
                   "--clear-stale keeps them")
    if not cache_dir.exists():  # a mistyped --dir is not an empty cache
        typer.echo(f"note: {cache_dir} does not exist (the cache lives in an experiment's "
                   "data.cache_dir, data/cache by default)", err=True)


@data_app.command("check")
def data_check(
    file: Path = typer.Argument(..., help="Parquet file to check."),
    spec: str = SpecOption,
    as_json: bool = JsonOption,
    allow_extra: bool = typer.Option(False, "--allow-extra", help="Columns the spec does not "
                                     "name are a warning (a train file's group column), and "
                                     "the spec's columns keep their order among themselves."),
) -> None:
    """Check a parquet file against the competition contract; exit 2 naming each problem."""
    from kit.competition import load_spec
    from kit.data.contract import ContractError, check_file

    try:
        report = check_file(file, load_spec(spec), extra_ok=allow_extra)
    except KitError as exc:
        if as_json:  # the failing case is where a script needs the list (and a JSON object)
            problems = exc.problems if isinstance(exc, ContractError) else [str(exc)]
            _print_json({"ok": False, "path": getattr(exc, "source", str(file)),
                         "problems": problems})
        raise
    if as_json:
        _print_json({"ok": True, **report.to_dict()})
        return
    # warnings on stderr, as every command's (the report on stdout is what a script reads)
    typer.echo(dataclasses.replace(report, warnings=[]).format())
    for text in report.warnings:
        typer.echo(f"warning: {text}", err=True)


@data_app.command("synth")
def data_synth(
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: "
                                    "data/synth, data/synth-NAME for another spec)."),
    spec: str = SpecOption,
    train_seqs: int | None = typer.Option(None, help="Train sequences (default: demo size)."),
    valid_seqs: int | None = typer.Option(None, help="Valid sequences (default: demo size)."),
    seed: int = typer.Option(0, help="Random seed; the output is deterministic per seed."),
    full: bool = typer.Option(False, "--full", help="Predictorium's real split sizes (10,721 "
                              "train and 1,444 valid sequences), whatever the spec."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Generate the built-in synthetic competition: train, valid and the oracle for valid."""
    from kit.competition import load_spec
    from kit.data.synth import synth_dir, synthesize

    competition = load_spec(spec)
    result = synthesize(competition, out or synth_dir(competition.name), train_seqs=train_seqs,
                        valid_seqs=valid_seqs, seed=seed, full=full, progress=not quiet)
    typer.echo(f"wrote {result.train} ({result.train_rows:,} rows), {result.valid} "
               f"({result.valid_rows:,} rows), {result.oracle} in {result.seconds:.1f}s")


@data_app.command("stats")
def data_stats(
    file: Path = typer.Argument(..., help="Parquet file (usually the valid set)."),
    spec: str = SpecOption,
    oracle: Path | None = typer.Option(None, help="Oracle predictions for FILE."),
    reference: Path | None = typer.Option(None, help="File to compare target scale with "
                                                     "(e.g. train.parquet)."),
    as_json: bool = JsonOption,
) -> None:
    """Describe a data file: feature ranges and autocorrelation, target tails, signal."""
    from kit.competition import load_spec
    from kit.data.stats import dataset_stats, format_stats

    stats = dataset_stats(file, load_spec(spec), oracle=oracle, reference=reference)
    _print_json(stats) if as_json else typer.echo(format_stats(stats))


@app.command()
def score(
    submission: Path = typer.Argument(..., help="Submission folder or .zip with solution.py."),
    data: Path = typer.Option(..., "--data", "-d", help="Labelled parquet file to score on."),
    spec: str | None = typer.Option(None, "--spec", "-s", help="Competition spec (default: "
                                    "the pack's manifest, else predictorium)."),
    seqs: int | None = typer.Option(None, help="Score only the first N sequences."),
    timeout: float | None = typer.Option(None, help="Kill the submission after this many s."),
    as_json: bool = JsonOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Replay the competition's scorer on a submission, in a 1-CPU sandboxed process."""
    from kit.export.pack import manifest_of, submission_spec
    from kit.scoring import score_submission

    with said_as_they_come() as said:  # a changed package is said before its replay
        resolved = submission_spec(submission, spec)  # (a spec edited since the pack: said)
        # a missing submission's error comes alone (score_submission names it), as does that
        # of a file that is no package at all (a truncated zip, a solution.py given for its
        # folder)
        package = submission.is_dir() or zipfile.is_zipfile(submission)
        if spec is None and package and not isinstance(
                (manifest_of(submission) or {}).get("spec"), dict):  # (a dict, or None)
            typer.echo(f"note: {submission} has no manifest.json of kit pack's: scoring with "
                       f"the default spec {resolved.name!r} (pass --spec for another "
                       "competition)", err=True)
        result = score_submission(submission, data, resolved, seqs=seqs,
                                  progress=not (quiet or as_json), timeout_s=timeout)
    if as_json:
        _print_json(result.to_dict())
    else:  # the warnings not said during the replay go to stderr too, as every command's
        typer.echo(result.format([*said, *result.warnings]))
        for text in result.warnings:
            if text not in said:
                typer.echo(f"warning: {text}", err=True)
    if result.fails:  # a pipeline must not upload what the official scorer would reject
        raise ScorerRefusal(f"the official scorer would not accept this run: "
                            f"{'; '.join(result.fails)}")


@contextlib.contextmanager
def said_as_they_come():
    """Print each warning once, as a line on stderr, when it is raised (not with its source,
    and not after a minutes-long replay it explains); yields the messages said."""
    said: dict[str, None] = {}

    def show(message, category, *args, **kwargs):
        text = str(message)
        if not issubclass(category, DeprecationWarning) and text not in said:
            said[text] = None
            typer.echo(f"warning: {text}", err=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield said


@features_app.command("list")
def features_list(spec: str = SpecOption) -> None:
    """The available feature ops and the spec's predefined groups."""
    from kit.competition import load_spec
    from kit.features.ops import OPS, example_usage
    from kit.features.sets import FeatureConfigError, available_groups, build_feature_set

    loaded = load_spec(spec)  # first: a bad --spec prints nothing before its error
    typer.echo("ops (an experiment's [features] ops = [...] entry each, and the names of the "
               "outputs it makes, which later ops read as inputs; [key]: optional):")
    for name, cls in OPS.items():
        typer.echo(f"  {name:<14} {cls.summary}")
        typer.echo(f"  {'':<14} {example_usage(name)}")
    typer.echo('column patterns: "p0..p5" is p0 to p5 (also "p0..5"), "@features" every '
               "feature column of the spec; an EWM asked for by span is named by its alpha, "
               "2 / (span + 1), to 4 significant digits")
    typer.echo(f"groups for {loaded.name}:")
    for name, group in available_groups(loaded).items():
        try:
            n = len(build_feature_set(loaded, [name]).outputs)
            count = f"{n:>4} feature{'s' if n != 1 else ''}"
        except FeatureConfigError as exc:  # a generic group this spec cannot hold: the others
            # are listed all the same, and explicit ops with other settings can replace it
            typer.echo(f"  {name:<14} not usable with this spec: {exc}")
            continue
        typer.echo(f"  {name:<14} {count}  {group['description']}")


@features_app.command("build")
def features_build(
    exp: str | None = typer.Argument(None, help="Experiment: exp=NAME, NAME or a TOML path."),
    groups: str | None = typer.Option(None, help="Comma-separated groups (with an exp: in "
                                      "place of its \\[features], on its spec and data)."),
    data: Path | None = typer.Option(None, help="Data file (default: the exp's train file, "
                                     "else the spec's synthetic one, data/synth[-NAME])."),
    spec: str | None = typer.Option(None, "--spec", "-s", help="Competition spec for --groups "
                                    "(default predictorium; an experiment names its own)."),
) -> None:
    """Build a feature set on a data file and print its features with stats and build time."""
    from kit.config import load_experiment, resolve
    from kit.data.synth import synth_dir
    from kit.features import build_features, feature_set_from_config, feature_table

    if exp is None and groups is None:
        raise KitError("kit features build needs an experiment (exp=NAME) or --groups a,b,c")
    # checked as training checks it: a typo such as `grups` must not preview the default set
    config = resolve(load_experiment(exp)) if exp else {
        "spec": "predictorium" if spec is None else spec, "data": {}}
    name = exp.removeprefix("exp=") if exp else None  # (as the user knows it, in messages)
    if exp and spec is not None and spec != config.get("spec", "predictorium"):
        raise KitError(f"--spec {spec!r}: experiment {name!r} names its own spec "
                       f"({config.get('spec', 'predictorium')!r}); drop --spec or use --groups")
    if groups is not None:
        ops = config.get("features", {}).get("ops") if exp else None
        if ops:  # said, or the preview looks like the experiment's set and is not
            typer.echo(f"note: --groups replaces experiment {name!r}'s [features]: its "
                       f"{len(ops)} explicit op(s) are left out", err=True)
        config["features"] = {"groups": [g.strip() for g in groups.split(",") if g.strip()],
                              "ops": []}
    feature_set = feature_set_from_config(config)
    default = synth_dir(feature_set.spec.name) / "train.parquet"  # where synth --spec writes
    path = data or Path(config.get("data", {}).get("train", default))
    if data is None and path == default and not path.exists():  # the synthetic default only
        raise KitError(f"{path}: no such file (the default for the synthetic data of spec "
                       f"{feature_set.spec.name!r}); give a file with --data "
                       f"FILE (kit data synth --spec {feature_set.spec.name} writes it for a "
                       "spec it can generate)")
    frame, seconds = build_features(path, feature_set)
    typer.echo(feature_table(frame, feature_set.outputs))
    typer.echo(f"{len(feature_set.outputs)} features over {frame.height:,} rows of {path} "
               f"built in {seconds:.2f}s (set {feature_set.digest()})")


def parse_seeds(value) -> list[int]:
    """`seeds=[42,43]`, `seeds=42,43` or `seeds=42` -> [42, 43] (ranges: check_seeds)."""
    from kit.config import ConfigError

    items = value if isinstance(value, list) else str(value).split(",")
    seeds = []
    for item in items:
        text = item.strip() if isinstance(item, str) else item
        if isinstance(text, str) and re.fullmatch(r"[+-]?\d+", text):  # -1: check_seeds says why
            text = int(text)
        if not isinstance(text, int) or isinstance(text, bool):
            raise ConfigError(f"seeds={value!r}: each seed must be a whole number, e.g. "
                              "seeds=[42,43]")
        seeds.append(text)
    if not seeds:  # seeds=[] would otherwise train the config's seed without a word
        raise ConfigError(f"seeds={value!r}: at least one seed, e.g. seeds=[42,43]")
    return seeds


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    exp: str = typer.Argument(..., help="Experiment: exp=NAME, NAME or a TOML path; then "
                                        "overrides such as train.lr=3e-4 seed=43 seeds=[1,2]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the newest unfinished run "
                                "of this experiment from last.pt; with seeds= or --folds, the "
                                "newest unfinished group they started (repeat the command)."),
    run_dir: Path | None = typer.Option(None, help="Run directory (default: runs/EXP/ID)."),
    stop_after_epochs: int = typer.Option(0, help="Train at most N epochs now (resume later)."),
    folds: int = typer.Option(0, help="K-fold on the train file, by sequence (by whole group "
                                      "with data.split = \"group\"): one run per fold plus "
                                      "their out-of-fold predictions."),
    jobs: int = typer.Option(1, help="Train this many seeds at once, each in its own process "
                                     "(the cores shared between them)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train an experiment: one run per seed (or per fold), each in its own run directory."""
    from kit.config import ConfigError, parse_override
    from kit.reports import validation_set_of
    from kit.train.groups import NothingStarted, nothing_kept_text
    from kit.train.recipe import SeedsFailed, train_experiment
    from kit.train.runs import outputs_text
    from kit.workers import EndedBySignal, ended_by_signals, stop_when_orphaned

    if os.environ.get(TRAIN_WORKER_ENV):  # a --jobs worker: it ends with its command
        stop_when_orphaned()

    overrides, seeds, seed_given = [], None, False
    for text in overrides_of(ctx):
        path, value = parse_override(text)
        if path == ["seeds"]:
            seeds = parse_seeds(value)
        else:
            overrides.append(text)
            seed_given = seed_given or path == ["seed"]
    if seeds is not None and seed_given:  # seeds= replaces seed: one of them was a mistake
        raise ConfigError("seed= and seeds= together: seeds= trains one run per seed and "
                          "replaces seed; give one of them")

    def number(value) -> str:  # a run that diverged at once has no score
        return "-" if value is None else f"{value:.4f}"

    def print_results(results: list[dict]) -> None:
        for result in results:
            print_result(result)

    def print_result(result: dict) -> None:
        per = outputs_text(result["per_target"], number)  # many outputs: a summary
        # the rows the score is on, as kit runs labels them: a data.seq_len cut or
        # train.max_valid_seqs scored another set than kit score's, said nowhere here (r313)
        label = validation_set_of(Path(result["run_dir"]))["validated"]
        if result.get("kind") == "oof":
            of = f" of {label.split(' folds of ', 1)[1]}" if label and " folds of " in label else ""
            typer.echo(f"{result['run_dir']}: out-of-fold score {number(result['score'])} "
                       f"({per}) over {result['folds']} folds{of}")
            return
        state = "finished" if result["finished"] else "paused (--resume to continue)"
        if result.get("diverged"):
            state = f"stopped early: training diverged ({result['diverged']})"
        on = f" on {label}" if label else ""
        typer.echo(f"{result['run_dir']}: score {number(result['score'])} ({per}){on}, best "
                   f"epoch {result['best_epoch']}, {result['params']:,} params, {state}")

    # a worker of a --jobs group is stopped by its parent, which says what is left
    stopping = contextlib.nullcontext() if os.environ.get(TRAIN_WORKER_ENV) else (
        ended_by_signals())
    try:
        with stopping:
            results = train_experiment(exp, overrides, seeds=seeds, resume=resume,
                                       run_dir=run_dir, stop_after_epochs=stop_after_epochs,
                                       folds=folds, progress=not quiet, jobs=jobs)
    except (KeyboardInterrupt, EndedBySignal, BrokenPipeError) as stop:  # Ctrl-C, SIGTERM/
        # SIGHUP of --jobs, stdout's reader gone (`| head -1`: stopped as by an interrupt)
        if isinstance(stop, BrokenPipeError) and not stdout_closed(stop):
            raise  # another pipe's: an error
        signum = (signal.SIGINT if isinstance(stop, KeyboardInterrupt) else
                  SIGPIPE if isinstance(stop, BrokenPipeError) else stop.signum)
        ended = ended_text(signum)
        if isinstance(stop, NothingStarted) or getattr(stop, "nothing_started", False):
            typer.echo(f"{ended} {nothing_kept_text(stop)}", err=True)  # (r312: where it was)
        elif not os.environ.get(TRAIN_WORKER_ENV):
            # the same command with --resume: seeds=, --folds and --jobs resume as a group; a
            # single run is named (the newest unfinished run may be another's by then)
            stopped = run_dir or (getattr(stop, "run_dir", None)
                                  if seeds is None and not folds else None)
            again = ["kit", "train", exp, *ctx.args, *(["--folds", str(folds)] if folds else []),
                     *(["--jobs", str(jobs)] if jobs > 1 else []),
                     *(["--run-dir", str(stopped)] if stopped else []), "--resume"]
            typer.echo(f"{ended}: continue with `{shlex.join(again)}` (from the last "
                       "finished epoch, or from the start if none had finished)", err=True)
        raise _stopped_exit(signum) from None
    except SeedsFailed as failed:  # the seeds that trained are shown before the error
        print_results(failed.results)
        raise

    print_results(results)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sweep(
    ctx: typer.Context,
    exp: str = typer.Argument(..., help="Experiment with a \\[sweep] table; then overrides."),
    trials: int | None = typer.Option(None, help="Finished trials wanted in the study "
                                      "(default: sweep.trials, else 20)."),
    storage: str | None = typer.Option(None, help="Optuna storage URL: sqlite:///F.db, "
                                       "postgresql://user:pw@host/db, journal:PATH "
                                       "(default: $KIT_SWEEP_STORAGE, else sqlite under "
                                       "runs/EXP/)."),
    study: str | None = typer.Option(None, help="Study name (default: the experiment's)."),
    workers: int | None = typer.Option(None, help="Worker processes on this machine "
                                       "(default 1)."),
    timeout: float | None = typer.Option(None, help="Stop starting trials after S seconds."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where trial runs are written."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    no_summary: bool = typer.Option(False, "--no-summary", hidden=True),
) -> None:
    """Optuna study over the search space in an experiment's sweep table; each trial is a run.
    Interrupt with Ctrl-C and run the same command again to resume."""
    from kit.config import ConfigError, parse_override
    from kit.sweep import CHILD_ENV, format_summary
    from kit.sweep import sweep as run_sweep
    from kit.workers import EndedBySignal, stop_when_orphaned

    if os.environ.get(CHILD_ENV):  # a --workers worker: it ends with its command
        stop_when_orphaned()

    overrides, options = [], {"trials": trials, "workers": workers}
    given = {k: f"--{k} {v}" for k, v in options.items() if v is not None}  # as typed
    for text in overrides_of(ctx):  # `just sweep exp=NAME trials=50` reads like train's recipe
        path, value = parse_override(text)
        if len(path) == 1 and path[0] in options:
            if not isinstance(value, int) or isinstance(value, bool):  # True is an int too
                raise ConfigError(f"{text!r}: {path[0]}= takes a whole number, as "
                                  f"--{path[0]} does")
            if path[0] in given:  # one would win without a word
                raise ConfigError(f"{text!r} and {given[path[0]]}: give one")
            options[path[0]], given[path[0]] = value, repr(text)
        else:
            overrides.append(text)
    if study is not None and not study.strip():  # "" ran the experiment's study
        raise ConfigError(f"--study {study!r}: a name (leave the option out for the "
                          "experiment's)")
    try:
        summary = run_sweep(exp, overrides, trials=options["trials"], storage=storage,
                            study=study, timeout=timeout,
                            workers=1 if options["workers"] is None else options["workers"],
                            progress=not quiet,
                            runs_dir=runs_dir, summary=not no_summary)
    except (KeyboardInterrupt, EndedBySignal) as stop:  # Ctrl-C, SIGTERM/SIGHUP, stdout's
        signum = getattr(stop, "signum", signal.SIGINT)  # reader gone (SweepStopped)
        typer.echo(f"{ended_text(signum)}: finished trials are kept in the study; run the same "
                   "command again to resume it", err=True)
        raise _stopped_exit(signum) from None
    if not no_summary:
        typer.echo(format_summary(summary))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ablate(
    ctx: typer.Context,
    exp: str = typer.Argument(..., help="Experiment; then overrides."),
    groups: str = typer.Option(..., help="Comma-separated feature groups, in ladder order."),
    seeds: str | None = typer.Option(None, help="Comma-separated seeds (default: the exp's)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where the runs are written."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the interrupted "
                                       "ablation saved in this runs/EXP/ablate-*.json (the "
                                       "same settings): its finished runs are kept."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Feature-group ablation: the cumulative ladder and leave-one-group-out variants."""
    from kit.ablate import AblationInterrupted, format_ablation, resume_command
    from kit.ablate import ablate as run_ablation

    names = [g.strip() for g in groups.split(",") if g.strip()]
    try:  # "" is no seed list (the experiment's seeds trained without a word)
        seed_list = [int(s) for s in seeds.split(",")] if seeds is not None else None
    except ValueError:
        raise KitError(f"--seeds {seeds!r}: comma-separated integers") from None
    try:
        summary = run_ablation(exp, names, seed_list, overrides_of(ctx), progress=not quiet,
                               runs_dir=runs_dir, resume=resume)
    except AblationInterrupted as stop:
        again = resume_command(exp, ctx.args, groups, seeds, stop.file, quiet)
        typer.echo(f"{ended_text(stop.signum)}: {stop.finished} of {stop.planned} runs finished, "
                   f"kept in {stop.file}; continue with `{shlex.join(again)}`", err=True)
        raise _stopped_exit(stop.signum) from None
    typer.echo(format_ablation(summary))
    if any(v.get("errors") for v in summary["variants"]):
        raise typer.Exit(1)  # the table holds the rest; a script still learns runs failed


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def params(
    ctx: typer.Context,
    exp: str = typer.Argument(..., help="Experiment: exp=NAME, NAME or a TOML path; then "
                              "overrides like model.hidden=64."),
) -> None:
    """Print the parameter count of an experiment's model."""
    from kit.competition import load_spec
    from kit.features import feature_set_from_config
    from kit.models import build_model, count_params, solve_width
    from kit.train.recipe import experiment_config

    config = experiment_config(exp, overrides_of(ctx))
    n_in = len(feature_set_from_config(config).outputs)
    n_out = load_spec(config["spec"]).n_outputs
    model_config = solve_width(config["model"], n_in, n_out)
    model = build_model(model_config, n_in, n_out)
    typer.echo(f"{config['name']}: {count_params(model):,} parameters "
               f"({model_config}, {n_in} inputs, {n_out} outputs)")


@app.command()
def runs(
    experiment: str | None = typer.Option(None, "--experiment", "-e", help="Only this one "
                                          "(exp=NAME, NAME or its TOML path)."),
    sort: str = typer.Option("score", help="Column to sort by (score, wall_s, t0, ...)."),
    asc: bool = typer.Option(False, "--asc", help="Ascending order."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where the runs live."),
    as_json: bool = JsonOption,
) -> None:
    """List training runs as a table: scores per target, oracle fraction, wall time."""
    from kit.reports import format_runs, list_runs, runs_to_json, sort_runs

    if runs_dir.exists() and not runs_dir.is_dir():
        raise KitError(f"--runs-dir {runs_dir} is a file, not a folder of runs")
    found = sort_runs(list_runs(runs_dir, experiment=experiment_name(experiment)), sort,
                      descending=not asc)
    if as_json:
        _print_json(runs_to_json(found))
    else:
        typer.echo(format_runs(found, sort=sort, descending=not asc))
    if not runs_dir.is_dir():  # a mistyped --runs-dir is not an empty one (stderr: --json
        # stays the JSON it was)
        typer.echo(f"note: {runs_dir} does not exist (kit train writes its runs under runs/, "
                   "or where --run-dir says)", err=True)


def experiment_name(given: str | None) -> str | None:
    """The name of the experiment `-e` names as the other commands take it: exp=NAME, NAME, or
    a TOML path (its name: the file's, or its `name`). A bare name needs no file: the runs of
    an experiment since deleted are still listed."""
    from kit.config import load_experiment

    if given is None:
        return None
    name = given.removeprefix("exp=")
    if name.endswith(".toml"):  # (load_experiment reads only such a name as a path)
        return load_experiment(name)["name"]
    return name


@app.command()
def report(
    run: Path = typer.Argument(..., help="A run directory (runs/EXP/ID) or an ensemble TOML."),
    out: Path | None = typer.Option(
        None, help="Output folder (default: RUN/report; for an ensemble FILE.toml, FILE/)."),
) -> None:
    """Plot a run's curves and predictions (or an ensemble's selection trajectory and weights)
    and write a short markdown summary."""
    from kit.reports import write_ensemble_report, write_report

    written = write_ensemble_report(run, out) if run.suffix == ".toml" else write_report(run, out)
    typer.echo(f"wrote {written}")


@ensemble_app.command("select")
def ensemble_select(
    runs: list[Path] = typer.Argument(..., help="Run directories, -oof groups, or runs/EXP "
                                      "folders (their finished runs and -oof groups; kit "
                                      "ablate variants left out, said)."),
    iters: int = typer.Option(50, help="Greedy iterations (picks, with replacement)."),
    per_target: bool = typer.Option(False, "--per-target", help="Select weights per target."),
    init_best: int = typer.Option(0, help="Start from the best K candidates, once each."),
    out: Path | None = typer.Option(None, help="Ensemble TOML to write "
                                    "(default: runs/ensembles/ensemble-<time>.toml, the "
                                    "project's when run inside its runs/)."),
    postprocess: bool = typer.Option(False, "--postprocess", help="Also tune per-target "
                                     "smoothing and scaling of the blend on the same rows."),
) -> None:
    """Select a greedy-weighted ensemble on the runs' validation (or out-of-fold) predictions."""
    from kit.ensemble import select_ensemble

    doc, path, table = select_ensemble(runs, iters=iters, per_target=per_target,
                                       init_best=init_best, out=out, postprocess=postprocess)
    typer.echo(table)
    typer.echo(f"wrote {path}")


@app.command()
def pack(
    run: Path | None = typer.Argument(None, help="A run directory (runs/EXP/ID) or its best.pt."),
    ensemble: Path | None = typer.Option(None, "--ensemble", "-e",
                                         help="An ensemble TOML (kit ensemble select)."),
    name: str | None = typer.Option(None, help="Submission name (default: EXP-ID or the "
                                    "ensemble file's name)."),
    out: Path | None = typer.Option(None, help="Where submissions are written (default: "
                                    "submissions/, beside runs/ when run inside it)."),
    force: bool = typer.Option(False, "--force", help="Pack even when the projected test "
                               "time is over 80% of the limit, or an ensemble's weights do "
                               "not sum to 1."),
    no_stack: bool = typer.Option(False, "--no-stack", help="Run same-shape GRU members one "
                                  "by one instead of stacked."),
) -> None:
    """Freeze a run or an ensemble into one stateful ONNX step graph: submissions/NAME/ and
    NAME.zip, with the projected test time against the limit."""
    from kit.export.pack import pack_ensemble, pack_run, unfinished_note

    if (run is None) == (ensemble is None):
        raise KitError("kit pack takes a RUN or --ensemble FILE (one of them)")
    chosen = out
    out = out or default_submissions(run or ensemble, ensemble=ensemble is not None)
    if ensemble is not None:
        result = pack_ensemble(ensemble, name, out, force=force, stack=not no_stack)
    else:
        result = pack_run(run, name, out, force=force)
    typer.echo(result.format())
    if chosen is None and run is not None:
        note = other_project_note(run, out)
        if note:
            typer.echo(note, err=True)
    packed = [run] if run is not None else [m["run"] for m in result.manifest["members"]]
    for note in filter(None, map(unfinished_note, packed)):  # each member as a single run
        typer.echo(note, err=True)


def other_project_note(run: Path, out: Path) -> str | None:
    """Where a run of a project (PROJECT/runs/EXP/ID) packed from outside it went: this
    folder's submissions/, which the project's `kit parity submissions/NAME` does not see (a
    `just pack` from a subfolder wrote docs/submissions/ without a word: r274)."""
    from kit.parity import run_project

    folder = Path(run).resolve()
    project = run_project(folder / "best.pt" if folder.is_dir() else folder)
    if project is None or Path(out).resolve() == (project / "submissions").resolve():
        return None
    return (f"note: written into this folder's submissions/ ({Path(out).resolve()}), not the "
            f"run's project's ({project / 'submissions'}): pass --out to choose")


def default_submissions(packed: Path, ensemble: bool = False) -> Path:
    """The project's submissions/: beside the runs/ folder of what is packed (runs/EXP/ID, or
    runs/ensembles/FILE, runs/FILE) when the command runs inside that folder (`kit pack .` in a
    run must not write runs/EXP/ID/submissions/); beside a run outside any runs/ folder when
    run inside it; else in the working folder."""
    from kit.run_record import runs_folder_here

    target = Path(packed).resolve()
    folder = target.parent if target.is_file() else target  # a run (its best.pt), an ensemble
    # runs/EXP/ID, runs/ID (kit train --run-dir runs/ID), runs/ensembles/FILE
    # (an ensemble file in runs/ itself, too: its submissions went into runs/submissions/)
    runs = runs_folder_here((folder.parent, folder) if ensemble
                            else (folder.parent.parent, folder.parent))
    if runs is not None:
        return runs.parent / "submissions"
    if not ensemble and Path.cwd().resolve().is_relative_to(folder):  # a --run-dir run
        return folder.parent / "submissions"  # outside any runs/: beside it, never inside it
    return Path("submissions")


@app.command()
def parity(
    submission: Path = typer.Argument(..., help="A package folder or zip written by kit pack."),
    data: Path | None = typer.Option(None, "--data", "-d", help="Labelled parquet file "
                                     "(default: the packed run's validation file)."),
    seqs: int = typer.Option(DEFAULT_SEQS,
                             help="Compare on the first N sequences."),
    atol: float = typer.Option(DEFAULT_ATOL,
                               help="Allowed absolute prediction difference."),
    rtol: float = typer.Option(DEFAULT_RTOL,
                               help="Allowed difference relative to |prediction|, on top of "
                               "atol (float32 rounding of large predictions)."),
    timeout: float | None = typer.Option(None, help="Kill each replay of the package after "
                                         "this many s (default: none for the first, then 20x "
                                         "its time per row + 60 s)."),
    as_json: bool = JsonOption,
) -> None:
    """Prove the package equals the PyTorch model step by step; exits 1 on any failed check."""
    from kit.parity import default_data, run_parity

    result = run_parity(submission, data or default_data(submission), seqs=seqs, atol=atol,
                        rtol=rtol, timeout_s=timeout)
    _print_json(result.to_dict()) if as_json else typer.echo(result.format())
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def notebook(
    submission: Path = typer.Argument(..., help="A package folder or zip written by kit pack."),
    out: Path | None = typer.Option(None, help="Output folder (default: NAME-kaggle beside "
                                    "the package, e.g. submissions/NAME-kaggle; OUT again for "
                                    "OUT/dataset)."),
    owner: str | None = typer.Option(None, help="Your Kaggle user name (default: "
                                     "$KAGGLE_USERNAME or ~/.kaggle/kaggle.json, else the "
                                     "owner OUT/dataset names, written again)."),
    competition: str | None = typer.Option(None, help="Competition slug to attach."),
    dataset_slug: str | None = typer.Option(None, help="Slug of the package dataset."),
    protocol: str | None = typer.Option(None, help="rows (PredictionModel over a test file) "
                                        "or batch (predict(frame) per time step); default: "
                                        "the notebook's in OUT (written again), else rows."),
    title: str | None = typer.Option(None, help="Notebook title (its slug follows)."),
    wheels: Path | None = typer.Option(None, help="Folder of .whl files to ship for offline "
                                       "pip installs (onnxruntime for Kaggle's Linux x86_64, "
                                       "Python 3.11)."),
    keep_columns: str | None = typer.Option(None, help="Batch protocol: columns copied from "
                                            "each batch into its answer, comma-separated (e.g. "
                                            "row_id; '' for none); default: the notebook's in "
                                            "OUT (written again)."),
    rename: str | None = typer.Option(None, help="Output columns renamed in the answers, "
                                      "OUTPUT=NEW comma-separated (e.g. t0=responder_6; '' for "
                                      "none); default: the notebook's in OUT (written again)."),
    try_on: Path | None = typer.Option(None, "--try", help="Then run the notebook here on "
                                       "this test file in a local kernel and print what it "
                                       "prints (predictions to OUT/local-run/)."),
) -> None:
    """Write an offline Kaggle notebook submission: OUT/dataset (the package + metadata) and
    OUT/kernel (the notebook + metadata, internet off). Written again into the same OUT, the
    notebook keeps the options it was written with unless given anew."""
    import shlex

    from kit.export.notebook import (
        competition_note,
        default_out,
        default_owner,
        kept_note,
        run_locally,
        try_leaves_out,
        write_notebook,
    )
    from kit.workers import EndedBySignal

    if try_on is not None:  # before anything is written: a missing file, a CSV, a folder
        from kit.data.io import file_schema

        file_schema(try_on)
    owner = owner or default_owner()
    out = out or default_out(submission)
    keep = None if keep_columns is None else [c.strip() for c in keep_columns.split(",")
                                              if c.strip()]
    written = write_notebook(submission, out, owner=owner, dataset_slug=dataset_slug,
                             competition=competition, protocol=protocol, title=title,
                             wheels=wheels, rename=rename, keep_columns=keep)
    typer.echo(f"wrote {written['notebook']} ({written['protocol']} protocol"
               f"{competition_note(written)})\n"
               f"  kaggle datasets create -p {shlex.quote(str(written['dataset']))}"
               "    # later: kaggle datasets version -p ... -m MESSAGE\n"
               f"  kaggle kernels push -p {shlex.quote(str(written['kernel']))}")
    if kept_note(written):
        typer.echo(kept_note(written))
    if try_on is None:
        return
    typer.echo(f"running the notebook on {try_on} in a local kernel, the package found under "
               f"{written['dataset'].parent} as under /kaggle/input ({try_leaves_out(written)}):")
    try:
        printed = run_locally(written, try_on, written["local_run"])
    except (KeyboardInterrupt, EndedBySignal) as stop:  # Ctrl-C, SIGTERM/SIGHUP: one line
        signum = getattr(stop, "signum", signal.SIGINT)
        typer.echo(f"{ended_text(signum)}: the notebook is written ({written['dataset'].parent}); "
                   f"its local run stopped and left nothing in {written['local_run']} (nothing "
                   "to resume: run the same command again to try it)", err=True)
        raise _stopped_exit(signum) from None
    typer.echo(printed.rstrip())


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def demo(
    ctx: typer.Context,
    data: Path | None = typer.Option(None, help="Data folder of train.parquet, "
                                     "valid.parquet and valid_oracle.parquet (generated if "
                                     "missing where the generators make the spec; default "
                                     "data/synth, data/synth-NAME for another spec)."),
    exp: str | None = typer.Option(None, help="The experiment to train (default: gru_base; "
                                   "with --spec alone, that competition's preset, e.g. rnn_gru "
                                   "for rnn-challenge)."),
    spec: str | None = typer.Option(None, help="The competition (default: the experiment's, "
                                    "e.g. rnn-challenge for rnn_gru)."),
    seeds: int = typer.Option(3, help="Seeds to train and ensemble (1: a single run)."),
    seqs: int | None = typer.Option(None, help="Score only the first N valid sequences."),
    parity_seqs: int = typer.Option(DEFAULT_SEQS,
                                    help="Sequences kit parity compares."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """The main job end to end on the built-in synthetic competition: data, train seeds,
    ensemble, pack, parity, score. Extra args are experiment overrides (train.epochs=3)."""
    from kit.demo import run_demo

    run_demo(data_dir=data, spec_name=spec, experiment=exp, overrides=overrides_of(ctx),
             seeds=seeds, seqs=seqs, parity_seqs=parity_seqs, quiet=quiet)


def main() -> None:
    app(prog_name="kit")

