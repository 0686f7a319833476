"""On-disk cache of SequenceArrays, keyed by the input file's content and the build settings.

One folder per key holds x.npy, y.npy, mask.npy, lengths.npy, ids.npy and a meta.json. A hit
memory-maps the .npy files read-only, so a second run starts at once and processes share pages.
An entry is written into a temporary folder and renamed into place, so readers only ever see
complete entries; one that is corrupt anyway (truncated file, wrong shape) is rebuilt with a
CacheWarning.

The input's sha256 is remembered in `digests.json` next to the entries, under the file's stat
(size, mtime, inode, ctime), so a hit does not read the input again. A stat is trusted only if
the file had not been modified for a while when it was hashed (git's "racy" rule): a later
change always moves mtime or ctime. When the digest is not known, the file is hashed on a
thread while the build starts; if the finished digest names an existing entry, the build stops
at its next block and the entry is used. Blocks are written to the entry's files on a thread
too, so the next block is computed while the last one is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from kit.data.arrays import SequenceArrays
from kit.errors import DataError, os_error_text
from kit.temp import owner_gone, owner_tag, space_hash  # (pack's PID and host tags)

CACHE_FORMAT = 1  # bump when the folder layout changes; old entries then never match
ARRAY_FIELDS = ("x", "y", "mask", "lengths", "ids")
TMP_PREFIX = ".tmp-"
STALE_TMP_S = 6 * 3600  # temp folders this old belong to killed writers and are removed
DIGEST_BLOCK = 8 << 20
DIGESTS_FILE = "digests.json"  # stat -> sha256 of the inputs, so a hit reads no input bytes
RACY_NS = 2_000_000_000  # a file modified this close to its hashing is hashed again next time
WRITES_IN_FLIGHT = 2  # blocks queued for the writer thread (bounds the memory they hold)

# What reading a damaged entry raises: np.load gives EOFError on an empty .npy (a full disk or
# a power cut leaves one), ValueError on a bad header, KeyError/TypeError on odd meta.json.
UNUSABLE_ENTRY = (OSError, ValueError, KeyError, TypeError, EOFError)
_ENTRY_NAME = re.compile(r"^.+-[0-9a-f]{24}$")
# .tmp-WHAT-OWNER-XXXXXXXX: OWNER is the writer's PID, with (since r315) pack's host tag
_TMP_NAME = re.compile(r"^\.tmp-.+-(?P<owner>\d{1,9}(?:\.[0-9a-f]{8})?)-[0-9a-f]{8}$")
_digests: dict[tuple, str] = {}


class CacheWarning(UserWarning):
    """A cache entry could not be used or written; the arrays were (re)built instead."""


def _stat_key(path: Path) -> tuple:
    """What changes whenever the file's bytes do: size, mtime, inode (a file replaced by
    rename) and ctime (which no tool can set back)."""
    stat = path.stat()
    return (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)


def require_file(path: Path) -> None:
    if not Path(path).is_file():
        raise DataError(f"{Path(path).resolve()}: no such data file (kit data synth writes the "
                        "built-in competition's files; [data] train/valid name the files to use)")


def file_digest(path: Path) -> str:
    """sha256 hex of the file's bytes, remembered in-process per stat (see _stat_key)."""
    path = Path(path).resolve()
    require_file(path)
    memo = _stat_key(path)
    if memo in _digests:
        return _digests[memo]
    started = time.time_ns()
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(DIGEST_BLOCK))
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(buffer[:n])  # releases the GIL: hashing overlaps other work
    if _stat_key(path) == memo and _settled(memo, started):
        _digests[memo] = digest.hexdigest()
    return digest.hexdigest()


def _settled(memo: tuple, hashed_at_ns: int) -> bool:
    """Whether a change after hashing is sure to show in the stat: the file's last change is
    older than the hashing by more than any filesystem's timestamp granularity."""
    return max(memo[2], memo[4]) < hashed_at_ns - RACY_NS


