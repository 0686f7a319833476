"""Dataset statistics: what a competition file looks like, and whether synthetic data is realistic.

`dataset_stats` returns a JSON-serialisable dict; `format_stats` renders it, marking with "!!"
every figure outside the realism bands of the Predictorium preset (docs/synth.md).
Lag-1 autocorrelations pair each row with the previous row of the same sequence.
"""

from __future__ import annotations

import dataclasses
import filecmp
import math
import re
from pathlib import Path

import numpy as np
import polars as pl

from kit.competition import CompetitionSpec, load_spec
from kit.data.contract import (
    FLOAT32_MAX,
    check_dtypes,
    key_problems,
    need_flags,
    whole_numbers,
)
from kit.data.io import parquet_schema, read_frame, refuse_index_columns
from kit.data.synth import refuse_other_generation
from kit.errors import DataError
from kit.metrics import metric_value, scored_truth

BANDED_SPEC = "predictorium"
ORACLE_IS = ("an oracle is a file of predictions for the data file: its id and step columns and "
             "one column per output, such as the valid_oracle.parquet that kit data synth writes "
             "beside valid.parquet (real competition data has none: leave --oracle out)")
# (key, label, low, high): a check passes when low <= value <= high (None: unbounded)
BANDS = [
    ("feature_nan", "features: NaN/inf count", 0, 0),
    ("feature_min", "features: min >= -5.2", -5.2, None),
    ("feature_max", "features: max <= 5.2", None, 5.2),
    ("feature_abs_mean", "features: max |mean| <= 0.25", None, 0.25),
    ("feature_std_min", "features: min std >= 0.8", 0.8, None),
    ("feature_std_max", "features: max std <= 1.25", None, 1.25),
    ("price_ac_min", "p*: min lag-1 AC > 0.5", 0.5, None),
    ("trade_ac_max", "dp*/dv*: max lag-1 AC <= 0.15", None, 0.15),
    ("t0_kurtosis", "t0 kurtosis >= 10", 10.0, None),
    ("t1_kurtosis", "t1 kurtosis >= 10", 10.0, None),
    ("t0_ac1", "t0 lag-1 AC in [0.6, 0.8]", 0.6, 0.8),
    ("t1_ac1", "t1 lag-1 AC >= 0.93", 0.93, None),
    ("t0_t1_corr", "corr(t0, t1) in [0.35, 0.6]", 0.35, 0.6),
    ("t0_max_feature_corr", "max |corr(feature, t0)| <= 0.2", None, 0.2),
    ("t0_oracle", "oracle weighted Pearson t0 in [0.45, 0.65]", 0.45, 0.65),
    ("t1_oracle", "oracle weighted Pearson t1 in [0.2, 0.4]", 0.2, 0.4),
    ("t0_std_ratio", "std ratio t0 vs reference in [1.2, 1.6]", 1.2, 1.6),
    ("t1_std_ratio", "std ratio t1 vs reference in [1.2, 1.6]", 1.2, 1.6),
]


