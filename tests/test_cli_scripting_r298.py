"""r298, the CLI for scripting: --json on failure, a closed stdout pipe as a stop, the
environment and exit statuses documented, `kit runs -e` as other commands name experiments,
warnings on stderr, `kit --version`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import polars as pl
import pytest
import tomli_w

from tests.cli import run_cli
from tests.frames import make_frame, small_spec
from tests.test_train import SPEC_TOML, tiny_project

ROOT = Path(__file__).resolve().parents[1]

RAISES = """\
class PredictionModel:
    def predict(self, dp):
        raise RuntimeError("boom")
"""

ZEROS = """\
import numpy as np


class PredictionModel:
    def predict(self, dp):
        return np.zeros(2) if dp.need_prediction else None
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return tiny_project(tmp_path_factory.mktemp("r298"), train_seqs=8, valid_seqs=4, seed=1)


@pytest.fixture
def env(project, monkeypatch, tmp_path):
    monkeypatch.setenv("KIT_EXPERIMENTS", str(project / "experiments"))
    monkeypatch.chdir(tmp_path)
    return project


def _sub(root: Path, code: str, name: str = "sub") -> Path:
    (root / name).mkdir()
    (root / name / "solution.py").write_text(textwrap.dedent(code))
    return root / name


def _spec_file(root: Path, **limits) -> Path:
    path = root / "tiny-lob.toml"
    text = SPEC_TOML + ("[limits]\n" + tomli_w.dumps(limits) if limits else "")
    path.write_text(text)
    return path


# 1. --json prints a JSON object on stdout when the command fails


def test_score_json_prints_the_failure_with_where_the_submission_raised(project, tmp_path):
    sub = _sub(tmp_path, RAISES)
    result = run_cli("score", sub, "--data", project / "data" / "valid.parquet", "--spec",
                     project / "tiny-lob.toml", "--json", "-q", expect=2)
    payload = json.loads(result.stdout)  # stdout alone: the error line is on stderr
    assert payload["ok"] is False and payload["exit_code"] == 2
    assert "predict() raised RuntimeError: boom" in payload["error"]
    assert "\n" not in payload["error"] and "boom" in payload["detail"]  # its traceback
    assert (payload["seq"], payload["step"], payload["row"]) == (8, 0, 0)
    assert "error: " in result.stderr and "boom" in result.stderr


