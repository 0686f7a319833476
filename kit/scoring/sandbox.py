"""The parent side of the sandbox: unpack a submission safely, start runner.py on one CPU, watch it.

The child is a fresh interpreter (`sys.executable runner.py job.json`) in its own session, with
every thread-count variable set to 1 and GPUs hidden, pinned to one CPU by the runner itself
before numpy or the submission is imported. Its stdout/stderr go to a log file whose tail is
reported; progress comes back as lines on a dedicated pipe.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm.auto import tqdm

from kit import users_environment
from kit.errors import SubmissionError
from kit.progress import bar_switch
from kit.scoring.runner import REPORT_EVERY_S, kill_tree  # (runner.py imports nothing of kit's)
from kit.workers import caught

RUNNER = Path(__file__).with_name("runner.py")
SOLUTION = "solution.py"
LOG_TAIL_CHARS = 2000
WHERE_WAIT_S = 2.0  # how long a timed-out submission has to say which row it is on
STACK_WAIT_S = 0.2  # and then, if it did not, to dump its stacks from a C handler

# Every knob a numeric library reads for its thread pool, at 1: the official scorer has one vCPU.
THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "NUMEXPR_MAX_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "BLIS_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "POLARS_MAX_THREADS": "1",
    "RAYON_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
}
CHILD_ENV = THREAD_ENV | {
    "CUDA_VISIBLE_DEVICES": "",  # the scorer has no GPU; neither does the replay
    "PYTHONDONTWRITEBYTECODE": "1",  # leave the user's submission folder as it was
    "PYTHONUNBUFFERED": "1",  # the log keeps the submission's prints in order
}


# --- submission folder / zip ---------------------------------------------------------------


def other_form(path: Path) -> str:
    """For a package that is not there: its zip beside it, or its folder, where that is (a
    folder deleted by hand with NAME.zip kept, r305), as "; X is there: pass it"."""
    path = Path(path)
    other = path.with_suffix("") if path.suffix == ".zip" else path.parent / f"{path.name}.zip"
    return f"; {other} is there: pass it" if other.exists() and other != path else ""


def prepare_submission(path: Path, workdir: Path) -> Path:
    """The folder holding solution.py: the folder itself, or a zip safely extracted into workdir."""
    path = Path(path)
    if not path.exists():
        raise SubmissionError(f"{path}: no such submission folder or zip{other_form(path)}")
    if path.is_dir():
        folder = path.resolve()
        if not (folder / SOLUTION).is_file():
            raise SubmissionError(
                f"{path}: no {SOLUTION} in this folder; the scorer imports "
                f"{SOLUTION} (class PredictionModel) from the top level"
            )
        return folder
    if not zipfile.is_zipfile(path):
        if path.suffix.lower() == ".zip":  # named as one: cut short in a copy or a download
            raise SubmissionError(f"{path}: neither a folder nor a .zip archive (no zip end "
                                  "record: a truncated or damaged zip?); make it again (kit "
                                  "pack writes NAME.zip)")
        raise SubmissionError(f"{path}: neither a folder nor a .zip archive")
    return extract_zip(path, workdir)


def snapshot_submission(submission: Path, tmp: Path, copy=None) -> Path:
    """The submission as it is now, in tmp/submission: a zip safely extracted, a folder checked
    and copied whole (`copy`, copy_submission by default) under kit pack's lock. A pack to the
    same name swaps the folder: without the lock a copy could find it gone, or take one
    package's model.onnx beside the other's manifest. (A read-only folder, which no pack can
    replace, is copied without the lock.)"""
    submission = Path(submission)
    if submission.is_file():
        return prepare_submission(submission, tmp / "submission")
    from kit.export.pack import exclusive, package_lock

    # the lock of the folder kit pack swaps (through a link too: resolve(), which names a
    # path mid-swap as well, when the folder is briefly missing and the lock waits it out)
    with exclusive(package_lock(submission.resolve()), required=False):
        folder = prepare_submission(submission, tmp / "submission")
        return (copy or copy_submission)(folder, tmp / "submission")


NOT_SUBMITTED = {".git", "__pycache__"}  # a folder's parts no scorer gets


def _lstat(path: Path) -> os.stat_result | None:
    """The entry's own stat (a link's, not its target's), None when it was removed since the
    folder was listed."""
    try:
        return path.lstat()
    except FileNotFoundError:
        return None


def _kind(entry: os.stat_result | None) -> str:
    """"file", "folder", "link", "special" (a named pipe, a socket, a device), or "gone" (not
    copied, not refused)."""
    if entry is None:
        return "gone"
    mode = entry.st_mode
    return ("link" if stat.S_ISLNK(mode) else "file" if stat.S_ISREG(mode)
            else "folder" if stat.S_ISDIR(mode) else "special")


def copy_submission(folder: Path, dest: Path) -> Path:
    """A folder submission copied into dest, where it runs: the scorer starts from a fresh
    unzip every time, so what a run writes beside solution.py (a cache a second run would
    find: its init time understated) stays in the copy, and the user's folder is left as
    it was. Its .git and __pycache__ are not part of a submission."""
    inside = {p: _lstat(p) for p in folder.rglob("*")
              if not NOT_SUBMITTED & set(p.relative_to(folder).parts)}
    kinds = {p: _kind(entry) for p, entry in inside.items()}
    links = [p for p, kind in kinds.items() if kind == "link"]
    if links:  # the copy followed them, past the size check (rglob does not enter them), and
        # `self -> .` recursed to ELOOP; a zip, which the scorer gets, holds no links either
        shown = ", ".join(str(p.relative_to(folder)) for p in links[:3])
        raise SubmissionError(f"{folder}: holds symbolic links ({shown}"
                              f"{', ...' if len(links) > 3 else ''}), which a submission zip "
                              "cannot: put the files they point to in their place")
    special = [p for p, kind in kinds.items() if kind == "special"]
    if special:  # a named pipe or a socket: copytree raised a bare shutil.Error on it
        shown = ", ".join(str(p.relative_to(folder)) for p in special[:3])
        raise SubmissionError(f"{folder}: holds files that are not regular files or folders "
                              f"({shown}{', ...' if len(special) > 3 else ''}: a named pipe, a "
                              "socket or a device), which a submission zip cannot: remove them")
    total = sum(inside[p].st_size for p, kind in kinds.items() if kind == "file")  # one stat
    dest.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest.parent).free
    if total > min(MAX_UNZIPPED_BYTES, free):
        raise SubmissionError(f"{folder}: its files take {_size(total)}, more than kit score "
                              f"copies ({_size(MAX_UNZIPPED_BYTES)}, and {_size(free)} free in "
                              f"{dest.parent}); is it the right folder?")
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns(*NOT_SUBMITTED))
    return dest.resolve()


def extract_zip(path: Path, dest: Path) -> Path:
    """Extract entry by entry; absolute paths, '..', links and special files are refused."""
    try:
        with zipfile.ZipFile(path) as zf:
            checked = [(info, check_entry(path, info)) for info in zf.infolist()]
            infos = [info for info, name in checked if name is not None]
            names = [name for _, name in checked if name is not None]
            if SOLUTION not in names:
                raise SubmissionError(_no_solution_message(path, names))
            check_layout(path, infos, names)
            dest.mkdir(parents=True, exist_ok=True)
            check_size(path, infos, dest)
            root = dest.resolve()
            for info, name in zip(infos, names, strict=True):
                target = root.joinpath(*PurePosixPath(name).parts)
                try:
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                except (zlib.error, NotImplementedError, EOFError) as exc:
                    raise SubmissionError(
                        f"{path}: entry {info.filename!r} cannot be extracted "
                        f"({type(exc).__name__}: {exc}); re-create the zip with plain deflate"
                    ) from None
                except OSError as exc:  # a path past the file system's limit, a full disk
                    raise SubmissionError(
                        f"{path}: entry {info.filename[:80]!r}"
                        f"{'...' if len(info.filename) > 80 else ''} cannot be extracted "
                        f"({exc.strerror or exc})") from None
    except zipfile.BadZipFile as exc:
        raise SubmissionError(f"{path}: corrupt zip archive ({exc})") from None
    except UnicodeDecodeError as exc:  # a name flagged UTF-8 that is not (read at open)
        raise SubmissionError(f"{path}: an entry's name is flagged UTF-8 but is not ("
                              f"{exc.object[:60]!r}); re-create the zip with plain names"
                              ) from None
    return root


MAX_UNZIPPED_BYTES = 8 << 30  # far above any model a 1-CPU scorer runs in time


def check_size(path: Path, infos: list[zipfile.ZipInfo], dest: Path) -> None:
    """Refuse a zip whose entries unzip to more than MAX_UNZIPPED_BYTES or than the free space
    where they would go (a zip bomb fills the disk). The declared sizes bound what is written:
    zipfile stops an entry at its declared size and fails its CRC if it held more."""
    total = sum(info.file_size for info in infos)
    free = shutil.disk_usage(dest).free
    if total > min(MAX_UNZIPPED_BYTES, free):
        biggest = max(infos, key=lambda info: info.file_size)
        raise SubmissionError(
            f"{path}: its entries unzip to {_size(total)} (the largest, {biggest.filename!r}, "
            f"{_size(biggest.file_size)}), more than kit score extracts "
            f"({_size(MAX_UNZIPPED_BYTES)}, and {_size(free)} free in {dest.parent}); is it "
            "the right file?")


def _size(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def check_layout(path: Path, infos: list[zipfile.ZipInfo], names: list[str]) -> None:
    """Refuse entries that extractors resolve differently: a file listed twice (which copy wins
    depends on the tool) and a name that is both a file and a folder."""
    files = [n for info, n in zip(infos, names, strict=True) if not info.is_dir()]
    twice = sorted(n for n, count in Counter(files).items() if count > 1)
    if twice:
        raise SubmissionError(f"{path}: entry {twice[0]!r} appears more than once; which copy "
                              "would be scored depends on the unzip tool. Re-create the zip")
    folders = {n.rstrip("/") for info, n in zip(infos, names, strict=True) if info.is_dir()}
    folders |= {str(parent) for n in files for parent in PurePosixPath(n).parents
                if str(parent) != "."}
    both = sorted(folders.intersection(files))
    if both:
        raise SubmissionError(f"{path}: {both[0]!r} is both a file and a folder in the zip; "
                              "re-create the zip")


def entry_parts(name: str) -> list[str]:
    """A zip entry's name as extraction places it: its folder parts, '' and '.' left out
    ("./manifest.json", as bsdtar writes it, is "manifest.json")."""
    return [part for part in name.split("/") if part not in ("", ".")]


def check_entry(path: Path, info: zipfile.ZipInfo) -> str | None:
    """The entry's normalised relative name (None for the root folder's own entry, './'), or
    a SubmissionError naming it."""
    raw = info.filename
    name = raw.replace("\\", "/")  # read as a separator for the checks that keep files inside
    where = f"{path}: entry {raw!r}"
    if name.startswith("/") or re.match(r"^[A-Za-z]:(/|$)", name):  # a drive, not 'a:b.txt'
        raise SubmissionError(f"{where} has an absolute path; zip entries must be relative")
    parts = entry_parts(name)
    if ".." in parts:
        raise SubmissionError(
            f"{where} has a '..' component (it would land outside the submission folder)"
        )
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if stat.S_ISLNK(mode):
        raise SubmissionError(
            f"{where} is a symbolic link; the scorer gets regular files only: "
            "zip the file it points to"
        )
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise SubmissionError(f"{where} is not a regular file or folder (mode {oct(mode)})")
    if info.flag_bits & 0x1:
        raise SubmissionError(f"{where} is encrypted; submissions are plain zips")
    if not info.flag_bits & 0x800 and not raw.isascii():
        # no UTF-8 flag: Python reads the bytes as cp437 ('modèle' as 'mod├¿le'), unzip as the
        # locale's encoding; which name the scorer's extractor makes is anyone's guess
        raise SubmissionError(f"{where}: a non-ASCII name stored without the zip's UTF-8 flag; "
                              "extractors read it differently (the scorer may find no such "
                              "file): re-create the zip with Python's zipfile, 7-Zip or kit "
                              "pack, or use an ASCII name")
    if "\\" in raw:  # Python's zipfile keeps it in the name on Linux, unzip may make a folder
        raise SubmissionError(f"{where} separates folders with '\\'; extractors differ on it "
                              "(the scorer may find no such folder): re-create the zip with "
                              "'/' separators (Python's zipfile, 7-Zip, or kit pack)")
    if not parts:
        if info.is_dir():  # './': the root itself, which unzip and extractall pass over
            return None
        raise SubmissionError(f"{where} has an empty name")
    too_long = [part for part in parts if len(part.encode()) > 255]
    if too_long:
        raise SubmissionError(f"{where}: a name of {len(too_long[0].encode())} bytes; file "
                              "systems allow 255 per folder or file name")
    return "/".join(parts) + ("/" if info.is_dir() else "")


def _no_solution_message(path: Path, names: list[str]) -> str:
    nested = [n for n in names if n.endswith("/" + SOLUTION)]
    text = f"{path}: no {SOLUTION} at the root of the archive"
    if nested:
        text += (
            f" (found {nested[0]}); the scorer imports {SOLUTION} from the archive root: "
            "zip the folder's contents, not the folder itself"
        )
    return text


# --- CPU choice -----------------------------------------------------------------------------


def choose_cpu(sample_s: float = 0.05) -> int | None:
    """The least busy CPU this process may use over a short sample; ties go to the last one."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    try:
        before = _cpu_times()
        time.sleep(sample_s)
        after = _cpu_times()
    except OSError:
        return allowed[-1]
    best, best_busy = allowed[-1], float("inf")
    for cpu in reversed(allowed):
        if cpu not in before or cpu not in after:
            continue
        total = sum(after[cpu]) - sum(before[cpu])
        idle = (after[cpu][3] + after[cpu][4]) - (before[cpu][3] + before[cpu][4])
        busy = (total - idle) / total if total > 0 else 0.0
        if busy < best_busy - 1e-9:
            best, best_busy = cpu, busy
    return best


