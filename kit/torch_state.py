"""kit's public calls leave the caller's torch as they found it, and do not depend on it.

Each public call (train_experiment, sweep, ablate, pack_run, pack_ensemble, run_parity) runs its
body in `with kit_torch(...)`, not under a decorator: a wrapper's frame would take the caller's
place in the file and line its warnings name.

In a notebook one process calls train, pack and parity many times between the user's own torch
code (r306): a training run reseeded torch's global generator (the user's next torch.rand was
fixed by kit), `train.threads = N` stayed in torch after the run (later default runs trained on
N threads and recorded it), and a `torch.set_default_dtype(torch.float64)` or a
`torch.set_grad_enabled(False)` left by an earlier cell broke training with raw errors and made
pack write a float64 graph its own solution.py cannot feed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def kit_torch(grad: bool = False) -> Iterator[None]:
    """float32 as the default dtype (kit's models and graphs are float32) and, with `grad`,
    autograd on; on the way out the caller's default dtype, grad mode, thread count and random
    generators as they were (CUDA's: as they were, or, where kit started CUDA, seeded as the
    caller's last torch.manual_seed would have started them)."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    cuda_was_up = torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda_was_up else []
    seed = torch.initial_seed()  # what CUDA's generators take when they start later
    torch.set_default_dtype(torch.float32)
    try:
        with torch.random.fork_rng(devices=devices), torch.set_grad_enabled(
                grad or torch.is_grad_enabled()):
            yield
    finally:
        torch.set_default_dtype(dtype)
        if torch.get_num_threads() != threads:  # (setting it is not free: only when changed)
            torch.set_num_threads(threads)
        if not cuda_was_up and torch.cuda.is_initialized():  # started (and seeded) by kit: as
            torch.cuda.manual_seed_all(seed)  # the caller's torch.manual_seed would start it