@pytest.mark.parametrize("args", [
    ("spec", "show", "no-such-spec", "--json"),
    ("data", "stats", "missing.parquet", "--json"),
    ("data", "cache", "--dir", "afile", "--json"),
    ("runs", "--runs-dir", "afile", "--json"),
    ("parity", "missing-package", "--json"),
], ids=["spec-show", "data-stats", "data-cache", "runs", "parity"])
def test_every_json_command_prints_its_error_as_json(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    result = run_cli(*args, expect=2)
    payload = json.loads(result.stdout)
    assert payload["ok"] is False and payload["exit_code"] == 2 and payload["error"]
    assert result.stderr.startswith("error: ") and payload["error"] in result.stderr


def test_json_errors_are_printed_once_and_text_mode_prints_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # data check prints its own failure object (its problems): not a second one after it
    checked = run_cli("data", "check", "missing.parquet", "--json", expect=2)
    assert json.loads(checked.stdout)["problems"] == ["missing.parquet: no such file"]
    plain = run_cli("spec", "show", "no-such-spec", expect=2)  # without --json: no JSON
    assert plain.stdout == ""


# 2. a closed stdout ends a long command as a stop: the resume line, exit 141


def _read_first_line_then_close(args: list[str], cwd: Path, env: dict) -> tuple[int, str]:
    proc = subprocess.Popen([sys.executable, "-m", "kit", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first, "no line on stdout"
        proc.stdout.close()  # as `| head -1` does once it has its line
        err = proc.stderr.read()
        return proc.wait(timeout=120), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _env(project: Path) -> dict:
    return {**os.environ, "KIT_EXPERIMENTS": str(project / "experiments"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("extra", [[], ["seeds=5,6", "--jobs", "2"]], ids=["one", "jobs"])
def test_train_whose_stdout_reader_exits_says_how_to_resume(project, tmp_path, extra):
    args = ["train", "exp=tiny", "train.epochs=40", *extra]
    code, err = _read_first_line_then_close(args, tmp_path, _env(project))
    assert code == 141, err
    assert "stdout's reader exited" in err and "--resume`" in err, err
    assert "Traceback" not in err, err
    if not extra:
        assert "--run-dir runs/tiny/" in err  # the single run that stopped, by name


def test_ablate_whose_stdout_reader_exits_says_how_to_resume(project, tmp_path):
    args = ["ablate", "exp=tiny", "train.epochs=40", "--groups", "raw,lags"]
    code, err = _read_first_line_then_close(args, tmp_path, _env(project))
    assert code == 141, err
    assert "stdout's reader exited" in err and "--resume runs/tiny/ablate-" in err, err
    assert "Traceback" not in err, err


def test_sweep_whose_stdout_reader_exits_fails_its_trial_as_an_interrupt(project, tmp_path):
    import optuna

    base = tomllib.loads((project / "experiments" / "tiny.toml").read_text())
    base["train"]["epochs"] = 40
    base["sweep"] = {"trials": 2, "params": {
        "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}
    exps = tmp_path / "experiments"
    exps.mkdir()
    (exps / "sw.toml").write_text(tomli_w.dumps(base))
    env = {**_env(project), "KIT_EXPERIMENTS": str(exps)}
    code, err = _read_first_line_then_close(["sweep", "exp=sw"], tmp_path, env)
    assert code == 141, err
    assert "stdout's reader exited" in err and "run the same command again" in err, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    study = optuna.load_study(study_name="sw",
                              storage=f"sqlite:///{tmp_path / 'runs' / 'sw' / 'sweep.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL"]  # not left running


# 3. the environment and the rule for relative paths, documented


def test_readme_documents_the_kit_environment_variables_and_relative_paths():
    readme = (ROOT / "README.md").read_text()
    for name in ("KIT_EXPERIMENTS", "KIT_SPEC_PATH", "KIT_SWEEP_STORAGE", "KIT_SWEEP_WORKER",
                 "KIT_SWEEP_HEARTBEAT_S", "KIT_PROGRESS"):
        assert f"| `{name}` |" in readme, name
    assert "relative to the folder the command runs\nin" in readme


# 4. exit statuses: one table, and pack's over-budget refusal is a limit's 3


def test_pack_over_the_time_budget_exits_3_as_score_over_a_limit_does(env, tmp_path,
                                                                      monkeypatch):
    import kit.export.pack as pack_module

    run_cli("train", "exp=tiny", "train.epochs=1", "-q")
    run = next(p for p in (tmp_path / "runs" / "tiny").iterdir() if not p.name.startswith("."))
    monkeypatch.setattr(pack_module, "BUDGET_FRACTION", 1e-9)  # any real time is over it
    out = run_cli("pack", run, "--name", "slow", "--out", tmp_path / "subs", expect=3).output
    assert "of the limit" in out and "--force" in out
    from kit.export.pack import OverBudget, PackError

    assert issubclass(OverBudget, PackError) and OverBudget.exit_code == 3


def test_readme_has_the_exit_status_table():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### Exit status", 1)[1].split("\n\n", 2)[1]
    codes = re.findall(r"^\| ([\d, ]+) \|", table, re.M)
    assert codes == ["0", "1", "2", "3", "130, 143, 129", "141"]


# 5. `kit runs -e` as other commands name experiments; warnings on stderr; --version


def test_runs_takes_the_experiment_as_other_commands_do(env, tmp_path):
    run_cli("train", "exp=tiny", "train.epochs=1", "-q")
    for given in ("tiny", "exp=tiny", str(env / "experiments" / "tiny.toml")):
        rows = json.loads(run_cli("runs", "-e", given, "--json").stdout)
        assert [r["experiment"] for r in rows] == ["tiny"], given


def test_data_check_warnings_go_to_stderr(tmp_path):
    spec = small_spec()
    frame = make_frame(spec, n_seqs=2).with_columns(pl.lit(1).alias("user_id"))
    path = tmp_path / "users.parquet"
    frame.write_parquet(path)
    spec_path = tmp_path / "tiny.toml"
    spec_path.write_text(tomli_w.dumps({
        "name": "tiny", "features": ["p0..p11", "v0..v11", "dp0..dp3", "dv0..dv3"],
        "targets": ["t0", "t1"], "seq_len": 20, "warmup": 5}))
    result = run_cli("data", "check", path, "--spec", spec_path, "--allow-extra")
    assert "warning:" not in result.stdout and "rows" in result.stdout
    assert "warning: column(s) not in the spec: user_id" in result.stderr
    as_json = json.loads(run_cli("data", "check", path, "--spec", spec_path, "--allow-extra",
                                 "--json").stdout)
    assert any("user_id" in w for w in as_json["warnings"])  # --json keeps them


def test_score_warnings_go_to_stderr(project, tmp_path):
    sub = _sub(tmp_path, ZEROS)
    spec = _spec_file(tmp_path, python="3.1")  # a note kit does not warn of while scoring
    result = run_cli("score", sub, "--data", project / "data" / "valid.parquet", "--spec",
                     spec, "-q")
    assert "score " in result.stdout and "warning:" not in result.stdout
    assert "warning: this replay ran Python" in result.stderr


def test_version_option():
    from kit import __version__

    assert run_cli("--version").stdout.strip() == __version__
    assert run_cli("version").stdout.strip() == __version__
