"""The sandbox's promises that no scoring test pinned (r250's mutation audit of
kit/scoring/sandbox.py and runner.py): the child's environment, session and imports, the
timeout after a closed progress pipe, progress reports, the output tail, the temporary
folder an orphan removes, and the zip and folder rules at their limits.

Most tests call the sandbox's functions directly; the child's environment is recorded by
one scoring run shared by the tests that read it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from tqdm import tqdm

from kit.errors import SubmissionError
from kit.scoring import sandbox
from tests.test_scoring import FORMULA, score, write_data, write_sub

# what CHILD_ENV promises, written out: a variable dropped from sandbox.THREAD_ENV must fail
# here, not be dropped from the expectation with it
THREADS_AT_ONE = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1", "NUMEXPR_MAX_THREADS": "1", "VECLIB_MAXIMUM_THREADS": "1",
    "BLIS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1", "POLARS_MAX_THREADS": "1", "RAYON_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false", "MKL_DYNAMIC": "FALSE", "OMP_DYNAMIC": "FALSE",
}

# A submission that records what its process sees, into the file named by record_to.txt
# (its folder is a copy that kit score removes afterwards).
RECORDS_ITS_PROCESS = """\
import importlib.util
import json
import os
import sys

import numpy as np

import helper  # a module of its own: Python caches its bytecode beside it unless told not to

with open(sys.argv[1]) as fh:  # runner.py's job file: the progress pipe's fd
    progress_fd = json.load(fh)["progress_fd"]
found = {}
for name in ("score", "sandbox", "runner"):  # kit/scoring's files
    spec = importlib.util.find_spec(name)
    found[name] = None if spec is None else spec.origin
try:
    import score
    imported = "score imported from " + str(getattr(score, "__file__", None))
except ImportError as exc:
    imported = f"{type(exc).__name__} {exc.name}"
record = {
    "environ": dict(os.environ),
    "dont_write_bytecode": sys.dont_write_bytecode,
    "pycache": sorted(p for p in os.listdir(".") if p == "__pycache__"),
    "sys_path": [os.path.abspath(p or ".") for p in sys.path],
    "found": found,
    "imported": imported,
    "sid": os.getsid(0),
    "pgid": os.getpgid(0),
    "ppid": os.getppid(),
    "progress_fd_inheritable": os.get_inheritable(progress_fd),
    "helper": helper.VALUE,
}
with open(open("record_to.txt").read(), "w") as fh:
    json.dump(record, fh)


class PredictionModel:
    def predict(self, dp):
        return np.zeros(2) if dp.need_prediction else None
"""


@pytest.fixture(scope="module")
def child(tmp_path_factory) -> dict:
    """What a submission's process saw, scored once with the user's environment asking for 8
    threads, a GPU and bytecode caches (every variable the sandbox sets, set otherwise)."""
    root = tmp_path_factory.mktemp("child")
    out = root / "record.json"
    data, _ = write_data(root, n_seqs=1)
    sub = write_sub(root, RECORDS_ITS_PROCESS, **{"helper.py": "VALUE = 7\n",
                                                  "record_to.txt": str(out)})
    with pytest.MonkeyPatch.context() as mp:
        for key, value in THREADS_AT_ONE.items():
            mp.setenv(key, {"1": "8", "false": "true", "FALSE": "TRUE"}[value])
        mp.setenv("CUDA_VISIBLE_DEVICES", "0")
        mp.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
        mp.delenv("PYTHONUNBUFFERED", raising=False)
        result = score(sub, data, timeout_s=120)
    assert np.isfinite(result.score)
    record = json.loads(out.read_text())
    assert record["helper"] == 7
    return record


def test_the_sandbox_s_variables_win_over_the_user_s_environment(child):
    """CHILD_ENV is set over the user's environment, not under it: a user who exported
    OMP_NUM_THREADS=8 or CUDA_VISIBLE_DEVICES=0 scored on 8 threads or a GPU, where the
    official scorer has one vCPU and none."""
    env = child["environ"]
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["POLARS_MAX_THREADS"] == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == ""


def test_every_thread_variable_reaches_the_child_at_one(child):
    """Each documented thread-pool knob reaches the child, not OMP_NUM_THREADS alone: one
    dropped from the list leaves that library on the user's (or its default) thread count."""
    env = child["environ"]
    assert {key: env.get(key) for key in THREADS_AT_ONE} == THREADS_AT_ONE
    assert env.get("PYTHONUNBUFFERED") == "1"  # the log keeps the prints in order


