"""`kit pack RUN`: freeze a run into submissions/NAME/{solution.py, model.onnx, manifest.json}
and submissions/NAME.zip (exactly those files, solution.py at the root).

model.onnx is the run's whole inference path as one stateful step graph (guard, feature ops,
normaliser, model; dynamic batch). solution.py is the generic runtime in
kit/export/solution_template.py. manifest.json records what went in (docs/design.md "Frozen step
graph"): spec, input column order, outputs, state shapes, members with their validation scores
and configs, the sha256 of every other file, and later the parity report.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import shutil
import tempfile
import time
import unicodedata
import warnings
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import onnx

from kit import __version__
from kit.atomic import atomic_text
from kit.competition import (
    CompetitionSpec,
    blend_spec_difference,
    current_scoring,
    load_spec,
    spec_from_dict,
)
from kit.config import known_experiment
from kit.data.contract import contract_dtype
from kit.errors import KitError, naming
from kit.export.ensemble import Ensemble, PostProcess, Weighted
from kit.export.frozen import SHOWN_RUNS, load_member, sha256_file, warn_spec_changed
from kit.export.step_graph import OPSET, export_step_graph
from kit.features import FEATURE_FORMAT, FIRST_RECORDED_FORMAT
from kit.json_safe import dumps as json_dumps
from kit.run_record import fold_run, how_to_finish, read_config, read_metrics, relocated
from kit.submission import write_submission_zip, zip_path_of
from kit.temp import dead_owners, owner_gone, owner_tag
from kit.torch_state import kit_torch

SUBMISSIONS_DIR = Path("submissions")
MODEL_FILE, SOLUTION_FILE, MANIFEST_FILE = "model.onnx", "solution.py", "manifest.json"
PACK_FILES = (SOLUTION_FILE, MODEL_FILE, MANIFEST_FILE)
# IR 8 is the lowest that carries opset 17 (the exporter's default IR is newer): onnxruntime
# reads IR 8 from 1.11 and implements opset 17 from 1.12 (its version matrix), so any runtime
# from 1.12 on, as an older competition image may hold, loads the pack.
IR_VERSION = 8


MAX_MANIFEST = 8 << 20  # bytes of manifest.json: kit's are a few KB
MAX_NAME_BYTES = 200  # of --name: ".NAME.packing-PID-XXXXXXXX.zip" must fit in 255


class PackError(KitError):
    """A run cannot be packed, or a package is not what its manifest says."""


class OverBudget(PackError):
    """The package's projected test time is over BUDGET_FRACTION of the limit: exit 3, as
    kit score's over-the-limit refusal (ScorerRefusal), not 2, a mistyped command's (r298)."""

    exit_code = 3


@dataclass
class PackResult:
    folder: Path
    zip_path: Path
    manifest: dict
    sizes: dict[str, int]  # bytes of each package file, read while the pack held the folder

    def format(self) -> str:
        m = self.manifest
        states = ", ".join(f"{s['name']}{s['shape']}" for s in m["states"])
        # from `sizes`, not the folder: another pack to this name may be swapping it by now
        sizes = "  ".join(f"{n} {self.sizes[n] / 1024:,.0f} KiB" for n in PACK_FILES)
        return "\n".join([
            f"packed {self.folder}  ->  {self.zip_path}",
            f"graph: {m['onnx']['nodes']} nodes, opset {m['onnx']['opset']}, IR "
            f"{m['onnx']['ir_version']}; inputs x[B, {len(m['inputs'])}] + "
            f"{len(m['states'])} state(s); outputs y[B, {len(m['outputs'])}]",
            f"states: {states or 'none'}",
            f"files: {sizes}",
            *([f"time: {format_budget(b)}; about {b['more_members_fit']} more member(s) of this"
               f" size fit under {BUDGET_FRACTION:.0%} of the limit"]
              if (b := m.get("time_budget")) else []),
        ])


def default_name(run: Path, experiment: object = None) -> str:
    """EXP-RUNID: the experiment that trained the run (its config's name; a --run-dir may put
    it under another folder), else the folder holding the run."""
    run = Path(run).resolve()  # `kit pack .` inside a run folder: its own name, not "-"
    run = run.parent if run.is_file() else run
    experiment = experiment if isinstance(experiment, str) and experiment else run.parent.name
    return f"{experiment}-{run.name}"


def unfinished_note(run: Path) -> str | None:
    """A note when RUN has not finished training (paused, killed, or still running): its best
    epoch so far is what gets packed."""
    run = Path(run)
    folder = run.parent if run.is_file() else run
    metrics = read_metrics(folder)
    if metrics is not None and metrics.get("finished") is True:
        return None
    history = folder / "history.jsonl"
    if metrics is None and not history.is_file():
        return None  # not a run folder kit train wrote: nothing to say
    done = metrics.get("epochs") if metrics else len(history.read_bytes().splitlines())
    try:
        config = read_config(folder)
    except KitError:
        config = {}
    planned = (config.get("train") or {}).get("epochs", "?")
    name = config.get("name") or folder.parent.name
    experiment = known_experiment(name)  # (else the note says EXP)
    from kit.train.runs import RunFiles

    if RunFiles(folder).being_trained():  # the resume advice would fail while it trains
        return (f"note: {folder} is still being trained by another process (epoch {done} of "
                f"{planned}): its best epoch so far is packed; pack it again once it finishes")
    return (f"note: {folder} has not finished training (epoch {done} of {planned}; paused, "
            f"killed or still running): its best epoch so far is packed; "
            f"{how_to_finish(folder, experiment)}")


def pack_run(run: Path, name: str | None = None, out_dir: Path = SUBMISSIONS_DIR, *,
             force: bool = False, budget: bool = True) -> PackResult:
    """Freeze one run (its best.pt) into a submission folder and zip."""
    with kit_torch():  # (not a decorator: warnings name the caller)
        if name is not None:  # before the run is loaded: a wrong --name must not cost it
            check_package_name(name)
        member = load_member(run)
        weighted = [Weighted(member, [1.0] * member.spec.n_outputs)]
        return pack_members(weighted, default_name(run, member.config.get("name"))
                            if name is None else name,
                            out_dir, force=force, budget=budget)


def pack_ensemble(path: Path, name: str | None = None, out_dir: Path = SUBMISSIONS_DIR, *,
                  force: bool = False, budget: bool = True, stack: bool = True) -> PackResult:
    """Freeze an ensemble file (kit ensemble select) into one graph: every member with a
    non-zero weight, out-of-fold groups as their fold runs sharing the group's weight."""
    with kit_torch():  # (not a decorator: warnings name the caller)
        from kit.ensemble import (
            checkpoint_key,
            postprocess_edited,
            read_ensemble,
            runs_edited,
            selection_drift,
            warn_in_sample_members,
            weights_edited,
        )

        # before the members are loaded
        check_package_name(*(name, None) if name is not None
                           else (Path(path).stem, "its file name"))
        doc = read_ensemble(path)
        weighted = []
        changed: list[str] = []  # what --force let differ from the models the selection scored

        def unlike_selection(label: str, said: str, why: str, fix: str = "select again") -> None:
            """A member unlike what the selection scored: refused; with --force, recorded (and
            warned of once all are loaded)."""
            if not force:
                raise PackError(f"{path}: member {label!r}: {said}: {why}; {fix}, or --force")
            changed.append(f"member {label!r}: {said}")

        for entry in doc["members"]:
            if not any(entry["weights"]):
                continue  # zero weight: not in the graph
            share = [w / len(entry["runs"]) for w in entry["weights"]]
            chosen_on = entry.get("checkpoints")  # {run: best.pt's sha256} (files before: none)
            chosen_on = ({checkpoint_key(r): d for r, d in chosen_on.items()}  # RUN/, RUN/best.pt
                         if isinstance(chosen_on, dict) else {})
            label = entry.get("name", entry["runs"][0])
            added, dropped = runs_edited(entry)
            for run in added:  # swapped in by hand
                unlike_selection(label, f"{run} is not a run the selection chose (its "
                                 "checkpoints record others)",
                                 "the weights were chosen on other predictions")
            if dropped and not added:  # an out-of-fold member's fold run deleted: the others
                # took its weight (a run swapped for another is said above, once)
                folders = [str(Path(key).parent) if key.endswith("best.pt") else key
                           for key in dropped]
                unlike_selection(label, f"{len(dropped)} of the {len(chosen_on)} runs the "
                                 f"selection chose are not in its runs ({', '.join(folders)})",
                                 "the others take their weight, on predictions the selection "
                                 "never scored", "put them back, select again")
            for run in entry["runs"]:
                digest = chosen_on.get(checkpoint_key(run))
                refuse_group_as_member(path, entry.get("name", run), relocated(run))
                try:  # a moved checkout: the member's runs/EXP/ID under this one's runs/
                    member = load_member(relocated(run), warn=False)  # said once, below
                except KitError as exc:  # a member moved or deleted since the selection
                    raise PackError(f"{path}: member {entry.get('name', run)!r}: {exc}") from None
                if digest and member.sha256 != digest:
                    unlike_selection(label, f"{member.checkpoint} changed since the selection "
                                     "(the run was trained again)", "the weights were chosen on "
                                     "its old predictions")
                weighted.append(Weighted(member, share))
        if not weighted:
            raise PackError(f"{path}: every member has weight 0; nothing to pack")
        check_same_columns(weighted)  # first: a member of other targets has other weights too
        warn_spec_changed([(w.member.run_dir, w.member.spec_check) for w in weighted],
                          weighted[0].member.spec.name)
        spec = weighted[0].member.spec
        k = spec.n_outputs
        if any(len(w.weights) != k for w in weighted):
            raise PackError(f"{path}: members need one weight per target ({k})")
        sums = {t: sum(w.weights[i] for w in weighted) for i, t in enumerate(spec.outputs)}
        dead = [t for t, v in sums.items() if v <= 1e-9]
        if dead and not force:  # even a scale-free metric sees a constant (or flipped) target
            raise PackError(f"{path}: the weights of {', '.join(dead)} sum to 0: that target "
                            "would be predicted as a constant; give it positive weights, or "
                            "--force")
        off = {t: round(v, 6) for t, v in sums.items() if not math.isclose(v, 1.0, rel_tol=1e-6)}
        if off and not spec.metric.scale_free and not force:  # e.g. a member zeroed by hand
            listed = ", ".join(f"{t} sum to {v:g}" for t, v in off.items())
            clipped = (f" (predictions clipped to [{spec.metric.clip[0]:g}, "
                       f"{spec.metric.clip[1]:g}] first)" if spec.metric.clip else "")
            raise PackError(f"{path}: the weights of {listed}, not 1: under {spec.metric.name}"
                            f"{clipped} that scales the predictions and changes the score (weights "
                            "are used as written). Make each "
                            "target's weights sum to 1 ([postprocess] scale is the place for "
                            "shrinkage), or --force")
        # absolute: parity's re-pack advice names it, run from wherever parity is
        about = {"file": os.path.abspath(path), **{key: doc.get("ensemble", {}).get(key) for key in
                                       ("score", "target_scores", "metric", "data", "iters")},
                 # then the scores are the selection's, or the tuning's, not these values'
                 "weights_edited": weights_edited(doc),
                 "postprocess_edited": postprocess_edited(doc.get("postprocess"),
                                                          list(spec.outputs)),
                 # the recorded scores are of other models: kit score gives this package's
                 "members_changed": changed}
        # (runs gone or trained again are refused above; rewritten data files are said)
        stale = selection_drift(doc, checkpoints=False)
        if stale:
            more = f" (and {len(stale) - SHOWN_RUNS} more)" if len(stale) > SHOWN_RUNS else ""
            warnings.warn(f"{path}: {'; '.join(stale[:SHOWN_RUNS])}{more}: the weights were "
                          "chosen on predictions of the old rows; select again on runs trained on "
                          "the new files", RuntimeWarning, stacklevel=2)
        warn_in_sample_members(path, doc)  # an earlier kit's selection of in-sample runs (r317)
        for said in changed:
            warnings.warn(f"{path}: {said}; packed as --force asks, so the selection's recorded "
                          "scores are not this package's (its manifest's ensemble.members_changed "
                          "says so; kit score gives its own)", RuntimeWarning, stacklevel=2)
        return pack_members(weighted, Path(path).stem if name is None else name, out_dir,
                            postprocess=doc.get("postprocess"), ensemble=about, force=force,
                            budget=budget, stack=stack)


