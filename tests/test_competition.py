import json
from importlib import resources
from pathlib import Path

import pytest

from kit.competition import available_specs, expand_columns, load_spec, spec_from_dict
from kit.errors import SpecError
from tests.cli import run_cli


def test_predictorium_preset_is_the_default():
    spec = load_spec()
    assert spec.name == "predictorium"
    assert spec.input_columns[:3] == ["seq_ix", "step_in_seq", "need_prediction"]
    assert spec.features[:2] == ("p0", "p1") and spec.features[-1] == "dv3"
    assert len(spec.features) == 32 and spec.targets == ("t0", "t1")
    assert spec.seq_len == 1000 and spec.warmup == 99 and spec.tail == 0
    assert spec.metric.name == "weighted_pearson" and spec.metric.clip == (-6.0, 6.0)
    assert spec.limits.cpus == 1 and spec.limits.time_limit_s == 90 * 60
    assert spec.limits.test_rows == 1_500_000 and spec.limits.python == "3.11"
    assert spec_from_dict(spec.to_dict()).limits == spec.limits  # the manifest copy reads back


def test_rnn_challenge_preset_scores_next_state():
    spec = load_spec("rnn-challenge")
    assert spec.next_state and spec.metric.name == "r2"
    assert spec.outputs == spec.features and spec.n_outputs == 32
    assert spec.features[0] == "0" and spec.features[-1] == "31"
    assert spec.limits.time_limit_s == 60 * 60 and spec.tail == 1


def test_expand_columns():
    assert expand_columns(["p0..p2", "x", "3..4", "dv1..dv2"]) == [
        "p0", "p1", "p2", "x", "3", "4", "dv1", "dv2"]
    with pytest.raises(SpecError, match="backwards"):
        expand_columns(["p3..p1"])
    # a zero-padded start keeps its width: f001 names f001, not f1
    assert expand_columns(["f001..f003", "x09..x11", "p0..p1"]) == [
        "f001", "f002", "f003", "x09", "x10", "x11", "p0", "p1"]
    # the right-hand prefix may be left out (docs/features.md)
    assert expand_columns(["p0..2", "dv1..3"]) == ["p0", "p1", "p2", "dv1", "dv2", "dv3"]
    for typo in ("p0..v11", "p0...p5", "p0.."):  # not one literal column named "p0..v11"
        with pytest.raises(SpecError, match="is not PREFIX<low>..PREFIX<high>"):
            expand_columns([typo])


USER_SPEC = """
name = "my-comp"
description = "a user's own competition"
features = ["a", "b", "c0..c2"]
targets = ["y"]
seq_len = 0
warmup = 3
[metric]
name = "r2"
[limits]
time_limit_s = 600
test_rows = 1000
"""


def test_user_spec_from_path_and_from_competitions_folder(tmp_path, monkeypatch):
    path = tmp_path / "my-comp.toml"
    path.write_text(USER_SPEC)
    spec = load_spec(str(path))
    assert spec.features == ("a", "b", "c0", "c1", "c2") and spec.seq_len is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "competitions").mkdir()
    (tmp_path / "competitions" / "my-comp.toml").write_text(USER_SPEC)
    assert load_spec("my-comp").limits.time_limit_s == 600
    assert "my-comp" in available_specs()
    out = run_cli("spec", "list").output
    assert "my-comp" in out and "predictorium" in out
    # one column each: every description starts where the others do (r269: a user spec's
    # path ran into its description)
    starts = {line.index(about) for line, about in zip(out.splitlines(), (
        "Wunder Predictorium", "Wunder RNN", "a user's own"), strict=True)}
    assert len(starts) == 1, out
    (tmp_path / "competitions" / "broken.toml").write_text("[[[")
    out = run_cli("spec", "list", expect=2).output  # the others are still listed
    assert "my-comp" in out and "predictorium" in out and "BROKEN: " in out
    (tmp_path / "competitions" / "broken.toml").unlink()
    assert '"y"' in run_cli("spec", "show", "my-comp").output
    # keeping the name of a spec that is no preset keeps nothing: no such hint for it
    assert "keep name" not in run_cli("spec", "show", "my-comp").output
    assert 'keep name = "predictorium"' in run_cli("spec", "show", "predictorium").output
    assert json.loads(run_cli("spec", "show", "my-comp", "--json").output)["targets"] == ["y"]
    # the printed TOML is a spec: saved under another name it loads as the same competition
    shown = run_cli("spec", "show", "predictorium").output
    (tmp_path / "competitions" / "mine.toml").write_text(shown.replace(
        'name = "predictorium"', 'name = "mine"'))
    assert load_spec("mine").to_dict() == {**load_spec("predictorium").to_dict(), "name": "mine"}
    # a copy that keeps the preset's name may change its limits, not its columns: feature
    # groups, synth data and the realism checks are picked by name
    (tmp_path / "competitions" / "mine.toml").write_text(shown.replace(
        "time_limit_s = 5400", "time_limit_s = 600"))
    assert load_spec(str(tmp_path / "competitions" / "mine.toml")).limits.time_limit_s == 600
    (tmp_path / "competitions" / "predictorium.toml").write_text(USER_SPEC.replace(
        'name = "my-comp"', 'name = "predictorium"'))
    for given in ("predictorium", str(tmp_path / "competitions" / "predictorium.toml")):
        with pytest.raises(SpecError, match="name 'predictorium' is the built-in spec's, whose "
                           "feature groups.* give it a name of its own"):
            load_spec(given)
    assert "BROKEN" in run_cli("spec", "list", expect=2).output