def test_no_bytecode_cache_is_written_beside_the_submission(child):
    """PYTHONDONTWRITEBYTECODE: a submission importing a module of its own leaves no
    __pycache__ in the folder it runs in (the user's folder is left as it was)."""
    assert child["dont_write_bytecode"] is True
    assert child["pycache"] == []


def test_kit_s_scoring_folder_is_not_on_the_submission_s_path(child):
    """runner.py's folder (sys.path[0] of `python runner.py`) is taken off sys.path: a
    submission's `import score` found kit's score.py, which the official scorer lacks."""
    scoring = os.path.dirname(os.path.abspath(sandbox.__file__))
    assert scoring not in child["sys_path"]
    assert child["found"] == {"score": None, "sandbox": None, "runner": None}
    assert child["imported"] == "ModuleNotFoundError score"


def test_the_child_runs_in_a_session_of_its_own(child):
    """start_new_session: the child leads a session (and process group) that is not kit
    score's, so a terminal's Ctrl-C or hangup does not hit it behind kit's back and its whole
    group can be killed at once."""
    assert child["sid"] != os.getsid(0)
    assert child["sid"] == child["pgid"] == child["ppid"]  # led by the runner's supervisor


def test_the_progress_pipe_is_not_inherited_by_what_the_submission_starts(child):
    """The runner makes its progress fd non-inheritable (pass_fds made it inheritable): a
    helper the submission starts would otherwise hold kit's pipe open after the run."""
    assert child["progress_fd_inheritable"] is False


def test_a_child_that_closes_the_progress_pipe_and_hangs_is_still_timed_out():
    """After the pipe's end-of-file the wait for the child keeps the deadline: a submission
    that closed the progress fd and then hung made kit score wait forever past --timeout."""
    read_fd, write_fd = os.pipe()
    code = textwrap.dedent(f"""\
        import os, time
        os.write({write_fd}, b"R\\n")  # its rows ready: the timeout runs from here
        os.close({write_fd})
        time.sleep(8)
        """)
    proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(write_fd,))
    os.close(write_fd)
    t0 = time.monotonic()
    try:
        finished, done, where = sandbox._watch(proc, read_fd, tqdm(disable=True), 1.0)
    finally:
        os.close(read_fd)
        proc.kill()
        proc.wait()
    assert (finished, done, where) == (False, None, None)
    assert time.monotonic() - t0 < 5


def test_a_crash_is_reported_at_the_last_progress_report_s_row_with_a_bounded_tail(tmp_path):
    """Progress is reported every REPORT_EVERY_S with the rows done: a submission crashing
    after 3 rows of 0.3 s each (each row its own report) is said to have had 3 rows done,
    not 0 (no periodic reports) and not 4 (overstated). The output shown is the log's tail:
    100 kB of prints do not all go into the error."""
    data, _ = write_data(tmp_path, n_seqs=1)
    sub = write_sub(tmp_path, """\
        import os, sys, time
        import numpy as np

        class PredictionModel:
            def __init__(self):
                self.calls = 0

            def predict(self, dp):
                self.calls += 1
                if self.calls == 4:
                    print("x" * 100_000)
                    print("LAST WORDS")
                    sys.stdout.flush()
                    os._exit(3)
                time.sleep(0.3)
                return np.zeros(2) if dp.need_prediction else None
        """)
    with pytest.raises(SubmissionError, match=r"ended \(exit code 3\) without a result") as info:
        score(sub, data, timeout_s=120)
    said = str(info.value)
    assert "the last progress report had 3 of 20 rows done" in said
    assert said.rstrip().endswith("LAST WORDS")
    assert len(said) < sandbox.LOG_TAIL_CHARS + 1000


def test_the_output_tail_is_the_end_of_the_log(tmp_path):
    """_tail reads the last LOG_TAIL_CHARS bytes only, whatever the log's size."""
    log = tmp_path / "output.log"
    log.write_text("y" * 50_000 + "\nthe end\n")
    tail = sandbox._tail(log)
    assert tail.endswith("the end") and len(tail) <= sandbox.LOG_TAIL_CHARS


