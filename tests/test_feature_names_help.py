"""Composing ops by their outputs' names (r295): a misnamed input is answered with the names
that exist, an undefined op output is no column-range syntax error, and `kit features list`
shows what each op takes and how it names its outputs."""

import pytest

from kit.features.ops import EXAMPLES, OPS, example_usage
from kit.features.sets import FeatureConfigError, build_feature_set
from tests.cli import run_cli


def _refusal(groups, op: dict) -> str:
    with pytest.raises(FeatureConfigError) as info:
        build_feature_set("predictorium", groups, [op])
    return str(info.value)


def test_an_ewm_asked_for_by_its_span_is_answered_with_its_name_by_alpha():
    said = _refusal(["raw", "ewm"], {"op": "rolling_mean", "inputs": ["p0@ewm_std20"],
                                     "window": 5})
    assert said.startswith("features.ops[0] (rolling_mean): unknown column(s) "
                           "['p0@ewm_std20'] ('p0@ewm_std20': did you mean "
                           "'p0@ewm_std0.09524'"), said
    assert "p0@ewm_mean0.1, " in said and "in all);" in said  # the earlier ops' outputs


def test_a_rolling_output_asked_for_by_the_ops_name_is_answered():
    said = _refusal(["raw", "rolling"], {"op": "lag", "inputs": ["p0@rolling_std20"], "k": 1})
    assert "did you mean 'p0@roll_std20'" in said, said


def test_a_sum_a_group_made_under_its_own_name_is_named():
    """The imbalance group makes sum(v0..v5) as bid_volume; asking for sum(v0..v5) was a
    column-range syntax error."""
    said = _refusal(["raw", "imbalance"], {"op": "rolling_mean", "inputs": ["sum(v0..v5)"],
                                           "window": 5})
    assert "unknown column(s) ['sum(v0..v5)'] ('sum(v0..v5)' is made as 'bid_volume' by " \
           "group 'imbalance' op " in said, said
    assert "PREFIX" not in said


def test_a_sum_defined_later_is_unknown_here_and_a_bad_range_still_a_range_error():
    said = _refusal(["raw"], {"op": "lag", "inputs": ["sum(p0..p5)"], "k": 1})
    assert "unknown column(s) ['sum(p0..p5)']" in said and "(none yet;" in said, said
    assert "is not PREFIX<low>..PREFIX<high>" in _refusal(["raw"], {"op": "lag",
                                                                     "inputs": ["p0..v5"],
                                                                     "k": 1})


def test_a_sum_defined_earlier_is_read_by_its_name():
    fs = build_feature_set("predictorium", ["raw"], [
        {"op": "sum", "inputs": ["v0..v5"]},
        {"op": "rolling_mean", "inputs": ["sum(v0..v5)"], "window": 5}])
    assert fs.outputs[-2:] == ["sum(v0..v5)", "sum(v0..v5)@roll_mean5"]


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_ops_example_builds_and_makes_the_names_shown(op):
    """The example `kit features list` shows is an entry an experiment may hold: built on a
    spec of those columns, it makes the outputs the line names."""
    entry = EXAMPLES[op]
    columns = ["x", "a", "b", "b0", "a0", "bs0", "as0", *(f"x{i}" for i in range(4))]
    spec = {"name": "ex", "id_col": "id", "step_col": "step", "need_col": "need",
            "features": columns, "targets": ["y"], "seq_len": 50, "warmup": 0}
    from kit.competition import spec_from_dict
    fs = build_feature_set(spec_from_dict(spec, "example"), [], [{"op": op, **entry}])
    made = example_usage(op).rsplit(" makes ", 1)[1].split(", ")
    assert fs.outputs == made


def test_features_list_shows_each_ops_entry_and_the_naming():
    out = run_cli("features", "list").output
    assert ('takes inputs, alpha or span: {op = "ewm_mean", inputs = ["x"], span = 20} makes '
            "x@ewm_mean0.09524") in out
    assert 'takes inputs, [name]: {op = "sum", inputs = ["x0..x3"]} makes sum(x0..x3)' in out
    assert "named by its alpha, 2 / (span + 1)" in out
