"""kit: a submission kit for streaming sequence-prediction code competitions."""

import os

__version__ = "0.1.0"

# Polars' allocator (jemalloc) hands freed pages back to the OS within a second or two
# (Polars sets dirty_decay_ms:500,muzzy_decay_ms:1000 when it loads), so a feature build that
# allocates and frees one chunk's columns after another faults the same memory in again for
# every chunk: 3.4M faults in a 10.7M-row build, ~15 s of system time on a VM where a fault
# costs ~10 us. With muzzy_decay_ms:-1 freed pages are only marked free (MADV_FREE): the
# kernel can still take them under memory pressure, and reusing them costs no fault
# (docs/decisions.md). Polars appends this variable to its own defaults, so it wins; it must
# be set before Polars is first imported, which kit's modules do after this line. A value the
# user set is kept as it is.
ALLOCATOR_VAR = "_RJEM_MALLOC_CONF"
USER_ALLOCATOR_CONF = os.environ.get(ALLOCATOR_VAR)  # None: the user set nothing
os.environ.setdefault(ALLOCATOR_VAR, "muzzy_decay_ms:-1")


def users_environment() -> dict[str, str]:
    """os.environ with the allocator variable as the user had it: for a process that stands
    for the competition's own environment (a submission under kit score), which kit's setting
    would change (freed pages kept count in its peak memory)."""
    env = dict(os.environ)
    if USER_ALLOCATOR_CONF is None:
        env.pop(ALLOCATOR_VAR, None)
    else:
        env[ALLOCATOR_VAR] = USER_ALLOCATOR_CONF
    return env
