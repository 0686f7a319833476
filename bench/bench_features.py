"""Batch face: parquet -> cached (N, T, F) feature arrays with every feature group, vs pandas.

Prints one JSON line. Data: the full-size synthetic train set (10,721 sequences x 1000 steps,
10.7M rows) at data/synth-full/train.parquet, generated with `kit data synth --full` when it is
missing (or, if that command fails, a same-shaped random-walk parquet written by this bench to
data/bench/); `--seqs N` / `--rows-scale S` run smaller sets (data/bench/synth-N/), `--data`
takes any file in the competition layout. `--dirty F` copies the data with a fraction F of the
feature values set to NaN/+inf/-inf, so the NaN/inf guard does real work in both paths.

kit: `feature_arrays(path, build_feature_set(spec, <all groups>), cache_dir=<fresh folder>)` in
a child process: wall time of the call (parquet read, file digest, batch face, arrays, cache
write) and the child's peak RSS (VmHWM, imports included) over the bytes of the arrays it
returns. A second child times the same call again: a cache hit, file digest included.
Two more figures in the same run: `kit_s_polars_allocator`, the same cold call with Polars'
own allocator settings (kit/__init__.py keeps freed pages for reuse; `_RJEM_MALLOC_CONF` set
empty restores Polars' defaults), and `write_floor_s`, this machine's cost of writing as many
bytes as the arrays hold to a fresh file in 128 MB blocks (zeros from one buffer), while the
other entries still exist: the part of kit_s no feature code can remove, since the cache is
written through the page cache. (Page cache freed moments before is reused almost for free;
pages a VM has not touched for a while cost ~10 us each on some hosts.) Every timed cold run,
kit's and pandas', starts after --settle seconds (default 20) of quiet, so none of them gets
the pages the previous one freed at a discount.
Baseline: the same features written idiomatically in pandas (groupby(id) shift / diff /
rolling / ewm / cumsum / cumcount, elementwise Series arithmetic, the guard as a grouped
forward fill), parquet read to (N, T, F) float32 arrays (no cache write), in its own child.
Both outputs are compared: max |kit - pandas| / max(1, |pandas|) over every value (the
tolerance rule of tests/test_features.py), with the worst feature named, and the targets and
masks exactly; `outputs_equal` (and so `ok`) is false when any of them differs. `--repeats N`
keeps the best of N cold runs of each side.
Goals (issue): kit_s <= 6 on 2 cores, speedup (pandas_s / kit_s) >= 3, rss_ratio <= 2.5.

    python bench/bench_features.py [--seqs 10721 | --rows-scale 1.0] [--data FILE]
                                   [--groups raw,spreads,...] [--dirty 0.0] [--repeats 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import GB, cpus, emit, peak_rss_bytes, reset_peak, rss_bytes, run_child

FULL_SEQS, STEPS = 10_721, 1000
EPS = 1e-6  # kit.features.ops.EPS, restated: the baseline must not import the ops
BLOCK_ROWS = 1 << 16  # rows per step of the comparison
STACK_ROWS = 1 << 12  # rows per step of the pandas path's column -> row-major copy
# Outputs agree when max |kit - pandas| / max(1, |pandas|) <= this. Looser than float32's 1e-7:
# imbalance of two float32 sums, (a - b) / (|a| + |b|), turns the sums' last-bit differences
# (Polars and pandas add in different orders) into ~1e-5 where |a| + |b| is small.
PARITY_TOL = 1e-4
settle_s = 20.0  # seconds of quiet before each timed cold run (cold_child; --settle)
ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- data


def cold_child(cmd: list[str], env: dict | None = None) -> dict:
    """run_child after --settle seconds of quiet. On VMs with free page reporting, memory a previous
    child freed is handed back to the host after a few seconds; a child started at once reuses
    it at a tenth of the cost of fresh pages (writing 2.5 GB: 0.8 s against 8.8 s here), which
    would favour whichever side runs second."""
    time.sleep(settle_s)
    return run_child(cmd, env=env)



def parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def kit_synth(out_dir: Path, seqs: int) -> Path | None:
    """`kit data synth` into out_dir; None when the command is missing or fails."""
    sizes = ["--full"] if seqs == FULL_SEQS else ["--train-seqs", str(seqs), "--valid-seqs", "1"]
    cmd = [sys.executable, "-m", "kit", "data", "synth", "--out", str(out_dir), "-q", *sizes]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    except OSError:
        return None
    path = out_dir / "train.parquet"
    if done.returncode != 0 or not path.exists() or parquet_rows(path) != seqs * STEPS:
        sys.stderr.write(f"kit data synth failed, using the bench's own data:\n{done.stderr}")
        return None
    return path


def write_own_data(path: Path, seqs: int, seed: int = 0) -> None:
    """A same-shaped stand-in: mid-price random walks, levels around it, noisy sizes/trades."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kit.competition import load_spec

    spec = load_spec("predictorium")
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    writer = None
    for lo in range(0, seqs, 256):
        n = min(256, seqs - lo)
        rows = n * STEPS
        step = np.tile(np.arange(STEPS, dtype=np.int64), n)
        mid = np.cumsum(rng.normal(0, 0.03, (n, STEPS)), axis=1).ravel() + rng.normal(0, 1, rows)
        cols = {
            spec.id_col: np.repeat(np.arange(lo, lo + n, dtype=np.int64), STEPS),
            spec.step_col: step,
            spec.need_col: (step >= spec.warmup) & (step < STEPS - spec.tail),
        }
        for i in range(6):
            cols[f"p{i}"] = mid - 0.05 * (i + 1)
            cols[f"p{i + 6}"] = mid + 0.05 * (i + 1)
        for i in range(12):
            cols[f"v{i}"] = rng.standard_normal(rows)
        for i in range(4):
            cols[f"dp{i}"] = mid + rng.normal(0, 0.05, rows)
            cols[f"dv{i}"] = rng.standard_normal(rows)
        for name in spec.targets:
            cols[name] = rng.standard_normal(rows)
        table = pa.table(
            {
                c: cols[c] if c in spec.input_columns[:3] else cols[c].astype(np.float32)
                for c in [*spec.input_columns, *spec.targets]
            }
        )
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
    writer.close()
    tmp.rename(path)