def dataset_stats(
    path: Path,
    spec: CompetitionSpec,
    *,
    oracle: Path | None = None,
    reference: Path | None = None,
) -> dict:
    """Shape, per-feature and per-target statistics of a data file (see module docstring)."""
    spec = load_spec(spec)
    try:
        schema = parquet_schema(path)
    except Exception:  # read_frame below says what is wrong with the file
        schema = {}
    present = [t for t in spec.targets if t in schema]  # unlabelled files: no target stats
    if reference is not None and schema and not present:  # it was dropped without a word
        what = ("a next-state spec's targets are the next row's features" if spec.next_state
                else f"this file has none of {list(spec.targets)}")
        raise DataError(f"--reference {reference}: compares the target columns' std, and "
                        f"{what}: leave --reference out")
    frame = read_frame(path, spec.input_columns + present)
    refuse_index_columns(path, spec.columns)  # an id stored as the pandas index, as elsewhere
    # text ids or list features: named (the targets checked are those the file has)
    check_dtypes(frame.schema, dataclasses.replace(spec, targets=tuple(present)), True, str(path))
    # null or fractional keys would be grouped and sorted as if they were ids (a null id made
    # one "sequence" of length 1): named, as kit data check names them
    bad_keys = key_problems(frame, [spec.id_col, spec.step_col])
    if bad_keys:
        raise DataError(f"{path}: {'; '.join(bad_keys)}")
    frame = _sorted(frame, spec)
    if frame.height == 0:
        raise DataError(f"{path}: the file has no rows")
    ids = frame[spec.id_col].to_numpy()
    need = need_flags(frame, spec.need_col, f"{path}: ")
    same = ids[1:] == ids[:-1]  # row i+1 continues the sequence of row i
    count = "n" if spec.id_col != "n" else "count"  # an id column may be named "len", or "n"
    lengths = frame[spec.id_col].value_counts(name=count)[count]
    out: dict = {
        "path": str(path),
        "spec": spec.name,
        "rows": frame.height,
        "sequences": len(lengths),
        "scored_rows": int(need.sum()),
        "seq_len": {"min": int(lengths.min()), "max": int(lengths.max())},
    }
    features = {name: _column(frame[name].to_numpy(), same) for name in spec.features}
    out["features"] = features
    out["feature_groups"] = _groups(features)
    targets = {}
    for name in present:
        y = frame[name].to_numpy().astype(np.float64)
        stats = _column(y, same)
        corrs = {f: _pearson(frame[f].to_numpy(), y) for f in spec.features}
        best = max(corrs, key=lambda f: -1.0 if corrs[f] is None else abs(corrs[f]))
        top = None if corrs[best] is None else abs(corrs[best])
        stats |= {"max_abs_feature_corr": top,  # (no correlation at all: no feature named)
                  "max_corr_feature": None if top is None else best}
        targets[name] = stats
    out["targets"] = targets
    out["target_corr"] = {
        f"{a}~{b}": _pearson(frame[a].to_numpy(), frame[b].to_numpy())
        for i, a in enumerate(present)
        for b in present[i + 1 :]
    }
    if oracle is not None:
        if _same_bytes(path, Path(oracle)):  # (it scored the file's targets against themselves)
            raise DataError(f"--oracle {oracle}: holds the same bytes as the data file {path} "
                            f"(it is that file or a copy), not an oracle's predictions; "
                            f"{ORACLE_IS}")
        refuse_other_generation(path, Path(oracle), "give the oracle that kit data synth "
                                "wrote beside this file")
        out["oracle"] = _oracle_scores(frame, need, Path(oracle), spec)
    if reference is not None:
        ref = read_frame(reference, present)
        odd = [f"column {t!r} must be numeric (an integer or float dtype), found {ref.schema[t]}"
               for t in present if not ref.schema[t].is_numeric() or ref.schema[t].is_decimal()
               or ref.schema[t] == pl.Boolean]
        if odd or ref.height == 0:
            raise DataError(f"{reference}: cannot be compared: "
                            + ("; ".join(odd) if odd else "the file has no rows"))
        out["reference"] = {
            "path": str(reference),
            "std_ratio": {
                t: _ratio(targets[t]["std"], _column(ref[t].to_numpy(), None)["std"])
                for t in present
            },
        }
    if spec.name == BANDED_SPEC:
        out["checks"], out["skipped_checks"] = _checks(out)
    return _clean(out)