def refuse_group_as_member(path: Path, name: str, run: Path) -> None:
    """An out-of-fold group in a member's runs (added by hand): its models are its fold runs,
    which the member must list (as selection writes them), sharing the member's weight."""
    if not (run / "oof_preds.npy").is_file():
        return
    listed = (read_metrics(run) or {}).get("runs")
    folds = [str(fold_run(run, r)) for r in listed] if isinstance(listed, list) else []
    raise PackError(f"{path}: member {name!r}: {run} is an out-of-fold group, whose models are "
                    "its fold runs: list those in the member's runs instead"
                    + (f" ({', '.join(folds)})" if folds else ""))


def stream_module_of(weighted: list[Weighted], postprocess: dict | None, stack: bool = True):
    """The module to freeze: a single run's chain as it is, else the ensemble module."""
    k = len(weighted[0].weights)
    post = postprocess or {}
    plain = PostProcess(post.get("smoothing", [0.0] * k), post.get("scale", [1.0] * k))
    if len(weighted) == 1 and all(w == 1.0 for w in weighted[0].weights) and plain.is_identity:
        return weighted[0].member.stream_module()
    return Ensemble(weighted, postprocess, stack=stack).eval()


def check_same_columns(weighted: list[Weighted]) -> None:
    """Every member reads the rows as the first one does: the graph's input is the first
    member's feature columns, in its order. A spec file edited between two runs (a column
    added, reordered) keeps its name, and a member would read the wrong columns."""
    first = weighted[0].member
    for w in weighted[1:]:
        if w.member.spec.name != first.spec.name:
            raise PackError(f"{w.member.run_dir} was trained for spec {w.member.spec.name!r}, "
                            f"{first.run_dir} for {first.spec.name!r}: one package serves one "
                            "competition; ensemble runs of one spec")
        for what, mine, theirs in (("feature columns", first.spec.features, w.member.spec.features),
                                   ("targets", first.spec.outputs, w.member.spec.outputs)):
            if list(mine) != list(theirs):
                raise PackError(
                    f"{w.member.run_dir} was trained with other {what} of spec "
                    f"{first.spec.name!r} than {first.run_dir}: {list(theirs)} against "
                    f"{list(mine)} (the spec file changed between the runs); retrain one of "
                    "them on the current spec")
        differs = blend_spec_difference(w.member.spec, first.spec)
        if differs:  # (select refuses these too; a file written by hand is not selected)
            raise PackError(f"{w.member.run_dir} was trained with another version of spec "
                            f"{first.spec.name!r} than {first.run_dir}: {differs} (the package "
                            "takes the first member's spec); retrain one of them on the current "
                            "spec")