def _cpu_times() -> dict[int, list[int]]:
    times = {}
    with open("/proc/stat", encoding="utf-8") as fh:
        for line in fh:
            head, *fields = line.split()
            if head.startswith("cpu") and head != "cpu":
                times[int(head[3:])] = [int(f) for f in fields[:8]] + [0] * (8 - len(fields[:8]))
    return times


# --- the child process ----------------------------------------------------------------------


@dataclass
class ChildRun:
    """What the runner reported (result.json), its predictions and the tail of its output."""

    result: dict
    predictions: np.ndarray
    output_tail: str
    truth: np.ndarray | None = None  # next-state: the scored rows' next states after the run


def run_child(
    solution_dir: Path,
    rows_path: Path,
    n_rows: int,
    n_outputs: int,
    workdir: Path,
    *,
    cpu: int | None,
    memory_limit_bytes: int | None,
    timeout_s: float | None,
    progress: bool,
    column_dtypes: list[str] | None = None,
    next_state: bool = False,
) -> ChildRun:
    """Run runner.py on the rows; raise SubmissionError for anything the submission did wrong.

    column_dtypes: the data file's column dtypes, for rows typed as DataFrame.values types
    them (None: float64 rows)."""
    out_dir = workdir / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "output.log"
    read_fd, write_fd = os.pipe()
    job = {
        "solution_dir": str(solution_dir),
        "rows": str(rows_path),
        "out_dir": str(out_dir),
        "n_outputs": n_outputs,
        "column_dtypes": column_dtypes,
        "next_state": next_state,
        "cpu": cpu,
        "memory_limit_bytes": memory_limit_bytes,
        "progress_fd": write_fd,
        "parent_pid": os.getpid(),  # the child exits once this process is gone
        "cleanup_if_orphaned": _own_temporary(workdir),  # and removes what kit would have
    }
    job_path = workdir / "job.json"
    job_path.write_text(json.dumps(job), encoding="utf-8")
    bar = tqdm(
        total=n_rows,
        unit="row",
        desc="init",
        **bar_switch(progress),
        mininterval=0.25,
        dynamic_ncols=True,
    )
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, str(RUNNER), str(job_path)],
                cwd=solution_dir,
                env=users_environment() | CHILD_ENV,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                start_new_session=True,
            )
        os.close(write_fd)
        write_fd = -1
        try:
            with _killed_on_termination(proc):
                finished, done, where = _watch(proc, read_fd, bar, timeout_s)
        finally:
            _kill(proc)  # also what the submission started: its whole group is the sandbox
    finally:
        bar.close()
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    tail = _tail(log_path)
    if not finished:
        raise SubmissionError(
            f"timed out: the submission ran past {timeout_s:g} s and was "
            f"killed ({_done_text(done, n_rows)}){_where_text(where)}" + _with(tail),
            where=_row_of(where))
    result_path = out_dir / "result.json"
    if not result_path.is_file():
        raise SubmissionError(
            f"the submission process ended ({_exit_text(proc.returncode)}) without a result "
            f"({_done_text(done, n_rows)}); it crashed (a crash's Python stack is in the "
            "output below), ran out of memory or called exit() itself" + _with(tail)
        )
    try:  # the runner's files sit beside the submission's copy: it can write them too
        result = json.loads(result_path.read_text(encoding="utf-8"))
        if not result["ok"]:
            raise SubmissionError(_failure_text(result["error"]) + _with(tail),
                                  where=_row_of(result["error"]))
        predictions = np.load(out_dir / "predictions.npy", allow_pickle=False)
        truth_path = out_dir / "truth.npy"
        truth = np.load(truth_path, allow_pickle=False) if truth_path.is_file() else None
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        raise SubmissionError(
            f"the submission process ended ({_exit_text(proc.returncode)}) with its result "
            f"files unreadable ({type(exc).__name__}: {str(exc)[:120]}): the submission wrote "
            f"over them ({out_dir.name}/ beside its working folder) or ended while they were "
            "written" + _with(tail)) from None
    return ChildRun(result, predictions, tail, truth)


