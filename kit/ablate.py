"""`kit ablate exp=NAME --groups a,b,c [--seeds 1,2]`: what each feature group brings.

Trains the cumulative ladder (a, a+b, a+b+c) and the leave-one-group-out variants (all but a,
all but b, ...; skipped when there is a single group), each with every seed, as ordinary runs
under runs/<exp>/ablate-<stamp>-<label>-s<seed>/, then prints the validation score and the
per-target scores averaged over seeds, each with the change the group brings: in the ladder,
against the rung below; leaving a group out, against the full set (positive = the group helps,
whichever way the metric points).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np

from kit.config import ConfigError, check_seeds
from kit.train.runs import RUNS_DIR, RunFiles


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
    from kit.features.sets import FeatureConfigError, build_feature_set
    from kit.train.recipe import experiment_config, train_one

    if not groups or len(set(groups)) != len(groups):
        raise ConfigError(f"--groups: distinct group names, at least one, got {groups}")
    base = experiment_config(exp, overrides)
    spec, ops = load_spec(base["spec"]), base["features"].get("ops")
    for _, label, chosen in variants(groups):  # every variant's features before any training
        try:  # (the experiment's own ops may read a column of a group left out)
            build_feature_set(spec, chosen, ops)
        except FeatureConfigError as exc:
            raise ConfigError(f"--groups: the variant {label!r} (groups {chosen}) has no valid "
                              f"feature set: {exc}") from None
    seeds = seeds or [base["seed"]]
    check_seeds(seeds, "--seeds")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: distinct seeds, got {seeds} (a repeat trains the same run)")
    # unique per ablation: two started in the same second never share run folders
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    results = []
    trained: dict[tuple[str, ...], list[dict]] = {}  # groups -> metrics of their seeds' runs
    for kind, label, chosen in variants(groups):
        # leaving out the last group is the rung below the top: the same runs, trained once
        scores = trained.get(tuple(chosen), [])
        for seed in seeds if not scores else []:
            config = {**base, "seed": seed,
                      "features": {**base["features"], "groups": chosen}}
            files = RunFiles(runs_dir / base["name"] / f"ablate-{stamp}-{label}-s{seed}")
            metrics = train_one(config, files, progress=progress)
            scores.append(metrics)
        trained[tuple(chosen)] = scores
        results.append({
            "kind": kind, "label": label, "groups": chosen,
            "score": float(np.mean([m["score"] for m in scores])),
            "per_target": {t: float(np.mean([m["per_target"][t] for m in scores]))
                           for t in scores[0]["per_target"]},
            "runs": [m["run_dir"] for m in scores],
        })
    sign = 1.0 if load_spec(base["spec"]).metric.higher_is_better else -1.0
    summary = {"experiment": base["name"], "groups": groups, "seeds": seeds, "sign": sign,
               "metric": load_spec(base["spec"]).metric.name, "variants": results}
    summary["changes"] = changes(summary)
    out = runs_dir / base["name"] / f"ablate-{stamp}.json"
    out.write_text(json.dumps(summary, indent=2))
    summary["file"] = str(out)
    return summary


def changes(summary: dict) -> list[dict | None]:
    """Per variant, what its group brings ({"score": .., target: ..}), signed so that positive
    always helps: a ladder rung against the rung below (None for the first), a leave-one-out
    variant against the full set."""
    rows, sign = summary["variants"], summary["sign"]
    full = next(r for r in rows if r["kind"] == "ladder" and
                len(r["groups"]) == len(summary["groups"]))
    out, previous = [], None
    for r in rows:
        if r["kind"] == "ladder":
            better, worse = figures(r), None if previous is None else figures(previous)
            previous = r
        else:
            better, worse = figures(full), figures(r)
        out.append(None if worse is None else {k: sign * (better[k] - worse[k]) for k in better})
    return out


def figures(row: dict) -> dict:
    """A variant's score and per-target scores, by name."""
    return {"score": row["score"], **row["per_target"]}


def format_ablation(summary: dict) -> str:
    rows = summary["variants"]
    keys = ["score", *rows[0]["per_target"]]
    width = max(12, *(len(r["label"]) for r in rows))
    lines = [f"ablation of {summary['experiment']} over seeds {summary['seeds']} (means)",
             f"{'variant':<{width}}" + "".join(f"{k:>9}" for k in keys) + "   "
             + "".join(f"{'change ' + k:>14}" for k in keys),
             "(change: ladder vs the rung below; -g: what g brings to the full set; "
             "positive = better)"]
    for r, change in zip(rows, changes(summary), strict=True):
        cells = "" if change is None else "".join(f"{change[k]:>+14.4f}" for k in keys)
        lines.append(f"{r['label']:<{width}}" + "".join(f"{figures(r)[k]:>9.4f}" for k in keys)
                     + "   " + cells)
    lines.append(f"wrote {summary['file']}")
    return "\n".join(lines)
