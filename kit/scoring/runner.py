"""The child side of `kit score`: run one submission over the rows, as the official scorer does.

A self-contained script (stdlib + numpy only; it never imports kit) started by kit.scoring as
`python runner.py JOB.json`. It pins itself to one CPU before numpy or the submission is
imported, loads the rows (a float64 .npy, memory-mapped), imports solution.py from the
submission folder (the cwd), builds one DataPoint per row and calls predict(), with the
official contract checks. It writes predictions.npy and result.json into the job's out_dir and
progress lines ("I <init_s>", "P <rows done>") to the job's progress fd. Asked where it is
(kit score does so before killing a submission past its --timeout), it writes every thread's
stack into its output and the row the loop is on to the pipe ("H <json>"; see Where).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass

TARGET_CHUNK_S = 0.1  # rows per inner loop are sized so one chunk takes about this long
REPORT_EVERY_S = 0.25
MAX_SAID, MAX_LINE = 2000, 500  # characters of an exception's message and of a traceback line
TRACEBACK_LINES = 30


@dataclass
class DataPoint:
    """What predict() receives, field for field as in the official scorer's utils.py."""

    seq_ix: int
    step_in_seq: int
    need_prediction: bool
    state: np.ndarray  # noqa: F821 - annotation only; numpy is imported after pinning


class Failure(Exception):
    """The submission broke the contract or raised; `info` goes to result.json."""

    def __init__(self, info: dict):
        super().__init__(info.get("message", ""))
        self.info = info


def main(job_path: str) -> int:
    with open(job_path, encoding="utf-8") as fh:
        job = json.load(fh)
    out_dir = job["out_dir"]
    fd = job.get("progress_fd")
    if fd is not None:
        os.set_inheritable(fd, False)  # the submission's own subprocesses must not hold it
    report = Reporter(fd)
    become_subreaper()
    supervisor = os.getpid()
    supervise(job)  # returns in the worker only
    watch_parent(supervisor)
    where = Where(report)
    where.listen()
    result: dict = {"ok": False, "sandbox": sandbox_setup(job)}
    try:
        result.update(run(job, report, where, out_dir))
        result["ok"] = True
    except Failure as failure:
        result["error"] = failure.info
    result["sandbox"]["kit_modules"] = sorted(
        m for m in sys.modules if m == "kit" or m.startswith("kit.")
    )
    result["sandbox"]["imports"] = IMPORTS.third_party()
    result["sandbox"]["peak_rss_mb"] = peak_rss_mb()
    tmp = os.path.join(out_dir, "result.json.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    os.replace(tmp, os.path.join(out_dir, "result.json"))
    return 0


def supervise(job: dict) -> None:
    """Fork: the child returns and runs the submission; this process stays as its supervisor,
    a subreaper that outlives it however it ends. What the submission started ends with it,
    even when it crashes (segfault, the OOM killer): a process it moved to a session of its
    own would otherwise be init's once its runner is gone, and out of kit's reach. The
    supervisor passes kit's questions (SIGUSR1/2, see Where) on to the worker, ends the
    sandbox if kit dies, and exits as the worker did. Without fork (Windows) nothing."""
    if not hasattr(os, "fork"):
        return
    worker = os.fork()  # before any thread or import of numpy: a plain copy of this process
    if worker == 0:
        return
    if job.get("progress_fd") is not None:
        os.close(job["progress_fd"])  # the pipe ends with the worker

    def pass_on(signum, frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signum)

    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, pass_on)
    watch_parent(job.get("parent_pid"), job.get("cleanup_if_orphaned"))
    _, status = os.waitpid(worker, 0)
    kill_descendants(os.getpid())
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # die of the worker's signal, so kit reports it as the submission's
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the worker dumped one if any
        with contextlib.suppress(OSError, ValueError):  # SIGKILL's action cannot be set
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        code = 128 - code  # a signal that does not end a process (it should not come here)
    os._exit(code)


