"""Temporary folders named after their owner, so a killed command's are removed by the next.

kit score, parity and pack's timing write the rows to replay (150 MB for 600 sequences) into a
temporary folder; the sandboxed child removes it when its parent dies, but a SIGKILL in the
moment before the child starts left it for good. Each folder is named kit-KIND-PID.TAG-...
(owner_tag: the PID and a hash of the host and PID namespace; pack's staging folders and the
feature cache's temporary folders are named so too), and the next command
of that kind removes those of processes that are gone (never another host's, never a live one).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path


def owned_temp_dir(kind: str) -> tempfile.TemporaryDirectory:
    """tempfile.TemporaryDirectory("kit-KIND-PID.TAG-..."), after removing the dead owners'."""
    prefix = f"kit-{kind}-"
    for stale in dead_owners(Path(tempfile.gettempdir()), prefix):
        shutil.rmtree(stale, ignore_errors=True)
    # a SIGTERM raised (kit.workers.ended_by_signals) between the folder's mkdtemp and the
    # registration of its clean-up left the folder behind (seen once in a loaded test run):
    # its handler waits until the object that removes the folder exists. Python's handlers,
    # not the signal mask: the kernel hands a process's signal to any thread that does not
    # block it (polars' and torch's), and Python then runs the handler in the main thread
    return _deferring_signals(
        lambda: tempfile.TemporaryDirectory(prefix=f"{prefix}{owner_tag()}-"))


def _deferring_signals(make):
    """make(), with SIGTERM, SIGHUP and SIGINT noted while it runs and handed to their own
    handlers after it (a handler that raises then finds what make() made, to clean it up)."""
    if threading.current_thread() is not threading.main_thread():  # (signal.signal needs it)
        return make()
    noted: list[int] = []
    held = [sig for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None), signal.SIGINT)
            if sig is not None]
    previous = {sig: signal.signal(sig, lambda signum, frame: noted.append(signum))
                for sig in held}
    try:
        made = make()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for signum in noted[:1]:
        handler = previous[signum]
        if callable(handler):
            handler(signum, None)  # raises as it would have: `made` is dropped and cleans up
        elif handler == signal.SIG_DFL:
            os.kill(os.getpid(), signum)  # its default action, as it would have been
    return made


def owner_tag() -> str:
    """PID.SPACE of this process in a staging folder's name: a pack of another host, or of a
    container sharing the folder, has PIDs of its own, which this one cannot check. SPACE
    hashes the host name and, on Linux, the PID namespace: containers that share the host's
    name (docker --uts=host, hostNetwork pods) do not share its PIDs, and a live pack there
    was taken for a dead one and its staging folder deleted."""
    return f"{os.getpid()}.{space_hash('pid')}"


def space_hash(namespace: str) -> str:
    """A short hash of the host name and (Linux) this process's `namespace` ("pid": whose
    PIDs these are; "mnt": where an absolute path names the same file)."""
    space = socket.gethostname()
    with contextlib.suppress(OSError):
        space += f"/{namespace}-ns {os.stat(f'/proc/self/ns/{namespace}').st_ino}"
    return _short_hash(space)


def dead_owners(folder: Path, prefix: str) -> list[Path]:
    """The entries PREFIX{owner_tag}-... of folder whose owner process is gone."""
    return [entry for entry in folder.glob(f"{glob.escape(prefix)}*")
            if owner_gone(entry.name.removeprefix(prefix).split("-")[0])]


def owner_gone(tag: str) -> bool:
    """Whether the pack that wrote a staging name of this tag is dead: a PID of this host
    (or a name without a host, from before) that no process has."""
    pid, _, host = tag.partition(".")
    if not pid.isdigit() or (host and host not in (owner_tag().partition(".")[2],
                                                   _host_only_hash())):
        return False  # another host's: it may be building right now
    return not process_alive(int(pid))


def _host_only_hash() -> str:
    """The tag kits before 2026-12-04 gave this host (its name alone): their killed packs'
    folders are this host's to clean, as they were then."""
    return _short_hash(socket.gethostname())


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, another user's
        return True
    return True
