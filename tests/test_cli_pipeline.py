"""The foundation's verbs end to end through the CLI, on a small generated competition."""

import json
import re
from pathlib import Path

import polars as pl
import pytest

from kit.competition import load_spec
from kit.data.contract import check_file
from tests.cli import run_cli


def test_synth_check_stats_score_through_the_cli(tmp_path):
    out = tmp_path / "synth"
    result = run_cli("data", "synth", "--out", out, "--train-seqs", 12, "--valid-seqs", 8,
                     "--seed", 3, "-q")
    assert "12,000 rows" in result.output and "8,000 rows" in result.output
    spec = load_spec("predictorium")
    for name in ("train", "valid"):
        assert check_file(out / f"{name}.parquet", spec).sequences == (12 if name == "train" else 8)
    checked = run_cli("data", "check", out / "valid.parquet").output
    assert "rows 8,000" in checked and "matches the rule" in checked
    oracle = pl.read_parquet(out / "valid_oracle.parquet")
    assert oracle.columns == ["seq_ix", "step_in_seq", "t0", "t1"] and oracle.height == 8000

    stats = json.loads(run_cli("data", "stats", out / "valid.parquet", "--oracle",
                               out / "valid_oracle.parquet", "--reference",
                               out / "train.parquet", "--json").output)
    assert 0.2 < stats["oracle"]["per_output"]["t0"] < 0.9
    assert set(stats["reference"]["std_ratio"]) == {"t0", "t1"}  # --reference reaches stats
    text = run_cli("data", "stats", out / "valid.parquet").output
    assert "kurtosis" in text

    # The oracle itself as a submission: a lookup of valid_oracle by (seq, step).
    sub = tmp_path / "oracle_sub"
    sub.mkdir()
    oracle.write_parquet(sub / "oracle.parquet")
    (sub / "solution.py").write_text(ORACLE_SOLUTION)
    result = run_cli("score", sub, "--data", out / "valid.parquet", "--json")
    scored = json.loads(result.stdout)
    assert "%|" not in result.stderr and "it/s" not in result.stderr  # no progress bars
    assert abs(scored["report"]["score"] - stats["oracle"]["score"]) < 1e-6
    assert scored["rows"] == 8000 and scored["projected_s"] > 0
    assert scored["limit_s"] == 5400
    # on --seqs N the demo's oracle ceiling covers the rows kit score scored: the oracle is 100%
    from kit.demo import oracle_report

    part = json.loads(run_cli("score", sub, "--data", out / "valid.parquet", "--seqs", 2,
                              "--json").stdout)
    ceiling = oracle_report(out / "valid.parquet", out / "valid_oracle.parquet", spec, 2)
    assert part["rows"] == 2000
    assert abs(part["report"]["score"] - ceiling.score) < 1e-6
    assert abs(ceiling.score - stats["oracle"]["score"]) > 1e-3  # not the whole file's


ORACLE_SOLUTION = '''
import os
import numpy as np
import polars as pl


class PredictionModel:
    def __init__(self):
        frame = pl.read_parquet(os.path.join(os.path.dirname(__file__), "oracle.parquet"))
        keys = zip(frame["seq_ix"].to_list(), frame["step_in_seq"].to_list())
        self.table = dict(zip(keys, frame.select("t0", "t1").to_numpy().tolist()))

    def predict(self, data_point):
        if not data_point.need_prediction:
            return None
        return np.array(self.table[(int(data_point.seq_ix), int(data_point.step_in_seq))])
'''