def watch_parent(parent: int | None, cleanup: str | None = None,
                 interval_s: float = 0.5) -> None:
    """End the sandbox once kit's process is gone (SIGKILLed: it could not stop this child, in
    a session of its own): a submission that hangs would otherwise spin at 100% CPU for good,
    and so would the processes it started. `cleanup`: kit's temporary folder of this job (the
    rows, a float64 copy of the data file), which kit can no longer remove. A thread that
    wakes twice a second costs the loop nothing measurable."""
    import threading

    parent = parent or os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        if cleanup:
            import shutil

            shutil.rmtree(cleanup, ignore_errors=True)
        kill_tree(os.getpid())  # this process last
        os._exit(3)

    threading.Thread(target=watch, name="kit-parent-watch", daemon=True).start()


def become_subreaper() -> None:
    """Linux: a process the submission started whose parent exits (a daemon that double-forks,
    a pool worker) is re-parented to this process, not to init, so `descendants` still finds
    it. Elsewhere nothing (kill_tree then reaches the process group only)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, from /proc (Linux; [] where there is none)."""
    children: dict[int, list[int]] = {}
    try:
        entries = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    for name in entries:
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:  # gone meanwhile
            continue
        # the command name, in parentheses, may hold spaces and ")": fields follow the last ")"
        parent = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(parent, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def kill_descendants(pid: int) -> None:
    """SIGKILL every process below `pid`."""
    for _ in range(3):  # one may have forked while the others were killed
        stray = descendants(pid)
        if not stray:
            break
        for child in stray:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)


