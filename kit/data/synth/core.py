"""Building blocks shared by the synthetic generators: latent processes, the fixed quantile
normaliser, per-sequence regimes and the chunked parquet writer.

Arrays of a chunk are laid out (T, n, ...): time first, so a time step is one contiguous slice
and a recursion over time is a loop of vectorised operations on n sequences at once.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import threading
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kit.competition import CompetitionSpec
from kit.data.contract import contract_dtype
from kit.errors import KitError

CLIP = 5.2  # quantile-normalised features are clipped here, like sklearn's QuantileTransformer
_NORMAL = NormalDist()


def ar1(rng: np.random.Generator, steps: int, n: int, phi, sd) -> np.ndarray:
    """Stationary AR(1) processes x[t] = phi x[t-1] + innovation, shape (P, steps, n), float32.

    phi and sd are length-P sequences (one process per entry); sd is the stationary std.
    """
    phi = np.asarray(phi, dtype=np.float32)
    sd = np.asarray(sd, dtype=np.float32)
    x = rng.standard_normal((steps, n, phi.size), dtype=np.float32)
    x[0] *= sd
    x[1:] *= sd * np.sqrt(1.0 - phi * phi)
    # the recursion runs on contiguous (n, P) time slices; callers get contiguous processes
    return np.ascontiguousarray(np.moveaxis(linear_filter(x, phi), 2, 0))


def linear_filter(x: np.ndarray, phi) -> np.ndarray:
    """In place: x[t] += phi * x[t-1] for t = 1..steps-1 (x[0] is the initial state)."""
    for t in range(1, x.shape[0]):
        x[t] += phi * x[t - 1]
    return x


def stratified_normal(rng: np.random.Generator, n: int) -> np.ndarray:
    """The n normal quantiles at probabilities (i + 0.5) / n, in random order.

    Per-sequence regimes drawn this way keep the mix of calm and wild sequences the same in
    a small set as in a large one, so set-level statistics are stable across seeds.
    """
    u = (rng.permutation(n) + 0.5) / n
    return np.array([_NORMAL.inv_cdf(p) for p in u])


def normal_quantiles(z: np.ndarray) -> np.ndarray:
    return np.array([_NORMAL.cdf(v) for v in z])


class QuantileMap:
    """Per-column monotone map from raw values to ~N(0, 1), fitted once on a reference sample.

    Piecewise linear through the reference quantiles at normal scores -3.5..3.5, extended
    linearly in the tails and clipped at +-CLIP. Applied through a uniform lookup table, which
    is ~5x faster than np.interp on large arrays.
    """

    KNOTS = np.linspace(-3.5, 3.5, 71)
    TABLE = 4096

    def __init__(self, reference: np.ndarray):
        """reference: (rows, columns) raw values of a fixed-seed reference sample."""
        z = self.KNOTS
        q = np.quantile(reference, normal_quantiles(z), axis=0).T.astype(np.float64)
        lo_list, scale_list, tables = [], [], []
        for col in q:
            col = _strictly_increasing(col)
            # tail slopes from the outer half-unit of normal scores
            s_lo = (col[5] - col[0]) / (z[5] - z[0])
            s_hi = (col[-1] - col[-6]) / (z[-1] - z[-6])
            x_lo = col[0] - (CLIP + z[0]) * s_lo
            x_hi = col[-1] + (CLIP - z[-1]) * s_hi
            xs = np.concatenate([[x_lo], col, [x_hi]])
            zs = np.concatenate([[-CLIP], z, [CLIP]])
            grid = np.linspace(x_lo, x_hi, self.TABLE + 1)
            tables.append(np.interp(grid, xs, zs))
            lo_list.append(x_lo)
            scale_list.append(self.TABLE / (x_hi - x_lo))
        self.lo = np.array(lo_list, dtype=np.float32)
        self.scale = np.array(scale_list, dtype=np.float32)
        table = np.array(tables, dtype=np.float32)
        self.table = table[:, :-1].copy()
        self.slope = np.diff(table, axis=1).astype(np.float32)

    def apply(self, x: np.ndarray, column: int) -> np.ndarray:
        """Map raw values of one column (any shape) to clipped normal scores, float32."""
        u = (np.asarray(x, dtype=np.float32) - self.lo[column]) * self.scale[column]
        np.clip(u, 0.0, self.TABLE - 1e-3, out=u)
        i = u.astype(np.int32)
        u -= i
        out = self.slope[column][i]
        out *= u
        out += self.table[column][i]
        return out


def _strictly_increasing(col: np.ndarray) -> np.ndarray:
    col = np.maximum.accumulate(col)
    eps = 1e-9 * max(1.0, float(np.abs(col).max()))
    return col + eps * np.arange(col.size)


def need_mask(steps: int, warmup: int, tail: int) -> np.ndarray:
    s = np.arange(steps)
    return (s >= warmup) & (s < steps - tail)


def arrow_schema(spec: CompetitionSpec, columns: list[str]) -> pa.Schema:
    """Contract dtypes (contract_dtype): id and step Int64, the need flag Boolean, everything
    else Float32."""
    return pa.schema([(c, pa.from_numpy_dtype(np.dtype(contract_dtype(spec, c))))
                      for c in columns])


def seq_major(x: np.ndarray) -> np.ndarray:
    """(T, n) time-major chunk -> flat float32 rows sorted by sequence, then step."""
    out = np.empty((x.shape[1], x.shape[0]), dtype=np.float32)
    out[...] = x.T
    return out.reshape(-1)


def temp_suffix() -> str:
    """The writer's own part of a temp name: its host and pid (a folder may be shared)."""
    return f".tmp-{socket.gethostname()}-{os.getpid()}"