def test_an_exit_code_of_0_is_no_signal():
    """A submission that calls os._exit(0) mid-run ends with exit code 0, which is no
    signal: it was said to be "killed by signal 0"."""
    assert sandbox._exit_text(0) == "exit code 0"
    assert sandbox._exit_text(3) == "exit code 3"
    assert sandbox._exit_text(-signal.SIGKILL) == "killed by SIGKILL"


def test_an_orphan_never_removes_a_callers_folder_named_like_kit_s(tmp_path, monkeypatch):
    """The child removes its job's folder if kit dies, but only kit's own temporary folders
    (kit-score-*, kit-replay-* directly in the temp dir): a caller's folder of that name
    elsewhere, given as the workdir, would be deleted (data loss)."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    for name in ("kit-score-1", "kit-replay-2"):
        assert sandbox._own_temporary(tmp_path / "work" / name) is None
        assert sandbox._own_temporary(tmp_path / name) is None
        assert sandbox._own_temporary(temp / name) == str((temp / name).resolve())
    assert sandbox._own_temporary(temp / "mine") is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_kill_the_child_and_exit_128_plus_the_signal(sig):
    """A closed terminal (SIGHUP) ends kit score as SIGTERM does: the child's group killed,
    then exit 128 + signal after the cleanup. Without a handler SIGHUP's default action ended
    kit at once, the submission left running and the temporary folder left behind."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            start_new_session=True)

    class NotCaught(Exception):
        pass

    def not_caught(signum, frame):  # (instead of the default action: ending pytest)
        raise NotCaught(signum)

    previous = signal.signal(sig, not_caught)
    try:
        with pytest.raises(SystemExit) as info, sandbox._killed_on_termination(proc):
            os.kill(os.getpid(), sig)
            time.sleep(10)
        assert info.value.code == 128 + sig
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert signal.getsignal(sig) is not_caught  # the caller's handler is back
    finally:
        signal.signal(sig, previous)
        proc.kill()
        proc.wait()


# --- folders and zips at their limits ---------------------------------------------------------


def test_a_folder_past_the_free_space_is_refused_before_it_is_copied(tmp_path, monkeypatch):
    """A folder is copied only if it fits the free space where it goes, as a zip is
    extracted: under the cap but past the disk's free space, it is refused by name."""
    import shutil

    sub = write_sub(tmp_path, FORMULA, **{"zeros.bin": "0" * (2 << 20)})  # 2 MiB
    real = shutil.disk_usage
    monkeypatch.setattr(sandbox.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=1 << 20))  # 1 MiB free
    dest = tmp_path / "run" / "submission"
    with pytest.raises(SubmissionError, match=r"its files take 2.0 MiB, more than kit score "
                       r"copies \(8.0 GiB, and 1.0 MiB free in"):
        sandbox.copy_submission(sub, dest)
    assert not dest.exists()


def _sized(path: Path, entries: dict) -> int:
    """Write a zip of entries, return the bytes it unzips to."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in entries.items():
            zf.writestr(name, content)
    return sum(len(content.encode()) for content in entries.values())


def test_a_zip_unzipping_to_exactly_the_cap_or_the_free_space_is_accepted(tmp_path,
                                                                          monkeypatch):
    """The caps are inclusive: a zip unzipping to exactly MAX_UNZIPPED_BYTES, or to exactly
    the free space, is extracted; one byte less of either refuses it."""
    import shutil

    zpath = tmp_path / "sub.zip"
    total = _sized(zpath, {"solution.py": FORMULA, "w.txt": "1" * 5000})
    real = shutil.disk_usage
    for limited in ("cap", "free space"):
        def limit(n: int, limited=limited) -> None:
            monkeypatch.setattr(sandbox, "MAX_UNZIPPED_BYTES", n if limited == "cap" else 1 << 40)
            free = n if limited == "free space" else 1 << 40
            monkeypatch.setattr(sandbox.shutil, "disk_usage",
                                lambda path: real(path)._replace(free=free))

        limit(total)
        root = sandbox.extract_zip(zpath, tmp_path / f"exact {limited}")
        assert (root / "w.txt").read_text() == "1" * 5000, limited
        limit(total - 1)
        with pytest.raises(SubmissionError, match="more than kit score extracts"):
            sandbox.extract_zip(zpath, tmp_path / f"past {limited}")


def test_a_folder_of_exactly_the_cap_is_copied(tmp_path, monkeypatch):
    """The folder's cap is inclusive too."""
    sub = write_sub(tmp_path, FORMULA, **{"w.txt": "1" * 5000})
    total = sum(p.stat().st_size for p in sub.rglob("*") if p.is_file())
    monkeypatch.setattr(sandbox, "MAX_UNZIPPED_BYTES", total)
    assert (sandbox.copy_submission(sub, tmp_path / "copy") / "w.txt").is_file()
    monkeypatch.setattr(sandbox, "MAX_UNZIPPED_BYTES", total - 1)
    with pytest.raises(SubmissionError, match="more than kit score copies"):
        sandbox.copy_submission(sub, tmp_path / "copy2")


