"""A trained run as one stream module: guard -> feature ops -> normaliser -> model.

`load_member` reads a run's best.pt (weights, model config, normaliser, feature set, spec) and
rebuilds every part from the checkpoint alone, so what is packed is what was validated, not what
the experiment file says today. `StreamChain` composes stream modules (docs/design.md "The one
idea"): each stage's output is the next stage's input, and the chain's state is the stages'
states in order.
"""

from __future__ import annotations

import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from kit.competition import CompetitionSpec, SpecFileCheck, current_scoring, spec_from_dict
from kit.data.cache import file_digest
from kit.errors import KitError
from kit.features.kernels import LIMIT
from kit.features.normaliser import Normaliser
from kit.features.sets import FeaturePipeline, FeatureSet, build_feature_set
from kit.models import build_model
from kit.models.config import ModelConfigError
from kit.models.custom import check_run_source, is_custom
from kit.train.checkpoint import load_checkpoint, load_checkpoint_and_digest

CHECKPOINT_KEYS = ("model", "model_config", "normaliser", "features", "spec")


class StreamChain(nn.Module):
    """Stream modules run one after another; state = the stages' states concatenated."""

    def __init__(self, *stages: nn.Module):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.state_sizes = [len(stage.init_state(1)) for stage in stages]

    def init_state(self, batch: int) -> list[Tensor]:
        return [t for stage in self.stages for t in stage.init_state(batch)]

    def forward(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        new_state: list[Tensor] = []
        for stage, own in zip(self.stages, split_state(state, self.state_sizes), strict=True):
            x, own = stage(x, own)
            new_state += own
        return x, new_state


def spare_guard_clip(pipeline: FeaturePipeline, normalisers: list[Normaliser]) -> None:
    """Turn the guard's +-LIMIT clip off where it cannot change an output: one graph node
    fewer (about 0.35 us a row, docs/pack.md). That holds when the pipeline is raw columns
    only (the guard's values go straight to the normalisers) and every normaliser reading it
    clips, with its bounds in raw units (|center| + clip * scale) within LIMIT / 2: a value
    past LIMIT then lands on the normaliser's bound with the clip or without it. The guard's
    state may then hold a finite value past LIMIT, which only a later non-finite row reads,
    and it is normalised onto the same bound."""
    if pipeline.counts or not normalisers:
        return
    for normaliser in normalisers:
        if normaliser.clip is None:
            return
        scale = normaliser.scale.astype(np.float64)
        if not np.all(scale > 0):  # a negative one maps 1e16 and 1e20 to different signs' sides
            return
        reach = np.abs(normaliser.center.astype(np.float64)) + normaliser.clip * scale
        if not np.all(reach <= LIMIT / 2):  # NaN too
            return
    pipeline.guard.clip = False


def split_state(state: list[Tensor], sizes: list[int]) -> list[list[Tensor]]:
    """A flat state list cut into consecutive parts of the given sizes (one per stage)."""
    parts, at = [], 0
    for size in sizes:
        parts.append(state[at:at + size])
        at += size
    return parts


def sha256_file(path: Path) -> str:
    """sha256 hex of a file (kit.data.cache's memoised digest)."""
    return file_digest(path)


@dataclass
class Member:
    """One trained model with everything that runs before it at inference."""

    run_dir: Path
    checkpoint: Path
    sha256: str
    spec: CompetitionSpec
    feature_set: FeatureSet
    normaliser: Normaliser
    model: nn.Module
    model_config: dict
    score: float | None
    per_target: dict
    config: dict = field(default_factory=dict)
    # the FEATURE_FORMAT its features had while it trained (best.pt's record; None from a kit
    # before the record): the packing kit's own is what the graph computes, not what it learnt
    trained_format: int | None = None
    # what of the spec's scoring ("[limits]", "[metric]") its file changed since it trained,
    # or why the file's was not taken
    spec_check: SpecFileCheck = SpecFileCheck()

    @property
    def name(self) -> str:
        return f"{self.run_dir.parent.name}/{self.run_dir.name}"

    def stream_module(self) -> StreamChain:
        """Raw rows in, predictions out, one step or many: the module the graph freezes."""
        pipeline = self.feature_set.stream_module()
        spare_guard_clip(pipeline, [self.normaliser])
        return StreamChain(pipeline, self.normaliser.stream_module(),
                           self.model.step_form()).eval()

    def describe(self) -> dict:
        """The member's entry in manifest.json."""
        return {
            "run": str(self.run_dir), "checkpoint": str(self.checkpoint.resolve()),
            "sha256": self.sha256,
            "model": self.model_config, "features": self.feature_set.outputs,
            "feature_groups": self.feature_set.groups, "normaliser": self.normaliser.method,
            "val_score": self.score, "val_per_target": self.per_target, "config": self.config,
            "feature_format": self.trained_format,  # what it trained on (None: not recorded)
        }


def _toml_advice(path: Path) -> str:
    """What a TOML given as RUN is packed as: an ensemble file with --ensemble, a run's
    config.toml as its folder."""
    from kit.run_record import toml_given_for_a_run

    kind = toml_given_for_a_run(path)
    if kind == "ensemble":
        return f"an ensemble file packs with `kit pack --ensemble {path}`"
    if kind == "run config":
        return f"pack the run it belongs to: `kit pack {path.parent}`"
    return "pass a run folder (or the .pt checkpoint in it), or an ensemble file with --ensemble"


def find_checkpoint(run: Path) -> Path:
    """RUN may be a run directory (its best.pt) or a checkpoint file."""
    run = Path(run)
    if run.is_file() and run.suffix.lower() == ".toml":  # read as a checkpoint: "not one"
        raise KitError(f"{run}: a TOML file, not a run or checkpoint; {_toml_advice(run)}")
    if run.is_file():
        return run
    if (run / "best.pt").is_file():
        return run / "best.pt"
    if run.is_dir() and (run / "last.pt").is_file():
        from kit.run_record import read_metrics

        if (read_metrics(run) or {}).get("finished"):  # deleted by hand (or a partial copy)
            raise KitError(f"{run}: the run finished but its best.pt is missing (deleted or "
                           "not copied); train the run again, or copy it from where it is")
        raise KitError(f"{run}: no best.pt yet (the run has not finished a validated epoch)")
    if (run / "oof_preds.npy").is_file():  # a --folds group: its fold runs are the models
        raise KitError(f"{run}: an out-of-fold group (its models are the fold runs beside it): "
                       f"`kit ensemble select {run} --out FILE.toml`, then "
                       "`kit pack --ensemble FILE.toml`")
    if not run.exists():
        raise KitError(f"{run}: no such run directory; `kit runs` lists the runs")
    if run.is_dir():
        from kit.run_record import read_metrics

        diverged = (read_metrics(run) or {}).get("diverged")
        if isinstance(diverged, str):  # ("not a run directory" before: it is one)
            raise KitError(f"{run}: training diverged before any epoch scored ({diverged}), "
                           "so there is no model to pack; lower train.lr or set "
                           "train.grad_clip and train it again")
        if (run / "config.toml").is_file():  # started, stopped before its first epoch (r271)
            raise KitError(f"{run}: a run with no finished epoch yet, so no best.pt to pack "
                           "(still training, or stopped in its first epoch: `kit train EXP "
                           f"--resume --run-dir {run}` trains it)")
    raise KitError(f"{run}: not a run directory (no best.pt); `kit runs` lists the runs")


def warn_spec_changed(checks: list[tuple[Path, SpecFileCheck]], spec_name: str) -> None:
    """One warning for the runs (run folder, what current_scoring found) whose spec file
    changed its [metric] or [limits] since they trained (an ensemble's 28 members said it 28
    times), and one for those whose file is there but was not taken (r305)."""
    changed = [(run, check) for run, check in checks if check.changed]
    if changed:
        what = tuple(key for key in ("[metric]", "[limits]")
                     if any(key in check.changed for _, check in changed))
        every = SpecFileCheck(changed=what, file=_files(changed))  # all the members' files
        warnings.warn(every.changed_text(spec_name, f"{_runs(changed)} trained",
                                         "the package, its time budget and its scores take the "
                                         "spec file's as it is now (they do not change what "
                                         "the model learnt)"), RuntimeWarning, stacklevel=3)
    unread = [(run, check) for run, check in checks if check.unread]
    if unread:
        kept = (f"the package, its time budget and its scores keep the [metric] and [limits] "
                f"stored when {_runs(unread)} trained")
        warnings.warn(unread[0][1].unread_text(spec_name, kept), RuntimeWarning, stacklevel=3)


def _runs(checks: list[tuple[Path, SpecFileCheck]]) -> str:
    shown = ", ".join(str(run) for run, _ in checks[:SHOWN_RUNS])
    more = f" and {len(checks) - SHOWN_RUNS} more" if len(checks) > SHOWN_RUNS else ""
    return shown if len(checks) == 1 else f"{len(checks)} of its runs ({shown}{more})"


def _files(checks: list[tuple[Path, SpecFileCheck]]) -> str:
    """The spec file(s) read (members may name their spec by other paths)."""
    return ", ".join(dict.fromkeys(check.file or "built-in" for _, check in checks))


SHOWN_RUNS = 3


def trained_spec(run: Path) -> CompetitionSpec:
    """The spec a run trained with, as its checkpoint stores it (what pack and parity use):
    the spec file may have changed since (targets reordered, a column added), and the run's
    predictions are in the columns of the spec it trained with."""
    path = find_checkpoint(run)
    return spec_from_dict(load_checkpoint(path, required=("spec",))["spec"], str(path))


def load_member(run: Path, *, warn: bool = True) -> Member:
    """Rebuild a run's feature set, normaliser and model from its best checkpoint. warn: say
    here when the spec's scoring changed since the run trained (a loader of many members says
    it once for all of them: Member.spec_check)."""
    path = find_checkpoint(run)
    ckpt, digest = load_checkpoint_and_digest(path, required=CHECKPOINT_KEYS)
    spec = spec_from_dict(ckpt["spec"], str(path))
    features = ckpt["features"]
    feature_set = (build_feature_set(spec, [], features["ops"], stored=True)
                   if features["ops"] else None)
    if feature_set is None or feature_set.outputs != features["outputs"]:
        raise KitError(f"{path}: the stored feature set does not rebuild to the same outputs "
                       "(was it written by another kit version?)")
    feature_set.groups = list(features["groups"])
    n_in, n_out = len(feature_set.outputs), spec.n_outputs
    check_run_source(ckpt["model_config"].get("type"), path.parent)  # (a model of your own)
    try:
        model = build_model(ckpt["model_config"], n_in, n_out)
    except ModelConfigError as exc:  # a setting kit refuses since (a width of 1 under a norm)
        if is_custom(ckpt["model_config"].get("type")):  # your code's, not kit's (r324)
            raise KitError(f"{path}: {exc}") from None
        raise KitError(f"{path}: its model config is refused by this kit ({exc}); it was "
                       "trained before that: retrain the run") from None
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise KitError(f"{path}: the weights do not fit the stored model config "
                       f"({_mismatches(exc)})") from None
    config_path = path.parent / "config.toml"
    try:
        config = (tomllib.loads(config_path.read_text(encoding="utf-8"))
                  if config_path.is_file() else {})
    except tomllib.TOMLDecodeError as exc:
        raise KitError(f"{config_path}: not valid TOML ({exc})") from None
    spec, spec_check = current_scoring(spec, config.get("spec") if isinstance(
        config.get("spec"), str) else None)
    if warn:
        warn_spec_changed([(path.parent, spec_check)], spec.name)
    return Member(
        # resolved, so that `kit pack .` inside a run folder records and names the run
        run_dir=path.resolve().parent, checkpoint=path, sha256=digest, spec=spec,
        feature_set=feature_set, normaliser=Normaliser.from_dict(ckpt["normaliser"]),
        model=model.eval(), model_config=dict(ckpt["model_config"]),
        score=ckpt.get("score"), per_target=dict(ckpt.get("per_target", {})), config=config,
        trained_format=ckpt.get("feature_format"), spec_check=spec_check,
    )


def _mismatches(exc: Exception, shown: int = 3) -> str:
    """torch's load_state_dict error: its heading and the first few mismatches (one a line
    there: a missing key, a size mismatch), each cut short."""
    head, *lines = [line.strip().rstrip(".") for line in str(exc).splitlines()
                    if line.strip()] or [""]
    more = f"; and {len(lines) - shown} more" if len(lines) > shown else ""
    cut = [line if len(line) <= 300 else f"{line[:300]}..." for line in lines[:shown]]
    return " ".join([head, "; ".join(cut)]).strip() + more


@torch.no_grad()
def stream_steps(module: nn.Module, x: Tensor) -> Tensor:
    """Run a stream module one step at a time over x [B, T, F] (state carried): [B, T, K]."""
    state = module.init_state(x.shape[0])
    out = []
    for t in range(x.shape[1]):
        y, state = module(x[:, t:t + 1], state)
        out.append(y)
    return torch.cat(out, dim=1)
