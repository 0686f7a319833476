"""Review r277 of kit sweep and kit ensemble select: a bare path as --storage, a sweep stopped
by --timeout short of --trials, an edited --out refused only after the selection, and a trial
folder that is gone. Real SQLite studies, real trials and runs, the CLI as a user types it."""

import re
import shutil
from pathlib import Path

import pytest

import tests.test_sweep as sweep_tests
from kit.ensemble import EnsembleError, read_ensemble, select_ensemble
from tests.cli import run_cli
from tests.test_sweep import _sqlite, _study

sweep_env = sweep_tests.sweep_env  # its fixture: the experiment `tiny` with a [sweep] table


def test_a_storage_that_is_no_url_is_refused_before_the_best_file_check(sweep_env):
    """`--storage runs/tiny/sweep.db` was refused by the best file's check, naming two storages
    that printed alike ("file runs/tiny/sweep.db", "runs/tiny/sweep.db") with advice that led
    to a SQLAlchemy parse error; a password with an unescaped '@' met the same check first."""
    run_cli("sweep", "exp=tiny", "--trials", 1, "-q")  # writes experiments/tiny_best.toml
    best = sweep_env / "experiments/tiny_best.toml"
    before = best.read_text()
    for path, study in (("runs/tiny/sweep.db", []), ("runs/tiny/sweep.log", ["--study", "x"])):
        out = run_cli("sweep", "exp=tiny", "--storage", path, *study, "-q", expect=2).output
        assert out == (f"error: storage '{path}' is not a storage URL: give sqlite:///{path} "
                       f"(a SQLite file), journal:{path} (an append-only journal file) or a "
                       "server's URL such as postgresql://user:password@host:5432/db\n")
    # nothing opened or created: no SQLite file, no journal
    assert not (sweep_env / "runs/tiny/sweep.log").exists()
    # an unescaped "@" in a password: named, the password (nor its tail) not printed
    out = run_cli("sweep", "exp=tiny", "--storage", "postgresql://kit:p@ss3cret@127.0.0.1:9/kit",
                  expect=2).output
    assert out == ("error: storage 'postgresql://kit:***@127.0.0.1:9/kit': its password holds "
                   "an unescaped '@', so the driver would take the part after it for the host: "
                   "write it as %40 (e.g. postgresql://user:p%40ss@host:5432/db)\n")
    # a URL SQLAlchemy cannot read names the forms kit takes, not a parse error alone
    out = run_cli("sweep", "exp=tiny", "--storage", "postgresql://kit:s3cret@h:port/kit",
                  expect=2).output
    assert out.startswith("error: storage 'postgresql://kit:***@h:port/kit' is not a URL kit "
                          "can read (ValueError: ")
    assert "give sqlite:///PATH (a SQLite file), journal:PATH" in out and "s3cret" not in out
    # a mistyped scheme is no path to suggest, and its password is masked too
    # (all between its first ':' and its last '@': a password may hold '/' or '@', r278)
    for typo in ("postgresql:/kit:s3cret@h/kit", "postgresql:/kit:s3/cret@h/kit",
                 "postgresql:kit:s3@cret@h/kit"):
        out = run_cli("sweep", "exp=tiny", "--storage", typo, expect=2).output
        assert "'postgresql:***@h/kit' is not a storage URL: give sqlite:///PATH" in out, out
        assert "cret" not in out
    assert best.read_text() == before
    assert len(_study(_sqlite(sweep_env)).trials) == 1  # nothing trained


def test_a_best_file_clash_shows_this_sweeps_storage_as_the_recorded_one(sweep_env):
    """The recorded storage was shown as a file path, this sweep's as its URL: side by side they
    did not show what differed (and with a bare path, printed the same)."""
    run_cli("sweep", "exp=tiny", "--trials", 1, "-q")
    out = run_cli("sweep", "exp=tiny", "--trials", 1, "--runs-dir", "other", expect=2).output
    other = (sweep_env / "other/tiny/sweep.db").resolve()
    assert ("tiny_best.toml was written by study 'tiny' on file runs/tiny/sweep.db; this sweep "
            f"is study 'tiny' on file other/tiny/sweep.db (sqlite:///{other}) and does not "
            "replace it") in out
    # a server by what it points to, then the URL as given (masked)
    out = run_cli("sweep", "exp=tiny", "--storage", "postgres://kit:s3cret@DB.example/kit",
                  expect=2).output
    assert ("this sweep is study 'tiny' on postgresql://kit@db.example:5432/kit "
            "(postgres://kit:***@DB.example/kit) and does not replace it") in out
    assert "s3cret" not in out


def _finished_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("stopped at --timeout"))


def _finished(root: Path) -> int:
    return sum(t.state.is_finished() and t.state.name != "FAIL"
               for t in _study(_sqlite(root)).trials)


def test_a_sweep_stopped_by_its_timeout_says_how_far_it_got(sweep_env):
    """`--timeout` ended a sweep with exit code 0 and the summary alone: nothing said the study
    was short of --trials, nor how to go on. The same for --workers, whose parent summarises."""
    out = run_cli("sweep", "exp=tiny", "--trials", 20, "--timeout", 0.5, "-q").output
    finished = _finished(sweep_env)
    assert 1 <= finished < 20
    assert _finished_line(out) == (f"stopped at --timeout 0.5s with {finished} of the 20 "
                                   "trials wanted finished: run the same command to continue "
                                   "the study")
    out = run_cli("sweep", "exp=tiny", "--trials", 20, "--timeout", 0.5, "--workers", 2,
                  "-q").output
    finished = _finished(sweep_env)
    assert re.fullmatch(rf"stopped at --timeout 0\.5s with {finished} of the 20 trials wanted "
                        r"finished: .*", _finished_line(out))
    # a study that has its trials says nothing of the time limit
    out = run_cli("sweep", "exp=tiny", "--trials", 2, "--timeout", 0.5, "-q").output
    assert "stopped at --timeout" not in out and "wrote" in out


def test_the_summary_marks_a_trial_folder_that_is_gone(sweep_env):
    run_cli("sweep", "exp=tiny", "--trials", 2, "-q")
    study = _study(_sqlite(sweep_env))
    gone = Path(study.best_trial.user_attrs["run_dir"])
    shutil.rmtree(gone)
    out = run_cli("sweep", "exp=tiny", "--trials", 2, "-q").output
    listed = [line for line in out.splitlines() if line.startswith("  #")]
    assert len(listed) == 2
    assert listed[0].endswith(f"  {gone} (gone)"), out
    assert not listed[1].endswith("(gone)") and Path(listed[1].split()[-1]).is_dir()


def test_an_edited_out_file_is_refused_before_any_candidate_loads(runs, tmp_path, monkeypatch):
    """docs/ensembles.md: --out is checked before any candidate loads, but an edited file was
    refused only after every candidate loaded and the selection ran. A candidate that cannot
    load shows the order: its error would come first."""
    out = tmp_path / "e.toml"
    select_ensemble([runs["gru"], runs["gru_b"]], iters=2, out=out)
    edited = out.read_text() + "# my notes\n"
    out.write_text(edited)
    broken = shutil.copytree(runs["gru"], tmp_path / "runs/gru/broken")
    (broken / "best.pt").unlink()  # load_candidate refuses it
    said = run_cli("ensemble", "select", broken, "--postprocess", "--iters", 2, "--out", out,
                   expect=2).output
    assert said == (f"error: --out {out}: the file exists and is not one kit ensemble select "
                    "wrote, unedited (a run's config.toml, an experiment, an ensemble written "
                    "or edited by hand): give another --out, or delete it\n")
    assert out.read_text() == edited
    # still checked at the write: a file edited (here: made) while the selection ran is kept
    import kit.ensemble as ensemble

    late = tmp_path / "late.toml"
    real_select = ensemble.select

    def select_while_someone_writes(*args, **kwargs):
        late.write_text("# notes by hand\n")
        return real_select(*args, **kwargs)

    monkeypatch.setattr(ensemble, "select", select_while_someone_writes)
    with pytest.raises(EnsembleError, match="the file exists and is not one kit ensemble"):
        select_ensemble([runs["gru"], runs["gru_b"]], iters=2, out=late)
    assert late.read_text() == "# notes by hand\n"
    monkeypatch.undo()
    select_ensemble([runs["gru"], runs["gru_b"]], iters=3, out=out.with_name("f.toml"))
    assert read_ensemble(out.with_name("f.toml"))["ensemble"]["iters"] == 3
