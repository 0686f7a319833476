"""r297's review of the twenty-seventh session's diff: a range over op outputs keeps a range's
errors, a resume's comparison with other runs says nothing of their losses, the missing-column
hints stay few and close, and a sweep's best file leaves the loss's defaults out."""

import warnings

import numpy as np
import polars as pl
import pytest
import tomli_w

from kit.competition import spec_from_dict
from kit.features.sets import FeatureConfigError, build_feature_set
from tests.test_targets_losses_r296 import project

LAGS = [{"op": "lag", "inputs": ["p0"], "k": 1}, {"op": "lag", "inputs": ["p0"], "k": 2}]


@pytest.mark.parametrize("pattern, said", [
    ("p0@lag2..p0@lag1", "column range 'p0@lag2..p0@lag1' runs backwards"),
    ("p0@lag1..p0@lag999999", "names 999,999 columns; at most 100,000 are allowed"),
    ("p0@lag1..q0@lag2", "is not PREFIX<low>..PREFIX<high>"),
])
def test_a_bad_range_over_op_outputs_is_a_range_error(pattern, said):
    """Taken as an unknown name (with a hint), it lost the range's own message."""
    with pytest.raises(FeatureConfigError, match=said.replace("(", r"\(").replace(".", r"\.")):
        build_feature_set("predictorium", ["raw"], [*LAGS, {"op": "raw", "inputs": [pattern]}])


def test_a_range_over_op_outputs_expands():
    fs = build_feature_set("predictorium", ["raw"],
                           [*LAGS, {"op": "mean", "inputs": ["p0@lag1..p0@lag2"]}])
    assert fs.outputs[-1] == "mean(p0@lag1..p0@lag2)"


def test_comparing_with_another_runs_config_warns_of_nothing(tmp_path, monkeypatch):
    """`kit train --resume` compares the command with each unfinished run: a run trained on a
    pearson-only loss made the command warn of a loss it does not train."""
    from kit.train.recipe import check_config, config_changes, experiment_config

    monkeypatch.chdir(tmp_path)
    exp = project(tmp_path)
    other = tmp_path / "runs" / "other"
    other.mkdir(parents=True)
    other_config = experiment_config(exp, ["loss.terms={pearson=1.0}"])
    (other / "config.toml").write_text(tomli_w.dumps(other_config))
    command = check_config(experiment_config(exp))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert config_changes(other, command) == ["loss.terms.mse", "loss.terms.pearson"]
    assert not [str(w.message) for w in caught], [str(w.message) for w in caught]


def test_missing_columns_get_close_hints_only_and_at_most_five():
    from kit.data.arrays import MEANT_HINTS, build_arrays
    from kit.errors import DataError

    names = [f"f{i}" for i in range(8)]
    frame = pl.DataFrame({"sid": np.zeros(3, np.int64), "t": np.arange(3),
                          "scored": np.ones(3, bool),
                          **{f"F{i}": np.zeros(3, np.float32) for i in range(8)},
                          "p30": np.zeros(3, np.float32), "y": np.zeros(3, np.float32)})
    spec = spec_from_dict({"name": "x", "id_col": "sid", "step_col": "t", "need_col": "scored",
                           "features": [*names, "dp0"], "targets": ["y"]})
    with pytest.raises(DataError) as info:
        build_arrays(frame, spec, [*names, "dp0"])
    said = str(info.value)
    assert said.count("did you mean") == MEANT_HINTS == 5 and "; 3 more (" in said, said
    assert "'p30'" not in said.split("columns:")[1].split(")")[1]  # no hint for dp0
    assert "rename the column in the frame" in said


def test_a_best_files_loss_leaves_its_defaults_out():
    from kit.sweep import loss_as_written

    plain = {"spec": "predictorium"}
    resolved = {"terms": {"wmse": 1.0}, "huber_delta": 1.0, "target_weights": [1.0, 1.0]}
    assert loss_as_written(resolved, plain) == {"terms": {"wmse": 1.0}}
    assert loss_as_written({**resolved, "target_weights": [2.0, 1.0]}, plain) == {
        "terms": {"wmse": 1.0}, "target_weights": [2.0, 1.0]}