# control, format (a right-to-left override) and line/paragraph separator characters: none
# belongs in a folder name, a Kaggle title or a line of output; an undecodable byte of the
# command line arrives as a surrogate (Cs)
ODD_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def check_package_name(name: str, origin: str | None = None) -> None:
    """A package name is one plain folder name (its zip is NAME.zip beside it). `origin`: what
    the name was taken from when no --name was given."""
    said = f"--name {name!r}" if origin is None else (
        f"the package name {name!r} (from {origin}; give --name)")
    if not name.strip() or name != name.strip() or any(c in name for c in "/\\") \
            or name.startswith(".") or any(unicodedata.category(c) in ODD_CATEGORIES
                                           for c in name):
        raise PackError(f"{said}: a plain folder name is needed (no slashes, control "
                        "or format characters, line breaks, leading dot or surrounding spaces)")
    if name.lower().endswith(".zip"):  # pack writes NAME/ and NAME.zip itself
        raise PackError(f"{said}: give the name without .zip (--name {name[:-4]}): "
                        f"pack writes the folder {name[:-4]}/ and {name[:-4]}.zip")
    if len(name.encode()) > MAX_NAME_BYTES:  # its working files add to it; folders take 255
        raise PackError(f"package name {name[:40]}...: {len(name.encode())} bytes, at most "
                        f"{MAX_NAME_BYTES} (pack's working files add a suffix to it): give a "
                        "shorter --name")


