"""Built-in synthetic competitions: realistic data with a known oracle, for demos and tuning.

`synthesize` writes train.parquet, valid.parquet and valid_oracle.parquet for a spec. The
generator family follows the spec's protocol: "targets" -> a limit-order-book model of the
Predictorium challenge (kit.data.synth.predictorium), "next-state" -> a latent nonlinear
dynamical system (kit.data.synth.rnn). See docs/synth.md for the models and measured stats.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kit.competition import CompetitionSpec, load_spec
from kit.data.synth.core import (
    ParquetSink,
    arrow_schema,
    need_mask,
    remove_dead_temp_files,
    seq_major,
)
from kit.data.synth.predictorium import LobGenerator
from kit.data.synth.rnn import RnnGenerator
from kit.errors import DataError, KitError, naming
from kit.progress import bar_switch

DEFAULT_SEQS = {"train": 400, "valid": 200}  # a quick demo: ~3 s on 2 cores
FULL_SEQS = {"train": 10_721, "valid": 1_444}  # the real Predictorium split sizes
MAX_SEQS = 1_000_000  # 100x the full size (a billion rows): past it, a typo, not a plan
CHUNK_SEQS = 256  # sequences per chunk = per parquet row group (fixed: data depend on it)
_SPLIT_CODE = {"train": 0, "valid": 1}
GENERATION_KEY = "kit.synth"  # parquet metadata: the arguments that generated the file


__all__ = ["SynthResult", "synthesize", "make_generator", "synth_dir", "DEFAULT_SEQS",
           "FULL_SEQS", "CHUNK_SEQS"]


def synth_dir(spec_name: str) -> Path:
    """Where a competition's synthetic data goes by default: data/synth for the default one
    (what the experiments read), data/synth-NAME for another (experiments/rnn_gru.toml reads
    data/synth-rnn-challenge), so generating one never replaces another's files."""
    return Path("data/synth" if spec_name == "predictorium" else f"data/synth-{spec_name}")


@dataclass
class SynthResult:
    train: Path
    valid: Path
    oracle: Path
    train_rows: int
    valid_rows: int
    seconds: float


def make_generator(spec: CompetitionSpec) -> LobGenerator | RnnGenerator:
    """The generator family for a spec's protocol (raises SpecError if its columns don't fit)."""
    return RnnGenerator(spec) if spec.next_state else LobGenerator(spec)


