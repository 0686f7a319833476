"""kit keeps Polars' freed pages for reuse (kit/__init__.py): the option is set before Polars
loads, a user's own value wins, and Polars' allocator really reads that variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

VAR = "_RJEM_MALLOC_CONF"


def _python(code: str, env_value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != VAR}
    if env_value is not None:
        env[VAR] = env_value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, check=True)


def test_kit_sets_the_option_before_polars_loads():
    # Polars prepends its own defaults when it loads; the last value of an option is the one
    # jemalloc keeps.
    code = ("import kit.features, os, sys; "
            "print('polars' in sys.modules, os.environ['_RJEM_MALLOC_CONF'])")
    loaded, conf = _python(code, None).stdout.split()
    assert loaded == "True"
    muzzy = [pair for pair in conf.split(",") if pair.startswith("muzzy_decay_ms:")]
    assert muzzy[-1] == "muzzy_decay_ms:-1", conf


def test_a_value_the_user_set_wins():
    code = "import kit.features, os; print(os.environ['_RJEM_MALLOC_CONF'])"
    conf = _python(code, "dirty_decay_ms:0").stdout.strip()
    assert conf.endswith(",dirty_decay_ms:0") and "muzzy_decay_ms:-1" not in conf, conf


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Polars uses jemalloc on Linux")
def test_polars_allocator_reads_the_variable():
    # An invalid value makes jemalloc complain: proof the name reaches Polars' allocator, so
    # kit's setting is not silently dead after a Polars release changes its allocator.
    code = "import polars as pl; print(pl.Series([1.0, 2.0]).sum())"
    done = _python(code, "muzzy_decay_ms:not_a_number")
    assert done.stdout.strip() == "3.0"
    assert "jemalloc" in done.stderr and "muzzy_decay_ms" in done.stderr
