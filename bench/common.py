"""Small helpers shared by the benches: memory high-water marks, child runs, timing, JSON lines.

Benches import it as `from common import ...`: running `python bench/bench_x.py` puts bench/ on
sys.path first.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

GB = 2**30


def rss_bytes(field: str = "VmRSS") -> int:
    """This process's VmRSS (now) or VmHWM (peak) in bytes; ru_maxrss where /proc is missing."""
    try:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) * 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_bytes() -> int:
    """The kernel's high-water mark of this process's resident memory (VmHWM)."""
    return rss_bytes("VmHWM")


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux; a no-op elsewhere)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def cpus() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def run_child(cmd: list[str], env: dict | None = None) -> dict:
    """Run a bench child and return the JSON object on the last line of its stdout.

    Adds the child's wall time ("child_wall_s", interpreter start and imports included), its
    user and system CPU seconds ("child_user_s", "child_sys_s") and, where the child did not
    report one itself, its peak RSS ("peak_rss", from wait4).
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, text=True, env=None if env is None else os.environ | env
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        lines, errors = out.read().strip().splitlines(), err.read()
    if proc.returncode != 0 or not lines:
        sys.stderr.write(errors)
        raise RuntimeError(f"bench child failed (exit {proc.returncode}): {' '.join(cmd)}")
    result = json.loads(lines[-1])
    result.setdefault("peak_rss", usage.ru_maxrss * 1024)
    result |= {"child_wall_s": wall, "child_user_s": usage.ru_utime, "child_sys_s": usage.ru_stime}
    return result


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    """Call fn `repeats` times; return (best seconds, all seconds)."""
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), times


def emit(record: dict) -> None:
    """Print a bench result as one JSON line (floats as given; round them at the call site)."""
    print(json.dumps(record), flush=True)