def _watch(
    proc: subprocess.Popen, read_fd: int, bar: tqdm, timeout_s: float | None
) -> tuple[bool, int | None, dict | None]:
    """Follow the progress pipe until the child exits: (finished in time, rows done so far,
    the row a timed-out submission was on).

    Rows done is None while the submission is still loading (imports and constructor). The
    deadline runs from the child's "R" line (its rows ready): kit's typing of a large file's
    rows is no time of the submission's.
    """
    deadline = None
    buf = b""
    done = None
    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return False, done, _ask_where(proc, read_fd)
        wait = 0.2 if deadline is None else min(0.2, deadline - now)
        if not select.select([read_fd], [], [], wait)[0]:
            if proc.poll() is not None:
                break  # the child is gone though a grandchild may still hold the pipe
            continue
        data = os.read(read_fd, 4096)
        if not data:
            break
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            kind, _, value = line.partition(b" ")
            if kind == b"R" and timeout_s is not None:
                deadline = time.monotonic() + timeout_s
            elif kind == b"I":
                done = 0
                bar.reset(total=bar.total)  # the rate shown is the loop's, not init's
                bar.set_description("scoring")
            elif kind == b"P":
                done = int(value)
                bar.update(done - bar.n)
    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        proc.wait(timeout=remaining)
    except subprocess.TimeoutExpired:  # closed the pipe but keeps running
        return False, done, None
    return True, done, None


