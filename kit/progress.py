"""Progress bars: shown where someone watches them."""

from __future__ import annotations

import os
import sys

FORCE_ENV = "KIT_PROGRESS"  # "1": bars even where stderr is no terminal (a log you want them in)


def bar_switch(progress: bool) -> dict:
    """tqdm's `disable` for kit's progress bars: off with -q (progress False); else as
    TQDM_DISABLE, tqdm's own switch, says where it is set (kit's explicit `disable=` overrode
    it); on with KIT_PROGRESS=1 and in a notebook (whose stderr is no terminal either); else on
    a terminal only (tqdm's None), so a CI log or a file of stderr holds no carriage-return
    frames (r298)."""
    if not progress:
        return {"disable": True}
    if os.environ.get("TQDM_DISABLE"):  # (set empty, tqdm reads it as bars always on)
        return {}
    if os.environ.get(FORCE_ENV) == "1" or _in_notebook():
        return {"disable": False}
    return {"disable": None}


def _in_notebook() -> bool:
    """Whether this process is a Jupyter kernel's (an IPython shell with a kernel): ipykernel
    merely imported (a tool that runs notebooks) is none."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")
