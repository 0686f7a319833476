"""Pins of r327's mutation audit of kit/competition.py, kit/data/contract.py and kit/config.py:
behaviour the suite left free (each test's docstring names the mutant it kills)."""

from __future__ import annotations

import numpy as np
import pytest
import tomli_w

from kit.competition import MetricSpec, blend_spec_difference, spec_from_dict
from kit.errors import SpecError
from kit.export.pack import format_budget
from kit.metrics import metric_value
from tests.frames import small_spec


def test_blend_spec_difference_names_a_warmup_or_tail_that_differs():
    """Mutant: blend_spec_difference skips warmup and tail (another need rule blended)."""
    first = small_spec(warmup=5)
    assert blend_spec_difference(small_spec(warmup=3), first) == "warmup 3, against 5"
    assert blend_spec_difference(small_spec(tail=2), small_spec()) == "tail 2, against 0"
    # the metric and the limits may differ (the blend is scored on the first's)
    other_metric = small_spec(metric={"name": "mae"}, limits={"time_limit_s": 60})
    assert blend_spec_difference(other_metric, first) is None


def test_a_metric_asked_of_no_spec_is_refused_not_scored_as_predictorium():
    """Mutant: spec_argument lets None through to load_spec(None), the default competition."""
    y = np.linspace(-1.0, 1.0, 50)
    with pytest.raises(SpecError, match=r"spec must be a CompetitionSpec, a preset name or a "
                                        r"TOML path .*got None"):
        metric_value(None, y, y)
    with pytest.raises(SpecError, match="got a int"):
        metric_value(3, y, y)
    assert metric_value("predictorium", y, y) == pytest.approx(1.0)


def test_a_clipped_correlation_is_not_scale_free():
    """Mutant: MetricSpec.scale_free ignores the clip (pack let unnormalised weights through
    under a clipped weighted_pearson, which they change)."""
    assert MetricSpec("weighted_pearson").scale_free
    assert not MetricSpec("weighted_pearson", (-6.0, 6.0)).scale_free
    assert not MetricSpec("r2").scale_free
    assert not small_spec().metric.scale_free  # the tests' spec clips to [-6, 6]


def test_two_predictorium_limits_taken_are_named_as_both_neither_set():
    """Mutant: limits_label words two taken limits as one ("sets no a and b; set it")."""
    spec = spec_from_dict({"name": "x", "features": ["a"], "targets": ["y"],
                           "limits": {"cpus": 2, "memory_gb": 8}})
    assert spec.limits_unset == ("time_limit_s", "test_rows")
    budget = {"projected_s": 10.0, "test_rows": 1000, "limit_s": 5400.0, "fraction": 10 / 5400,
              "us_per_row": 5.0, "members": 1, "limits_unset": list(spec.limits_unset)}
    assert format_budget(budget).endswith(
        "1 member(s); Predictorium's test_rows and time_limit_s: the spec's [limits] sets "
        "neither; set them for yours)")
    budget["limits_unset"] = ["test_rows"]
    assert format_budget(budget).endswith(
        "Predictorium's test_rows: the spec's [limits] sets no test_rows; set it for yours)")


def test_the_scorers_python_is_no_part_of_a_sweeps_identity(tmp_path):
    """Mutant: training_dict keeps limits.python (a sweep no longer resumed once the spec
    named the scorer's Python)."""
    from kit.sweep import by_content

    spec = small_spec()
    path = tmp_path / "mine.toml"
    raw = spec.to_dict()
    path.write_text(tomli_w.dumps(raw))
    before = by_content({"spec": str(path), "data": {}})
    path.write_text(tomli_w.dumps(raw | {"limits": raw["limits"] | {"python": "3.11"}}))
    assert by_content({"spec": str(path), "data": {}}) == before
    assert "python" not in spec_from_dict(raw | {"limits": {"python": "3.11"}}).training_dict()[
        "limits"]
    # a time limit is the spec's training key still (a sweep of other limits is another)
    path.write_text(tomli_w.dumps(raw | {"limits": raw["limits"] | {"time_limit_s": 60.0}}))
    assert by_content({"spec": str(path), "data": {}}) != before


def test_a_preset_missing_from_kit_experiments_folder_is_not_sent_to_kit_init(tmp_path,
                                                                            monkeypatch):
    """Mutant: the `kit init` advice for a missing preset given under $KIT_EXPERIMENTS too
    (init writes ./experiments/, not that folder)."""
    from kit.config import ConfigError, experiment_path

    mine = tmp_path / "mine"
    mine.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KIT_EXPERIMENTS", str(mine))
    with pytest.raises(ConfigError) as refused:
        experiment_path("gru_base")
    assert "no experiment 'gru_base'" in str(refused.value)
    assert "kit init" not in str(refused.value)
    monkeypatch.delenv("KIT_EXPERIMENTS")
    (tmp_path / "experiments").mkdir()
    with pytest.raises(ConfigError, match="gru_base is one of kit's presets: `kit init` copies"):
        experiment_path("gru_base")


def test_a_record_from_before_normaliser_targets_is_the_same_config_at_its_default():
    """Mutant: differences ignores ADDED_LATER (a run recorded before normaliser.targets read
    as another config, its group and study no longer resumed)."""
    from kit.config import changed_values, differences

    old = {"normaliser": {"method": "standard", "clip": 5.0}}
    assert differences(old, {"normaliser": old["normaliser"] | {"targets": False}}) == []
    now = {"normaliser": old["normaliser"] | {"targets": True}}
    assert differences(old, now) == ["normaliser.targets"]
    assert changed_values(["normaliser.targets"], old, now) == [
        "normaliser.targets (was False, now True)"]


def test_a_sweeps_identity_leaves_out_normaliser_targets_only_at_its_default():
    """Mutant: added_at_default ignores the value (a study trained on normaliser.targets = true
    resumed as the study on raw targets)."""
    from kit.config import added_at_default, resolve
    from kit.sweep import training_digests

    base = resolve({"data": {"train": "nowhere.parquet", "valid": "nowhere.parquet"}})
    assert "normaliser.targets" not in training_digests(base)
    scaled = resolve({**base, "normaliser": {**base["normaliser"], "targets": True}})
    assert "normaliser.targets" in training_digests(scaled)
    assert added_at_default("normaliser.targets", False)
    assert not added_at_default("normaliser.targets", True)
    assert not added_at_default("normaliser.clip", 5.0)


@pytest.mark.parametrize("key", ["train", "valid", "cache_dir"])
def test_an_empty_data_path_is_refused_naming_its_default(key):
    """Mutant: resolve takes an empty PATH_KEYS value (`data.cache_dir=` cached into the
    working folder, `data.train=` read the folder)."""
    from kit.config import DEFAULTS, ConfigError, apply_overrides, resolve

    default = DEFAULTS["data"][key]
    with pytest.raises(ConfigError, match=rf"data.{key} is empty; give a path \(the default is "
                                          rf"'{default}'\)"):
        resolve(apply_overrides({}, [f"data.{key}=  "]))
    assert resolve({"data": {key: "elsewhere"}})["data"][key] == "elsewhere"


def test_a_split_runs_validation_rows_are_of_its_train_file():
    """Mutant: validation_file ignores data.split (val_rows.npy of a split run read against the
    valid file's rows)."""
    from kit.config import validation_file

    data = {"train": "train.parquet", "valid": "valid.parquet"}
    assert validation_file({"data": data}) == "valid.parquet"
    assert validation_file({"data": data | {"split": "file"}}) == "valid.parquet"
    for split in ("random", "group"):
        assert validation_file({"data": data | {"split": split}}) == "train.parquet"
    assert validation_file({"data": data | {"fold": [5, 1]}}) == "train.parquet"
    assert validation_file({"data": data}, {"fold": 1}) == "train.parquet"