def _ask_where(proc: subprocess.Popen, read_fd: int) -> dict | None:
    """Before a timed-out submission is killed, ask it where it is (runner.Where): SIGUSR1
    alone, so the kernel hands it to the main thread (with another signal pending there it may
    go to a thread that cannot run Python handlers); the answer brings the stacks and the row.
    No answer within WHERE_WAIT_S (the main thread is in a C call that never returns): SIGUSR2
    for the stacks alone, dumped from a C handler, with a moment to write them."""
    if not hasattr(signal, "SIGUSR1"):
        return None
    try:
        os.kill(proc.pid, signal.SIGUSR1)
        answered, where = _read_answer(read_fd)
        if not answered:
            os.kill(proc.pid, signal.SIGUSR2)
            time.sleep(STACK_WAIT_S)
    except ProcessLookupError:
        return None
    return where


def _read_answer(read_fd: int) -> tuple[bool, dict | None]:
    """(whether an "H" line came within WHERE_WAIT_S, the row it names or None)."""
    deadline, buf = time.monotonic() + WHERE_WAIT_S, b""
    while (left := deadline - time.monotonic()) > 0 and select.select([read_fd], [], [], left)[0]:
        data = os.read(read_fd, 4096)
        if not data:
            break
        buf += data
        for line in buf.split(b"\n")[:-1]:
            if line.startswith(b"H "):
                return True, json.loads(line[2:])
    return False, None


@contextlib.contextmanager
def _killed_on_termination(proc: subprocess.Popen):
    """SIGTERM or SIGHUP to this process (a scheduler, `timeout`, a closed terminal) kills the
    submission's process group, then ends this process with the usual 128 + signal code after
    its cleanup (temporary folders). Ctrl-C already reaches the child's group as an
    interruption of the watch loop."""
    if threading.current_thread() is not threading.main_thread():  # signal.signal needs it
        yield
        return

    def stop(signum, frame):
        _kill_tree_or_group(proc)
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in caught((signal.SIGTERM, signal.SIGHUP))}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _own_temporary(workdir: Path) -> str | None:
    """The job's folder when it is one of kit's temporary folders (kit score's, a replay's),
    which the child may remove if kit dies; never a folder a caller gave."""
    workdir = Path(workdir).resolve()
    own = (workdir.name.startswith(("kit-score-", "kit-replay-"))
           and workdir.parent == Path(tempfile.gettempdir()).resolve())
    return str(workdir) if own else None


def _kill_tree_or_group(proc: subprocess.Popen) -> None:
    """The child's tree while it is alive; once reaped, its group only."""
    if proc.returncode is None:
        kill_tree(proc.pid)
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def _kill(proc: subprocess.Popen) -> None:
    """Kill the child and anything it started (its own session, and what left it). Once the
    child is reaped its PID may be another process's: only its group is killed then (a PID
    is not reused while a group still bears it); the child killed its tree before exiting."""
    _kill_tree_or_group(proc)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()  # where there is no process group
    proc.wait()


