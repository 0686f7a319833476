"""Past SHOWN_OUTPUTS (6) outputs, training's epoch and result lines, the `kit runs` table and
`kit ensemble select`'s report print kit score's one-line summary, not one figure per output
(a next-state spec's 32 made lines of hundreds of characters); up to 6 each figure, as before.
JSON keeps every output (r283)."""

import json
import os
import subprocess
import sys
import tomllib

import pytest
import tomli_w

from kit.competition import load_spec
from kit.data.synth import synthesize
from kit.metrics import SHOWN_OUTPUTS
from kit.train.runs import epoch_line
from tests.cli import run_cli
from tests.test_train import raw_gru_experiment


@pytest.fixture(scope="module", params=[6, 7], ids=["6 outputs", "7 outputs"])
def trained(request, tmp_path_factory):
    """A tiny next-state competition of 6 or 7 outputs (its features t0, t1, ...: their next
    values), two seeds of 1 epoch trained through the CLI: (folder, outputs, what it printed)."""
    outputs, root = request.param, tmp_path_factory.mktemp("wide")
    (root / "wide.toml").write_text(f"""
name = "wide"
features = ["t0..t{outputs - 1}"]
targets = []
seq_len = 40
warmup = 5
tail = 1
protocol = "next-state"
[metric]
name = "r2"
""")
    synthesize(load_spec(str(root / "wide.toml")), root / "data", train_seqs=6, valid_seqs=3,
               seed=1)
    (root / "experiments").mkdir()
    experiment = raw_gru_experiment(root)
    (root / "experiments" / "wide.toml").write_text(tomli_w.dumps(experiment | {
        "spec": str(root / "wide.toml"), "seed": 1,
        "train": experiment["train"] | {"batch_size": 4}}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KIT_EXPERIMENTS", str(root / "experiments"))
        patch.chdir(root)
        printed = run_cli("train", "exp=wide", "seeds=1,2").output  # progress on: epoch lines
    return root, outputs, printed


@pytest.fixture
def project(trained, monkeypatch):
    root, outputs, printed = trained
    monkeypatch.setenv("KIT_EXPERIMENTS", str(root / "experiments"))
    monkeypatch.chdir(root)
    return outputs, outputs > 6, f"{outputs} outputs, min "


def test_epoch_and_result_lines_summarise_past_six_outputs(trained, project):
    outputs, summarised, summary = project
    lines = trained[2].splitlines()
    epochs = [line for line in lines if "epoch 1: loss" in line]
    results = [line for line in lines if ": score " in line]
    assert epochs and len(results) == 2, trained[2]
    for line in epochs + results:
        assert (summary in line) == summarised, line
        assert ("t5 " in line) != summarised, line  # a figure of its own up to six


def test_the_runs_table_has_one_outputs_column_past_six_and_json_keeps_all(project):
    outputs, summarised, summary = project
    names = [f"t{j}" for j in range(outputs)]
    table = run_cli("runs").output
    header = table.splitlines()[0].split()
    # the output columns: after experiment, run_id and score, before the 8 from validated on
    assert header[3:-8] == (["outputs"] if summarised else names), table
    assert (summary in table) == summarised, table
    # sorted by one output, the table keeps that output's column beside the summary
    header = run_cli("runs", "--sort", "t3").output.splitlines()[0].split()
    assert header[3:-8] == (["t3", "outputs"] if summarised else names)
    rows = json.loads(run_cli("runs", "--json").output)  # --json: every output
    assert [list(r["per_target"]) for r in rows] == [names, names]


def test_the_selection_report_summarises_past_six_outputs(project, tmp_path):
    outputs, summarised, summary = project
    report = run_cli("ensemble", "select", "runs/wide", "--iters", 3, "--per-target",
                     "--out", tmp_path / "e.toml").output
    lines = report.splitlines()
    assert ("outputs" in lines[0].split()) == summarised, report
    assert ("t5" in lines[0].split()) != summarised, report
    for label in ("ensemble", "best single", "uniform mean of 2"):
        row = next(line for line in lines if line.startswith(label))
        assert (summary in row) == summarised, row
    members = [line for line in lines if "single " in line and "[" in line]
    assert len(members) == 2 and all((f"[{outputs} weights, min " in line) == summarised
                                      for line in members), report
    assert (", per target;" in report) == summarised, report  # the cut of each output
    written = tomllib.loads((tmp_path / "e.toml").read_text())["ensemble"]  # the file: all
    assert list(written["target_scores"]) == [f"t{j}" for j in range(outputs)]


def test_an_epoch_line_of_many_outputs_names_a_nan_output():
    """history.jsonl holds null for a NaN figure: the summary names that output (it was a
    TypeError in the summary), and up to six outputs it still reads "nan"."""
    record = {"epoch": 2, "train_loss": 0.5, "val_score": 0.25, "best": True,
              "val_per_target": {f"t{j}": (None if j == 3 else j / 10) for j in range(32)}}
    assert epoch_line(record) == ("epoch 2: loss 0.5000  val 0.2500 (32 outputs, 1 nan (t3), "
                                  "min 0.0000, max 3.1000)  *")
    record["val_per_target"] = {"t0": None, "t1": 0.5}
    assert epoch_line(record) == "epoch 2: loss 0.5000  val 0.2500 (t0 nan  t1 0.5000)  *"


def test_parity_defaults_have_one_definition_and_the_cli_loads_no_torch_for_them():
    """cli.py's --seqs, --atol and --rtol (and demo's --parity-seqs) are kit.parity's, from
    kit.parity_defaults: kit.parity loads torch, two seconds on every kit command."""
    import kit.parity
    from kit.parity_defaults import DEFAULT_ATOL, DEFAULT_RTOL, DEFAULT_SEQS

    assert (kit.parity.DEFAULT_SEQS, kit.parity.DEFAULT_ATOL, kit.parity.DEFAULT_RTOL) == (
        DEFAULT_SEQS, DEFAULT_ATOL, DEFAULT_RTOL)

    env = {**os.environ, "COLUMNS": "200"}
    shown = subprocess.run([sys.executable, "-m", "kit", "parity", "--help"], env=env,
                           capture_output=True, text=True, check=True).stdout
    for value in (DEFAULT_SEQS, DEFAULT_ATOL, DEFAULT_RTOL):
        assert f"[default: {value}]" in shown, shown
    assert f"[default: {DEFAULT_SEQS}]" in run_cli("demo", "--help").output
    loaded = subprocess.run([sys.executable, "-c", "import sys, kit.cli; "
                             "print(sorted({'torch', 'kit.parity'} & set(sys.modules)))"],
                            capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


@pytest.mark.parametrize("n", [6, 7])
def test_the_ablation_table_shows_the_score_alone_past_six_targets(n):
    """kit ablate printed a value and a change column per target: 65 columns for 32."""
    from kit.ablate import format_ablation, variant_row

    names = [f"x{j}" for j in range(n)]

    def outcome(seed: int, score: float) -> dict:
        return {"seed": seed, "score": score, "run_dir": f"r{seed}",
                "per_target": {t: score + j / 100 for j, t in enumerate(names)}}

    summary = {"experiment": "tiny", "seeds": [1], "targets": names, "sign": 1.0,
               "groups": ["raw", "diffs"], "file": "ablate-x.json",
               "variants": [variant_row("ladder", "raw", ["raw"], [outcome(1, 0.2)]),
                            variant_row("ladder", "raw+diffs", ["raw", "diffs"],
                                        [outcome(1, 0.3)])]}
    out = format_ablation(summary)
    header, row = out.splitlines()[1], out.splitlines()[-2]
    if n <= SHOWN_OUTPUTS:
        assert "x5" in header and "change x5" in header and "0.3500" in row, out
    else:
        assert "x0" not in header and header.split() == [
            "variant", "score", "sd", "change", "score"], out
        assert "the 7 targets' figures are in ablate-x.json" in out
        assert row.split()[:3] == ["raw+diffs", "0.3000", "+0.1000"], out


def test_runs_of_two_many_output_competitions_are_two_tables(tmp_path, monkeypatch):
    """r291: the summary replaced each run's output names before format_runs split the runs
    into a table per set of outputs, so an 8-output and a 10-output competition shared one."""
    from tests.frames import small_spec
    from tests.test_reports import make_run, write_data

    for exp, prefix, n in (("compa", "a", 8), ("compb", "b", 10)):
        spec = small_spec(targets=[f"{prefix}{j}" for j in range(n)])
        valid, stored = write_data(tmp_path / f"d{prefix}", spec, oracle=False)
        make_run(tmp_path / "runs", exp, "20240101-000000-s1", valid, stored)
    monkeypatch.chdir(tmp_path)
    out = run_cli("runs").output
    headers = [line for line in out.splitlines() if line.startswith("experiment")]
    assert len(headers) == 2 and all(" outputs " in h for h in headers), out
    assert "8 outputs, min" in out and "10 outputs, min" in out
    sorted_by = run_cli("runs", "--sort", "a3").output  # the sorted output keeps its column
    assert any(" a3 " in line and " outputs " in line for line in sorted_by.splitlines())
