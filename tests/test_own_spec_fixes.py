"""What a competitor writing their own spec met (r288): whose [limits] a projection reads, the
sequence-length line of ragged data, spec range errors, stats group names, the report's metric."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kit.competition import current_scoring, load_spec, spec_from_dict
from kit.data.contract import check_frame
from kit.data.stats import dataset_stats, format_stats
from kit.errors import SpecError
from kit.export.pack import format_budget, time_budget
from kit.reports import write_report
from kit.scoring.score import score_submission
from tests.cli import run_cli
from tests.frames import make_frame, small_spec
from tests.test_reports import make_run
from tests.test_reports import write_data as write_run_data

ALL_UNSET = ("cpus", "memory_gb", "time_limit_s", "test_rows")
PREDICTORIUM_LIMITS = ("Predictorium's limits: the spec sets no cpus, memory_gb, time_limit_s "
                       "or test_rows; set test_rows and time_limit_s for yours")
ZEROS = """\
import numpy as np


class PredictionModel:
    def predict(self, dp):
        return np.zeros(2) if dp.need_prediction else None
"""


def test_a_spec_remembers_the_limits_it_left_to_predictorium_s():
    """A spec without [limits] got Predictorium's values with nothing to tell them apart from
    its own; a stored copy (spec.json, a manifest) keeps which, and an old copy still loads."""
    bare = spec_from_dict({"name": "x", "features": ["a"], "targets": ["y"]})
    assert bare.limits_unset == ALL_UNSET and bare.limits.test_rows == 1_500_000
    assert spec_from_dict(bare.to_dict()) == bare  # the manifest copy reads back the same
    assert "limits_unset" not in bare.training_dict()  # feature caches and sweeps: unchanged
    some = spec_from_dict({"name": "x", "features": ["a"], "targets": ["y"],
                           "limits": {"time_limit_s": 60}})
    assert some.limits_unset == ("cpus", "memory_gb", "test_rows")
    # a copy written before limits_unset existed holds every value: taken as the spec's own
    old = {k: v for k, v in bare.to_dict().items() if k != "limits_unset"}
    assert spec_from_dict(old).limits_unset == ()
    # a spec setting its limits writes what it wrote before
    predictorium = load_spec("predictorium")
    assert predictorium.limits_unset == () and "limits_unset" not in predictorium.to_dict()
    # a `kit spec show` copy whose test_rows was edited: that one is set now
    shown = bare.to_dict() | {"limits": bare.to_dict()["limits"] | {"test_rows": 5000}}
    assert spec_from_dict(shown).limits_unset == ("cpus", "memory_gb", "time_limit_s")
    with pytest.raises(SpecError, match=r"<dict>: limits_unset must be a list of \[limits\] "
                                        r"keys among .*got \['rows'\]"):
        spec_from_dict(bare.to_dict() | {"limits_unset": ["rows"]})


def test_an_old_package_of_a_spec_without_limits_learns_it_from_the_spec_file(tmp_path):
    path = tmp_path / "own.toml"
    path.write_text('name = "own"\nfeatures = ["a"]\ntargets = ["y"]\n')
    stored = {k: v for k, v in load_spec(str(path)).to_dict().items() if k != "limits_unset"}
    spec, check = current_scoring(spec_from_dict(stored, "manifest.json"), str(path))
    assert spec.limits_unset == ALL_UNSET  # no value changed: no warning
    assert check.changed == () and check.unread is None and check.file == str(path)


def test_pack_and_score_say_the_limits_are_predictorium_s(tmp_path):
    """kit pack's budget and kit score's projection called Predictorium's 1.5M rows and 5,400 s
    "the spec's [limits]" for a spec that sets none."""
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "solution.py").write_text(ZEROS)
    spec = small_spec()
    budget = time_budget(sub, spec, 1)
    assert budget["limits_unset"] == list(ALL_UNSET)
    assert format_budget(budget).endswith(f"1 member(s); {PREDICTORIUM_LIMITS})")
    # a manifest's budget from before the field: as it was
    old = {k: v for k, v in budget.items() if k != "limits_unset"}
    assert format_budget(old).endswith("1 member(s); the spec's [limits])")

    data = tmp_path / "data.parquet"
    make_frame(spec, n_seqs=2).write_parquet(data)
    result = score_submission(sub, data, spec, progress=False)
    assert f"(1,500,000 rows, {PREDICTORIUM_LIMITS}): " in result.format()
    assert result.to_dict()["limits_unset"] == list(ALL_UNSET)
    only_rows = small_spec(limits={"time_limit_s": 60, "cpus": 1})
    result = score_submission(sub, data, only_rows, progress=False)
    assert ("(1,500,000 rows, Predictorium's test_rows: the spec's [limits] sets no test_rows; "
            "set it for yours): ") in result.format()
    own = small_spec(limits={"time_limit_s": 60, "test_rows": 1000})
    result = score_submission(sub, data, own, progress=False)
    assert "(1,000 rows, the spec's [limits]): " in result.format()


def test_many_sequence_lengths_are_summarised_on_one_short_line():
    """2,000 workouts of 50-400 steps printed a 2,788-character line of every length."""
    spec = small_spec(seq_len=None, warmup=2)
    lengths = [5, 6, 7, 8, 9, 10, 11, 11, 30]
    report = check_frame(make_frame(spec, lengths=lengths), spec)
    assert ("sequence lengths: 8 distinct, 5 to 30 steps (median 9); most common 11 "
            "(2 sequences), 5 (1), 6 (1)") in report.format().splitlines()
    assert report.length_histogram["11"] == 2  # the JSON keeps every length
    few = check_frame(make_frame(spec, lengths=[5, 6, 7, 8, 9, 9]), spec)
    assert "sequence lengths: 5: 1, 6: 1, 7: 1, 8: 1, 9: 2" in few.format().splitlines()


@pytest.mark.parametrize(("key", "value", "why"), [
    ("features", '["a..b"]', r"column range 'a\.\.b' is not PREFIX<low>\.\.PREFIX<high>"),
    ("targets", '["t5..t1"]', r"column range 't5\.\.t1' runs backwards"),
])
def test_a_bad_column_range_names_the_spec_file_and_key(tmp_path, key, value, why):
    path = tmp_path / "own.toml"
    other = "targets" if key == "features" else "features"
    path.write_text(f'name = "own"\n{key} = {value}\n{other} = ["c"]\n')
    with pytest.raises(SpecError, match=rf"^{re.escape(str(path))}: {key}: {why}"):
        load_spec(str(path))


def test_stats_groups_show_a_lone_column_under_its_own_name(tmp_path):
    """The column "v.1" was grouped as "v.", "42" as "#"; p0, p1 still group as p."""
    raw = {"name": "odd", "features": ["price level", "v.1", "42", "p0", "p1"],
           "targets": ["y"], "seq_len": 10, "warmup": 2}
    spec = spec_from_dict(raw)
    path = tmp_path / "odd.parquet"
    make_frame(spec, n_seqs=3).write_parquet(path)
    stats = dataset_stats(path, spec)
    assert list(stats["feature_groups"]) == ["price level", "v.1", "42", "p"]
    assert stats["feature_groups"]["p"]["n"] == 2
    table = format_stats(stats).split("\n\n")[1].splitlines()
    assert [line.split("  ")[1].strip() for line in table[1:]] == ["price level", "v.1", "42",
                                                                   "p"]


@pytest.mark.parametrize(("metric", "words"), [("mae", "mae, lower is better"),
                                               ("r2", "r2, higher is better")])
def test_the_run_report_names_the_metric_and_its_direction(tmp_path: Path, metric, words):
    spec = small_spec(metric={"name": metric})
    valid, spec_path = write_run_data(tmp_path / "data", spec, oracle=False)
    run = make_run(tmp_path / "runs", "own", "20240101-000000-s1", valid, spec_path)
    text = write_report(run).read_text()
    [line] = [x for x in text.splitlines() if x.startswith("Best epoch")]
    assert re.fullmatch(rf"Best epoch \*\*3\*\*: score \*\*-?[\d.]+\*\* \({words}\)", line)



def test_spec_show_names_the_limits_left_to_predictorium_s_in_a_comment(tmp_path):
    """`limits_unset = [...]` printed as a key of the TOML a new spec starts from: a key no
    user writes; a comment says the same, and the printed TOML loads as a spec."""
    path = tmp_path / "own.toml"
    path.write_text('name = "own"\nid_col = "seq"\nstep_col = "t"\nneed_col = "need"\n'
                    'features = ["a", "b"]\ntargets = ["y"]\n\n[limits]\ntest_rows = 1000\n')
    out = run_cli("spec", "show", str(path)).output
    assert "limits_unset" not in out
    assert ("# cpus, memory_gb, time_limit_s: Predictorium's values, the spec sets none; set "
            "yours\n[limits]\n") in out
    copy = tmp_path / "copy.toml"
    copy.write_text(out)
    assert load_spec(str(copy)).limits.test_rows == 1000
    assert run_cli("spec", "show", str(path), "--json").output.count("limits_unset") == 1


def test_a_stored_copy_edited_down_to_a_few_limits_counts_the_others_unset():
    """r291: limits_unset = ["cpus"] with only time_limit_s in [limits] (a --json copy edited
    by hand) labelled Predictorium's 1.5M test rows as the spec's own."""
    raw = {"name": "x", "id_col": "seq", "step_col": "t", "need_col": "need", "features": ["a"],
           "targets": ["y"], "limits_unset": ["cpus"], "limits": {"time_limit_s": 60}}
    spec = spec_from_dict(raw, "own.toml")
    assert spec.limits_unset == ("cpus", "memory_gb", "test_rows")
    assert spec_from_dict(spec.to_dict()).limits_unset == spec.limits_unset  # round trip


def test_a_limits_table_setting_only_python_is_not_called_absent():
    """A spec whose [limits] sets `python` alone was told it "sets no [limits]"; the label names
    the keys it left unset instead."""
    from kit.competition import limits_label

    spec = spec_from_dict({"name": "x", "features": ["a"], "targets": ["y"],
                           "limits": {"python": "3.11"}})
    assert spec.limits_unset == ALL_UNSET and spec.limits.python == "3.11"
    label = limits_label(spec.limits_unset, ("test_rows", "time_limit_s"))
    assert label == PREDICTORIUM_LIMITS and "[limits]" not in label