def test_demo_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_EXPERIMENTS", str(Path(__file__).parents[1] / "experiments"))
    monkeypatch.chdir(tmp_path)
    # A small competition first, so the demo takes seconds; the demo reuses it.
    run_cli("data", "synth", "--out", "data/synth", "--train-seqs", 12, "--valid-seqs", 6, "-q")
    result = run_cli("demo", "--quiet", "--seeds", 2, "train.epochs=2", "model.hidden=16")
    out = result.output
    assert "contract OK" in out and "parity OK" in out and "[FAIL]" not in out
    assert "of the oracle" in out and "of the 5,400 s limit" in out and "max abs difference" in out
    assert (tmp_path / "submissions" / "demo.zip").is_file()
    manifest = json.loads((tmp_path / "submissions/demo/manifest.json").read_text())
    assert manifest["parity"]["ok"] and "runs/gru_base/" in manifest["members"][0]["run"]
    assert (tmp_path / "submissions/demo-ensemble.toml").is_file() and "best single" in out
    # the ensemble and the best single run are compared on the same rows (the selection's)
    assert "validation score" in out and "against the best single run's" in out
    assert "on the valid set" in out
    # one seed packs the run itself: the earlier demo's ensemble file goes, not left stale
    run_cli("demo", "--quiet", "--seeds", 1, "train.epochs=1", "model.hidden=16")
    assert not (tmp_path / "submissions/demo-ensemble.toml").exists()


def test_demo_generates_its_data_when_it_is_missing(tmp_path, monkeypatch):
    """The first thing README's first command does on a fresh machine (the other demo tests
    generate the data first). Demo-sized data made small: the sizes are not under test."""
    monkeypatch.setattr("kit.data.synth.DEFAULT_SEQS", {"train": 8, "valid": 4})
    monkeypatch.setenv("KIT_EXPERIMENTS", str(Path(__file__).parents[1] / "experiments"))
    monkeypatch.chdir(tmp_path)
    out = run_cli("demo", "--quiet", "--seeds", 1, "train.epochs=1", "model.hidden=8").output
    assert "generated 8,000 train and 4,000 valid rows" in out and "parity OK" in out
    assert {p.name for p in (tmp_path / "data/synth").iterdir()} >= {
        "train.parquet", "valid.parquet", "valid_oracle.parquet"}
    # the summary: per-target scores against the oracle, and the time against the limit
    assert re.search(r"score -?\d\.\d{4} = -?\d+% of the oracle's \d\.\d{4}", out)
    assert re.search(r"t0 -?\d\.\d{4} \(oracle \d\.\d{4}\)", out)
    assert "of the 5,400 s limit" in out


def test_demo_runs_an_experiment_on_its_own_competition(tmp_path, monkeypatch):
    """The demo set spec = predictorium over every experiment: an rnn-challenge experiment
    failed on its data's columns ("valid_oracle.parquet: missing column(s) ['t0', 't1']")."""
    monkeypatch.setenv("KIT_EXPERIMENTS", str(Path(__file__).parents[1] / "experiments"))
    monkeypatch.chdir(tmp_path)
    # each competition's synthetic data in its own folder by default (the second replaced the
    # first's in data/synth, and rnn_gru, which reads data/synth-rnn-challenge, found none)
    run_cli("data", "synth", "--train-seqs", 2, "--valid-seqs", 2, "-q")
    run_cli("data", "synth", "--spec", "rnn-challenge", "--train-seqs", 6, "--valid-seqs", 2,
            "-q")
    assert "p0" in pl.read_parquet_schema(tmp_path / "data/synth/train.parquet")
    assert (tmp_path / "data/synth-rnn-challenge/valid_oracle.parquet").is_file()
    out = run_cli("demo", "--exp", "rnn_gru", "--quiet", "--seeds", 1, "train.epochs=1",
                  "model.hidden=8").output
    assert "using data/synth-rnn-challenge" in out and "parity OK" in out
    # 32 outputs summarised (kit score's line and the summary), not one figure each
    assert out.count("32 outputs, min ") == 2
    manifest = json.loads((tmp_path / "submissions/demo/manifest.json").read_text())
    assert manifest["spec"]["name"] == "rnn-challenge"
    # --spec says which competition; the experiment's features must exist there
    out = run_cli("demo", "--exp", "gru_features", "--spec", "rnn-challenge", "--quiet",
                  expect=2).output
    assert "error:" in out and "Traceback" not in out


def test_demo_of_a_competition_the_generators_cannot_make_says_where_its_data_goes(
        tmp_path, monkeypatch):
    """An experiment on a spec of one's own: the demo generated its data and relayed the
    generator's advice to rename the competition's features."""
    exps = tmp_path / "experiments"
    exps.mkdir()
    (tmp_path / "workouts.toml").write_text(
        'name = "workouts"\nfeatures = ["hr", "speed"]\ntargets = ["y"]\nwarmup = 2\n')
    (exps / "wk.toml").write_text(f'extends = "{Path(__file__).parents[1]}/experiments/'
                                  f'base.toml"\nspec = "{tmp_path / "workouts.toml"}"\n')
    monkeypatch.setenv("KIT_EXPERIMENTS", str(exps))
    monkeypatch.chdir(tmp_path)
    out = run_cli("demo", "--exp", "wk", "--quiet", "--seeds", 1, expect=2).output
    assert ("kit demo runs on synthetic data, which the built-in generators cannot make for "
            "workouts") in out, out
    assert "Your own data runs through kit train" in out and "Traceback" not in out
    assert not (tmp_path / "data/synth-workouts").exists() and not (tmp_path / "runs").exists()
    # a folder with some of the files: not "an empty one to generate it" either
    (tmp_path / "data/synth-workouts").mkdir(parents=True)
    (tmp_path / "data/synth-workouts/train.parquet").write_bytes(b"mine")
    out = run_cli("demo", "--exp", "wk", "--quiet", "--seeds", 1, expect=2).output
    assert "the built-in generators cannot make for workouts" in out, out
    assert "generate it" not in out


def test_demo_fails_where_the_official_scorer_would_reject_it_and_keeps_odd_folders(
        tmp_path, monkeypatch):
    """The demo printed its success summary and exited 0 past a limit kit score refuses
    (exit 3): here a memory limit no Python process fits in. Its --data folder went into a
    TOML string unescaped: `d\\tx` trained on a folder with a tab in its name."""
    import tomllib

    from kit.demo import run_demo
    from kit.errors import KitError

    monkeypatch.setenv("KIT_EXPERIMENTS", str(Path(__file__).parents[1] / "experiments"))
    monkeypatch.chdir(tmp_path)
    shown = run_cli("spec", "show", "predictorium").output
    assert "memory_gb = 16.0\n" in shown
    Path("tight.toml").write_text(shown.replace("memory_gb = 16.0\n", "memory_gb = 0.01\n"))
    data = Path("d\\tx")  # a backslash and a t
    run_cli("data", "synth", "--out", data, "--train-seqs", 4, "--valid-seqs", 2, "-q")
    with pytest.raises(KitError, match="the official scorer would not accept this submission: "
                                       "peak memory exceeds the limit") as rejected:
        run_demo(data_dir=data, spec_name="tight.toml", seeds=1, quiet=True,
                 overrides=["train.epochs=1", "model.hidden=8", "model.layers=1"])
    assert rejected.value.exit_code == 3  # as kit score's
    [config] = Path("runs/gru_base").glob("*/config.toml")
    assert tomllib.loads(config.read_text())["data"]["train"] == str(data / "train.parquet")


def test_demo_refuses_an_oracle_of_other_data_or_a_partial_folder(tmp_path, monkeypatch):
    """Checked before training: a stale oracle gave a wrong ceiling (or a traceback after
    all the training); a missing file regenerated all three over the user's."""
    monkeypatch.setenv("KIT_EXPERIMENTS", str(Path(__file__).parents[1] / "experiments"))
    monkeypatch.chdir(tmp_path)
    run_cli("data", "synth", "--out", "a", "--train-seqs", 2, "--valid-seqs", 3, "-q")
    run_cli("data", "synth", "--out", "b", "--train-seqs", 2, "--valid-seqs", 4, "-q")
    # another seed's oracle has every key of this one (r238): the files' marks differ
    run_cli("data", "synth", "--out", "c", "--train-seqs", 2, "--valid-seqs", 3, "--seed", 1,
            "-q")
    oracle = Path("a") / "valid_oracle.parquet"
    assert pl.read_parquet(oracle)["seq_ix"].equals(pl.read_parquet("c/valid_oracle.parquet")[
        "seq_ix"])
    (Path("c") / "valid_oracle.parquet").replace(oracle)
    out = run_cli("demo", "--data", "a", "-q", expect=2).output
    assert ('a/valid_oracle.parquet belongs to other data: generated with {"spec": '
            '"predictorium", "seed": 1, "train_seqs": 2, "valid_seqs": 3}, and a/valid.parquet '
            'with {"spec": "predictorium", "seed": 0,') in out, out
    # a file without the mark (rewritten by Polars) is held to its rows
    pl.read_parquet("b/valid_oracle.parquet").write_parquet(oracle)
    out = run_cli("demo", "--data", "a", "-q", expect=2).output
    assert "a/valid_oracle.parquet does not hold the rows of a/valid.parquet" in out
    assert not Path("runs").exists()  # nothing trained
    (Path("a") / "valid_oracle.parquet").unlink()
    before = (Path("a") / "train.parquet").read_bytes()
    out = run_cli("demo", "--data", "a", "-q", expect=2).output
    assert "lacks valid_oracle.parquet" in out
    assert "delete" not in out and "your own data runs through kit train" in out  # not: delete
    assert (Path("a") / "train.parquet").read_bytes() == before
    # a model setting is checked before the data is generated, not after
    out = run_cli("demo", "--data", "fresh", "-q", "model.type=nosuch", expect=2).output
    assert "nosuch" in out and not Path("fresh").exists()


