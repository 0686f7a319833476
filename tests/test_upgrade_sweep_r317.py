"""A project upgraded from an earlier kit: what its sweep studies and best files tell (r317)."""

from __future__ import annotations

import pytest

from kit.sweep import SweepError, identity_differences, prepare
from tests.test_results_r313 import _sweep_params
from tests.test_sweep import sweep_env  # noqa: F401 (a fixture)


def test_the_row_refusal_names_a_best_file_an_earlier_kit_wrote(sweep_env):  # noqa: F811
    """The refusal comes before the summary that warns of mixed rows: an earlier kit's best
    file of such a study stayed unsaid."""
    _sweep_params(sweep_env, {"data.seq_len": {"type": "categorical", "choices": [30, 60]}})
    with pytest.raises(SweepError) as fresh:
        prepare("tiny", None, None, None)
    assert "is there already" not in str(fresh.value)
    best = sweep_env / "experiments" / "tiny_best.toml"
    best.write_text("# written by an earlier kit's sweep\n")
    with pytest.raises(SweepError, match=rf"{best}.* is there already: if an earlier kit wrote "
                                         r"it from this space, it ranked trials scored on "
                                         r"different rows; compare them with kit runs -e tiny"):
        prepare("tiny", None, None, None)


def test_a_study_of_other_data_under_the_same_path_says_the_files_are_compared_by_content():
    stored = {"kit_experiment": "e", "kit_space": {},
              "kit_config": {"data.train": "aa", "data.valid": "bb", "train.lr": "x"}}
    now = {**stored, "kit_config": {**stored["kit_config"], "data.train": "cc"}}
    [said] = identity_differences(stored, now)
    assert said == ("config keys differ: changed ['data.train'] (data.train compared by "
                    "content: the file holds other data now, or another file is named)")
    lr = {**stored, "kit_config": {**stored["kit_config"], "train.lr": "y"}}
    assert identity_differences(stored, lr) == ["config keys differ: changed ['train.lr']"]
