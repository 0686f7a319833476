"""Helpers for tests of processes kit starts."""

from __future__ import annotations

from pathlib import Path


def exited(pid: int) -> bool:
    """Whether a process has exited: reaped, or a zombie left to a parent that does not reap
    (a container's init may not)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True