def test_demo_seqs_measures_the_oracle_on_the_sequences_it_scores(tmp_path, monkeypatch):
    """--seqs N scores the first N valid sequences: the oracle's score on the whole file made
    the ceiling (and the fraction of it) one of other rows."""
    from kit.demo import oracle_report

    monkeypatch.setenv("KIT_EXPERIMENTS", str(Path(__file__).parents[1] / "experiments"))
    monkeypatch.chdir(tmp_path)
    run_cli("data", "synth", "--out", "data/synth", "--train-seqs", 4, "--valid-seqs", 4, "-q")
    out = run_cli("demo", "--quiet", "--seeds", 1, "--seqs", 2, "train.epochs=1",
                  "model.hidden=8").output
    spec = load_spec("predictorium")
    valid, oracle = Path("data/synth/valid.parquet"), Path("data/synth/valid_oracle.parquet")
    ceiling = oracle_report(valid, oracle, spec, 2)
    assert f"{ceiling.score:.4f}" != f"{oracle_report(valid, oracle, spec).score:.4f}"
    assert f"of the oracle's {ceiling.score:.4f} on the first 2 valid sequences" in out
    for name, value in ceiling.per_target.items():
        assert re.search(rf"{name} -?\d\.\d{{4}} \(oracle {value:.4f}\)", out)


def test_demo_stops_with_an_error_when_parity_fails(tmp_path, monkeypatch):
    """A package that does not compute what the model does (here its graph without the
    normaliser) ends the demo at parity: exit 2 naming it, no score and no success summary."""
    import kit.export.pack as pack
    from kit.export.frozen import StreamChain, load_member
    from kit.export.step_graph import export_step_graph

    real_pack_run = pack.pack_run

    def pack_without_the_normaliser(run, *args, **kwargs):
        packed = real_pack_run(run, *args, **kwargs)
        member = load_member(run)
        chain = StreamChain(member.feature_set.stream_module(), member.model.step_form())
        export_step_graph(chain.eval(), len(member.spec.features), packed.folder / "model.onnx")
        pack.finalize_graph(packed.folder / "model.onnx", {})
        pack.write_manifest(packed.folder, pack.read_manifest(packed.folder))  # consistent
        return packed

    monkeypatch.setattr(pack, "pack_run", pack_without_the_normaliser)
    monkeypatch.setenv("KIT_EXPERIMENTS", str(Path(__file__).parents[1] / "experiments"))
    monkeypatch.chdir(tmp_path)
    run_cli("data", "synth", "--out", "data/synth", "--train-seqs", 4, "--valid-seqs", 2, "-q")
    out = run_cli("demo", "--quiet", "--seeds", 1, "train.epochs=1", "model.hidden=8",
                  expect=2).output
    assert "[FAIL] paths agree" in out and "parity FAILED" in out
    assert "error: parity failed: the package does not compute what the model does" in out
    assert "== score" not in out and "== summary" not in out and "of the oracle" not in out
    assert "Traceback" not in out


