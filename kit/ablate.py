"""`kit ablate exp=NAME --groups a,b,c [--seeds 1,2]`: what each feature group brings.

Trains the cumulative ladder (a, a+b, a+b+c) and the leave-one-group-out variants (all but a,
all but b, ...; skipped when there is a single group), each with every seed, as ordinary runs
under runs/<exp>/ablate-<stamp>-<label>-s<seed>/, then prints the validation score and the
per-target scores averaged over seeds, each with the change the group brings: in the ladder,
against the rung below; leaving a group out, against the full set (positive = the group helps,
whichever way the metric points).

Every variant's features and model (its width solved from a `params` budget for its own input
count) are checked before any training. A run that fails (it diverged, or one variant's setting
is refused) is recorded with its reason and the ablation goes on; the summary JSON is rewritten
after each variant, so an interrupted ablation keeps what it trained.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np

from kit.config import ConfigError, check_seeds
from kit.errors import KitError
from kit.train.runs import RUNS_DIR, RunFiles, atomic_text


def variants(groups: list[str]) -> list[tuple[str, str, list[str]]]:
    """(kind, label, groups) for the ladder, then the leave-one-outs."""
    out = [("ladder", "+".join(groups[:i + 1]), groups[:i + 1]) for i in range(len(groups))]
    if len(groups) > 1:
        out += [("without", f"-{g}", [h for h in groups if h != g]) for g in groups]
    return out


def ablate(exp: str, groups: list[str], seeds: list[int] | None = None,
           overrides: list[str] | None = None, *, progress: bool = True,
           runs_dir: Path = RUNS_DIR) -> dict:
    from kit.competition import load_spec
    from kit.config import refuse_overrides
    from kit.train.recipe import experiment_config, train_one
    from kit.train.trainer import TrainingDiverged

    if not groups or len(set(groups)) != len(groups):
        raise ConfigError(f"--groups: distinct group names, at least one, got {groups}")
    refuse_overrides(overrides, {"seeds": "--seeds"} | ({"seed": "--seeds alone"} if seeds
                                                       else {}))
    base = experiment_config(exp, overrides)
    spec = load_spec(base["spec"])
    check_variants(base, spec, groups)
    seeds = seeds or [base["seed"]]
    check_seeds(seeds, "--seeds")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: distinct seeds, got {seeds} (a repeat trains the same run)")
    # unique per ablation: two started in the same second never share run folders
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    out = runs_dir / base["name"] / f"ablate-{stamp}.json"
    summary = {"experiment": base["name"], "groups": groups, "seeds": seeds,
               "sign": 1.0 if spec.metric.higher_is_better else -1.0,
               "metric": spec.metric.name, "targets": list(spec.outputs), "variants": []}
    trained: dict[tuple[str, ...], list[dict]] = {}  # groups -> their seeds' metrics or errors
    for kind, label, chosen in variants(groups):
        # leaving out the last group is the rung below the top: the same runs, trained once
        outcomes = trained.get(tuple(chosen), [])
        for seed in seeds if not outcomes else []:
            config = {**base, "seed": seed,
                      "features": {**base["features"], "groups": chosen}}
            files = RunFiles(runs_dir / base["name"] / f"ablate-{stamp}-{label}-s{seed}")
            try:
                outcomes.append(train_one(config, files, progress=progress))
            except (KitError, TrainingDiverged) as exc:  # one run's failure, not the ablation's
                outcomes.append({"error": f"{label} seed {seed}: {exc}",
                                 "run_dir": str(files.root)})
        trained[tuple(chosen)] = outcomes
        summary["variants"].append(variant_row(kind, label, chosen, outcomes))
        summary["changes"] = changes(summary)
        write_summary(out, summary)  # after each variant: an interruption keeps the rest
    summary["file"] = str(out)
    return summary


def check_variants(base: dict, spec, groups: list[str]) -> None:
    """Every variant's feature set and model, before any training: a variant's own input count
    can make its `params` budget too small, and the experiment's own ops may read a column of a
    group left out."""
    from kit.features.sets import FeatureConfigError, build_feature_set
    from kit.models import ModelConfigError, model_values, solve_width

    for _, label, chosen in variants(groups):
        where = f"--groups: the variant {label!r} (groups {chosen})"
        try:
            feature_set = build_feature_set(spec, chosen, base["features"].get("ops"))
        except FeatureConfigError as exc:
            raise ConfigError(f"{where} has no valid feature set: {exc}") from None
        try:
            model_values(solve_width(base["model"], len(feature_set.outputs), spec.n_outputs))
        except ModelConfigError as exc:
            raise ConfigError(f"{where} with {len(feature_set.outputs)} features: {exc}") from None


def variant_row(kind: str, label: str, chosen: list[str], outcomes: list[dict]) -> dict:
    """A variant's means over the seeds whose runs finished (None when none did)."""
    done = [m for m in outcomes if "error" not in m]
    row = {"kind": kind, "label": label, "groups": chosen,
           "score": float(np.mean([m["score"] for m in done])) if done else None,
           "per_target": ({t: float(np.mean([m["per_target"][t] for m in done]))
                           for t in done[0]["per_target"]} if done else None),
           "runs": [m["run_dir"] for m in outcomes]}
    errors = [m["error"] for m in outcomes if "error" in m]
    return row | ({"errors": errors} if errors else {})