def test_a_folders_git_is_neither_counted_nor_checked_for_links(tmp_path, monkeypatch):
    """.git and __pycache__ are not copied, so they are not checked either: a large .git
    refused a folder under the cap, and a symbolic link inside .git (git makes them in
    hooks, worktrees) refused a folder whose submitted files hold none."""
    sub = write_sub(tmp_path, FORMULA)
    for part in (".git", "__pycache__"):
        (sub / part / "objects").mkdir(parents=True)
        (sub / part / "objects" / "pack").write_bytes(b"\0" * (1 << 20))  # 1 MiB
        (sub / part / "link").symlink_to("../solution.py")
    monkeypatch.setattr(sandbox, "MAX_UNZIPPED_BYTES", 64 << 10)  # 64 KiB
    copy = sandbox.copy_submission(sub, tmp_path / "copy")
    assert sorted(p.name for p in copy.iterdir()) == ["solution.py"]


def test_a_zips_empty_folders_are_made(tmp_path):
    """A zip's folder entries with nothing in them are created, as unzip creates them: a
    solution that writes into its zipped `cache/` folder found none."""
    zpath = tmp_path / "sub.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("solution.py", FORMULA)
        zf.writestr(zipfile.ZipInfo("cache/"), b"")
        zf.writestr(zipfile.ZipInfo("model/empty/"), b"")
    root = sandbox.extract_zip(zpath, tmp_path / "out")
    assert (root / "cache").is_dir() and (root / "model" / "empty").is_dir()


def _utf8_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.flag_bits |= 0x800  # the UTF-8 flag, as zipfile sets it when writing such a name
    return info


def test_the_255_limit_of_a_name_counts_bytes_not_characters(tmp_path):
    """File systems allow 255 bytes per name: 128 two-byte characters (256 bytes) are
    refused by name (they failed at extraction with an OSError), 255 bytes are accepted,
    256 ASCII ones refused."""
    where = tmp_path / "sub.zip"
    for name in ("é" * 128, "d/" + "a" * 256):
        with pytest.raises(SubmissionError, match="a name of 256 bytes; file systems allow 255"):
            sandbox.check_entry(where, _utf8_entry(name))
    for name in ("a" * 255, "d/" + "é" * 127 + "a"):
        assert sandbox.check_entry(where, _utf8_entry(name)) == name


def test_a_parent_folder_clashing_with_a_file_is_found_beside_folder_entries(tmp_path):
    """'x' as a file and as the folder of 'x/y' is refused also when the zip holds folder
    entries of its own ('d/'): the folders implied by the files' paths still count."""
    where = tmp_path / "odd.zip"
    infos = [zipfile.ZipInfo(n) for n in ("solution.py", "d/", "x", "x/y")]
    names = [sandbox.check_entry(where, info) for info in infos]
    with pytest.raises(SubmissionError, match="'x' is both a file and a folder"):
        sandbox.check_layout(where, infos, names)


def test_a_folder_named_solution_py_is_no_solution_py(tmp_path):
    """A folder entry keeps its '/': a zip holding the folder `solution.py/` (and a file in
    it) has no solution.py at its root and is refused so, not extracted and failed later."""
    zpath = tmp_path / "sub.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr(zipfile.ZipInfo("solution.py/"), b"")
        zf.writestr("solution.py/x.py", "x = 1\n")
    assert sandbox.check_entry(zpath, zipfile.ZipInfo("solution.py/")) == "solution.py/"
    with pytest.raises(SubmissionError, match="no solution.py at the root of the archive"):
        sandbox.extract_zip(zpath, tmp_path / "out")
    assert not (tmp_path / "out").exists()