def pack_members(weighted: list[Weighted], name: str, out_dir: Path = SUBMISSIONS_DIR, *,
                 postprocess: dict | None = None, ensemble: dict | None = None,
                 force: bool = False, budget: bool = True, stack: bool = True) -> PackResult:
    """Write the package of weighted members (per-target weights) as one step graph."""
    with kit_torch():  # (not a decorator: warnings name the caller)
        check_package_name(name)
        check_same_columns(weighted)  # (and one spec name)
        spec = weighted[0].member.spec
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        folder, zip_path = out_dir / name, zip_path_of(out_dir / name)
        check_replaceable(folder)  # before the build: a wrong --name must not cost it
        check_replaceable_zip(zip_path)
        # build the folder and its zip beside the targets (this pack's own: packs to one name may
        # run at once) and swap both in at the end: a failed pack leaves the old package whole
        drop_dead_staging(out_dir, name)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.packing-{owner_tag()}-", dir=out_dir))
        staged_zip = staging.with_name(staging.name + ".zip")
        try:
            staging.chmod(0o777 & ~current_umask())  # mkdtemp's 0o700 would follow the folder
            module = stream_module_of(weighted, postprocess, stack)
            # naming: torch's, onnx's and zipfile's writers raise OSErrors without the path (r303)
            with naming(staging / MODEL_FILE):
                shapes = export_step_graph(module, len(spec.features), staging / MODEL_FILE)
                graph = finalize_graph(staging / MODEL_FILE, {
                    "kit_version": __version__,
                    "members": ", ".join(w.member.name for w in weighted)})
            note = other_format_note([(w.member.name, w.member.trained_format) for w in weighted])
            if note is not None:  # said, not refused: retraining is the user's call
                warnings.warn(f"{note}; packed all the same, its graph computing this kit's "
                              "features", stacklevel=2)
            template = resources.files("kit.export") / "solution_template.py"
            with naming(staging / SOLUTION_FILE):
                (staging / SOLUTION_FILE).write_text(template.read_text(encoding="utf-8"),
                                                     encoding="utf-8")
            manifest = {
                "kit_version": __version__,
                # the graph's feature faces' version (kit.features.FEATURE_FORMAT): parity of a
                # package of another format compares it with faces that compute otherwise; each
                # member records the format it trained on (None: its best.pt recorded none)
                "feature_format": FEATURE_FORMAT,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "spec": spec.to_dict(),
                # where the spec was read: kit score takes its [metric] and [limits] as they
                # are then
                "spec_source": spec_reference(weighted[0].member.config.get("spec")),
                "inputs": list(spec.features),
                "outputs": list(spec.outputs),
                "states": [{"name": f"state_{i}", "shape": shape,
                            "batch_axis": shape.index("batch")} for i, shape in enumerate(shapes)],
                "onnx": {"opset": OPSET, **graph},
                "members": [w.member.describe() | {"weights": w.weights} for w in weighted],
                "postprocess": postprocess,
                "ensemble": ensemble,
                "parity": None,
            }
            if budget:
                manifest["time_budget"] = time_budget(staging, spec, len(weighted))
                if manifest["time_budget"]["fraction"] > BUDGET_FRACTION and not force:
                    raise OverBudget(format_budget(manifest["time_budget"]) + "; that is over "
                                    f"{BUDGET_FRACTION:.0%} of the limit: fewer or smaller "
                                    "members, or --force to pack anyway")
            write_manifest(staging, manifest)
            with naming(staged_zip):
                write_submission_zip(staging, staged_zip, files=PACK_FILES)
            with exclusive(package_lock(folder)):  # the swap, one pack at a time
                check_replaceable(folder)
                check_replaceable_zip(zip_path)
                swap_in(staging, folder, staged_zip, zip_path)
                sizes = {n: (folder / n).stat().st_size for n in PACK_FILES}
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            staged_zip.unlink(missing_ok=True)
        warn_stale_notebook(folder, manifest["files"][MODEL_FILE])
        return PackResult(folder, zip_path, manifest, sizes)