def write_summary(path: Path, summary: dict) -> None:
    from kit.json_safe import dumps

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_text(path, dumps(summary, indent=2))


def changes(summary: dict) -> list[dict | None]:
    """Per variant, what its group brings ({"score": .., target: ..}), signed so that positive
    always helps: a ladder rung against the rung below (None for the first), a leave-one-out
    variant against the full set. None too where either side has no finished run."""
    rows, sign = summary["variants"], summary["sign"]
    full = next((r for r in rows if r["kind"] == "ladder" and
                 len(r["groups"]) == len(summary["groups"])), None)
    out, previous = [], None
    for r in rows:
        if r["kind"] == "ladder":
            better, worse = figures(r), None if previous is None else figures(previous)
            previous = r
        else:
            better, worse = (figures(full) if full else None), figures(r)
        out.append(None if better is None or worse is None
                   else {k: sign * (better[k] - worse[k]) for k in better})
    return out


def figures(row: dict) -> dict | None:
    """A variant's score and per-target scores, by name (None: none of its runs finished)."""
    return None if row["score"] is None else {"score": row["score"], **row["per_target"]}


def format_ablation(summary: dict) -> str:
    rows = summary["variants"]
    keys = ["score", *summary["targets"]]
    width = max(12, *(len(r["label"]) for r in rows))
    lines = [f"ablation of {summary['experiment']} over seeds {summary['seeds']} (means)",
             f"{'variant':<{width}}" + "".join(f"{k:>9}" for k in keys) + "   "
             + "".join(f"{'change ' + k:>14}" for k in keys),
             "(change: ladder vs the rung below; -g: what g brings to the full set; "
             "positive = better)"]
    for r, change in zip(rows, changes(summary), strict=True):
        values = figures(r)
        cells = ("".join(f"{values[k]:>9.4f}" for k in keys) if values
                 else f"{'failed':>9}" + " " * 9 * (len(keys) - 1))
        changed = "" if change is None else "".join(f"{change[k]:>+14.4f}" for k in keys)
        seeds = (f"   ({len(r['errors'])} of {len(r['runs'])} runs failed)"
                 if r.get("errors") else "")
        lines.append(f"{r['label']:<{width}}" + cells + "   " + changed + seeds)
    errors = [e for r in rows for e in r.get("errors", [])]
    lines += [f"failed: {e}" for e in dict.fromkeys(errors)]  # a shared rung's once
    lines.append(f"wrote {summary['file']}")
    return "\n".join(lines)