def format_stats(stats: dict) -> str:
    """A readable multi-line report; figures outside the realism bands are marked "!!"."""
    banded = "checks" in stats
    failed = {c["key"] for c in stats.get("checks", []) if not c["ok"]}
    lines = [
        f"{stats['path']}  (spec {stats['spec']})",
        f"rows {stats['rows']:,}   sequences {stats['sequences']:,}   scored rows "
        f"{stats['scored_rows']:,}   length {stats['seq_len']['min']}..{stats['seq_len']['max']}",
        "",
    ]
    group_rows = []
    for group, g in stats["feature_groups"].items():
        abs_mean = max(
            (abs(v) for v in (g["mean_min"], g["mean_max"]) if v is not None), default=None
        )
        # each cell against the band by its own value: one group out of band marked every
        # group when the flags came from the set-level checks
        ac_key = _AC_BAND.get(group)
        bad = _outside if banded else lambda *_: False
        group_rows.append((group, [
            (g["n"], False), (abs_mean, bad(abs_mean, "feature_abs_mean", 1)),
            (g["std_min"], bad(g["std_min"], "feature_std_min", 0)),
            (g["std_max"], bad(g["std_max"], "feature_std_max", 1)),
            (g["ac1_min"], ac_key == "price_ac_min" and bad(g["ac1_min"], ac_key, 0)),
            (g["ac1_mean"], False),
            (g["ac1_max"], ac_key == "trade_ac_max" and bad(g["ac1_max"], ac_key, 1)),
            (g["min"], bad(g["min"], "feature_min", 0)),
            (g["max"], bad(g["max"], "feature_max", 1)),
            (_nonfinite(g), bad(_nonfinite(g), "feature_nan", 1)),
        ]))  # fmt: skip
    headers = ["n", "max|mean|", "std min", "std max", "AC1 min", "AC1 mean", "AC1 max", "min",
               "max", "NaN/inf"]  # fmt: skip
    lines += _table("feature group", headers, group_rows)
    feature_rows = []
    for name, c in stats["features"].items():
        bad = _feature_outside(name, c) if banded else set()
        cells = [(c[k], k in bad) for k in ("mean", "std", "min", "max", "ac1")]
        feature_rows.append((name, [*cells, (_nonfinite(c), "nan" in bad)]))
    lines += [
        "",
        *_table("feature", ["mean", "std", "min", "max", "lag-1 AC", "NaN/inf"], feature_rows),
    ]
    past = {name: c["past_float32"] for name, c in stats["features"].items()
            if c.get("past_float32")}
    if past:  # counted as kit data check counts them; the figures above still hold them
        lines.append("  NaN/inf counts values past float32's range (inf as kit reads them, the "
                     "guard replaces them): " + ", ".join(f"{n}: {k:,}" for n, k in past.items()))
    if stats["targets"]:
        ratio = stats.get("reference", {}).get("std_ratio", {})
        orc = stats.get("oracle", {}).get("per_output", {})
        target_rows = []
        for name, t in stats["targets"].items():
            target_rows.append((name, [
                (t["std"], False), (t["kurtosis"], f"{name}_kurtosis" in failed),
                (t["ac1"], f"{name}_ac1" in failed),
                (t["max_abs_feature_corr"], f"{name}_max_feature_corr" in failed),
                (t["max_corr_feature"], False), (orc.get(name), f"{name}_oracle" in failed),
                (ratio.get(name), f"{name}_std_ratio" in failed),
            ]))  # fmt: skip
        headers = ["std", "kurtosis", "lag-1 AC", "max|r|", "feature", "oracle", "ratio"]
        lines += ["", *_table("target", headers, target_rows)]
        lines += [f"  {name} has {_nonfinite_text(t)}: its figures leave NaN and inf out (kit "
                  "data check says whether they fall on scored rows)"
                  for name, t in stats["targets"].items() if _nonfinite(t)]
        for pair, value in stats["target_corr"].items():
            flag = " !!" if pair == "t0~t1" and "t0_t1_corr" in failed else ""
            lines.append(f"  corr({pair.replace('~', ', ')}) = {_cell(value)}{flag}")
    if "oracle" in stats:
        o = stats["oracle"]
        score = "-" if o["score"] is None else f"{o['score']:.4f}"
        lines += ["", f"oracle ({o['metric']}, {o['rows']:,} scored rows): score {score}"]
        if o["score"] is None:
            lines.append("  (not a number: a truth value on a scored row is NaN or inf)")
        if not stats["targets"]:
            values = _present(o["per_output"].values())
            lines.append(f"  per output: min {_cell(min(values, default=None))}  "
                         f"max {_cell(max(values, default=None))}")
    if banded:
        checks, skipped = stats["checks"], stats.get("skipped_checks", [])
        passed = sum(c["ok"] for c in checks)
        # a check that cannot be computed is listed with its reason: they vanished, and a file
        # with an all-NaN t1 read "11/11 pass"
        more = f", {len(skipped)} skipped (could not be computed)" if skipped else ""
        lines += ["", f"realism checks ({BANDED_SPEC} bands): {passed}/{len(checks)} pass{more}"]
        for c in checks:
            lines.append(f"  {'ok' if c['ok'] else '!!'}  {c['label']:<46} {_cell(c['value'])}")
        for c in skipped:
            lines.append(f"  --  {c['label']:<46} skipped: {c['reason']}")
    return "\n".join(lines)


_AC_BAND = {"p": "price_ac_min", "dp": "trade_ac_max", "dv": "trade_ac_max"}
_LIMITS = {key: (low, high) for key, _, low, high in BANDS}