def remove_dead_temp_files(folder: Path) -> None:
    """Temp files (.NAME.tmp-HOST-PID) of runs that were killed: each name is its writer's own,
    so no later run overwrites them; this host's whose process is gone are removed (a pid means
    nothing on another host sharing the folder)."""
    # the whole name: host node-1's pattern would match node-1-gpu's files by a glob
    own = re.compile(rf"\..+\.parquet\.tmp-{re.escape(socket.gethostname())}-(\d+)")
    for leftover in Path(folder).glob(".*.parquet.tmp-*"):
        match = own.fullmatch(leftover.name)
        if match and not _alive(int(match[1])):
            leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: alive
        return True
    return True


class ParquetSink:
    """Streams tables to one parquet file, one row group per chunk, written by a background
    thread (so encoding overlaps the next chunk's generation) into a temp file that `publish`
    renames into place: an interrupted run never leaves a truncated file behind, and a caller
    publishing several files only once all are written never leaves a mix of two runs."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}{temp_suffix()}")
        # dictionary-encoding float columns costs ~10x the write time and gains nothing
        keys = [f.name for f in schema if not pa.types.is_floating(f.type)]
        try:
            self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd",
                                           use_dictionary=keys)
        except OSError:  # Arrow names the file; a folder there is said as for the outputs
            if self.tmp.is_dir():
                raise KitError(f"{self.tmp} is not a file; move it, or write the data "
                               "elsewhere") from None
            raise
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (table := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.writer.write_table(table, row_group_size=table.num_rows)
                except BaseException as exc:  # re-raised in the caller's thread
                    self.error = exc

    def write(self, columns: dict[str, np.ndarray]) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(pa.table(columns, schema=self.writer.schema))

    def close(self, ok: bool = True) -> None:
        """Finish the temp file (removed unless ok and written without error)."""
        self.queue.put(None)
        self.thread.join()
        try:
            self.writer.close()  # its footer may meet a full disk too
        except BaseException as exc:
            self.error = self.error or exc
        if not ok or self.error is not None:
            self.tmp.unlink(missing_ok=True)
        if self.error is not None:
            raise self.error

    def publish(self) -> None:
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)
