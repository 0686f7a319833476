"""kit keeps Polars' freed pages for reuse (kit/__init__.py): the option is set before Polars
loads, a user's own value wins, and Polars' allocator really reads that variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


SUBMISSION = """
import os

import numpy as np


class PredictionModel:
    def __init__(self):
        print("ENV", os.environ.get("_RJEM_MALLOC_CONF"), flush=True)

    def predict(self, dp):
        return np.zeros(2) if dp.need_prediction else None
"""


@pytest.mark.parametrize("user_value", [None, "dirty_decay_ms:0"])
def test_a_submission_under_kit_score_sees_the_allocator_as_the_user_set_it(tmp_path,
                                                                           user_value):
    """The scorer's environment has no kit in it: the replay must not keep freed pages (they
    count in the peak memory reported against the limit)."""
    (tmp_path / "solution.py").write_text(SUBMISSION)
    code = f"""
import kit  # first, as a user's script would import it before Polars
import sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from kit.scoring import score_submission
from tests.test_scoring import SPEC, write_data
data, _ = write_data(Path({str(tmp_path)!r}))
result = score_submission(Path({str(tmp_path)!r}), data, SPEC, progress=False)
print(result.output_tail.splitlines()[0])
"""
    assert _python(code, user_value).stdout.strip().splitlines()[-1] == f"ENV {user_value}"