def _outside(value, key: str, side: int) -> bool:
    """Whether a figure breaks band `key`'s lower (side 0) or upper (side 1) limit."""
    limit = _LIMITS[key][side]
    return value is not None and (value < limit if side == 0 else value > limit)


def _nonfinite(c: dict) -> int:
    """NaN, inf and finite float64 values past float32's range (kit data check's count)."""
    return c["nan"] + c["inf"] + c.get("past_float32", 0)


def _nonfinite_text(c: dict) -> str:
    parts = [f"{c['nan']:,} NaN" if c["nan"] else "", f"{c['inf']:,} inf" if c["inf"] else "",
             f"{c['past_float32']:,} value(s) past float32's range (inf as kit reads them)"
             if c.get("past_float32") else ""]
    return ", ".join(p for p in parts if p)


def _feature_outside(name: str, c: dict) -> set[str]:
    """Which of one feature's figures break the (set-level) feature bands."""
    bad = {k for k in ("nan",) if _nonfinite(c)}
    if c["mean"] is not None and _outside(abs(c["mean"]), "feature_abs_mean", 1):
        bad.add("mean")
    if _outside(c["std"], "feature_std_min", 0) or _outside(c["std"], "feature_std_max", 1):
        bad.add("std")
    bad |= {"min"} if _outside(c["min"], "feature_min", 0) else set()
    bad |= {"max"} if _outside(c["max"], "feature_max", 1) else set()
    ac_key = _AC_BAND.get(_group_name(name))
    if ac_key and _outside(c["ac1"], ac_key, 0 if ac_key == "price_ac_min" else 1):
        bad.add("ac1")
    return bad


def _table(title: str, headers: list[str], rows: list[tuple[str, list]]) -> list[str]:
    """Right-aligned columns; each row is (label, [(value, flagged), ...]); flagged cells get !!."""
    width = 9
    head = f"  {title:<14}" + "".join(f"{h:>{width}}   " for h in headers)
    body = []
    for label, cells in rows:
        line = f"  {label:<14}"
        for value, bad in cells:
            text = f"{_cell(value):>{width}}"
            if not line.endswith(" ") and not text.startswith(" "):
                text = " " + text  # a cell as wide as its column after a "!!" ran into it
            line += text + (" !!" if bad else "   ")
        body.append(line)
    return [head.rstrip(), *(line.rstrip() for line in body)]


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3f}" if abs(value) < 1e6 else f"{value:.3g}"  # 1e300: not 300 digits


def _sorted(frame: pl.DataFrame, spec: CompetitionSpec) -> pl.DataFrame:
    # as int64 (key_problems ruled out what int64 cannot hold): np.diff of unsigned steps wraps
    # a step back round to a large jump forward, and unsorted rows passed as sorted
    ids = frame[spec.id_col].cast(pl.Int64).to_numpy()
    steps = frame[spec.step_col].cast(pl.Int64).to_numpy()
    d_id, d_step = np.diff(ids), np.diff(steps)
    if ((d_id > 0) | ((d_id == 0) & (d_step > 0))).all():
        return frame
    return frame.sort([spec.id_col, spec.step_col])


