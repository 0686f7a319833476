"""`kit ablate exp=NAME --groups a,b,c [--seeds 1,2]`: what each feature group brings.

Trains the cumulative ladder (a, a+b, a+b+c) and the leave-one-group-out variants (all but a,
all but b, ...; skipped when there is a single group), each with every seed, as ordinary runs
under runs/<exp>/ablate-<label>-s<seed>/, then prints per-target validation scores averaged
over seeds, with the change each group brings: in the ladder, against the rung below; leaving
a group out, against the full set (positive = the group helps).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from kit.config import ConfigError
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
    try:  # every group known before anything trains
        build_feature_set(load_spec(base["spec"]), groups)
    except FeatureConfigError as exc:
        raise ConfigError(f"--groups: {exc}") from None
    seeds = seeds or [base["seed"]]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = []
    for kind, label, chosen in variants(groups):
        scores = []
        for seed in seeds:
            config = {**base, "seed": seed,
                      "features": {**base["features"], "groups": chosen}}
            files = RunFiles(runs_dir / base["name"] / f"ablate-{stamp}-{label}-s{seed}")
            metrics = train_one(config, files, progress=progress)
            scores.append(metrics)
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
    out = runs_dir / base["name"] / f"ablate-{stamp}.json"
    out.write_text(json.dumps(summary, indent=2))
    summary["file"] = str(out)
    return summary


def format_ablation(summary: dict) -> str:
    rows = summary["variants"]
    targets = list(rows[0]["per_target"])
    full = next(r for r in rows if r["kind"] == "ladder" and
                len(r["groups"]) == len(summary["groups"]))
    width = max(12, *(len(r["label"]) for r in rows))
    lines = [f"ablation of {summary['experiment']} over seeds {summary['seeds']}",
             f"{'variant':<{width}} {'score':>9}" + "".join(f"{t:>9}" for t in targets)
             + f"{'change':>10}  (ladder: vs the rung below; -g: what g brings to the full set; "
             "positive = better)"]
    sign = summary["sign"]  # -1 where lower is better: a positive change always helps
    previous = None
    for r in rows:
        if r["kind"] == "ladder":
            change = None if previous is None else sign * (r["score"] - previous["score"])
            previous = r
        else:
            change = sign * (full["score"] - r["score"])
        cell = "" if change is None else f"{change:+10.4f}"
        lines.append(f"{r['label']:<{width}} {r['score']:>9.4f}"
                     + "".join(f"{r['per_target'][t]:>9.4f}" for t in targets) + cell)
    lines.append(f"wrote {summary['file']}")
    return "\n".join(lines)