def test_help_texts_keep_their_bracketed_words():
    """Typer renders help as Rich markup: `[features]` was read as a style tag and dropped
    ("in place of its , on its spec"). Every command's help shows its [section] words."""
    out = run_cli("features", "build", "--help").output
    assert "its [features], on its spec" in " ".join(out.replace("│", " ").split())
    assert "[sweep]" in run_cli("sweep", "--help").output


def test_kits_own_warnings_are_one_line_and_others_keep_their_format(capsys):
    """kit's UserWarnings and RuntimeWarnings (a run folder that cannot be locked, candidates
    of another metric) print as `warning: ...`; another library's keep Python's format."""
    import warnings

    from kit.cli import KIT_DIR, _kit_warnings_as_lines

    shown = []
    show = _kit_warnings_as_lines(lambda *a: shown.append(a))
    for category in (UserWarning, RuntimeWarning):
        show(f"kit's {category.__name__}", category, f"{KIT_DIR}/ensemble.py", 1)
    show("theirs", UserWarning, "/elsewhere/lib.py", 1)
    show("deprecated", DeprecationWarning, f"{KIT_DIR}/cli.py", 1)
    err = capsys.readouterr().err
    assert "warning: kit's UserWarning\n" in err and "warning: kit's RuntimeWarning\n" in err
    assert [a[0] for a in shown] == ["theirs", "deprecated"]
    assert warnings.showwarning is not show  # installed per command only


def test_a_file_given_where_a_folder_is_wanted_says_so(tmp_path):
    """mkdir on a file's path said only "PATH: File exists" (kit demo --data FILE.parquet,
    kit data synth --out README.md, kit pack --out FILE, ...)."""
    taken = tmp_path / "notes.md"
    taken.write_text("mine")
    out = run_cli("data", "synth", "--out", taken, "--train-seqs", 2, "--valid-seqs", 2, "-q",
                  expect=2).output
    assert f"{taken}: File exists (a file, where a folder is needed: name a folder" in out, out
    assert taken.read_text() == "mine"


def test_features_list_with_an_unknown_spec_prints_only_the_error():
    """The ops table came first, then the error: a pipe got a partial listing."""
    result = run_cli("features", "list", "--spec", "no-such-spec", expect=2)
    assert "ops (" not in result.output and "cumsum" not in result.output
    assert "no-such-spec" in result.output
    assert run_cli("features", "list").output.startswith("ops (")  # what it would have shown


@pytest.mark.parametrize("args, message", [
    (["ablate", "gru_base", "--groups", "raw", "--seeds", ""], "--seeds '': comma-separated"),
    (["sweep", "gru_sweep", "--study", " "], "--study ' ': a name (leave the option out"),
], ids=["ablate seeds", "sweep study"])
def test_an_empty_value_is_refused_not_taken_for_the_default(args, message, tmp_path,
                                                            monkeypatch):
    """`--seeds ""` trained the experiment's seeds and `--study ""` ran the experiment's
    study, where `seeds=` in an override is refused."""
    monkeypatch.chdir(tmp_path)  # (had it trained, not in the repository)
    assert message in run_cli(*args, expect=2).output


def test_synth_seeds_give_other_data_and_the_same_seed_the_same(tmp_path):
    for name, seed in (("a", 1), ("b", 2), ("c", 1)):
        run_cli("data", "synth", "--out", tmp_path / name, "--train-seqs", 2, "--valid-seqs", 2,
                "--seed", seed, "-q")
    files = {n: (tmp_path / n / "valid.parquet").read_bytes() for n in "abc"}
    assert files["a"] == files["c"] and files["a"] != files["b"]


def test_an_interrupted_fold_group_says_to_resume_it_with_its_folds(monkeypatch):
    """The hint printed on Ctrl-C is the same command with --resume: without --folds K it
    resumed a single run instead of the fold group."""
    from kit.train import recipe

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe, "train_experiment", interrupted)
    out = run_cli("train", "exp=tiny", "train.epochs=3", "--folds", 3, "--jobs", 1,
                  expect=130).output
    assert "interrupted: continue with `kit train exp=tiny train.epochs=3 --folds 3 --resume`" \
        in out, out