def test_user_spec_from_env_path(tmp_path, monkeypatch):
    (tmp_path / "other.toml").write_text(USER_SPEC.replace("my-comp", "other"))
    monkeypatch.setenv("KIT_SPEC_PATH", str(tmp_path))
    assert load_spec("other").name == "other"


def _preset_text(name: str) -> str:
    return (resources.files("kit") / "specs" / f"{name}.toml").read_text()


def test_spec_search_order_is_env_path_then_competitions_then_presets(tmp_path, monkeypatch):
    """docs/decisions.md: `--spec NAME` looks in $KIT_SPEC_PATH's folders, then ./competitions/,
    then the presets (./competitions/ was searched first, shadowing the user's own folders)."""
    env, local = tmp_path / "env", tmp_path / "competitions"
    env.mkdir()
    local.mkdir()
    for folder, limit in ((env, 111), (local, 222)):
        (folder / "dup.toml").write_text(USER_SPEC.replace('name = "my-comp"', 'name = "dup"')
                                         .replace("time_limit_s = 600", f"time_limit_s = {limit}"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KIT_SPEC_PATH", str(env))
    assert load_spec("dup").limits.time_limit_s == 111
    assert load_spec("dup").source == str(env / "dup.toml")
    assert available_specs()["dup"] == str(env / "dup.toml")  # listed as it loads
    monkeypatch.delenv("KIT_SPEC_PATH")
    assert load_spec("dup").limits.time_limit_s == 222
    # a copy of a preset keeping its name and columns (other limits) shadows the preset
    (local / "predictorium.toml").write_text(_preset_text("predictorium").replace(
        "time_limit_s = 5400", "time_limit_s = 600"))
    assert load_spec("predictorium").limits.time_limit_s == 600
    shown = Path(available_specs()["predictorium"])  # relative to the working folder
    assert shown.resolve() == (local / "predictorium.toml").resolve()


@pytest.mark.parametrize("edit", [
    lambda t: t.replace('targets = ["t0", "t1"]', 'targets = ["t0", "t9"]'),
    lambda t: t.replace('targets = ["t0", "t1"]', 'targets = ["t0"]'),
    lambda t: t.replace('id_col = "seq_ix"', 'id_col = "sequence"'),
    lambda t: t.replace('need_col = "need_prediction"', 'need_col = "scored"'),
])
def test_a_preset_name_with_the_same_features_but_other_columns_is_refused(tmp_path, edit):
    """A spec named like a preset must keep all its columns, not only its features: feature
    groups, synthetic data and the realism checks read the preset's targets and id columns."""
    text = edit(_preset_text("predictorium"))
    assert text != _preset_text("predictorium")
    path = tmp_path / "predictorium.toml"
    path.write_text(text)
    with pytest.raises(SpecError, match="name 'predictorium' is the built-in spec's"):
        load_spec(str(path))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: "bogus = 1\n" + t, "unknown key"),
        (lambda t: t.replace('name = "my-comp"', ""), "missing required key 'name'"),
        (lambda t: t.replace('name = "r2"', 'name = "auc"'), "metric 'auc'"),
        (lambda t: t.replace('targets = ["y"]', 'targets = ["a"]'), "used twice"),
        # every kit train would stop on it after data check passed: named at load instead
        (lambda t: t.replace('targets = ["y"]', 'targets = ["__pos"]'),
         "column '__pos' is kit's own name for the feature pipelines' step counter"),
        (lambda t: t.replace('targets = ["y"]', "targets = []"), "non-empty 'targets'"),
        (lambda t: t.replace("[limits]", "[limits]\nspeed = 3"), "unknown \\[limits\\] key"),
        (lambda t: t.replace("time_limit_s = 600", "time_limit_s = 0"),
         "limits.time_limit_s must be a finite number > 0"),
        (lambda t: t.replace("time_limit_s = 600", "time_limit_s = nan"), "time_limit_s must"),
        (lambda t: t.replace("time_limit_s = 600", 'memory_gb = "16"'), "memory_gb must"),
        (lambda t: t.replace("test_rows = 1000", "test_rows = -100"),
         "limits.test_rows must be a whole number > 0"),
        (lambda t: t.replace("[limits]", "[limits]\npython = 3.10"),
         'limits.python must be the scorer\'s Python as a "MAJOR.MINOR" string'),
        (lambda t: t.replace("[limits]", '[limits]\npython = "3"'), "limits.python must"),
        (lambda t: t.replace('features = ["a", "b", "c0..c2"]', 'features = "price"'),
         "features must be a list of column names"),
        (lambda t: t.replace('features = ["a", "b", "c0..c2"]', "features = [1, 2]"),
         "features must be a list"),
        (lambda t: t.replace("warmup = 3", "warmup = 2.9"), "warmup must be a whole number"),
        (lambda t: t.replace("warmup = 3", "warmup = true"), "warmup must be a whole number"),
        (lambda t: t.replace("warmup = 3", 'warmup = "ten"'), "warmup must be a whole number"),
        (lambda t: t.replace('[metric]\nname = "r2"', 'metric = "r2"'), "metric must be a table"),
        (lambda t: t.replace('name = "r2"', 'name = "r2"\nclip = [nan, 6.0]'), "metric.clip"),
        (lambda t: t.replace('name = "r2"', 'name = "r2"\nclip = "ab"'), "metric.clip"),
        (lambda t: t.replace('name = "r2"', 'name = "r2"\nclip = [-6, 1' + "0" * 400 + "]"),
         "metric.clip"),  # past float's range: an OverflowError traceback
        (lambda t: t.replace("seq_len = 0", "seq_len = 1000000000000"),
         "seq_len = 1,000,000,000,000 is more than"),
        (lambda t: t.replace('name = "my-comp"', 'name = ""'), "name is empty"),
        (lambda t: 'id_col = " "\n' + t, "id_col is empty"),
        (lambda t: t.replace('features = ["a", "b", "c0..c2"]', 'features = ["a", ""]'),
         "features must be a list of column names"),
        (lambda t: t.replace('targets = ["y"]', "protocol = 'next-state'"), "tail must be >= 1"),
        (lambda t: t.replace("warmup = 3", "warmup = 3\nprotocol = 'x'"), "protocol 'x'"),
        (lambda t: t + "\n[[[", "not valid TOML"),
        (lambda t: t.replace('features = ["a", "b", "c0..c2"]', "features = []"),
         "features must name at least one column"),
        # every step is warm-up or tail: nothing would be scored (== was let through)
        (lambda t: t.replace("seq_len = 0", "seq_len = 5\ntail = 2"),
         "warmup \\+ tail leaves no scored step in 5"),
        # an empty clip range (low == high) scores every prediction as one constant
        (lambda t: t.replace('name = "r2"', 'name = "r2"\nclip = [1.0, 1.0]'),
         r"metric.clip must be \[low, high\] with low < high, got \[1.0, 1.0\]"),
    ],
)
def test_bad_user_specs_name_the_problem(tmp_path, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text(edit(USER_SPEC))
    with pytest.raises(SpecError, match=message):
        load_spec(str(path))


def test_unknown_spec_lists_available(tmp_path):
    with pytest.raises(SpecError, match="predictorium"):
        load_spec("nope")
    with pytest.raises(SpecError, match="the spec is empty"):  # was the default competition
        load_spec("")
    assert "the spec is empty" in run_cli("spec", "show", "", expect=2).output
    result = run_cli("spec", "show", "nope", expect=2)
    assert "unknown competition spec 'nope'" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(str(tmp_path / "missing.toml"))


@pytest.mark.parametrize(
    "edit, message",
    [
        # a misspelt [metric] key was dropped without a word: the clip the user meant never held
        (lambda t: t.replace('name = "r2"', 'name = "r2"\nclipp = [-6, 6]'),
         r"unknown metric key\(s\) \['clipp'\]"),
        (lambda t: t.replace("warmup = 3", "warmup = 3\ntail = 1\nprotocol = 'next-state'"),
         "protocol 'next-state' scores against the next features; leave 'targets' empty"),
        (lambda t: t.replace('name = "r2"', 'name = "r2"\nclip = [-1, 0, 1]'),
         r"metric.clip must be \[low, high\] with low < high, got \[-1, 0, 1\]"),
        (lambda t: t.replace("[limits]", "[limits]\ncpus = 1.5"),
         "limits.cpus must be a whole number > 0, got 1.5"),
        (lambda t: t.replace("test_rows = 1000", "test_rows = 1000.5"),
         "limits.test_rows must be a whole number > 0, got 1000.5"),
        (lambda t: t.replace("[limits]", '[limits]\npython = "0.11"'),
         "limits.python must be the scorer's Python as a \"MAJOR.MINOR\" string such as "
         "\"3.11\", got '0.11'"),
        (lambda t: t.replace('features = ["a", "b", "c0..c2"]', ""),
         "missing required key 'features'"),
        (lambda t: "id_col = 3\n" + t, "id_col must be a string, got 3"),
        (lambda t: 'need_col = ""\n' + t, "need_col is empty; give it a name"),
        (lambda t: t.replace("seq_len = 0", "seq_len = -1"),
         "seq_len must be a whole number >= 0, got -1"),
    ],
    ids=["unknown-metric-key", "next-state-with-targets", "clip-of-three", "fractional-cpus",
         "fractional-test-rows", "python-0.11", "no-features", "id-col-not-string",
         "empty-need-col", "negative-seq-len"],
)
def test_more_bad_user_specs_are_refused_naming_the_problem(tmp_path, edit, message):
    text = edit(USER_SPEC)
    assert text != USER_SPEC
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message):
        load_spec(str(path))