def known_digest(path: Path, cache_dir: Path) -> str | None:
    """The file's sha256 if this process or the cache's digests.json already knows it for the
    file's current stat; None when the file must be read."""
    path = Path(path).resolve()
    memo = _stat_key(path)
    if memo in _digests:
        return _digests[memo]
    record = _read_digests(cache_dir).get(str(path))
    # The file is bookkeeping that a user or a crash may have mangled: use only a well-formed
    # record (stat fields, then the digest); anything else means re-hashing the file.
    if _well_formed(record) and tuple(record[:4]) == memo[1:]:
        _digests[memo] = record[4]
        return record[4]
    return None


def _read_digests(cache_dir: Path) -> dict:
    try:
        table = json.loads((Path(cache_dir) / DIGESTS_FILE).read_text(encoding="utf-8"))
        return table if isinstance(table, dict) else {}
    except (OSError, ValueError):
        return {}


def remember_digest(path: Path, cache_dir: Path) -> None:
    """Record the in-process digest of `path` (if settled) in digests.json, atomically; a
    concurrent writer may drop our record, which only costs a re-hash later."""
    path = Path(path).resolve()
    memo = _stat_key(path)
    if memo not in _digests:
        return
    table = _read_digests(cache_dir)
    record = [*memo[1:], _digests[memo]]
    if table.get(str(path)) == record:
        return
    table[str(path)] = record
    tmp = Path(cache_dir) / f"{TMP_PREFIX}{DIGESTS_FILE}-{owner_tag()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(json.dumps(table, indent=0), encoding="utf-8")
        os.replace(tmp, Path(cache_dir) / DIGESTS_FILE)
    except OSError:  # bookkeeping only: a read-only cache still serves its entries (there,
        with contextlib.suppress(OSError):  # unlinking even a missing file is EROFS)
            tmp.unlink(missing_ok=True)


def cache_key(path: Path, key: dict) -> str:
    """sha256 hex over the file's digest and the canonical JSON of `key`."""
    return _key_of(file_digest(path), key)