def test_ablate_groups_may_have_spaces_after_the_commas(monkeypatch):
    from kit import ablate

    seen = []
    monkeypatch.setattr(ablate, "ablate",
                        lambda exp, names, *a, **k: seen.append(names) or {"variants": []})
    monkeypatch.setattr(ablate, "format_ablation", lambda summary: "")
    run_cli("ablate", "gru_base", "--groups", "raw, diffs,, ewm ")
    assert seen == [["raw", "diffs", "ewm"]]


def test_an_experiment_file_with_an_equals_sign_in_its_name_is_an_experiment(tmp_path,
                                                                             monkeypatch):
    """`kit params lr=3.toml`: a file that exists is the experiment, not an override."""
    experiments = Path(__file__).parents[1] / "experiments"
    (tmp_path / "lr=3.toml").write_text(f'extends = "{experiments / "gru_base.toml"}"\n')
    monkeypatch.chdir(tmp_path)
    assert "parameters" in run_cli("params", "lr=3.toml").output


def test_features_build_names_the_experiment_s_missing_train_file(tmp_path, monkeypatch):
    """Only the synthetic default gets the `kit data synth` advice; an experiment's own
    data.train is named as it is."""
    experiments = Path(__file__).parents[1] / "experiments"
    (tmp_path / "mine.toml").write_text(
        f'extends = "{experiments / "gru_base.toml"}"\n[data]\ntrain = "mine/train.parquet"\n')
    monkeypatch.chdir(tmp_path)
    out = run_cli("features", "build", "mine.toml", expect=2).output
    assert "mine/train.parquet: no such file" in out and "synthetic" not in out, out
    out = run_cli("features", "build", "--groups", "raw", expect=2).output
    assert "(the default for the synthetic data of spec 'predictorium')" in out, out


def test_demo_parity_seqs_is_an_option_and_checked_first(tmp_path, monkeypatch):
    """run_demo checked --parity-seqs by that name, but the command had no such option."""
    monkeypatch.chdir(tmp_path)
    out = run_cli("demo", "--parity-seqs", 0, "--quiet", expect=2).output
    assert "--parity-seqs must be >= 1, got 0" in out, out
    assert not (tmp_path / "data").exists()  # refused before the data stage


def test_an_ensemble_file_in_the_runs_folder_packs_beside_it_not_inside(tmp_path, monkeypatch):
    """`cd runs && kit pack --ensemble e.toml` wrote runs/submissions/ (inside runs/)."""
    from kit.cli import default_submissions

    (tmp_path / "runs" / "ensembles").mkdir(parents=True)
    for where in ("runs/e.toml", "runs/ensembles/e.toml"):
        (tmp_path / where).write_text("")
        monkeypatch.chdir((tmp_path / where).parent)
        assert default_submissions(tmp_path / where, ensemble=True).resolve() == (
            tmp_path / "submissions").resolve(), where


@pytest.mark.parametrize("args, message", [
    (["features", "build"], "kit features build needs an experiment (exp=NAME) or --groups"),
    (["pack"], "kit pack takes a RUN or --ensemble FILE (one of them)"),
    (["ablate", "gru_base", "--groups", "raw", "--seeds", "a"], "--seeds 'a': comma-separated"),
], ids=["features build", "pack", "ablate seeds"])
def test_argument_mistakes_are_one_error_line_like_every_other(args, message):
    """These came as typer's boxed "Invalid value" usage errors, unlike kit's other errors."""
    result = run_cli(*args, expect=2)
    assert result.stderr.startswith(f"error: {message}"), result.stderr
    assert "Invalid value" not in result.output


def test_runs_json_of_a_missing_folder_notes_it_on_stderr(tmp_path):
    """A mistyped --runs-dir gave `[]` and no word with --json (the table gave a note)."""
    result = run_cli("runs", "--runs-dir", tmp_path / "nope", "--json")
    assert result.stdout.strip() == "[]"
    assert f"note: {tmp_path / 'nope'} does not exist" in result.stderr
