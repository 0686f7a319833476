import pytest

from kit.config import (
    CHOICES,
    ConfigError,
    apply_overrides,
    check_seeds,
    differences,
    load_experiment,
    parse_override,
    resolve,
)
from tests.cli import run_cli


@pytest.fixture
def exps(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_EXPERIMENTS", str(tmp_path))
    (tmp_path / "base.toml").write_text(
        'seed = 1\n[train]\nlr = 0.1\nepochs = 3\n[model]\ntype = "gru"\nhidden = 8\n'
        '[loss]\nterms = { mse = 1.0, pearson = 0.5 }\n')
    (tmp_path / "child.toml").write_text(
        'extends = "base"\n[train]\nlr = 0.01\n[model]\ntype = "tcn"\nchannels = 4\n'
        '[loss]\nterms = { mse = 1.0 }\n')
    (tmp_path / "loop_a.toml").write_text('extends = "loop_b"\n')
    (tmp_path / "loop_b.toml").write_text('extends = "loop_a"\n')
    return tmp_path


def test_extends_merges_tables_but_replaces_model_and_loss(exps):
    child = load_experiment("exp=child")
    assert child["name"] == "child" and child["seed"] == 1
    assert child["train"] == {"lr": 0.01, "epochs": 3}
    assert child["model"] == {"type": "tcn", "channels": 4}  # no GRU `hidden` leaks in
    assert child["loss"] == {"terms": {"mse": 1.0}}


def test_extends_replaces_each_sweep_param_the_child_declares(exps):
    """A child's sweep.params entry is its own whole: the parent's `step` or `low` no longer
    leaks into it (a categorical refused for keys the user never wrote); the parent's other
    entries and [sweep] keys stay."""
    (exps / "sweeping.toml").write_text(
        'extends = "base"\n[sweep]\ntrials = 7\n[sweep.params]\n'
        '"model.hidden" = { type = "int", low = 8, high = 64, step = 32 }\n'
        '"train.lr" = { type = "float", low = 1e-4, high = 1e-2, log = true }\n')
    (exps / "narrower.toml").write_text(
        'extends = "sweeping"\n[sweep.params]\n'
        '"model.hidden" = { type = "categorical", choices = [16, 32] }\n')
    child = load_experiment("narrower")
    assert child["sweep"]["params"]["model.hidden"] == {"type": "categorical",
                                                        "choices": [16, 32]}
    assert child["sweep"]["params"]["train.lr"]["high"] == 1e-2 and child["sweep"]["trials"] == 7


def test_a_replaced_table_without_its_type_says_the_rule_and_a_sweep_may_give_it(exps):
    """A child setting one key of [model] (or one bound of a sweep entry) replaces the whole
    table: "model.type is missing" named no rule. A load-time refusal named it but also
    refused a child whose sweep (or an override) gives the type: the type is checked once
    everything is merged, and its message says the rule."""
    from kit.models import ModelConfigError, build_model

    (exps / "one_key.toml").write_text('extends = "base"\n[model]\nhidden = 16\n'
                                       '[sweep.params]\n"model.type" = { type = '
                                       '"categorical", choices = ["gru", "lstm"] }\n')
    config = load_experiment("one_key")  # the sweep gives the type: loads
    with pytest.raises(ModelConfigError, match=r"model.type is missing.*replaces the parent's "
                       r"whole: give its type there, or model.type=NAME"):
        build_model(config["model"], 4, 2)
    assert apply_overrides(config, ["model.type=gru"])["model"] == {"type": "gru", "hidden": 16}
    (exps / "sweeping.toml").write_text(
        'extends = "base"\n[sweep.params]\n'
        '"model.hidden" = { type = "int", low = 8, high = 64 }\n')
    (exps / "bound.toml").write_text(
        'extends = "sweeping"\n[sweep.params]\n"model.hidden" = { high = 32 }\n')
    from kit.sweep import SweepError, parse_space

    with pytest.raises(SweepError, match=r"sweep.params.\"model.hidden\".type: .*got None "
                       r"\(an entry in an experiment that extends another replaces"):
        parse_space(load_experiment("bound")["sweep"])


def test_cycles_and_missing_experiments_are_named(exps, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="extends itself"):
        load_experiment("loop_a")
    with pytest.raises(ConfigError, match="no experiment 'nope'.*known"):
        load_experiment("nope")
    # run outside the checkout (kit demo in an empty folder): the folder is named as missing
    monkeypatch.setenv("KIT_EXPERIMENTS", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"known: \[\]; there is no .*nowhere folder here: "
                       r"KIT_EXPERIMENTS names it; point KIT_EXPERIMENTS at a folder"):
        load_experiment("gru_base")


def test_overrides_parse_toml_values_and_do_not_touch_the_original(exps):
    base = load_experiment("base")
    out = apply_overrides(base, ["train.lr=3e-4", "seed=43", "train.schedule=onecycle",
                                 "features.groups=[\"raw\", \"lags\"]"])
    assert out["train"]["lr"] == 3e-4 and out["seed"] == 43
    assert out["train"]["schedule"] == "onecycle" and out["features"]["groups"] == ["raw", "lags"]
    assert base["train"]["lr"] == 0.1
    assert parse_override("data.seq_len=500") == (["data", "seq_len"], 500)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("train.lr")
    # a list of bare strings is not TOML: said so, not "must be list, got '[raw,lags]'"
    with pytest.raises(ConfigError, match=r"'features.groups=\[raw,lags\]': not a TOML value "
                                          r"\(.*\); quote the strings in it, e.g. "
                                          r'features.groups=\["raw", "lags"\]'):
        parse_override("features.groups=[raw,lags]")
    assert parse_override("train.schedule=onecycle") == (["train", "schedule"], "onecycle")
    # spaces around `=` go, as around a TOML value (' onecycle' was refused; `name = foo` made
    # runs/ foo/)
    assert parse_override("train.schedule = onecycle") == (["train", "schedule"], "onecycle")
    assert parse_override("name = foo ") == (["name"], "foo")
    # a quoted part keeps its dots, as in TOML ([sweep.params] "train.lr" = {...})
    assert parse_override('sweep.params."train.lr"={ low = 1e-4 }') == (
        ["sweep", "params", "train.lr"], {"low": 1e-4})


def test_extends_reads_a_file_path_next_to_the_file_and_names_the_child(exps, tmp_path,
                                                                          monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    (other / "y.toml").write_text("seed = 5\n")
    (other / "z.toml").write_text('extends = "y.toml"\n')
    monkeypatch.chdir(exps)  # not the folder of the files
    assert load_experiment(str(other / "z.toml"))["seed"] == 5
    # a name missing from experiments/ here is the file's sibling of that name
    (other / "w.toml").write_text('extends = "y"\n')
    assert load_experiment(str(other / "w.toml"))["seed"] == 5
    (exps / "miss.toml").write_text('extends = "nope"\n')
    with pytest.raises(ConfigError, match=r"miss.toml: extends 'nope' \(looked for .*/nope.toml "
                       r"next to it, then in the experiments folder\): no experiment 'nope'"):
        load_experiment("miss")
    (exps / "miss2.toml").write_text('extends = "base2.toml"\n')
    with pytest.raises(ConfigError, match=r"miss2.toml: extends 'base2.toml' \(looked for "
                                          r".*base2.toml next to it, then base2.toml from here"):
        load_experiment("miss2")


def test_an_empty_spec_is_refused_not_read_as_the_default():
    """spec=$UNSET trained on predictorium without a word."""
    for empty in ("", "  "):
        with pytest.raises(ConfigError, match="spec is empty; give a preset name"):
            resolve({"spec": empty})
    assert resolve({})["spec"] == "predictorium"


@pytest.mark.parametrize("name", ["", "grp/a", "a\\b", "..", ".hidden", "ensembles"])
def test_a_name_must_be_one_folder_name(name):
    with pytest.raises(ConfigError, match="must be one folder name"):
        resolve({"name": name})


def test_a_misspelt_key_names_the_file_it_is_in(exps):
    """Checked after the merge, a typo in a parent read as the child's (or nobody's)."""
    (exps / "typo.toml").write_text('extends = "base"\n[train]\nepoch = 3\n')
    (exps / "grandchild.toml").write_text('extends = "typo"\n')
    with pytest.raises(ConfigError, match=r"typo\.toml: unknown key\(s\) \['train.epoch'\]"):
        load_experiment("grandchild")


def test_resolve_fills_defaults_and_names_bad_keys(exps):
    config = resolve(load_experiment("base"))
    assert config["train"]["batch_size"] == 32 and config["train"]["lr"] == 0.1
    assert config["data"]["truncate"] == "head"
    with pytest.raises(ConfigError, match="train.lrr"):
        resolve({"train": {"lrr": 1.0}})
    with pytest.raises(ConfigError, match="train.epochs must be int"):
        resolve({"train": {"epochs": 2.5}})
    with pytest.raises(ConfigError, match="unknown config key 'learning_rate'"):
        resolve({"learning_rate": 1.0})
    with pytest.raises(ConfigError, match="unknown config key 'ensemble'"):
        resolve({"ensemble": {"foo": 1}})  # ensembles are made by kit ensemble, not a section
    with pytest.raises(ConfigError, match="data.valid_fraction must be between 0 and 1"):
        resolve({"data": {"valid_fraction": 1.5}})
    with pytest.raises(ConfigError, match="\\[train\\] must be a table"):
        resolve({"train": 3})
    assert resolve({"train": {"lr": 1}})["train"]["lr"] == 1.0  # ints are fine for floats
    # a negative split seed: numpy's ValueError after the data was built
    with pytest.raises(ConfigError, match=r"data.split_seed must be a whole number in"):
        resolve({"data": {"split_seed": -1}})
    # an int past float's range: an OverflowError traceback
    with pytest.raises(ConfigError, match="train.lr must be a finite number, got an integer"):
        resolve({"train": {"lr": 10**400}})


def test_a_wrong_type_is_named_with_the_file_that_set_it(exps):
    """A misspelt key named its file, a wrong type did not ("train.epochs must be int, got
    '3'"): through an extends chain nothing said which file set it."""
    (exps / "typed.toml").write_text('extends = "base"\n[train]\nepochs = "3"\n')
    with pytest.raises(ConfigError, match=r"typed.toml: train.epochs must be int, got '3'"):
        load_experiment("typed")
    (exps / "parent_bad.toml").write_text('[train]\nlr = -1.0\n')
    (exps / "kid.toml").write_text('extends = "parent_bad"\n')
    with pytest.raises(ConfigError, match=r"parent_bad.toml: train.lr must be a finite"):
        load_experiment("kid")
    assert load_experiment("child")["train"]["lr"] == 0.01  # good files load as before


@pytest.mark.parametrize(("toml", "message"), [
    # a TOML bool is a Python int: epochs = true would train 1 epoch, batch_size = true
    # batches of 1, seed = true seed 1, with no word that the value is not a number
    ("[train]\nepochs = true\n", "train.epochs must be int, got True"),
    ("[train]\nbatch_size = true\n", "train.batch_size must be int, got True"),
    ("seed = true\n", "seed must be int, got True"),
    # clip = 0 would clip every normalised feature to 0: the model would see constants
    ("[normaliser]\nclip = 0\n", r"normaliser.clip must be > 0 \(deviations\), got 0.0"),
    # the bound says finite: inf is >= 0, but grad_clip = inf clips nothing (0 says off) and
    # weight_decay = inf makes the weights inf
    ("[train]\ngrad_clip = inf\n",
     r"train.grad_clip must be a finite number >= 0 \(0: off\), got inf"),
    ("[train]\nweight_decay = inf\n", "train.weight_decay must be a finite number >= 0, got inf"),
])  # fmt: skip
def test_a_bool_for_a_number_or_a_value_out_of_range_is_refused_at_load(exps, toml, message):
    (exps / "odd.toml").write_text(f'extends = "base"\n{toml}')
    with pytest.raises(ConfigError, match=f"odd.toml: {message}"):
        load_experiment("odd")


@pytest.mark.parametrize("parent", [3, ["base"], ""])
def test_extends_that_is_not_a_name_is_refused_as_such(exps, parent):
    """extends = 3 looked for experiments/3.toml, extends = ["base"] for "['base']"."""
    import tomli_w

    (exps / "odd.toml").write_text(tomli_w.dumps({"extends": parent}))
    with pytest.raises(ConfigError, match=r"odd.toml: extends must be an experiment's name"):
        load_experiment("odd")


@pytest.mark.parametrize("setting, value", [("normaliser.method", "zscore"),
                                            ("data.truncate", "middle"),
                                            ("train.schedule", "cosin"), ("train.amp", "fp61")])
def test_resolve_refuses_values_outside_a_settings_choices(setting, value):
    """Caught when the config loads, not after the arrays are built (or never: an amp typo
    was ignored on CPU)."""
    section, key = setting.split(".")
    with pytest.raises(ConfigError, match=f"{setting} must be one of .* got '{value}'"):
        resolve({section: {key: value}})
    for allowed in CHOICES[setting]:
        assert resolve({section: {key: allowed}})[section][key] == allowed


def test_shipped_experiments_resolve_and_build():
    from pathlib import Path

    from kit.competition import load_spec
    from kit.features import feature_set_from_config
    from kit.models import build_model, solve_width

    names = sorted(p.stem for p in Path("experiments").glob("*.toml"))
    assert {"gru_base", "gru_features", "lstm", "attention", "transformer", "ssm",
            "tcn", "patchtst"} <= set(names)
    for name in names:
        config = resolve(load_experiment(f"experiments/{name}.toml"))
        n_in = len(feature_set_from_config(config).outputs)
        if "model" in config:
            build_model(solve_width(config["model"], n_in, load_spec(config["spec"]).n_outputs),
                        n_in, 2)


def test_toml_files_that_are_not_utf8_are_named(tmp_path):
    from kit.competition import load_spec
    from kit.ensemble import EnsembleError, read_ensemble
    from kit.errors import SpecError
    from kit.run_record import read_config

    bad = tmp_path / "latin1.toml"
    bad.write_bytes('name = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(SpecError, match=r"latin1.toml: not UTF-8 text \(byte 0xe9 at position 11"):
        load_spec(bad)
    with pytest.raises(EnsembleError, match="not UTF-8 text"):
        read_ensemble(bad)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_bytes(bad.read_bytes())
    with pytest.raises(ConfigError, match="config.toml: not UTF-8 text"):
        read_config(run)
    # a byte order mark (Windows editors) is no reason to refuse a file
    (run / "config.toml").write_bytes(b"\xef\xbb\xbfseed = 3\n")
    assert read_config(run) == {"seed": 3}


def test_an_experiment_that_is_not_utf8_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_EXPERIMENTS", str(tmp_path))
    (tmp_path / "e12.toml").write_bytes(b'extends = "base"\n# \xff\n')
    out = run_cli("train", "exp=e12", expect=2).output
    assert "e12.toml: not UTF-8 text (byte 0xff" in out and "Traceback" not in out


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly():
    """`kit features list | head -2`: the writes after head exits fail with EPIPE; that is not
    an error of the command's (it said "error: [Errno 32] Broken pipe")."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-m", "kit", "features", "list"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # before the child has written a byte: its first write fails
    _, err = child.communicate(timeout=120)
    assert child.returncode == 141, err
    assert err.decode() == ""


def test_a_broken_pipe_that_is_not_stdout_is_an_error():
    """Only a closed stdout ends a command quietly; a pipe the command writes to is an error."""
    import errno

    import typer
    from typer.testing import CliRunner

    from kit.cli import _KitGroup

    app = typer.Typer(cls=_KitGroup)

    @app.command()
    def write() -> None:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe", "out.fifo")

    @app.command()
    def other() -> None:
        pass

    result = CliRunner().invoke(app, ["write"])
    assert result.exit_code == 2
    assert "error: out.fifo: Broken pipe" in result.output


@pytest.mark.parametrize("command", [["train", "exp=gru_base"], ["sweep", "exp=gru_base"],
                                     ["ablate", "exp=gru_base", "--groups", "raw"], ["demo"]])
def test_a_mistyped_option_is_named_as_an_option_not_read_as_a_config_key(command, tmp_path,
                                                                           monkeypatch):
    """TOML reads `--stop-afer-epochs` as a bare key, so an option typed wrong became an
    override and the error spoke of an unknown config key; nothing may start either."""
    monkeypatch.chdir(tmp_path)
    out = run_cli(*command, "--stop-afer-epochs=1", expect=2).output
    assert "'--stop-afer-epochs=1' is not an option of `kit " in out
    assert "config key" not in out
    if command[0] == "train":
        assert "did you mean --stop-after-epochs?" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize(("args", "named"), [
    (["train", "--resum", "gru_base"], "'--resum' is not an option of `kit train` (did you "
                                       "mean --resume?"),
    (["train", "--stop-afer-epochs", "1", "gru_base"], "'--stop-afer-epochs' is not an option"),
    (["sweep", "--trails", "3", "gru_sweep"], "'--trails' is not an option of `kit sweep` "
                                              "(did you mean --trials?"),
    (["train", "--resum"], "'--resum' is not an option of `kit train`"),
])  # fmt: skip
def test_a_mistyped_option_before_the_experiment_is_named(args, named, tmp_path, monkeypatch):
    """Before the experiment, the mistyped option became the experiment's name and its value
    an override: "override '1' is not KEY=VALUE" blamed the wrong word."""
    monkeypatch.chdir(tmp_path)
    out = run_cli(*args, expect=2).output
    assert named in out and "KEY=VALUE, e.g." in out and "override '" not in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("args", "named"), [
    (["train", "train.lr=1e-4", "gru_base"],
     "'train.lr=1e-4' stands where the experiment goes: name the experiment first"),
    (["train", "gru_base", "extends=lstm"],
     "extends is read from experiment files only, not as an override: name the experiment"),
])  # fmt: skip
def test_an_override_in_the_experiments_place_or_of_extends_is_named(args, named, tmp_path,
                                                                       monkeypatch):
    """An override first made the experiment's name the bad override ("override 'gru_base'
    is not KEY=VALUE"); extends=lstm was an "unknown config key"."""
    from pathlib import Path

    monkeypatch.setenv("KIT_EXPERIMENTS", str(Path(__file__).parents[1] / "experiments"))
    monkeypatch.chdir(tmp_path)
    out = run_cli(*args, expect=2).output
    assert named in out and not (tmp_path / "runs").exists()


def test_overrides_apply_in_order_the_last_one_wins():
    out = apply_overrides({}, ["train.lr=0.1", "train.lr=0.2", "train.lr=0.3"])
    assert out["train"]["lr"] == 0.3


def test_extends_a_name_prefers_experiments_over_the_files_sibling(exps, tmp_path, monkeypatch):
    """docs/runs.md: `extends = "x"` is experiments/x.toml, or, when there is none, the x.toml
    next to the file."""
    (exps / "base.toml").write_text("seed = 1\n")
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "base.toml").write_text("seed = 99\n")
    (other / "kid.toml").write_text('extends = "base"\n')
    monkeypatch.chdir(other)
    assert load_experiment(str(other / "kid.toml"))["seed"] == 1


def test_resolve_fills_the_trainers_defaults():
    config = resolve({})
    assert config["seed"] == 42 and config["model"] == {}
    train = config["train"]
    assert (train["epochs"], train["lr"], train["patience"]) == (20, 2e-3, 5)
    assert resolve({"normaliser": {"method": "robust"}})["normaliser"]["method"] == "robust"


@pytest.mark.parametrize(("config", "message"), [
    # a TOML bool is an int, and an int is fine for a float: true was read as lr = 1.0
    ({"train": {"lr": True}}, "train.lr must be float, got True"),
    ({"seed": 2**32}, r"seed must be a whole number in \[0, 2\*\*32\), got 4294967296"),
    ({"train": {"max_train_seqs": -5}}, r"train.max_train_seqs must be >= 0 \(0: all\), got -5"),
    ({"description": 3}, "description must be str, got 3"),
])  # fmt: skip
def test_resolve_refuses_a_bool_float_a_seed_past_range_and_other_bad_values(config, message):
    with pytest.raises(ConfigError, match=message):
        resolve(config)


def test_bounds_edges_and_overrides_into_a_value_that_is_no_table():
    assert resolve({"seed": 2**32 - 1})["seed"] == 2**32 - 1
    assert resolve(apply_overrides({}, ["train.lr=1"]))["train"]["lr"] == 1.0
    with pytest.raises(ConfigError, match="train.lr must be float, got True"):
        resolve(apply_overrides({}, ["train.lr=true"]))
    with pytest.raises(ConfigError, match="seeds: each seed must be a whole number, got True"):
        check_seeds([True])
    check_seeds([0, 2**32 - 1])
    with pytest.raises(ConfigError, match=r"override 'seed.x=1': 'seed' is not a table"):
        apply_overrides({"seed": 42}, ["seed.x=1"])


def test_differences_counts_an_empty_table_as_a_key():
    assert differences({"model": {}}, {}) == ["model"]
    assert differences({"model": {}}, {"model": {}}) == []
