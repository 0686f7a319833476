"""The largest batch that fits on a CUDA device: double until out of memory, then bisect.

`train.batch_size = 0` asks for it. The search is a pure function of a `fits(size) -> bool`
probe, so its logic is tested on any machine; the probe runs one forward and backward pass of
the real model on a batch of that size at the run's chunk length.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from kit.config import ConfigError

HEADROOM = 0.9  # the share of the largest probed batch that training uses


def largest_fitting(fits: Callable[[int], bool], start: int = 8, limit: int = 4096) -> int:
    """The largest size in [1, limit] with fits(size), assuming fits is monotone."""
    if not fits(1):
        raise ConfigError("not even a batch of one sequence fits in device memory; shorten "
                          "train.chunk or shrink the model")
    low, high = 1, None  # low fits; high (when known) does not
    size = max(1, min(start, limit))
    while high is None:
        if size > low and not fits(size):
            high = size
        elif size >= limit:
            return limit
        else:
            low, size = size, min(size * 2, limit)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def find_batch_size(model: torch.nn.Module, n_inputs: int, steps: int, n_seqs: int,
                    device: torch.device) -> int:
    """Largest batch (at most n_seqs) whose forward + backward fits on `device` (CUDA only)."""
    if device.type != "cuda":
        raise ConfigError("train.batch_size = 0 (find the largest batch) needs a CUDA device; "
                          "set a batch size on CPU")

    def fits(size: int) -> bool:
        try:
            x = torch.randn(size, steps, n_inputs, device=device)
            y, _ = model(x, [s.to(device) for s in model.init_state(size)])
            y.float().square().mean().backward()
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    return batch_with_headroom(fits, n_seqs)


def batch_with_headroom(fits: Callable[[int], bool], n_seqs: int) -> int:
    """HEADROOM of the largest batch that fits, at most n_seqs: optimizer state and activations
    vary a little between batches. Probed past n_seqs, so a train set that fits with room to
    spare trains as one batch, and one that only just fits keeps the headroom."""
    largest = largest_fitting(fits, limit=math.ceil(n_seqs / HEADROOM))
    return min(n_seqs, max(1, int(largest * HEADROOM)))