def test_column_ranges_of_one_column_and_past_the_cap():
    """`p1..p1` is one column (not "backwards"); a range past 100,000 columns (a typo such as
    p0..p1000000000 would fill the memory) is refused, the cap itself allowed."""
    assert expand_columns(["p1..p1"]) == ["p1"]
    assert len(expand_columns(["p0..p99999"])) == 100_000
    with pytest.raises(SpecError, match=r"column range 'p0..p100000' names 100,001 columns; "
                                        r"at most 100,000 are allowed"):
        expand_columns(["p0..p100000"])


def test_a_spec_without_metric_or_limits_gets_the_documented_defaults():
    """README: the metric is weighted_pearson when [metric] names none, whatever the protocol;
    a spec without [limits] gets Predictorium's: 5,400 s for 1,500,000 rows on 1 CPU, 16 GB."""
    spec = spec_from_dict({"name": "ns", "features": ["a", "b"], "protocol": "next-state",
                           "tail": 1})
    assert spec.next_state and spec.metric.name == "weighted_pearson"
    assert spec.metric.clip is None
    limits = spec.limits
    assert (limits.cpus, limits.time_limit_s, limits.memory_gb, limits.test_rows,
            limits.python) == (1, 5400.0, 16.0, 1_500_000, None)


def test_metric_direction_and_the_clip_survive_a_round_trip():
    assert load_spec("rnn-challenge").metric.higher_is_better  # r2: higher is better
    assert load_spec("predictorium").metric.higher_is_better
    for lower in ("mae", "rmse"):
        spec = spec_from_dict({"name": "x", "features": ["a"], "targets": ["y"],
                               "metric": {"name": lower}})
        assert not spec.metric.higher_is_better
    spec = load_spec("predictorium")
    assert spec.to_dict()["metric"] == {"name": "weighted_pearson", "clip": [-6.0, 6.0]}
    back = spec_from_dict(spec.to_dict())
    assert back.metric == spec.metric and back.metric.clip == (-6.0, 6.0)