def _column(x: np.ndarray, same: np.ndarray | None) -> dict:
    """Moments, range, NaN count and (if `same` is given) lag-1 AC within sequences."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    v = x[finite]
    out = {"nan": int(np.isnan(x).sum()), "inf": int(np.isinf(x).sum()),
           # finite in float64 but inf as kit reads it (float32), as kit data check counts them
           "past_float32": int((np.abs(v) > FLOAT32_MAX).sum())}
    if v.size == 0:
        return out | dict.fromkeys(("mean", "std", "min", "max", "kurtosis", "ac1"), None)
    # moments of v / max|v| (then scaled back): a 1e300 feature would overflow the squares
    scale = float(np.abs(v).max()) or 1.0
    u = v / scale
    dev = u - u.mean()
    m2 = float(dev @ dev) / v.size
    m4 = float((dev * dev) @ (dev * dev)) / v.size
    out |= {
        "mean": float(u.mean()) * scale,
        "std": math.sqrt(m2) * scale,
        "min": float(v.min()),
        "max": float(v.max()),
        "kurtosis": m4 / (m2 * m2) if m2 > 0 else None,
    }
    if same is not None:
        out["ac1"] = _pearson(x[1:][same], x[:-1][same])
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.all():
        a, b = a[ok], b[ok]
    if a.size < 2:
        return None
    # each over its max |value| first (a correlation does not see scale): no overflow at 1e300
    a = a / (np.abs(a).max() or 1.0)
    b = b / (np.abs(b).max() or 1.0)
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else None


def _group_name(feature: str) -> str:
    prefix = re.sub(r"\d+$", "", feature)
    return prefix or "#"  # all-digit names ("0".."31") form one group


def _groups(features: dict[str, dict]) -> dict[str, dict]:
    """Feature columns grouped by their name less its number (p0..p11: p). A group of one is
    shown under its column's own name: the column "v.1" read "v.", and "42" read "#" (r288)."""
    named: dict[str, list[str]] = {}
    for name in features:
        named.setdefault(_group_name(name), []).append(name)
    groups = {(names[0] if len(names) == 1 else prefix): [features[n] for n in names]
              for prefix, names in named.items()}
    out = {}
    for group, members in groups.items():

        def values(key: str, members=members) -> list[float]:
            return [m[key] for m in members if m.get(key) is not None]

        ac = values("ac1")
        out[group] = {
            "n": len(members),
            "mean_min": min(values("mean"), default=None),
            "mean_max": max(values("mean"), default=None),
            "std_min": min(values("std"), default=None),
            "std_max": max(values("std"), default=None),
            "ac1_min": min(ac, default=None),
            "ac1_mean": float(np.mean(ac)) if ac else None,
            "ac1_max": max(ac, default=None),
            "min": min(values("min"), default=None),
            "max": max(values("max"), default=None),
            "nan": sum(m["nan"] for m in members),
            "inf": sum(m["inf"] for m in members),
            "past_float32": sum(m["past_float32"] for m in members),
        }
    return out


def _oracle_scores(frame: pl.DataFrame, need: np.ndarray, path: Path, spec: CompetitionSpec):
    keys = [spec.id_col, spec.step_col]
    names = list(spec.outputs)
    table = read_frame(path, keys + names)
    bad = [f"{n} ({table.schema[n]})" for n in names
           if not table.schema[n].is_numeric() or table.schema[n].is_decimal()]
    if bad:
        raise DataError(f"{path}: oracle prediction column(s) must be numeric: {bad}")
    # ids and steps as Int64 on both sides: a float-id file (accepted by the contract) and an
    # int-id oracle must join, not raise a schema error
    table = table.with_columns(whole_numbers(table.schema, k).alias(k) for k in keys)
    if table.select(pl.any_horizontal(pl.col(k).is_null() for k in keys).any()).item():
        raise DataError(f"{path}: its {', '.join(keys)} must be whole numbers (an oracle has one "
                        "row per (sequence, step) of the data file)")
    frame = frame.with_columns(whole_numbers(frame.schema, k).alias(k) for k in keys)
    repeated = table.select(keys).is_duplicated()
    if repeated.any():
        first = table.filter(repeated).row(0)
        raise DataError(f"{path}: {int(repeated.sum()):,} rows share their ({', '.join(keys)}) "
                        f"with another row, e.g. {first[:2]}; an oracle has one row per step")
    joined = frame.select(keys).join(
        table.rename({n: f"__oracle_{n}" for n in names}), on=keys, how="left",
        maintain_order="left",
    )  # fmt: skip
    oracle = joined.select([f"__oracle_{n}" for n in names])
    absent_rows = oracle.select(pl.any_horizontal(pl.all().is_null())).to_series().to_numpy()
    pred = oracle.to_numpy().astype(np.float64)
    missing = int((absent_rows & need).sum())
    if missing:
        raise DataError(f"{path}: no oracle value for {missing} row(s) that need a prediction")
    nonfinite = int((~np.isfinite(pred[need])).any(axis=1).sum())
    if nonfinite:  # present but NaN or inf: an oracle that is broken, not one that is short
        raise DataError(f"{path}: the oracle's values are NaN or inf on {nonfinite} row(s) "
                        "that need a prediction")
    features = frame.select(spec.features).to_numpy() if spec.next_state else None
    absent = [t for t in spec.targets if t not in frame.columns]
    if absent:
        raise DataError(f"the data file has no target column(s) {absent}: an oracle score "
                        "needs every target")
    targets = frame.select(spec.targets).to_numpy() if spec.targets else None
    truth = scored_truth(frame[spec.id_col].to_numpy(), need, features, targets, spec)
    if np.array_equal(truth, pred[need]):  # no oracle is exact: the truth saved anew
        raise DataError(f"--oracle {path}: its output columns equal the truth on every "
                        f"scored row (the data file's targets, or a copy of them), not an "
                        f"oracle's predictions; {ORACLE_IS}")
    per_output = {n: metric_value(spec, truth[:, j], pred[need, j]) for j, n in enumerate(names)}
    return {
        "path": str(path),
        "metric": spec.metric.name,
        "rows": int(need.sum()),
        "per_output": per_output,
        "score": float(np.mean(list(per_output.values()))),
    }