def warn_stale_notebook(folder: Path, model_sha256: str) -> None:
    """kit notebook's dataset beside the package (NAME-kaggle/dataset) holding another
    model.onnx: uploaded as it is, it would be the previous package (r305)."""
    dataset = folder.parent / f"{folder.name}-kaggle" / "dataset"
    if (dataset / MODEL_FILE).is_file() and sha256_file(dataset / MODEL_FILE) != model_sha256:
        # the command whole: kit notebook now keeps the owner, competition, protocol, keep
        # columns and renames it finds in that OUT (r310: it needed --owner, dropped the rest)
        warnings.warn(f"{dataset} holds the previous package of {folder.name}: run kit notebook "
                      f"{shlex.quote(str(folder))} again before uploading it (it keeps that "
                      "notebook's owner, competition, protocol and columns)", RuntimeWarning,
                      stacklevel=4)


def other_format_note(trained: list[tuple[str, object]]) -> str | None:
    """What members (name, trained_format) trained on another feature format than this kit's
    computes means, or None when all trained on this kit's (r291: pack stamped its own format
    and said nothing, so parity of the package said nothing either)."""
    other = [(name, f) for name, f in trained if f != FEATURE_FORMAT]
    if not other:
        return None
    said = ", ".join(f"{name} on format {f!r}" if f is not None else
                     f"{name} recorded none (format {FIRST_RECORDED_FORMAT} or older)"
                     for name, f in other)
    one = len(trained) == 1
    who = "the run" if one else f"{len(other)} of {len(trained)} members"
    return (f"{who} trained on another feature format than this kit's {FEATURE_FORMAT} "
            f"({said}): {'its model' if one else 'their models'} learned features that this "
            "kit computes otherwise wherever an op's output changed since (docs/features.md, "
            "FEATURE_FORMAT); retrain with this kit for exact results")


PREVIOUS = "previous"  # .NAME.previous-PID-...: the old package while the new one moves in


def swap_in(staging: Path, folder: Path, staged_zip: Path, zip_path: Path) -> None:
    """The new package (staging, staged_zip) becomes folder and zip_path. The old folder is
    renamed aside whole, never deleted before the new one is in place: a failure (or Ctrl-C)
    on the way puts it back as it was, your notes in it; they then move into the new package.
    A SIGKILL mid-swap leaves it as .NAME.previous-PID-..., which the next pack names."""
    previous = None
    if folder.exists():
        previous = folder.with_name(f".{folder.name}.{PREVIOUS}-{owner_tag()}-"
                                    f"{staging.name.rsplit('-', 1)[-1]}")
        folder.rename(previous)
    try:
        staging.rename(folder)
        try:
            os.replace(staged_zip, zip_path)
        except BaseException:
            folder.rename(staging)  # the new one back out; the old one back in below
            raise
    except BaseException:
        if previous is not None:
            previous.rename(folder)
        raise
    if previous is None:
        return
    for extra in users_files(previous):  # your notes stay with the package
        extra.rename(folder / extra.name)
    shutil.rmtree(previous, ignore_errors=True)


def users_files(folder: Path) -> list[Path]:
    """What a package folder holds beside pack's own files (and Python's __pycache__)."""
    return sorted(p for p in folder.iterdir()
                  if p.name not in PACK_FILES and p.name != "__pycache__")


def drop_dead_staging(out_dir: Path, name: str) -> None:
    """Remove the staging folders of packs whose process is gone (killed: no `finally` ran),
    of this name and (r315: they stayed until their own name was packed again) of any other.
    A live pack's folder is left alone: it may be building right now."""
    for staging in {*dead_owners(out_dir, f".{name}.packing-"), *dead_staging(out_dir)}:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        else:  # its zip
            staging.unlink(missing_ok=True)
    for previous in dead_owners(out_dir, f".{name}.{PREVIOUS}-"):  # killed mid-swap
        kept = [p.name for p in users_files(previous)]
        if not kept:
            shutil.rmtree(previous, ignore_errors=True)
        else:  # files of yours: never deleted
            warnings.warn(f"{previous} is the package a killed kit pack was replacing; it "
                          f"holds files of yours ({', '.join(kept[:5])}): move them "
                          "where you want them, then delete it", stacklevel=2)