def dirty_copy(src: Path, dst: Path, fraction: float, seed: int = 0) -> None:
    """src with `fraction` of the feature values replaced by NaN, +inf or -inf."""
    import polars as pl

    from kit.competition import load_spec

    spec = load_spec("predictorium")
    df = pl.read_parquet(src)
    rng = np.random.default_rng(seed)
    specials = np.array([np.nan, np.inf, -np.inf], dtype=np.float32)
    for name in spec.features:
        values = df[name].to_numpy().copy()
        hit = rng.random(len(values)) < fraction
        values[hit] = specials[rng.integers(0, 3, hit.sum())]
        df = df.with_columns(pl.Series(name, values))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    df.write_parquet(tmp)
    tmp.rename(dst)


def shown(path: Path) -> str:
    """The path relative to the repo root where it lies inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def resolve_data(args) -> tuple[Path, dict]:
    if args.data:
        path = Path(args.data)
        about = {"path": shown(path), "source": "--data"}
    else:
        seqs = args.seqs
        out_dir = ROOT / ("data/synth-full" if seqs == FULL_SEQS else f"data/bench/synth-{seqs}")
        path = out_dir / "train.parquet"
        about = {"path": shown(path), "source": "kit data synth"}
        have = path.exists() and parquet_rows(path) == seqs * STEPS
        if args.own_data or (not have and kit_synth(out_dir, seqs) is None):
            path = ROOT / f"data/bench/own-{seqs}.parquet"
            about = {"path": shown(path), "source": "bench random walks"}
            if not (path.exists() and parquet_rows(path) == seqs * STEPS):
                write_own_data(path, seqs)
    if args.dirty > 0:
        dirty = ROOT / f"data/bench/{path.stem}-{path.parent.name}-dirty{args.dirty:g}.parquet"
        if not dirty.exists() or dirty.stat().st_mtime < path.stat().st_mtime:
            dirty_copy(path, dirty, args.dirty)
        path = dirty
        about |= {"dirty_fraction": args.dirty, "path": shown(path)}
    about["rows"] = parquet_rows(path)
    about["mb"] = round(path.stat().st_size / 2**20, 1)
    return path, about


def feature_set(groups: str | None):
    from kit.competition import load_spec
    from kit.features.sets import available_groups, build_feature_set

    spec = load_spec("predictorium")
    names = groups.split(",") if groups else list(available_groups(spec))
    return build_feature_set(spec, names)


# ----------------------------------------------------------------------------- kit


def child_kit(args) -> dict:
    from kit.features import feature_arrays

    fs = feature_set(args.groups)
    before = rss_bytes()
    t0 = time.perf_counter()
    arrays = feature_arrays(Path(args.data), fs, cache_dir=Path(args.cache_dir))
    float(arrays.x[-1, -1, -1])
    seconds = time.perf_counter() - t0
    parts = [arrays.x, arrays.y, arrays.mask, arrays.lengths, arrays.ids]
    return {
        "seconds": seconds,
        "peak_rss": peak_rss_bytes(),
        "rss_before": before,
        "output_bytes": sum(a.nbytes for a in parts),
        "shape": list(arrays.x.shape),
        "outputs": fs.outputs,
        "raw": list(fs.spec.features),
    }


def child_write_floor(args) -> dict:
    """Write --bytes zero bytes to a fresh file in --cache-dir, in 128 MB blocks."""
    block = np.zeros(128 << 20, np.uint8)
    left = args.bytes
    Path(args.cache_dir).mkdir(parents=True)
    t0 = time.perf_counter()
    with open(Path(args.cache_dir) / "floor.bin", "wb") as f:
        while left > 0:
            left -= f.write(memoryview(block)[: min(left, len(block))])
    return {"seconds": time.perf_counter() - t0}


def child_stages(args) -> dict:
    """feature_arrays' stages one by one: seconds and the peak RSS (GB) reached in each."""
    from kit.data.arrays import build_arrays
    from kit.data.cache import cached_arrays, file_digest
    from kit.data.io import read_frame

    fs = feature_set(args.groups)
    path = Path(args.data)
    stages = {}

    @contextlib.contextmanager
    def stage(name):
        reset_peak()
        t0 = time.perf_counter()
        yield
        seconds, peak = time.perf_counter() - t0, peak_rss_bytes()
        stages[name] = {"s": round(seconds, 3), "peak_gb": round(peak / GB, 2)}

    with stage("digest"):
        file_digest(path)
    with stage("read"):
        df = read_frame(path)
    with stage("batch_frame"):
        frame = fs.batch_frame(df)
    del df
    stages["chunks_per_column"] = max(frame.n_chunks("all"))
    with stage("build_arrays"):
        arrays = build_arrays(frame, fs.spec, fs.outputs)
    del frame
    with stage("cache_write"):
        cached_arrays(path, {"bench": "stages"}, lambda: arrays, cache_dir=Path(args.cache_dir))
    return {"stages": stages}


