"""kit's public calls leave the caller's torch as they found it, and do not depend on it.

In a notebook one process calls train, pack and parity many times between the user's own torch
code (r306): a training run reseeded torch's global generator (the user's next torch.rand was
fixed by kit), `train.threads = N` stayed in torch after the run (later default runs trained on
N threads and recorded it), and a `torch.set_default_dtype(torch.float64)` or a
`torch.set_grad_enabled(False)` left by an earlier cell broke training with raw errors and made
pack write a float64 graph its own solution.py cannot feed.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)


@contextlib.contextmanager
def kit_torch(grad: bool = False) -> Iterator[None]:
    """float32 as the default dtype (kit's models and graphs are float32) and, with `grad`,
    autograd on; on the way out the caller's default dtype, grad mode, thread count and random
    generators (CPU, and CUDA where initialised) as they were."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    torch.set_default_dtype(torch.float32)
    try:
        with torch.random.fork_rng(devices=devices), torch.set_grad_enabled(
                grad or torch.is_grad_enabled()):
            yield
    finally:
        torch.set_default_dtype(dtype)
        if torch.get_num_threads() != threads:  # (setting it is not free: only when changed)
            torch.set_num_threads(threads)


def keeps_torch_state(grad: bool = False) -> Callable[[F], F]:
    """A public call run under kit_torch (re-entrant: a sweep's trials call train)."""

    def wrap(function: F) -> F:
        @functools.wraps(function)
        def run(*args, **kwargs):
            with kit_torch(grad):
                return function(*args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap
