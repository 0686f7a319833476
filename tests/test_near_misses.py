"""A misspelt config key names the key it is near (difflib), in files and overrides alike."""

from __future__ import annotations

import pytest

from kit.config import ConfigError, unknown_keys
from kit.models import ModelConfigError, build_model


@pytest.mark.parametrize("config, meant", [
    ({"trian": {}}, "unknown config key 'trian' (did you mean 'train'?)"),
    ({"train": {"epoch": 1}}, "unknown key(s) ['train.epoch'] (did you mean 'train.epochs'?)"),
    ({"data": {"seqlen": 5}}, "(did you mean 'data.seq_len'?)"),
])
def test_a_near_miss_is_named(config, meant):
    assert meant in unknown_keys(config)


def test_a_far_miss_names_none_and_the_lists_stay():
    said = unknown_keys({"train": {"lr_sched": 1}})
    assert "did you mean" not in said and "allowed: ['amp'" in said


def test_a_models_near_miss_is_named():
    with pytest.raises(ModelConfigError, match=r"model.hiden: unknown key for 'gru' \(did you "
                                               r"mean 'model.hidden'\?\); allowed"):
        build_model({"type": "gru", "hiden": 8}, 4, 2)


def test_an_override_near_miss_is_named_by_the_command(tmp_path, monkeypatch):
    from kit.train.recipe import experiment_config

    with pytest.raises(ConfigError, match=r"did you mean 'train.epochs'\?"):
        experiment_config("gru_base", ["train.epohcs=1"])


def test_a_sweep_tables_and_a_specs_near_misses_are_named(tmp_path):
    from kit.competition import SpecError, load_spec
    from kit.sweep import SweepError, check_table

    with pytest.raises(SweepError, match=r"\['trails'\] \(did you mean 'sweep.trials'\?\)"):
        check_table({"trails": 3})
    spec = tmp_path / "mine.toml"
    spec.write_text('name = "mine"\nfeatures = ["a"]\ntargets = ["t"]\ntargest = ["u"]\n')
    with pytest.raises(SpecError, match=r"\['targest'\] \(did you mean 'targets'\?\)"):
        load_spec(str(spec))


def test_each_near_miss_of_several_is_named_with_its_key():
    said = unknown_keys({"train": {"epoch": 1, "warmup_epoch": 0, "aaa": 1}})
    assert ("(did you mean 'train.epochs' for 'train.epoch'?) (did you mean "
            "'train.warmup_epochs' for 'train.warmup_epoch'?)") in said, said