def synthesize(
    spec: CompetitionSpec,
    out_dir: Path,
    *,
    train_seqs: int | None = None,
    valid_seqs: int | None = None,
    seed: int = 0,
    full: bool = False,
    progress: bool = False,
) -> SynthResult:
    """Write out_dir/{train,valid,valid_oracle}.parquet; the same arguments give the same bytes.

    Valid sequence ids continue after the train ids. The oracle file holds, for every valid row,
    E[output | latent history up to that row] (spec.id_col, spec.step_col, one column per output).
    """
    spec = load_spec(spec)
    sizes = dict(FULL_SEQS if full else DEFAULT_SEQS)
    sizes.update({k: v for k, v in (("train", train_seqs), ("valid", valid_seqs)) if v is not None})
    for split, n in sizes.items():
        if not (isinstance(n, int | np.integer) and not isinstance(n, bool)
                and 1 <= n <= MAX_SEQS):
            raise KitError(f"{split}_seqs (--{split}-seqs) must be a whole number from 1 to "
                           f"{MAX_SEQS:,}, got {n!r}")
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool):  # numpy: a TypeError
        raise KitError(f"seed (--seed) must be an integer, got {seed!r}")
    if seed < 0:
        raise KitError(f"seed (--seed) must be >= 0, got {seed}")
    generator = make_generator(spec)
    if spec.warmup + spec.tail >= generator.steps:  # no row would be scored
        raise KitError(f"spec {spec.name!r}: warmup {spec.warmup} + tail {spec.tail} leave no "
                       f"scored step in the generator's {generator.steps}-step sequences; give "
                       "the spec a seq_len past them")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_temp_files(out_dir)
    result = SynthResult(
        train=out_dir / "train.parquet",
        valid=out_dir / "valid.parquet",
        oracle=out_dir / "valid_oracle.parquet",
        train_rows=sizes["train"] * generator.steps,
        valid_rows=sizes["valid"] * generator.steps,
        seconds=0.0,
    )
    for path in (result.train, result.valid, result.oracle):  # found before any is replaced
        if path.exists() and not path.is_file():
            raise KitError(f"{path} is not a file; move it, or write the data elsewhere")
    start = time.perf_counter()
    chunks = sum(-(-n // CHUNK_SEQS) for n in sizes.values())
    written: list[ParquetSink] = []  # renamed into place together, once all three are whole
    try:
        with tqdm(total=chunks, desc=f"synth {spec.name}", unit="chunk",
                  **bar_switch(progress)) as bar:
            # in each file's metadata: the demo refuses an oracle of another generation (the
            # same sizes share every key, whatever the seed)
            generation = json.dumps({"spec": spec.name, "seed": int(seed), "train_seqs":
                                     int(sizes["train"]), "valid_seqs": int(sizes["valid"])})
            write = partial(_write_split, generator, seed=seed, bar=bar, generation=generation)
            written += write("train", sizes["train"], first_id=0, path=result.train)
            written += write("valid", sizes["valid"], first_id=sizes["train"],
                             path=result.valid, oracle_path=result.oracle)
    except BaseException:
        for sink in written:
            sink.discard()
        raise
    for i, sink in enumerate(written):
        try:
            sink.publish()
        except BaseException:
            for left in written[i:]:
                left.discard()
            raise
    result.seconds = time.perf_counter() - start
    return result


def generation_of(path: Path) -> str | None:
    """The arguments `synthesize` generated a file with (its parquet metadata, GENERATION_KEY),
    None for a file written otherwise."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, ValueError):  # (the caller's own reads say what is wrong with the file)
        return None
    mark = metadata.get(GENERATION_KEY.encode())
    return mark.decode(errors="replace") if mark else None


def refuse_other_generation(data: Path, oracle: Path, fix: str) -> None:
    """An oracle generated with other arguments than the data file (another seed's oracle has
    the same ids and steps, so the keys cannot tell) scores other targets: a ceiling of about
    0. Files without the mark are not judged here."""
    ours, theirs = generation_of(data), generation_of(oracle)
    if ours and theirs and ours != theirs:
        raise DataError(f"{oracle} belongs to other data: generated with {theirs}, and {data} "
                        f"with {ours}; {fix}")


def _write_split(generator, split, n, *, first_id, path, seed, bar, generation,
                 oracle_path=None) -> list[ParquetSink]:
    """Generate `n` sequences chunk by chunk, streaming each chunk as one row group; returns
    the sinks, whose finished temp files the caller publishes."""
    spec: CompetitionSpec = generator.spec
    steps = generator.steps
    code = _SPLIT_CODE[split]
    regime = generator.regimes(np.random.default_rng([seed, code, 0]), n, split)
    need = need_mask(steps, spec.warmup, spec.tail)
    key_cols = [spec.id_col, spec.step_col]
    mark = {GENERATION_KEY: generation}
    sinks: list[ParquetSink] = []
    ok = False
    try:
        # opened inside the try: the oracle's sink failing to open closes the valid file's
        # (its writer thread, its temp file) like any other failure of the split
        sinks.append(ParquetSink(path, arrow_schema(spec, spec.columns).with_metadata(mark)))
        if oracle_path is not None:
            sinks.append(ParquetSink(oracle_path, arrow_schema(
                spec, key_cols + list(spec.outputs)).with_metadata(mark)))
        for index, lo in enumerate(range(0, n, CHUNK_SEQS)):
            m = min(CHUNK_SEQS, n - lo)
            rng = np.random.default_rng([seed, code, 1, index])
            features, targets, oracle = generator.chunk(rng, regime[lo : lo + m], len(sinks) > 1)
            ids = np.arange(first_id + lo, first_id + lo + m, dtype=np.int64)
            keys = {
                spec.id_col: np.repeat(ids, steps),
                spec.step_col: np.tile(np.arange(steps, dtype=np.int64), m),
            }
            data = dict(zip(spec.features + spec.targets, features + targets, strict=True))
            # naming: Arrow's writer says "[Errno 28] Error writing bytes to file" without
            # the file (r303)
            with naming(path):
                sinks[0].write(
                    keys
                    | {spec.need_col: np.tile(need, m)}
                    | {c: seq_major(x) for c, x in data.items()}
                )
            if oracle is not None:
                outputs = zip(spec.outputs, oracle, strict=True)
                with naming(oracle_path):
                    sinks[1].write(keys | {c: seq_major(x) for c, x in outputs})
            bar.update()
        ok = True
    finally:
        errors = []
        for sink in sinks:  # close every sink (removing temp files) even if one fails
            try:
                with naming(sink.path):
                    sink.close(ok)
            except Exception as exc:
                errors.append(exc)
        if errors:  # the split is not whole: its sinks that did close keep no temp file
            for sink in sinks:
                sink.discard()
            if ok:
                raise errors[0]
    return sinks