def _tail(path: Path) -> str:
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - LOG_TAIL_CHARS))
        return fh.read().decode("utf-8", "replace").strip()


def _with(tail: str) -> str:
    return f"\n--- submission output (tail) ---\n{tail}" if tail else ""


def _done_text(done: int | None, n_rows: int) -> str:
    if done is None:
        return "while importing solution.py / constructing PredictionModel"
    return (f"the last progress report had {done:,} of {n_rows:,} rows done; reports come every "
            f"{REPORT_EVERY_S:g} s, so it got further")


def _row_of(report: dict | None) -> dict | None:
    """{"seq", "step", "row"} of a failure's row, as numbers (None where the report has none)."""
    if not report or "row" not in report:
        return None
    return {"seq": _number(report["seq"]), "step": _number(report["step"]),
            "row": int(report["row"])}


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _where_text(where: dict | None) -> str:
    if where is None:
        return ""
    return (f"; predict() was running on seq {_num(where['seq'])}, step {_num(where['step'])} "
            f"(row {where['row']:,}), and its stack is in the output below")


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _failure_text(error: dict) -> str:
    where = ""
    if "row" in error:
        where = (
            f"at seq {_num(error['seq'])}, step {_num(error['step'])} "
            f"(row {error['row']:,}, need_prediction={error['need']}): "
        )
    text = where + error["message"]
    if error.get("traceback"):
        text += f"\n--- submission traceback (tail) ---\n{error['traceback']}"
    return text


def _num(value: float) -> str:
    return str(_number(value))