def dead_staging(out_dir: Path) -> list[Path]:
    """The staging folders and zips of packs of any name whose process is gone: named as
    pack_members names them, .NAME.packing-TAG-XXXXXXXX[.zip] (mkdtemp's 8 characters; a
    NAME may itself hold ".packing-": the last one counts). A file of yours that merely looks
    alike (another suffix) is not one."""
    found = []
    for entry in out_dir.glob(".*.packing-*"):
        tag, _, suffix = entry.name.rpartition(".packing-")[2].partition("-")
        made = suffix.removesuffix(".zip")
        if len(made) == 8 and all(c.isalnum() or c == "_" for c in made) and owner_gone(tag):
            found.append(entry)
    return found


def current_umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_replaceable(folder: Path) -> None:
    """Pack replaces a folder only when it is empty or a kit package: anything else of that
    name (a data folder, a run directory) is the user's and must not be deleted."""
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_dir() and not folder.is_symlink() and (not any(folder.iterdir())
                                                        or written_by_pack(folder)):
        return
    raise PackError(f"{folder} exists and is not a package written by kit pack (no "
                    f"{MANIFEST_FILE} of kit's): pack would delete it; choose another --name "
                    "or --out, or move it away")


def check_replaceable_zip(zip_path: Path) -> None:
    """Pack replaces NAME.zip only when it is one kit pack wrote (its files at the root, with a
    manifest of kit's; kits before 268938d zipped notes beside them): a zip of your own by
    that name must not be overwritten."""
    if not zip_path.exists() and not zip_path.is_symlink():
        return
    if zip_path.is_dir() or zip_path.is_symlink():
        raise PackError(f"{zip_path} exists and is not a file: pack writes the package's zip "
                        "there; choose another --name or --out, or move it away")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            if set(PACK_FILES) <= set(archive.namelist()) and written_by_pack(zip_path):
                return
    except (OSError, zipfile.BadZipFile):  # not a zip
        pass
    raise PackError(f"{zip_path} exists and is not a zip written by kit pack (no "
                    f"{', '.join(PACK_FILES)} with a {MANIFEST_FILE} of kit's): pack would "
                    "overwrite it; choose another --name or --out, or move it away")