def _key_of(file_sha: str, key: dict) -> str:
    text = json.dumps(key, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(f"{file_sha}\n{CACHE_FORMAT}\n{text}".encode()).hexdigest()


def cached_arrays(
    path: Path,
    key: dict,
    build: Callable[[], SequenceArrays],
    *,
    cache_dir: Path = Path("data/cache"),
) -> SequenceArrays:
    """Load the arrays built from `path` with settings `key`, or call `build()` and store them."""
    return cached_arrays_into(path, key, lambda sink: build(), cache_dir=cache_dir,
                              overlap_digest=False)


class CacheWriteFailed(OSError):
    """Writing an entry's file failed (a full disk, a file size limit): the build goes on
    uncached rather than losing the run."""


class RowWriter:
    """Fills one array block by block along its first axis, in order.

    To a file, an .npy written with plain sequential writes: on these VMs a page fault costs
    microseconds, and filling a 5 GB memory map faults 1.3M times; write() faults none. With
    background writes a block is written after write() returns: the builder must pass a fresh
    array each call, not refill one buffer (kit's builders do; copying every block would
    double the memory traffic of a 5 GB build).
    """

    def __init__(self, shape: tuple, dtype, path: Path | None = None,
                 writes: BackgroundWrites | None = None, probe: Callable[[], None] | None = None):
        self.shape, self.dtype, self.path, self.rows = tuple(shape), np.dtype(dtype), path, 0
        self.writes, self.probe = writes, probe
        if path is None:
            self.array = np.empty(self.shape, dtype=self.dtype)
        else:
            try:
                self.file = open(path, "wb")  # noqa: SIM115 - closed in finish()
                np.lib.format.write_array_header_1_0(self.file, {
                    "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                    "shape": self.shape})
            except OSError as exc:
                if hasattr(self, "file"):
                    self.close()
                raise CacheWriteFailed(exc.errno, exc.strerror, str(path)) from exc

    def _write(self, view: memoryview) -> None:
        try:
            self.file.write(view)
        except OSError as exc:  # a file.write error names no file: name it
            raise CacheWriteFailed(exc.errno, exc.strerror, str(self.path)) from exc

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:] or self.rows + len(block) > self.shape[0]:
            raise ValueError(f"block {block.shape} does not continue an array of {self.shape} "
                             f"at row {self.rows}")
        if self.probe is not None:
            self.probe()
        if self.path is None:
            self.array[self.rows:self.rows + len(block)] = block
        elif self.writes is not None:  # the block is fresh per call: safe to write later
            self.writes.submit(self._write, memoryview(block).cast("B"))
        else:
            self._write(memoryview(block).cast("B"))
        self.rows += len(block)

    def finish(self) -> np.ndarray:
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.rows} rows written of {self.shape[0]}")
        if self.path is None:
            return self.array
        if self.writes is not None:
            self.writes.drain()
        try:
            self.file.close()
            # the file gone (clear_cache from another process took the temp folder): the
            return np.load(self.path, mmap_mode="r")  # build goes on uncached
        except OSError as exc:  # (or the flush of the last bytes failed)
            raise CacheWriteFailed(exc.errno, exc.strerror, str(self.path)) from exc

    def close(self) -> None:
        if self.path is not None:
            # closing twice is allowed; an abandoned file's last flush may fail as its writes
            # did (a full disk), which must not hide why the build stopped
            with contextlib.suppress(OSError):
                self.file.close()


class BackgroundWrites:
    """One writer thread for an entry's files: blocks are written in submission order while
    the builder computes the next ones; at most WRITES_IN_FLIGHT wait, and a failed write
    raises in the builder at its next submit or drain."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="kit-cache-write")
        self.pending: deque[Future] = deque()

    def submit(self, fn, *args) -> None:
        while len(self.pending) >= WRITES_IN_FLIGHT:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(fn, *args))

    def drain(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        for future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)


Sink = Callable[[str, tuple, np.dtype], RowWriter]


def cached_arrays_into(
    path: Path,
    key: dict,
    build_into: Callable[[Sink], SequenceArrays],
    *,
    cache_dir: Path = Path("data/cache"),
    overlap_digest: bool = True,
) -> SequenceArrays:
    """Like cached_arrays, for builders that produce their arrays block by block.

    `build_into(sink)` opens each output with `sink(field, shape, dtype)` and writes it in
    order; the blocks go straight into the .npy files of the entry being built, so a large
    result is written once, as it is built, and never held in memory whole. With
    `overlap_digest` an unknown input is hashed while the build runs (the build stops at its
    next block if the digest names an existing entry); without, it is hashed first.
    """
    path, cache_dir = Path(path), Path(cache_dir)

    def entry_of(file_sha: str) -> Path:
        """The entry of this content and key: named after the file (as its link resolves),
        or one a copy of the same bytes under another name made."""
        tail = f"-{_key_of(file_sha, key)[:24]}"
        mine = cache_dir / f"{_safe_stem(path.resolve())}{tail}"
        if mine.exists():
            return mine
        return next((entry for entry in sorted(cache_dir.glob(f"*{tail}"))
                     if not entry.name.startswith(".")), mine)

    def hit_after_all(hashing: Future | None) -> SequenceArrays | None:
        """Where no entry can be written (a read-only cache, a full disk): the entry of the
        digest being hashed, if one exists; it may not be on record (a file copied anew)."""
        if hashing is None:
            return None
        sha = hashing.result()
        entry = entry_of(sha)
        hit = _load_or_warn(entry, _key_of(sha, key)) if entry.exists() else None
        if hit is not None:
            remember_digest(path, cache_dir)  # (where it can: a full disk may take 1 KB)
        return hit

    require_file(path)
    # first: a file replaced while it is hashed below would give the old content's digest
    # with the new content's arrays; the check after the build compares with this stat
    before = _stat_key(path)
    known = known_digest(path, cache_dir)
    if known is None and not overlap_digest:
        known = file_digest(path)
    if known is not None and entry_of(known).exists():
        hit = _load_or_warn(entry_of(known), _key_of(known, key))
        if hit is not None:
            remember_digest(path, cache_dir)
            return hit
    with ThreadPoolExecutor(1, thread_name_prefix="kit-digest") as hasher:
        hashing = hasher.submit(file_digest, path) if known is None else None
        try:
            tmp = _new_tmp(cache_dir, path)
        except OSError as exc:
            hit = hit_after_all(hashing)
            if hit is not None:
                return hit
            warnings.warn(f"could not write cache entry under {cache_dir} "
                          f"({os_error_text(exc)}); using the arrays uncached", CacheWarning,
                          stacklevel=2)  # fmt: skip
            return build_into(in_memory)
        try:
            try:
                arrays = _build_stopping_on_hit(build_into, tmp, hashing, entry_of)
                if isinstance(arrays, Path):  # the input's digest named a finished entry
                    hit = _load_or_warn(arrays, _key_of(hashing.result(), key))
                    if hit is not None:
                        remember_digest(path, cache_dir)
                        return hit
                    shutil.rmtree(tmp, ignore_errors=True)
                    tmp = _new_tmp(cache_dir, path)
                    arrays = _build_stopping_on_hit(build_into, tmp, None, entry_of)
            except CacheWriteFailed as exc:
                shutil.rmtree(tmp, ignore_errors=True)  # (its space back first)
                hit = hit_after_all(hashing)
                if hit is not None:
                    return hit
                warnings.warn(f"could not write cache entry under {cache_dir} ({exc}); "
                              "building the arrays again, uncached", CacheWarning,
                              stacklevel=2)  # fmt: skip
                return build_into(in_memory)
            sha = known if hashing is None else hashing.result()
            if _stat_key(path) != before:  # the digest and the arrays may be of two versions
                raise DataError(f"{path} changed while kit read it (another process writing "
                                "it?): nothing was cached; run again once the file is complete")
            entry, digest = entry_of(sha), _key_of(sha, key)
            try:
                written = {p.stem for p in tmp.glob("*.npy")}
                for name in ARRAY_FIELDS:
                    if name not in written:  # the builder made this one in memory
                        np.save(tmp / f"{name}.npy", np.ascontiguousarray(getattr(arrays, name)),
                                allow_pickle=False)
                _finish(tmp, entry, digest, arrays, source_record(path, sha) | {"key": key})
                remember_digest(path, cache_dir)
                return _load(entry, digest)
            except (OSError, ValueError) as exc:
                warnings.warn(f"could not write cache entry {entry} ({exc}); using the arrays "
                              "uncached", CacheWarning, stacklevel=2)  # fmt: skip
                return _materialised(arrays)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class _EntryExists(Exception):
    """Raised between blocks: the input's digest, just computed, names a finished entry."""

    def __init__(self, entry: Path):
        self.entry = entry


def _build_stopping_on_hit(build_into, tmp: Path, hashing: Future | None,
                           entry_of) -> SequenceArrays | Path:
    """Run the builder into tmp; returns the entry instead if the digest computed meanwhile
    shows it exists (the build is abandoned at its next block)."""
    def probe() -> None:
        if hashing is not None and hashing.done() and not hashing.exception():
            entry = entry_of(hashing.result())
            if entry.exists():
                raise _EntryExists(entry)

    writes, opened = BackgroundWrites(), []

    def sink(name: str, shape: tuple, dtype) -> RowWriter:
        opened.append(RowWriter(shape, dtype, tmp / f"{name}.npy", writes=writes, probe=probe))
        return opened[-1]

    try:
        return build_into(sink)
    except _EntryExists as found:
        return found.entry
    finally:
        writes.close()
        for writer in opened:  # an abandoned or failed build leaves no file open
            writer.close()


def _load_or_warn(entry: Path, digest: str) -> SequenceArrays | None:
    try:
        return _load(entry, digest)
    except UNUSABLE_ENTRY as exc:
        warnings.warn(f"cache entry {entry} is unusable ({exc}); rebuilding it",
                      CacheWarning, stacklevel=3)  # fmt: skip
        return None


def _materialised(arrays: SequenceArrays) -> SequenceArrays:
    """In-memory copies of arrays that may live in files about to be deleted."""
    fields = {name: np.array(getattr(arrays, name)) for name in ARRAY_FIELDS}
    return SequenceArrays(**fields, feature_names=list(arrays.feature_names),
                          target_names=list(arrays.target_names))


def in_memory(name: str, shape: tuple, dtype) -> RowWriter:
    """The sink of an uncached build: plain in-memory arrays."""
    return RowWriter(shape, dtype)


def cache_entries(cache_dir: Path = Path("data/cache"), live: dict | None = None) -> list[dict]:
    """The finished entries under cache_dir, oldest first: name, bytes on disk, when built
    (meta.json's `created`), the file it holds arrays of (`source`: its absolute path where
    recorded), `stale`: why no build of this kit reads it again (stale_reason against `live`),
    or None, `another_kit`: the newer kit whose entry it is (kept: live for that kit), or None,
    `orphaned`: why no file holds its data's bytes now (source_status), or None, and
    `unverified`: why that could not be told without reading a file, or None."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    sources = RecordedFiles(cache_dir)
    entries = []
    for child in cache_dir.iterdir():
        if not (child.is_dir() and _ENTRY_NAME.match(child.name)):
            continue
        try:
            meta = json.loads((child / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        meta = meta if isinstance(meta, dict) else {}
        size = sum(f.stat().st_size for f in child.iterdir() if f.is_file())
        created = meta.get("created")
        source, orphaned, unverified = source_status(meta, sources) if meta else (None,) * 3
        entries.append({"name": child.name, "bytes": size,  # (a hand-edited meta: any type)
                        "created": created if isinstance(created, str) else "unfinished or damaged",
                        "source": source,
                        "stale": stale_reason(meta, live or {}) if meta else None,
                        "another_kit": newer_kit_reason(meta, live or {}) if meta else None,
                        "orphaned": orphaned, "unverified": unverified})
    return sorted(entries, key=lambda e: (e["created"], e["name"]))


def source_record(path: Path, file_sha: str) -> dict:
    """What meta.json says of the data file an entry holds arrays of: the path as given, its
    absolute path and content digest, and where that path means a file (file_space). Before
    r315 only the path as given was kept: two projects sharing a cache were listed alike, and
    an entry of a file since overwritten or deleted could not be told from a live one."""
    return {"source": str(path), "source_path": str(Path(path).resolve()),
            "source_sha256": file_sha, "source_space": file_space()}


def file_space() -> str:
    """A short hash of the host name and (Linux) mount namespace: where an absolute path names
    the same file. A cache shared with another host or container holds paths this process may
    not see; their files are never judged gone from here (r315)."""
    return space_hash("mnt")


class RecordedFiles:
    """What the files recorded in digests.json hold now, told by their stat alone (no file is
    read: a listing must not hash GBs). A path maps to its record's digest while its stat is
    the recorded one, to CHANGED when it exists with another stat, to GONE when it is gone."""

    GONE, CHANGED = "gone", "changed"

    def __init__(self, cache_dir: Path):
        self.records = {path: record for path, record in _read_digests(cache_dir).items()
                        if _well_formed(record)}
        self.states: dict[str, str] = {}

    def state(self, path: str) -> str:
        if path not in self.states:
            self.states[path] = self._state_now(path)
        return self.states[path]

    def _state_now(self, path: str) -> str:
        try:
            stat = _stat_key(Path(path))[1:]
        except FileNotFoundError:
            return self.GONE
        except (OSError, ValueError):  # (unreadable; a hand-edited path): not known gone
            return self.CHANGED
        record = self.records.get(path)
        return record[4] if record is not None and tuple(record[:4]) == stat else self.CHANGED

    def recorded_with(self, file_sha: str) -> list[str]:
        return [path for path, record in self.records.items() if record[4] == file_sha]

    def match(self, meta: dict) -> tuple[str, str] | None:
        """(digest, path) of a recorded file whose content gives the entry's key: for an
        entry of a kit before r315, whose meta.json names neither."""
        key, digest = meta.get("key"), meta.get("digest")
        for path, record in self.records.items():
            with contextlib.suppress(TypeError):  # (a key no JSON holds: a hand-edited meta)
                if _key_of(record[4], key) == digest:
                    return record[4], path
        return None


def _well_formed(record) -> bool:
    """A digests.json record as remember_digest writes it: four stat fields and the digest."""
    return isinstance(record, list) and len(record) == 5 and isinstance(record[4], str)


def source_status(meta: dict, files: RecordedFiles) -> tuple[str | None, str | None, str | None]:
    """(source, orphaned, unverified) of an entry (r315): its data file's absolute path where
    known; why no file holds its data's bytes any more, or None: every file recorded with them
    holds other bytes now (overwritten: only those exact bytes coming back would read the
    entry again); why that is not known without hashing or finding a file, or None: one
    changed since its digest was recorded, one gone from its path (moved, deleted, or on a
    disk not mounted here: entries are found by content, so a moved file reads the entry
    again, r319), an entry of another host or of a kit that did not record its space."""
    sha, path = meta.get("source_sha256"), meta.get("source_path")
    if not isinstance(sha, str):
        sha, path = files.match(meta) or (None, None)
    given = meta.get("source")
    source = path if isinstance(path, str) else given if isinstance(given, str) else None
    if sha is None:
        return source, None, "unverified: built by a kit that did not record its data's digest"
    where = list(dict.fromkeys(files.recorded_with(sha) + ([path] if isinstance(path, str)
                                                           else [])))
    states = {p: files.state(p) for p in where}
    if sha in states.values():
        return source, None, None
    if meta.get("source_space") != file_space():  # another host's, or an older kit's (r319)
        return source, None, "unverified: built on another host or container, or by an older kit"
    # a path gone since it was recorded with other bytes (overwritten, then deleted) held
    # none of these; one gone with these bytes on record may have moved
    gone = [p for p, state in states.items() if state == files.GONE
            and files.records.get(p, [None] * 5)[4] in (None, sha)]
    changed = [p for p, state in states.items() if state == files.CHANGED]
    if gone:
        return source, None, (f"unverified: {gone[0]} is gone from there (moved, deleted, or "
                              "on a disk not mounted here; a moved copy reads it again)")
    if changed or not states:
        return source, None, (f"unverified: {changed[0]} is not on record as it is now (not "
                              "hashed here)" if changed else "unverified: no file on record")
    why = (f"{path} holds other bytes now" if isinstance(path, str) and states.get(path)
           not in (None, files.GONE) else "every file recorded with its data holds (or last "
           "held) other bytes")
    return source, f"orphaned: {why}", None


def stale_reason(meta: dict, live: dict) -> str | None:
    """Why an entry's key can never be asked for again, or None: an older cache format, or
    for an entry of the kind `live` describes (kit.features' {"kind", "kit", "format"}: what
    its keys hold now) an older kit version or feature format. Such entries are dead weight
    after an upgrade (a train entry is GBs at full size) that only `--clear` removed, with the
    rest. A newer kit's entry (a cache shared by two checkouts) is not stale: newer_kit_reason."""
    differs = key_difference(meta, live)
    return None if differs is None or differs[1] else f"stale: {differs[0]}"


def newer_kit_reason(meta: dict, live: dict) -> str | None:
    """The newer kit (feature format, cache format or version) an entry's key is of, or None:
    live for that kit, which shares this cache (data.cache_dir), so --clear-stale keeps it
    (r291: it removed it, calling it an older kit's)."""
    differs = key_difference(meta, live)
    return f"another kit's: {differs[0]}" if differs is not None and differs[1] else None


def key_difference(meta: dict, live: dict) -> tuple[str, bool] | None:
    """How an entry's key differs from what this kit writes, and whether it is a newer kit's;
    None when it does not. A value that does not compare (a hand-edited meta.json, a version
    that is no dotted number) counts as older: no kit reads it."""
    if meta.get("format") != CACHE_FORMAT:
        found = meta.get("format")
        return (f"cache format {found!r}, this kit reads {CACHE_FORMAT}",
                _newer(found, CACHE_FORMAT))
    key = meta.get("key")
    if not (live and isinstance(key, dict) and key.get("kind") == live.get("kind")):
        return None  # (another kind of entry: its own caller's business)
    if key.get("format") != live.get("format"):
        return (f"format {key.get('format')!r}, this kit reads {live.get('format')!r}",
                _newer(key.get("format"), live.get("format")))
    if key.get("kit") != live.get("kit"):
        return (f"kit {key.get('kit')!r}, this is {live.get('kit')!r}",
                _newer(_release(key.get("kit")), _release(live.get("kit"))))
    return None


def _newer(found, this) -> bool:
    """`found` is a newer format (an int) or release (a tuple of ints) than `this`."""
    return (type(found) is type(this) and isinstance(found, int | tuple)
            and not isinstance(found, bool) and found > this)


def _release(version) -> tuple[int, ...] | None:
    """A version's leading dotted numbers ("0.2.0.dev1" -> (0, 2, 0)); None if there are none."""
    m = re.match(r"\d+(?:\.\d+)*", version) if isinstance(version, str) else None
    return tuple(int(part) for part in m.group().split(".")) if m else None


def clear_stale(cache_dir: Path, live: dict) -> list[dict]:
    """Remove the entries no build reads again: an older kit's (stale_reason) and those whose
    data no file holds now (orphaned: a data file overwritten or deleted, r315); return them.
    Live entries, a newer kit's (newer_kit_reason), unverified ones, temp folders (see
    clear_dead_temp) and digests.json stay."""
    gone = [e for e in cache_entries(cache_dir, live) if e["stale"] or e["orphaned"]]
    for entry in gone:
        _remove(Path(cache_dir) / entry["name"])
    return gone


def temp_folders(cache_dir: Path = Path("data/cache")) -> list[dict]:
    """The temp folders (and files) under cache_dir: builds in progress or killed ones
    (r315: a killed build's 297 MB were listed as "0 entries, 0.0 MB"). Each: name, bytes,
    pid (None when its name holds none), writer ("running", "dead", "another host's" or
    "unknown"), and removable: whether clear_dead_temp removes it."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    found = []
    for child in sorted(cache_dir.glob(f"{TMP_PREFIX}*")):
        try:
            size, age = _size_on_disk(child), time.time() - child.stat().st_mtime
        except FileNotFoundError:  # its build just finished (renamed it) or removed it
            continue
        match = _TMP_NAME.match(child.name)
        # a bare PID (an older kit's name) does not say which host wrote it: judged by age,
        # as a build judges it (r319: --clear-stale removed what a build kept)
        tagged = match is not None and "." in match["owner"]
        writer = _writer_of(match["owner"]) if tagged else "unknown"
        found.append({"name": child.name, "bytes": size,
                      "pid": int(match["owner"].split(".")[0]) if match else None,
                      "writer": writer,
                      "removable": writer == "dead" or (writer == "unknown"
                                                        and age > STALE_TMP_S)})
    return found


def _writer_of(owner: str) -> str:
    """Whether the process that named a temp folder (PID.TAG as kit.temp.owner_tag writes it)
    is running, dead, or another host's or container's (not judged: its PIDs are not
    ours)."""
    if owner_gone(owner):
        return "dead"
    space = owner.partition(".")[2]
    return "another host's" if space and space != owner_tag().partition(".")[2] else "running"


def clear_dead_temp(cache_dir: Path = Path("data/cache")) -> list[dict]:
    """Remove the temp folders of builds whose process is gone (and those of no known writer
    older than STALE_TMP_S); return them. A running build's, or another host's, stay."""
    dead = [t for t in temp_folders(cache_dir) if t["removable"]]
    for folder in dead:
        _remove(Path(cache_dir) / folder["name"])
    return dead


def _size_on_disk(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if not path.is_dir():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # (a build writing it, finishing)
                total += (Path(root) / name).stat().st_size
    return total


def clear_cache(cache_dir: Path = Path("data/cache")) -> int:
    """Remove every entry (and leftover temp folder) under cache_dir; return how many."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return 0
    removed = 0
    _remove(cache_dir / DIGESTS_FILE)  # bookkeeping, not an entry (even damaged into a folder)
    for child in cache_dir.iterdir():
        if child.name.startswith(TMP_PREFIX) or (child.is_dir() and _ENTRY_NAME.match(child.name)):
            _remove(child)
            removed += 1
    return removed


def _load(entry: Path, digest: str) -> SequenceArrays:
    """Memory-map an entry; any mismatch with its meta.json raises ValueError."""
    meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise ValueError(f"meta.json holds a {type(meta).__name__}, not an object")
    if meta.get("digest") != digest or meta.get("format") != CACHE_FORMAT:
        raise ValueError("meta.json belongs to another key or cache format")
    loaded = {}
    for name in ARRAY_FIELDS:
        array = np.load(entry / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        want = meta["arrays"][name]
        if list(array.shape) != want["shape"] or str(array.dtype) != want["dtype"]:
            raise ValueError(
                f"{name}.npy is {array.dtype}{list(array.shape)}, meta.json says "
                f"{want['dtype']}{want['shape']}"
            )
        loaded[name] = array
    return SequenceArrays(**loaded, feature_names=list(meta["feature_names"]),
                          target_names=list(meta["target_names"]))  # fmt: skip


def _new_tmp(cache_dir: Path, source: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(cache_dir)
    tmp = cache_dir / f"{TMP_PREFIX}{_safe_stem(source)}-{owner_tag()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def _finish(tmp: Path, entry: Path, digest: str, arrays: SequenceArrays, about: dict) -> None:
    """meta.json last (it marks the folder complete), then the rename into place."""
    shapes = {name: {"shape": list(getattr(arrays, name).shape),
                     "dtype": str(getattr(arrays, name).dtype)} for name in ARRAY_FIELDS}
    meta = {
        "format": CACHE_FORMAT,
        "digest": digest,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "arrays": shapes,
        "feature_names": list(arrays.feature_names),
        "target_names": list(arrays.target_names),
        **about,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=_json_default),
                                   encoding="utf-8")
    _move_into_place(tmp, entry, digest)


def _move_into_place(tmp: Path, entry: Path, digest: str) -> None:
    try:
        os.rename(tmp, entry)
        return
    except OSError:
        if not entry.exists():
            raise
    # Another writer got there first, or a broken entry sits in the way.
    try:
        _load(entry, digest)
        return  # a good entry: keep it, drop ours
    except UNUSABLE_ENTRY:
        pass
    trash = entry.parent / f"{TMP_PREFIX}{entry.name}-broken-{uuid.uuid4().hex[:8]}"
    with contextlib.suppress(FileNotFoundError):  # someone else already moved it
        os.rename(entry, trash)
    shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(tmp, entry)
    except OSError:
        if not entry.exists():
            raise  # otherwise a concurrent writer just put a fresh entry there


def _remove_stale_tmp(cache_dir: Path) -> None:
    """Temp folders older than STALE_TMP_S, and those named by a dead process of this host
    (r315: a killed build's stayed 6 hours). A bare PID (a kit before r315) is judged by age
    alone: its name does not say which host wrote it."""
    cutoff = time.time() - STALE_TMP_S
    for child in cache_dir.glob(f"{TMP_PREFIX}*"):
        match = _TMP_NAME.match(child.name)
        try:
            if child.stat().st_mtime < cutoff or (match and "." in match["owner"]
                                                  and _writer_of(match["owner"]) == "dead"):
                _remove(child)
        except FileNotFoundError:
            pass


def _remove(path: Path) -> None:
    """A temp folder (an entry being built) or file (digests.json being replaced)."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _safe_stem(path: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem)
    return stem[:40] or "data"


def _json_default(value):
    """Paths, numpy scalars and arrays in a key serialise as their plain values."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cache key value {value!r} ({type(value).__name__}) is not JSON-serialisable")
