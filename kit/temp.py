"""Temporary folders named after their owner, so a killed command's are removed by the next.

kit score, parity and pack's timing write the rows to replay (150 MB for 600 sequences) into a
temporary folder; the sandboxed child removes it when its parent dies, but a SIGKILL in the
moment before the child starts left it for good. Each folder is named kit-KIND-PID.TAG-...
(export.pack.owner_tag: the PID and a hash of the host and PID namespace), and the next command
of that kind removes those of processes that are gone (never another host's, never a live one).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path


def owned_temp_dir(kind: str) -> tempfile.TemporaryDirectory:
    """tempfile.TemporaryDirectory("kit-KIND-PID.TAG-..."), after removing the dead owners'."""
    from kit.export.pack import dead_owners, owner_tag

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