def _same_bytes(data: Path, oracle: Path) -> bool:
    """Whether the oracle file is the data file or a byte copy (sizes differ otherwise, and
    then nothing is read); a missing oracle is named by the read that follows."""
    try:
        return filecmp.cmp(data, oracle, shallow=False)
    except OSError:
        return False


def _present(values) -> list[float]:
    return [v for v in values if v is not None]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _checks(stats: dict) -> tuple[list[dict], list[dict]]:
    """The realism checks measured, and those that could not be computed, with the reason."""
    features = stats["features"].values()
    groups = stats["feature_groups"]
    targets = stats["targets"]

    values: dict[str, float | None] = {
        "feature_nan": sum(_nonfinite(f) for f in features),
        "feature_min": min(_present(f["min"] for f in features), default=None),
        "feature_max": max(_present(f["max"] for f in features), default=None),
        "feature_abs_mean": max(
            _present(abs(f["mean"]) for f in features if f["mean"] is not None), default=None
        ),  # fmt: skip
        "feature_std_min": min(_present(f["std"] for f in features), default=None),
        "feature_std_max": max(_present(f["std"] for f in features), default=None),
        "price_ac_min": groups.get("p", {}).get("ac1_min"),
        "trade_ac_max": max(
            _present(groups.get(g, {}).get("ac1_max") for g in ("dp", "dv")), default=None
        ),  # fmt: skip
    }
    if "t0~t1" in stats["target_corr"]:  # both targets in the file
        values["t0_t1_corr"] = stats["target_corr"]["t0~t1"]
    for t in ("t0", "t1"):
        if t in targets:
            values[f"{t}_kurtosis"] = targets[t]["kurtosis"]
            values[f"{t}_ac1"] = targets[t]["ac1"]
            values[f"{t}_max_feature_corr"] = targets[t]["max_abs_feature_corr"]
        if "oracle" in stats and t in stats["oracle"]["per_output"]:
            values[f"{t}_oracle"] = stats["oracle"]["per_output"][t]
        if "reference" in stats and t in stats["reference"]["std_ratio"]:
            values[f"{t}_std_ratio"] = stats["reference"]["std_ratio"][t]
    checks, skipped = [], []
    for key, label, low, high in BANDS:
        if key not in values:
            continue  # not measured here (no oracle / no reference given, no such target)
        v = values[key]
        if v is None:
            skipped.append({"key": key, "label": label, "reason": _skip_reason(key, stats)})
            continue
        ok = (low is None or v >= low) and (high is None or v <= high)
        checks.append({"key": key, "label": label, "value": v, "low": low, "high": high, "ok": ok})
    return checks, skipped


def _skip_reason(key: str, stats: dict) -> str:
    """Why a realism check measured on this file has no value."""
    targets = stats["targets"]
    for t in ("t0", "t1") if key == "t0_t1_corr" else key.split("_")[:1]:
        if t not in targets:
            continue
        if targets[t]["mean"] is None:
            return f"{t} has no finite values"
        if not targets[t]["std"]:
            return f"{t} is constant"
    if key.endswith("_oracle"):
        return ("the oracle's score is not a number (a truth value on a scored row is NaN or "
                "inf)")
    if key.endswith("_std_ratio"):
        return "the reference's std of the target is 0 or not finite"
    if key.endswith("_max_feature_corr"):
        return "every feature is constant or non-finite where the target is finite"
    if key.endswith("_ac1"):
        return "no sequence has two finite values of the target in a row"
    if key.startswith("feature_"):
        return "no feature has two finite values"
    if key == "price_ac_min":
        return "every p* feature is constant or has no two finite values in a row"
    if key == "trade_ac_max":
        return "every dp*/dv* feature is constant or has no two finite values in a row"
    return "not computable on this file"


def _clean(obj):
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