def test_an_override_of_a_table_holding_a_key_the_command_sets_is_refused():
    """Mutant: refuse_overrides matches the key alone (`data={...}` replaced the file the
    command sets as data.train without a word)."""
    from kit.config import ConfigError, refuse_overrides

    owned = {"data.train": "--train"}
    with pytest.raises(ConfigError, match=r"override 'data=\{train = \"x\"\}': this command sets "
                                          r"data.train itself; use --train"):
        refuse_overrides(['data={train = "x"}'], owned)
    with pytest.raises(ConfigError, match="sets data.train itself"):
        refuse_overrides(["data.train=x.parquet"], owned)
    refuse_overrides(["data.valid=v.parquet", "train.lr=0.1", "dat=1"], owned)  # not its own


@pytest.mark.parametrize(("raw", "meant"),
                         [(".001", "0.001"), ("1.", "1.0"), ("-.5e-3", "-0.0005")])
def test_a_number_toml_does_not_read_is_told_how_to_write_it(raw, meant):
    """Mutant: parse_override takes `.001` or `1.` as a bare string (then "must be float, got
    '.001'", no word of how to write it)."""
    from kit.config import ConfigError, parse_override

    with pytest.raises(ConfigError, match=rf"override 'train.lr={raw}': {raw} is not a TOML "
                                          rf"number; write {meant}"):
        parse_override(f"train.lr={raw}")
    assert parse_override("train.schedule= onecycle ") == (["train", "schedule"], "onecycle")


@pytest.mark.parametrize(("setting", "bad", "said", "edge"), [
    ("train.ema", 1.0, r"in \[0, 1\) \(0: off\)", 0.999),  # ema = 1: the average never moves
    ("data.valid_fraction", 1.0, "between 0 and 1", 0.99),  # every sequence held out
    ("train.chunk", 10_000_001, r"in \[0, 10,000,000\] \(0: whole sequences\)", 10_000_000),
    ("train.chunk", -1, r"in \[0, 10,000,000\] \(0: whole sequences\)", 0),
])  # fmt: skip
def test_settings_just_past_their_bounds_are_refused(setting, bad, said, edge):
    """Mutants: BOUNDS of train.ema and data.valid_fraction take 1, train.chunk takes any
    value."""
    from kit.config import ConfigError, resolve

    section, key = setting.split(".")
    with pytest.raises(ConfigError, match=rf"{setting} must be {said}, got {bad}"):
        resolve({section: {key: bad}})
    assert resolve({section: {key: edge}})[section][key] == edge


def test_an_integer_past_floats_range_is_no_finite_number():
    """Mutant: config.finite says True on OverflowError (a TOML limit of 400 digits taken)."""
    from kit.config import finite, finite_number

    assert not finite(10**400) and not finite_number(10**400)
    assert finite_number(10**300) and not finite_number(True)
    with pytest.raises(SpecError, match="limits.test_rows must be a whole number > 0"):
        spec_from_dict({"name": "x", "features": ["a"], "targets": ["y"],
                        "limits": {"test_rows": 10**400}})


def test_a_next_state_file_is_labelled_by_its_own_features():
    """Mutant: _check_columns reads labelled from target columns alone (a next-state file,
    whose truth is its next row, reported as unlabelled)."""
    from kit.data.contract import check_frame
    from tests.frames import make_frame

    spec = spec_from_dict({"name": "ns", "features": ["a", "b"], "protocol": "next-state",
                           "seq_len": 10, "warmup": 2, "tail": 1, "metric": {"name": "r2"}})
    report = check_frame(make_frame(spec, n_seqs=2), spec)
    assert report.labelled and report.need_rows == 2 * 7
    assert "unlabelled" not in report.format()
    assert "rows 20   sequences 2   labelled" in report.format()