# ----------------------------------------------------------------------------- pandas


def pandas_arrays(path: Path, fs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The feature set's outputs computed with pandas, as (N, T, F), (N, T, K), (N, T)."""
    import pandas as pd

    spec = fs.spec
    df = pd.read_parquet(path)
    keys = df[spec.id_col]
    first = np.flatnonzero(np.r_[True, keys.to_numpy()[1:] != keys.to_numpy()[:-1]])
    n, rows = len(first), len(df)
    if rows % n or not (np.diff(np.r_[first, rows]) == rows // n).all():
        raise SystemExit("the pandas baseline handles fixed-length sequences only")
    steps = rows // n

    # The guard: non-finite -> last finite value of the sequence, 0.0 before there is one.
    raw = df[list(spec.features)].astype(np.float32)
    finite = np.isfinite(raw)
    dirty = [c for c in raw.columns if not finite[c].all()]
    if dirty:
        raw[dirty] = raw[dirty].where(finite[dirty]).groupby(keys).ffill().fillna(0.0)
    del finite
    work: dict[str, pd.Series] = {c: raw[c] for c in raw.columns}

    def frame(cols):
        return pd.DataFrame({c: work[c] for c in cols})

    def grouped(cols):
        return frame(cols).groupby(keys, sort=False)

    def ungroup(result: pd.DataFrame) -> pd.DataFrame:
        """groupby().rolling()/ewm() index by (key, row): back to row order."""
        result = result.droplevel(0)
        if not result.index.is_monotonic_increasing:
            result = result.sort_index()
        return result

    def past(cols, k):  # x[t-k], the sequence's first value before step k
        g = grouped(cols)
        return g.shift(k).fillna(g.transform("first"))

    def safe_div(num, den):
        small = pd.Series(np.where(den < 0, -EPS, EPS).astype(np.float32), index=den.index)
        return num / den.where(den.abs() >= EPS, small)

    for op in fs.ops:
        names = [o for o in op.outputs() if o not in work]
        if not names:
            continue  # raw, or an op already computed
        kind, p, cols = op.op, op.params, op.inputs
        pairs = list(zip(p.get("a", []), p.get("b", []), strict=True))
        if kind == "diff":
            values = [work[a] - work[b] for a, b in pairs]
        elif kind == "ratio":
            values = [safe_div(work[a], work[b]) for a, b in pairs]
        elif kind == "product":
            values = [work[a] * work[b] for a, b in pairs]
        elif kind == "imbalance":
            values = [(work[a] - work[b]) / (work[a].abs() + work[b].abs() + EPS) for a, b in pairs]
        elif kind in ("sum", "mean"):
            values = [getattr(frame(cols), kind)(axis=1)]
        elif kind == "wmid":
            values = []
            for b, a, bs, as_ in zip(p["bid"], p["ask"], p["bid_size"], p["ask_size"], strict=True):
                w_bid, w_ask = work[as_].abs() + EPS / 2, work[bs].abs() + EPS / 2
                values.append((work[b] * w_bid + work[a] * w_ask) / (w_bid + w_ask))
        elif kind == "lag":
            values = list(past(cols, p["k"]).items())
        elif kind == "delta":
            values = list((frame(cols) - past(cols, p["k"])).items())
        elif kind == "roc":
            back = past(cols, p["k"])
            values = [safe_div(work[c] - back[c], back[c]) for c in cols]
        elif kind.startswith("rolling_"):
            stat = kind.removeprefix("rolling_")
            window = grouped(cols).rolling(p["window"], min_periods=1)
            result = window.std(ddof=0) if stat == "std" else getattr(window, stat)()
            values = list(ungroup(result).items())
        elif kind in ("ewm_mean", "ewm_std"):
            how = {"alpha": p["alpha"]} if "alpha" in p else {"span": p["span"]}
            ewm = grouped(cols).ewm(**how, adjust=False)
            result = ewm.std(bias=True) if kind == "ewm_std" else ewm.mean()
            values = list(ungroup(result).items())
        elif kind == "cumsum":
            values = list(grouped(cols).cumsum().items())
        elif kind == "cummax":
            values = list(grouped(cols).cummax().items())
        elif kind == "cumgain":
            gain = grouped(cols).diff().clip(lower=0.0).fillna(0.0)
            values = list(gain.groupby(keys, sort=False).cumsum().items())
        elif kind == "position":
            values = [keys.groupby(keys, sort=False).cumcount() * p["scale"]]
        else:
            raise SystemExit(f"the pandas baseline has no op {kind!r}")
        values = [v[1] if isinstance(v, tuple) else v for v in values]
        if len(values) != len(names):
            raise SystemExit(f"{kind}: {len(values)} columns for {len(names)} names")
        for name, value in zip(names, values, strict=True):
            work[name] = value.astype(np.float32)

    columns = [work[c].to_numpy() for c in fs.outputs]
    x = np.empty((rows, len(columns)), dtype=np.float32)
    for lo in range(0, rows, STACK_ROWS):  # row blocks small enough to stay in cache
        np.stack([c[lo : lo + STACK_ROWS] for c in columns], axis=1, out=x[lo : lo + STACK_ROWS])
    y = df[list(spec.targets)].to_numpy(dtype=np.float32).reshape(n, steps, -1)
    mask = df[spec.need_col].fillna(False).to_numpy(dtype=bool).reshape(n, steps)
    return x.reshape(n, steps, -1), y, mask


def child_pandas(args) -> dict:
    import pandas  # noqa: F401  imported before the timer, as kit's Polars is
    import pyarrow.parquet  # noqa: F401  (what pd.read_parquet loads on its first call)

    fs = feature_set(args.groups)
    before = rss_bytes()
    t0 = time.perf_counter()
    x, y, mask = pandas_arrays(Path(args.data), fs)
    seconds = time.perf_counter() - t0
    peak = peak_rss_bytes()
    out = Path(args.save)
    for name, array in (("x", x), ("y", y), ("mask", mask)):
        np.save(out / f"{name}.npy", array)
    return {
        "seconds": seconds,
        "peak_rss": peak,
        "rss_before": before,
        "output_bytes": x.nbytes + y.nbytes + mask.nbytes,
    }


# ----------------------------------------------------------------------------- compare


def compare(kit_dir: Path, pandas_dir: Path, names: list[str]) -> dict:
    """Max |kit - pandas| and max |kit - pandas| / max(1, |pandas|), the worst feature named."""
    kx = np.load(kit_dir / "x.npy", mmap_mode="r")
    px = np.load(pandas_dir / "x.npy", mmap_mode="r")
    if kx.shape != px.shape:
        return {"error": f"shapes differ: kit {kx.shape}, pandas {px.shape}"}
    kx, px = kx.reshape(-1, kx.shape[-1]), px.reshape(-1, px.shape[-1])
    worst_abs = np.zeros(kx.shape[1])
    worst_rel = np.zeros(kx.shape[1])
    for lo in range(0, kx.shape[0], BLOCK_ROWS):
        a = np.asarray(kx[lo : lo + BLOCK_ROWS], dtype=np.float64)
        b = np.asarray(px[lo : lo + BLOCK_ROWS], dtype=np.float64)
        diff = np.abs(a - b)
        diff[np.isnan(a) != np.isnan(b)] = np.inf
        diff = np.nan_to_num(diff, nan=0.0)  # NaN on both sides counts as equal
        worst_abs = np.maximum(worst_abs, diff.max(axis=0))
        worst_rel = np.maximum(worst_rel, (diff / np.maximum(1.0, np.abs(b))).max(axis=0))
    j = int(np.argmax(worst_rel))
    order = np.argsort(worst_rel)[::-1][:3]
    same_y = np.array_equal(np.load(kit_dir / "y.npy"), np.load(pandas_dir / "y.npy"))
    same_mask = np.array_equal(np.load(kit_dir / "mask.npy"), np.load(pandas_dir / "mask.npy"))
    return {
        "max_abs_diff": float(worst_abs.max()),
        "max_rel_diff": float(worst_rel[j]),
        "worst_features": {names[i]: float(f"{worst_rel[i]:.3g}") for i in order},
        "targets_equal": same_y,
        "mask_equal": same_mask,
    }


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, default=None, help=f"sequences (default {FULL_SEQS})")
    parser.add_argument(
        "--rows-scale", type=float, default=None, help="fraction of the full size, e.g. 0.05"
    )
    parser.add_argument("--data", help="use this parquet file instead of synthetic data")
    parser.add_argument(
        "--own-data",
        action="store_true",
        help="use the bench's random walks even if `kit data synth` works",
    )
    parser.add_argument("--groups", help="comma-separated feature groups (default: all)")
    parser.add_argument(
        "--dirty",
        type=float,
        default=0.0,
        help="fraction of feature values set to NaN/inf (exercises the guard)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="cold runs of kit (fresh process and cache each) and of pandas; the best of each "
        "is kept",
    )
    parser.add_argument("--no-pandas", dest="pandas", action="store_false")
    parser.add_argument("--settle", type=float, default=20.0,
                        help="seconds of quiet before each timed cold run (default 20)")
    parser.add_argument(
        "--stages",
        action="store_true",
        help="also time feature_arrays' stages one by one (one more kit run)",
    )
    parser.add_argument("--child", choices=["kit", "pandas", "stages", "write-floor"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global settle_s
    settle_s = args.settle
    if args.child:
        child = {"kit": child_kit, "pandas": child_pandas, "stages": child_stages,
                 "write-floor": child_write_floor}[args.child]
        print(json.dumps(child(args)))
        return
    if args.seqs is None:
        scale = 1.0 if args.rows_scale is None else args.rows_scale
        args.seqs = max(1, round(FULL_SEQS * scale))
    path, about = resolve_data(args)

    base = [sys.executable, __file__, "--data", str(path)]
    if args.groups:
        base += ["--groups", args.groups]
    (ROOT / "data/bench").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-features-", dir=ROOT / "data/bench"))
    try:
        colds = []
        for i in range(max(1, args.repeats)):
            cache = tmp / f"cache{i}"
            colds.append(cold_child([*base, "--child", "kit", "--cache-dir", str(cache)]))
            if i:
                shutil.rmtree(cache)
        kit = min(colds, key=lambda r: r["seconds"])
        hit = run_child([*base, "--child", "kit", "--cache-dir", str(tmp / "cache0")])
        polars_allocator = cold_child([*base, "--child", "kit", "--cache-dir",
                                      str(tmp / "cache-polars-allocator")],
                                     env={"_RJEM_MALLOC_CONF": ""})
        # before that entry is deleted: freed page cache is reused at no cost for a while, and
        # the floor is for the fresh pages a cold build gets
        floor = cold_child([*base, "--child", "write-floor", "--cache-dir", str(tmp / "floor"),
                           "--bytes", str(hit["output_bytes"])])
        shutil.rmtree(tmp / "cache-polars-allocator")
        shutil.rmtree(tmp / "floor")
        (kit_dir,) = (tmp / "cache0").glob("*/x.npy")
        names = kit["outputs"]
        record = {
            "bench": "features_batch",
            "rows": about["rows"],
            "features": len(names),
            "derived_features": len([c for c in names if c not in kit["raw"]]),
            "shape": kit["shape"],
            "cpus": cpus(),
            "kit_s": round(kit["seconds"], 3),
            "kit_cache_hit_s": round(hit["seconds"], 3),
            "kit_s_polars_allocator": round(polars_allocator["seconds"], 3),
            "kit_cpu_s_polars_allocator": {
                k: round(polars_allocator[f"child_{k}_s"], 1) for k in ("wall", "user", "sys")},
            "write_floor_s": round(floor["seconds"], 3),
            "write_floor_cpu_s": {
                k: round(floor[f"child_{k}_s"], 1) for k in ("wall", "user", "sys")},
            "pandas_s": None,
            "speedup": None,
            "kit_cpu_s": {k: round(kit[f"child_{k}_s"], 1) for k in ("wall", "user", "sys")},
            "kit_peak_rss_gb": round(kit["peak_rss"] / GB, 3),
            "kit_rss_before_gb": round(kit["rss_before"] / GB, 3),
            "output_gb": round(kit["output_bytes"] / GB, 3),
            "rss_ratio": round(kit["peak_rss"] / kit["output_bytes"], 3),
        }
        if len(colds) > 1:
            record["kit_runs_s"] = [round(r["seconds"], 3) for r in colds]
        if args.pandas:
            pandas_dir = tmp / "pandas"
            pandas_dir.mkdir()
            # best of --repeats like kit's cold runs: the same number of tries on both sides
            pd_runs = [cold_child([*base, "--child", "pandas", "--save", str(pandas_dir)])
                       for _ in range(max(1, args.repeats))]
            pd_run = min(pd_runs, key=lambda r: r["seconds"])
            if len(pd_runs) > 1:
                record["pandas_runs_s"] = [round(r["seconds"], 3) for r in pd_runs]
            record |= {
                "pandas_s": round(pd_run["seconds"], 3),
                "speedup": round(pd_run["seconds"] / kit["seconds"], 2),
                "pandas_cpu_s": {
                    k: round(pd_run[f"child_{k}_s"], 1) for k in ("wall", "user", "sys")
                },
                "pandas_peak_rss_gb": round(pd_run["peak_rss"] / GB, 3),
            }
            record |= compare(kit_dir.parent, pandas_dir, names)
        else:
            record["max_rel_diff"] = None
        record |= {"goal_s": 6, "goal_speedup": 3, "goal_rss_ratio": 2.5}
        record |= {"parity_tol": PARITY_TOL}
        same = "error" not in record and (not args.pandas or (
            record["max_rel_diff"] <= PARITY_TOL and record["targets_equal"]
            and record["mask_equal"]))
        record["outputs_equal"] = same
        record["ok"] = bool(
            record["kit_s"] <= 6
            and record["rss_ratio"] <= 2.5
            and (record["speedup"] or 0) >= 3
            and same
        )
        if args.stages:
            record["kit_stages"] = run_child(
                [*base, "--child", "stages", "--cache-dir", str(tmp / "stages")]
            )["stages"]
        record["data"] = about
        emit(record)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