def kill_tree(pid: int) -> None:
    """SIGKILL everything below `pid`, then `pid`'s process group (the sandbox's session: pid
    leads it). A process the submission moved to a session of its own (setsid) is outside
    the group, but still below pid."""
    kill_descendants(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def sandbox_setup(job: dict) -> dict:
    """Pin to one CPU and cap memory before anything heavy is imported; report what holds."""
    info: dict = {"cpu": None, "affinity": None, "memory_limit_bytes": None}
    cpu = job.get("cpu")
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
        info["cpu"] = cpu
    if hasattr(os, "sched_getaffinity"):
        info["affinity"] = sorted(os.sched_getaffinity(0))
    limit = job.get("memory_limit_bytes")
    if limit:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        info["memory_limit_bytes"] = limit
    info["python"] = sys.version.split()[0]
    info["threads_env"] = {
        k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    return info


def pandas_rows(values, dtypes: list[str] | None):
    """The rows as `pd.read_parquet(path).values` types them there: one common numpy dtype of
    the columns (float64 for int ids beside float features; float32 when every column fits it),
    or, when a bool column (the need flag) meets numbers, an object array of Python int, bool
    and float values (the state then arrives as an object array). An "object" entry (a column
    pandas reads as objects, or kit score's mark that pandas gives one of the file's columns an
    extension dtype, a nullable Int8 flag say: r304) makes them objects too, each input column
    typed by its own entry. Built before the timed loop,
    as pandas builds it before the scorer's loop, and held whole, as there."""
    import numpy as np  # (the child imports it after pinning its CPU; a bench calls this too)

    if not dtypes:
        return values
    # every column of the file decides the common type; the rows hold the first ones (the
    # inputs), the rest (targets) are only in that decision
    kinds = [np.dtype(d) for d in dtypes]
    if any(d.kind == "O" for d in kinds) or (
            any(d.kind == "b" for d in kinds) and not all(d.kind == "b" for d in kinds)):
        rows = np.empty(values.shape, dtype=object)
        for j, d in enumerate(kinds[:values.shape[1]]):
            col = values[:, j]
            typed = col != 0 if d.kind == "b" else col.astype(d) if d.kind in "iu" else col
            # (a null of an integer column arrives as float64 NaN: pandas_dtype says float64)
            rows[:, j] = typed.astype(object)  # numpy scalars -> Python int / bool / float
        return rows
    common = np.result_type(*kinds)
    return values if common == values.dtype else values.astype(common)


# bytes of the Python objects an object row holds per value, by column kind: a float is its
# own 24-byte object and an int past the small-int cache 28, each taking 32 in Python's
# allocator (16-byte size classes: 24 counted 1.38 KB a row where 1.64 KB was measured);
# bools are shared
OBJECT_BYTES = {"f": 32, "i": 32, "u": 32, "b": 0}


def _in_allocator(size: int) -> int:
    """What `size` bytes take in Python's and malloc's allocators (16-byte classes, 32 at
    least)."""
    return max(32, (size + 15) // 16 * 16)


# what a torch tensor holds beyond sys.getsizeof and its storage's bytes (the C++ TensorImpl and
# StorageImpl): a list of 200k `x @ W` results of 2 floats took 554 bytes each, measured
TORCH_TENSOR_BYTES = 450
KEPT_SAMPLE = 64  # predictions, spread over the run, that kept_bytes measures


def _owner(array):
    """The object that holds a numpy view's data (its last .base: an array, or a torch tensor
    of `.numpy()`, a buffer of `np.frombuffer`)."""
    while isinstance(getattr(array, "base", None), np.ndarray):
        array = array.base
    return array.base if array.base is not None else array


def _torch_storage(obj):
    """A torch tensor's storage, or None (torch is not imported for this)."""
    storage = getattr(obj, "untyped_storage", None)
    if callable(storage) and type(obj).__module__.startswith("torch"):
        return storage()
    return None


def _held(pred) -> tuple[int, int]:
    """(a key, bytes) of the memory `pred` keeps alive beyond itself, or (0, 0): a numpy
    view's owning array, buffer or tensor (`out[0, -1]` of a window model's output holds all
    of it); a tensor's storage (shared by its views)."""
    holder = pred
    if isinstance(pred, np.ndarray):
        if pred.flags.owndata:
            return 0, 0
        holder = _owner(pred)
    storage = _torch_storage(holder)
    if storage is not None:
        return storage.data_ptr() or id(storage), _in_allocator(storage.nbytes())
    if holder is pred:
        return 0, 0
    size = sys.getsizeof(holder) + (holder.nbytes if isinstance(holder, memoryview) else 0)
    return id(holder), _in_allocator(size)


def _own_bytes(pred) -> int:
    """What keeping the returned object itself costs: its list pointer, header and own data
    (a tensor: its C++ side too)."""
    own = pred.nbytes if isinstance(pred, np.ndarray) and pred.flags.owndata else 0
    total = 8 + _in_allocator(sys.getsizeof(pred) - own) + (_in_allocator(own) if own else 0)
    return total + (TORCH_TENSOR_BYTES if _torch_storage(pred) is not None else 0)


def kept_bytes(preds: list, values) -> tuple[int, int]:
    """What the scorer keeps per scored row until its metric, beside the rows: (what this
    replay holds too: the returned objects, the list's pointer to each and what they keep
    alive; what it does not: the official loop's `labels = row[35:]` view of each scored row,
    kept in a second list). Computed, as rows_bytes is (the peak holds them too, but would
    scale the allocator's fixed overhead up with them): the objects' own bytes from up to
    KEPT_SAMPLE spread over the run; what they keep alive over all of them, each holder
    once: one per row or per sequence (a buffer per sequence) grows with the rows, one holder
    of every prediction (a table made once) does not, nor do the rows (dp.state[:2])."""
    if not preds:
        return 0, 0
    sample = [preds[i] for i in
              np.unique(np.linspace(0, len(preds) - 1, KEPT_SAMPLE).astype(np.int64))]
    per_pred = sum(_own_bytes(p) for p in sample) / len(sample)
    rows = _held(values[:0])[0] if len(values) else 0  # the rows' holder: counted already
    keys = np.fromiter((_held(p)[0] for p in preds), np.int64, len(preds))  # 8 bytes each
    keys[keys == rows] = 0
    unique, first = np.unique(keys, return_index=True)
    first = first[unique != 0]
    held = 0
    if len(first) > 1 or len(preds) == 1:  # (one prediction: per row, as far as one can tell)
        held = sum(_held(preds[i])[1] for i in first)
    per_label = 8 + _in_allocator(sys.getsizeof(values[0][3:])) if len(values) else 0
    return int(len(preds) * per_pred) + held, len(preds) * per_label


def reused_objects(preds: list, values=None) -> tuple[int, int | None]:
    """(how many scored rows returned an object an earlier row returned too, or a view of
    memory an earlier row returned a view of, where some sequence returns that memory twice
    (`out[0]` of a buffer written in place each row: a new view object each row), the first
    such prediction's index): the scorer keeps the object, so each holds the values last
    written. A table only read, `table[step]`, gives each row of a sequence its own memory
    and is not counted (its rows repeat across sequences). About 8 bytes a prediction (a set
    of their ids took 90 and raised the peak the memory projection scales). Addresses (a
    microsecond each) are read only for views that share their owner (a buffer, a table made
    once) with another prediction, and not for those of the rows (`values`: different rows)."""
    again = _repeated(np.fromiter(map(id, preds), np.int64, len(preds)))
    keys = np.fromiter(map(_holder_key, preds), np.int64, len(preds))
    addresses = np.zeros(len(preds), np.int64)
    rows = _holder_key(values[:0]) if values is not None and len(values) else None
    for i in np.flatnonzero(np.isin(keys, keys[_repeated(keys)])):  # an owner of several
        pred = preds[i]
        if keys[i] < 0:  # an address already (a torch tensor's)
            addresses[i] = -keys[i]
        elif keys[i] != rows and isinstance(pred, np.ndarray) and pred.nbytes:
            addresses[i] = pred.__array_interface__["data"][0]
    shared = np.flatnonzero(addresses)
    if len(shared):
        seqs = _scored_sequences(values, len(preds))
        pairs = np.stack([seqs[shared], addresses[shared]])
        order = np.lexsort(pairs[::-1])  # by sequence, then address
        same = (pairs[:, order[1:]] == pairs[:, order[:-1]]).all(axis=0)
        written = np.unique(pairs[1, order[1:][same]])  # memory returned twice in a sequence
        # every row after the first returning such memory holds its last values
        in_place = shared[np.isin(addresses[shared], written)]
        again = np.union1d(again, in_place[_repeated(addresses[in_place])])
    return len(again), (int(again.min()) if len(again) else None)


def _scored_sequences(values, n: int) -> np.ndarray:
    """A number per scored row, one per run of rows of one sequence id (all 0 without rows)."""
    if values is None or not len(values):
        return np.zeros(n, np.int64)
    scored = values[np.flatnonzero(values[:, 2] != 0), 0]  # as collect finds them
    if len(scored) != n:  # (collect refuses such a run)
        return np.zeros(n, np.int64)
    starts = np.ones(n, bool)
    starts[1:] = scored[1:] != scored[:-1]
    return np.cumsum(starts)


def _holder_key(pred) -> int:
    """What holds `pred`'s values: a numpy view's owner (views of one buffer share it), a torch
    tensor's data address (negated, as reused_objects' addresses are), else `pred` itself."""
    if isinstance(pred, np.ndarray):
        return id(pred) if pred.flags.owndata else id(_owner(pred))
    if type(pred).__module__.startswith("torch") and callable(getattr(pred, "data_ptr", None)):
        return -pred.data_ptr() or id(pred)
    return id(pred)


def _repeated(keys):
    """The indices of the keys an earlier index holds too."""
    order = np.argsort(keys, kind="stable")  # the first occurrence of each key first
    return order[1:][keys[order[1:]] == keys[order[:-1]]]


def rows_bytes(raw, values) -> int:
    """What holding the rows costs, as the official scorer holds its DataFrame.values: the
    float64 file's pages (the loop touches them all), plus a typed copy, plus for object rows
    their pointers and value objects. Computed, not measured: the allocator's fixed overhead
    would be scaled up with the rows when projected to the test set."""
    total = raw.nbytes
    if values is raw:
        return total
    total += values.nbytes
    if values.dtype.kind == "O" and len(values):
        total += len(values) * sum(OBJECT_BYTES.get(np.asarray(v).dtype.kind, 24)
                                   for v in values[0])
    return total


def run(job: dict, report: Reporter, where: Where, out_dir: str) -> dict:
    global np
    import numpy as np

    # np.load(mmap) returns a memmap whose rows are memmaps too (slow per-row slicing); view the
    # same pages as a plain ndarray. "c" = copy-on-write: a submission may write into its state
    # view as it could into DataFrame.values, without touching the file.
    raw = np.asarray(np.load(job["rows"], mmap_mode="c"))
    values = pandas_rows(raw, job.get("column_dtypes"))
    rows_mb = rows_bytes(raw, values) / 2**20
    k = int(job["n_outputs"])
    where.values = values
    report.write(b"R\n")  # the rows are ready: a --timeout counts the submission's time from here

    t0 = time.perf_counter()
    model = load_model(job["solution_dir"])
    init_s = time.perf_counter() - t0
    report.write(b"I %.6f\n" % init_s)

    t0 = time.perf_counter()
    preds, first_s = score_rows(model, values, k, report)
    loop_s = time.perf_counter() - t0
    report.write(b"P %d\n" % len(values))

    kept, labels = kept_bytes(preds, values)
    reused, first_reused = reused_objects(preds, values)
    array = collect(preds, k, values)
    np.save(os.path.join(out_dir, "predictions.npy"), array)
    if job.get("next_state"):
        np.save(os.path.join(out_dir, "truth.npy"), next_states(values))
    return {
        "rows": int(len(values)),
        "scored_rows": int(array.shape[0]),
        "init_s": init_s,
        "loop_s": loop_s,
        "first_s": first_s,  # the first row's predict(): a lazy load there is paid once
        "reused": reused,
        "first_reused": first_reused,  # an index into the scored rows
        "rows_mb": rows_mb,
        "kept_mb": kept / 2**20,  # held here too
        "labels_mb": labels / 2**20,  # held by the official loop only
        "numpy": np.__version__,
    }


class Reporter:
    def __init__(self, fd: int | None):
        self.fd = fd
        self.last = time.perf_counter()

    def write(self, line: bytes) -> None:
        if self.fd is not None:
            try:
                os.write(self.fd, line)
            except OSError:  # the parent went away; scoring goes on and the result says so
                self.fd = None


class Where:
    """Answers kit score's question before it kills a submission past its --timeout.

    SIGUSR1 (a Python handler, run by the main thread between bytecodes): every thread's
    stack into the output (faulthandler), then "H <json>" on the progress pipe: the row
    score_rows is on, read from the loop's frame when asked (the loop pays nothing for it),
    or null while the submission is still loading. SIGUSR2 (faulthandler's C-level handler):
    the stacks alone, for a main thread stuck in a C call that never returns to Python, where
    SIGUSR1 gets no answer. Installed first thing, so neither signal's default action (exit)
    can cut the answer short. Not on Windows, which has neither signal.
    """

    def __init__(self, report: Reporter):
        self.report, self.values = report, None

    def listen(self) -> None:
        if not hasattr(signal, "SIGUSR1"):
            return
        import faulthandler

        faulthandler.register(signal.SIGUSR2, all_threads=True)
        # a segfault, abort or bus error in the submission's C code: its Python stack too
        faulthandler.enable(all_threads=True)
        signal.signal(signal.SIGUSR1, self.tell)

    def tell(self, signum, frame) -> None:
        import faulthandler

        # fd 2 (the output kit shows), not sys.stderr: a submission may have replaced it (a
        # StringIO has no fd) or closed it, and the dump then raised here, before the H line
        with contextlib.suppress(Exception):
            faulthandler.dump_traceback(2, all_threads=True)
        loop = score_rows.__code__
        while frame is not None and frame.f_code is not loop:
            frame = frame.f_back
        row = None if frame is None else frame.f_locals.get("row")
        info = None if row is None or self.values is None else row_info(self.values, row)
        self.report.write(b"H " + json.dumps(info).encode() + b"\n")


def load_model(solution_dir: str):
    """Import solution.py from the submission folder (cwd, first on sys.path) and build it."""
    import importlib.util

    # sys.path[0] is this script's folder (kit/scoring): a submission's `import score` must not
    # find kit's files, so the submission folder takes its place.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, solution_dir)
    os.chdir(solution_dir)
    sys.meta_path.insert(0, NoKit(solution_dir))
    IMPORTS.own = os.path.join(os.path.abspath(solution_dir), "")
    sys.meta_path.insert(0, IMPORTS)
    sys.meta_path.append(UtilsFallback())
    path = os.path.join(solution_dir, "solution.py")
    try:
        spec = importlib.util.spec_from_file_location("solution", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["solution"] = module
        spec.loader.exec_module(module)
    except BaseException as exc:
        raise Failure(exception_info("import", "importing solution.py raised", exc)) from None
    cls = getattr(module, "PredictionModel", None)
    if cls is None:
        raise Failure(
            {
                "stage": "import",
                "message": "solution.py defines no PredictionModel "
                "class; the scorer calls PredictionModel() with no arguments",
            }
        )
    try:
        return cls()
    except BaseException as exc:
        raise Failure(exception_info("init", "PredictionModel() raised", exc)) from None


class ImportLog:
    """Records the top-level packages that the submission's own files import (never finds
    one): what the scorer must provide. Only imports of modules not loaded yet reach it, so
    what this script loaded first (numpy) is not listed, nor what the packages import."""

    def __init__(self):
        self.own, self.names = "", set()

    def find_spec(self, name, path=None, target=None):
        if path is None and self.own and "." not in name:
            frame = sys._getframe(1)
            while frame is not None and _machinery(frame):
                frame = frame.f_back  # importlib's frames (frozen, or import_module's file)
            where = frame.f_code.co_filename if frame is not None else "<"
            # (exec'd code, "<string>", is nobody's file: not the submission's)
            if not where.startswith("<") and os.path.abspath(where).startswith(self.own):
                self.names.add(name)
        return None

    def third_party(self) -> list[str]:
        """Beyond the standard library and the submission's own modules."""
        def its_own(name: str) -> bool:
            module = sys.modules.get(name)
            places = [getattr(module, "__file__", None) or "",  # a namespace package: __path__
                      *list(getattr(module, "__path__", None) or [])]
            return any(p and os.path.join(os.path.abspath(p), "").startswith(self.own)
                       for p in places)

        return sorted(n for n in self.names  # utils: the scorer's own (DataPoint)
                      if n in sys.modules  # not an optional import that failed
                      and n not in sys.stdlib_module_names and n != "utils" and not its_own(n))


def _machinery(frame) -> bool:
    name = frame.f_code.co_filename
    return name.startswith("<frozen") or frame.f_globals.get("__name__", "").startswith(
        "importlib")


IMPORTS = ImportLog()


class NoKit:
    """The official scorer has no kit installed, so a solution.py that imports it fails here as
    it would there (kit's own folder is installed in this interpreter). A `kit` package shipped
    inside the submission is the submission's own and imports as usual."""

    def __init__(self, solution_dir: str):
        self.solution_dir = solution_dir

    def find_spec(self, name, path=None, target=None):
        if name != "kit":
            return None  # kit.* is only reached through kit
        import importlib.machinery

        # the submission's folder and any folder inside it the solution put on sys.path
        # (e.g. a vendor/ folder of its own packages)
        inside = [p for p in sys.path
                  if os.path.abspath(p or ".").startswith(os.path.join(self.solution_dir, ""))
                  or os.path.abspath(p or ".") == self.solution_dir]
        if importlib.machinery.PathFinder.find_spec(name, inside) is not None:
            return None
        raise ModuleNotFoundError(
            "No module named 'kit': the competition's scorer does not have kit installed; "
            "solution.py may import only what the scorer provides (numpy, onnxruntime, ...) "
            "and the files of its own package", name=name)


class UtilsFallback:
    """A last-resort `utils` module holding DataPoint, as the official starter pack provides.

    Only used when neither the submission nor the environment has a `utils` module.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "utils":
            return None
        import importlib.util

        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.DataPoint = DataPoint


def score_rows(model, values, k: int, report: Reporter) -> tuple[list, float]:
    """The official loop: one DataPoint per row, None exactly when no prediction is needed.
    Returns the kept predictions and the first row's seconds (its own chunk).

    Rows go in chunks so that progress costs one clock read per chunk, not per row; the
    returned objects are kept as they are (a reused buffer scores wrongly, as it does there).
    """
    preds: list = []
    append = preds.append
    predict = model.predict
    point = DataPoint
    n = len(values)
    start, chunk, first_s = 0, 1, None
    while start < n:
        stop = min(start + chunk, n)
        t_chunk = time.perf_counter()
        for row in values[start:stop]:
            need = row[2]
            try:
                pred = predict(point(row[0], row[1], need, row[3:]))
            except BaseException as exc:
                raise Failure(
                    row_info(values, row) | exception_info("predict", "predict() raised", exc)
                ) from None
            if need:
                try:
                    fits = pred.shape[0] == k
                except Exception:  # None, no .shape, a 0-d array
                    fits = False
                if not fits:
                    raise Failure(contract_info(values, row, pred, k))
                append(pred)
            elif pred is not None:
                raise Failure(contract_info(values, row, pred, k))
        start = stop
        now = time.perf_counter()
        if first_s is None:
            first_s = now - t_chunk
        chunk = max(1, min(1 << 15, int(chunk * TARGET_CHUNK_S / max(now - t_chunk, 1e-6))))
        if now - report.last >= REPORT_EVERY_S:
            report.last = now
            report.write(b"P %d\n" % start)
    return preds, first_s or 0.0


def next_states(values):
    """The next-state truth as the official scorer keeps it: each scored row's following row,
    the very `state` object predict() got there (a view of the rows), turned into an array only
    at the end; a submission that changed its state in place is scored against the change."""
    scored = np.flatnonzero(values[:, 2] != 0)  # (the parent checked each has a next row)
    if len(scored) and scored[-1] + 1 == len(values):  # the rows' fault, not the submission's
        raise Failure({"stage": "data", "message": f"row {int(scored[-1])}, the last one given "
                       "to the scorer, needs a prediction, but the next-state protocol has no "
                       "truth for it (no next row): the rows are wrong, not the submission"})
    try:
        return np.asarray(values[scored + 1, 3:], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise Failure({"stage": "collect", "message": "predict() wrote values that are not "
                       f"numbers into dp.state ({type(exc).__name__}: {exc}); the next-state "
                       "scorer's targets are those arrays: copy the state before changing it"}
                      ) from None


def row_info(values, row) -> dict:
    """Which row `row` (a view into values) is; found from its address, at no per-row cost."""
    index = (row.ctypes.data - values.ctypes.data) // values.strides[0]
    return {"row": int(index), "seq": float(row[0]), "step": float(row[1]), "need": bool(row[2])}


def contract_info(values, row, pred, k: int) -> dict:
    info = row_info(values, row) | {"stage": "contract"}
    if not info["need"]:
        what = describe(pred)
        info["message"] = (
            f"predict() returned {what} on a row with need_prediction = False; "
            "it must return None there (the state still updates)"
        )
    elif pred is None:
        info["message"] = (
            "predict() returned None on a row with need_prediction = True; it must "
            f"return an array of shape ({k},)"
        )
    else:
        info["message"] = (
            f"predict() returned {describe(pred)}; the scorer needs an object with shape[0] == {k}"
        )
    return info


def describe(obj) -> str:
    """What a submission returned, for an error message: the runner's own code, so nothing of
    the object's may hang or raise here (tuple() of an endless `shape` never returned, and a
    timeout blamed predict())."""
    name = type(obj).__name__
    try:
        shape = getattr(obj, "shape", None)
        if isinstance(shape, tuple):  # numpy's and torch's shapes
            return f"{name} of shape {shape}"
        text = repr(obj) if shape is None else f"with a shape of type {type(shape).__name__}"
    except Exception:
        return f"{name} (it cannot be printed)"
    text = text if isinstance(text, str) else "?"
    return f"{name} {text[:60]}{'...' if len(text) > 60 else ''}"


def exception_info(stage: str, message: str, exc: BaseException) -> dict:
    try:
        said = str(exc)
    except Exception:  # the submission's exception may not even print
        said = "<its message cannot be printed>"
    try:
        lines = traceback.format_exception(exc)
    except Exception:
        lines = []
    # Drop the frames of this script: the tail that matters is the submission's.
    text = "".join(line for line in lines if __file__ not in line).rstrip()
    tail = "\n".join(_cut(line, MAX_LINE) for line in text.splitlines()[-TRACEBACK_LINES:])
    return {"stage": stage, "message": f"{message} {type(exc).__name__}: {_cut(said, MAX_SAID)}",
            "traceback": tail}


def _cut(text: str, limit: int) -> str:
    """At most `limit` characters (a message of megabytes would flood the terminal)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def collect(preds: list, k: int, values=None):
    """Stack the stored objects into (rows, K) float64, as np.array(predictions) does there.
    When they do not stack, or stack into values its metric cannot clip (text, None: np.clip
    raises there), the first prediction that is not k numbers names its row."""
    if not preds:  # no scored row (np.array([]) would be shape (0,))
        return np.empty((0, k))
    try:
        array = np.array(preds)
        problem = "" if array.shape == (len(preds), k) else f"stack to shape {array.shape}"
        if not problem and not _numbers(array):
            problem = f"stack into {array.dtype} values"
    except Exception as exc:
        array, problem = None, f"do not stack into one array ({type(exc).__name__}: {exc})"
    if not problem:
        return array.astype(np.float64, copy=False)
    info = {"stage": "collect",
            "message": f"the returned predictions {problem}, not ({len(preds)}, {k}) numbers; "
                       f"return 1-D arrays of {k} floats"}
    bad = next((i for i, pred in enumerate(preds) if not _is_k_numbers(pred, k)), None)
    if values is not None and bad is not None:
        info |= row_info(values, values[np.flatnonzero(values[:, 2] != 0)[bad]])
        info["message"] += f"; the first is {describe(preds[bad])}"
    raise Failure(info)


def _numbers(array) -> bool:
    """Numbers np.clip takes: a numeric dtype, or objects that are all real numbers (a slice of
    an object row's state); not text, not None."""
    if array.dtype.kind == "O":
        return all(isinstance(v, (int, float, np.integer, np.floating)) for v in array.flat)
    return array.dtype.kind in "biuf"


def _is_k_numbers(pred, k: int) -> bool:
    try:
        array = np.asarray(pred)
        return array.shape == (k,) and _numbers(array)
    except Exception:
        return False


def peak_rss_mb() -> float | None:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    exec, so a child forked from a large parent would report the parent's peak."""
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024


if __name__ == "__main__":
    code = main(sys.argv[1])
    for stream in (sys.stdout, sys.stderr):  # the submission may have replaced or closed them
        with contextlib.suppress(Exception):
            stream.flush()
    # The result is written: end now. A thread the submission left running would otherwise keep
    # the interpreter waiting at shutdown, and the scorer waiting for it.
    os._exit(code)