def package_lock(folder: Path) -> Path:
    """The lock file beside a package folder: held by kit pack while it replaces the folder,
    by kit parity and kit score while they copy the package (snapshot_submission), and by
    kit parity while it records its report into it."""
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def exclusive(lock_path: Path, required: bool = True):
    """An exclusive lock on lock_path (flock; released when the holder exits, even killed).

    The holder deletes the file before it lets go, so no lock file stays behind. A waiter
    then holds the lock of a deleted file: it checks that the path still names the file it
    locked, and if not locks the path's new file instead (the usual recipe for removable lock
    files). Not `required`: where the lock file cannot be made (a read-only folder, which no
    pack can write to either), go on without it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): packs to one name must not run at once there
        yield
        return
    while True:
        try:
            handle = open(lock_path, "a", encoding="utf-8")  # noqa: SIM115 - closed below, on every path
        except OSError:
            if required:
                raise
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                current = os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                current = False
        except BaseException:
            handle.close()
            raise
        if current:
            break
        handle.close()  # a holder deleted it meanwhile: lock the path's new file
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)  # while held: waiters see it gone and take the next file
        handle.close()  # releases the lock


BUDGET_FRACTION = 0.8  # refuse a pack projected past this share of the time limit
BUDGET_ROWS = 2000


def time_budget(folder: Path, spec: CompetitionSpec, n_members: int) -> dict:
    """Project the test-set time from a sample run of the package in the 1-CPU scorer child
    (random rows in the competition's layout: the cost per row does not depend on values)."""
    from kit.scoring.score import projected_time, replay_rows

    # variable-length specs: sequences long enough that rows past the warm-up and tail score
    length = spec.seq_len or max(1000, 2 * (spec.warmup + max(spec.tail, 1)) + 1)
    # whole sequences: a cut one would end on a row that needs a prediction, whose next-state
    # truth (the next row) does not exist
    n = length * math.ceil(BUDGET_ROWS / length)
    rng = np.random.default_rng(0)
    steps = np.arange(n) % length
    values = np.column_stack([np.arange(n) // length, steps,
                              (steps >= spec.warmup) & (steps < length - spec.tail),
                              rng.standard_normal((n, len(spec.features)))]).astype(np.float64)
    if spec.next_state:  # a next-state scorer has no prediction on a sequence's last step
        values[:, 2] = (steps >= spec.warmup) & (steps < length - max(spec.tail, 1))
    # typed as the competition's files are (a bool need flag: object rows, as pandas gives them)
    dtypes = [contract_dtype(spec, c) for c in spec.input_columns]
    result = replay_rows(folder, values, spec, column_dtypes=dtypes).result
    rate, projected = projected_time(float(result["init_s"]), float(result["loop_s"]),
                                     result.get("first_s"), n,
                                     spec.limits.test_rows)
    us_per_row = 1e6 / rate
    limit = spec.limits.time_limit_s
    per_member = projected / n_members  # a pessimistic share: start-up and loop alike
    more = int(max(0.0, BUDGET_FRACTION * limit - projected) // max(per_member, 1e-9))
    return {"us_per_row": us_per_row, "projected_s": projected, "limit_s": limit,
            "fraction": projected / limit, "members": n_members, "more_members_fit": more,
            "sample_rows": n, "test_rows": spec.limits.test_rows,
            "limits_unset": list(spec.limits_unset)}


def format_budget(b: dict) -> str:
    from kit.competition import limits_label
    from kit.scoring.score import seconds_text

    # the row count shown, and whose limits: a spec without [limits] projects Predictorium's
    # 1.5M rows and 5,400 s (a manifest older than limits_unset says nothing of it)
    rows = f" for {b['test_rows']:,} test rows" if "test_rows" in b else ""
    whose = limits_label(b.get("limits_unset", ()), ("test_rows", "time_limit_s"))
    return (f"projected test time {seconds_text(b['projected_s'])}{rows} of the "
            f"{seconds_text(b['limit_s'])} limit ({b['fraction']:.1%}; {b['us_per_row']:.1f} "
            f"us/row on 1 CPU, {b['members']} member(s); {whose})")


def finalize_graph(path: Path, metadata: dict[str, str]) -> dict:
    """Set a portable IR version and metadata, check the graph; returns its description."""
    model = onnx.load(str(path))
    model.ir_version = IR_VERSION
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"ir_version": IR_VERSION, "nodes": len(model.graph.node)}


def write_manifest(folder: Path, manifest: dict) -> None:
    """manifest.json with the sha256 of every other package file."""
    manifest["files"] = {n: sha256_file(folder / n) for n in PACK_FILES if n != MANIFEST_FILE}
    atomic_text(folder / MANIFEST_FILE, json_dumps(manifest, indent=2) + "\n")  # never torn


def read_manifest(folder: Path, shown: Path | None = None) -> dict:
    """The manifest of a package folder; `shown`: the package to name in errors (parity reads
    a copy of it in a temporary folder)."""
    path = Path(folder) / MANIFEST_FILE
    shown_path = Path(shown) / MANIFEST_FILE if shown is not None else path
    if not path.is_file():
        raise PackError(f"{shown or folder}: no {MANIFEST_FILE}; is this a folder written by "
                        "kit pack?")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackError(f"{shown_path}: not valid JSON ({exc}); kit pack writes it again") \
            from None
    wanted = {"spec": dict, "members": list, "outputs": list}
    wrong = [k for k, kind in wanted.items()
             if not isinstance(manifest, dict) or not isinstance(manifest.get(k), kind)]
    if wrong:
        raise PackError(f"{shown_path}: not a kit pack manifest (no valid {wrong}); re-run kit "
                        "pack")
    return manifest


def spec_reference(given) -> str | None:
    """A run's `spec` as the package records it: a preset's or user spec's name, or a TOML
    file's absolute path (kit score may run from another folder)."""
    if not isinstance(given, str) or not given:
        return None
    path = Path(given)
    return str(path.resolve()) if given.endswith(".toml") and path.is_file() else given


def submission_spec(submission: Path, spec: str | None = None) -> CompetitionSpec:
    """The spec to score a submission with: the one named, else its manifest's, else the
    default preset. A named spec must feed a kit package the columns it was packed for, in
    the same order: the rows would reach its graph scrambled otherwise."""
    manifest = manifest_of(Path(submission))
    if spec is not None:
        named = load_spec(spec)
        inputs = manifest.get("inputs") if isinstance(manifest, dict) else None
        if isinstance(inputs, list) and list(named.features) != inputs:
            pairs = zip(named.features, inputs, strict=False)
            at = next((i for i, (a, b) in enumerate(pairs) if a != b),
                      min(len(inputs), len(named.features)))
            raise PackError(f"{submission} was packed for {len(inputs)} feature columns "
                            f"{_columns(inputs, at)}; --spec {spec} lists {len(named.features)} "
                            f"{_columns(list(named.features), at)} (they differ at position "
                            f"{at}): score it with its own spec (leave out --spec) or one with "
                            "the same feature columns in the same order")
        outputs = manifest.get("outputs") if isinstance(manifest, dict) else None
        if isinstance(outputs, list) and list(named.outputs) != outputs:
            # each prediction would be scored against another target (r305)
            raise PackError(f"{submission} predicts {_columns(outputs, 0)}; --spec {spec} "
                            f"scores {_columns(list(named.outputs), 0)}: score it with its own "
                            "spec (leave out --spec) or one with the same targets in the same "
                            "order")
        return named
    if not isinstance(manifest, dict) or not isinstance(manifest.get("spec"), dict):
        return load_spec(None)  # no manifest, or one that is not kit's
    source = manifest.get("spec_source")
    spec, check = current_scoring(spec_from_dict(manifest["spec"],
                                                 f"{submission}: {MANIFEST_FILE}"),
                                  source if isinstance(source, str) else None)
    if check.changed:  # (limits set after the pack: the projection read the old ones, r270)
        warnings.warn(check.changed_text(spec.name, f"{submission} was packed",
                                         "scored with the spec file's as it is now"),
                      RuntimeWarning, stacklevel=2)
    if check.unread:  # a typo in the file kept the old limits without a word (r305)
        warnings.warn(check.unread_text(spec.name, f"{submission} is scored with the [metric] "
                                        "and [limits] stored when it was packed"),
                      RuntimeWarning, stacklevel=2)
    return spec


def _columns(names: list[str], at: int) -> str:
    """The column names around position `at` (the whole list when short)."""
    if len(names) <= 8:
        return str(names)
    lo = max(0, at - 2)
    return f"[{'... ' if lo else ''}{', '.join(names[lo:lo + 5])} ...]"


def written_by_pack(submission: Path) -> bool:
    """Whether a package folder or zip holds a manifest of kit's."""
    return kit_manifest_of(submission) is not None


def kit_manifest_of(submission: Path) -> dict | None:
    """The manifest of a package kit pack wrote, None for any other (one too big for kit's is
    none of kit's)."""
    try:
        manifest = manifest_of(submission) or {}
    except PackError:
        return None
    return manifest if "kit_version" in manifest else None


def manifest_of(submission: Path) -> dict | None:
    """The manifest of a package folder or zip, None when there is none or it does not read
    (scoring then checks the zip entry by entry and names what is wrong). One larger than
    MAX_MANIFEST is refused before it is read: a zip can inflate it to gigabytes."""
    try:
        if submission.is_dir():
            path = submission / MANIFEST_FILE
            return _small_manifest(submission, path.stat().st_size, path.read_bytes)
        from kit.scoring.sandbox import entry_parts

        with zipfile.ZipFile(submission) as archive:
            # as extraction names it: "./manifest.json" (bsdtar's zips) is the same file
            entry = next(info for info in archive.infolist()
                         if entry_parts(info.filename) == [MANIFEST_FILE] and not info.is_dir())
            return _small_manifest(submission, entry.file_size, lambda: archive.read(entry))
    except PackError:
        raise
    except Exception:  # missing, not JSON, an encrypted or unreadable zip entry, a bad zip
        return None


def _small_manifest(submission: Path, size: int, read) -> dict | None:
    if size > MAX_MANIFEST:
        raise PackError(f"{submission}: {MANIFEST_FILE} is {size:,} bytes; kit's are a few KB "
                        "(is this a kit package?)")
    manifest = json.loads(read())
    return manifest if isinstance(manifest, dict) else None  # kit's is an object


def check_manifest_columns(manifest: dict, spec: CompetitionSpec) -> None:
    """A PackError unless the manifest's `inputs` and `outputs` are the spec's columns: the
    batch runtime selects its columns and names its outputs by these lists, and the file
    hashes do not cover the manifest itself (a hand-edited one)."""
    for key, want in (("inputs", list(spec.features)), ("outputs", list(spec.outputs))):
        got = manifest.get(key)
        if got == want:
            continue
        if not isinstance(got, list) or len(got) != len(want):
            what = (f"lists {len(got)} columns" if isinstance(got, list) else f"is {got!r}")
            differ = f"{key} {what}; the spec has {len(want)}"
        else:
            i = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
            differ = f"{key}[{i}] is {got[i]!r} where the spec's column is {want[i]!r}"
        raise PackError(f"{MANIFEST_FILE}: {differ} (a hand-edited manifest: the batch "
                        "runtime reads its columns by these names); re-pack the run")


def hash_mismatches(folder: Path, manifest: dict) -> list[str]:
    """Package files whose sha256 differs from the manifest's, that are missing, or that the
    manifest does not list (a manifest cut down to fewer files must not vouch for the rest)."""
    listed = manifest.get("files")
    listed = listed if isinstance(listed, dict) else {}
    bad = []
    for name in PACK_FILES:
        if name == MANIFEST_FILE:
            continue
        path, digest = Path(folder) / name, listed.get(name)
        if not path.is_file():
            bad.append(f"{name} is missing")
        elif digest is None:
            bad.append(f"{name} has no sha256 in the manifest")
        elif sha256_file(path) != digest:
            bad.append(f"{name} changed since pack (sha256 differs from the manifest)")
    return bad
