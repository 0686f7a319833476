"""Helpers for tests of processes kit starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def dead_pid() -> str:
    """The PID of a process that has just exited (as a killed command's would be)."""
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()


def exited(pid: int) -> bool:
    """Whether a process has exited: reaped, or a zombie left to a parent that does not reap
    (a container's init may not)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True
