"""A spec file whose [limits] changed after its runs trained: `kit pack --ensemble` and parity
say so once for the whole ensemble, not once per member (r292: a 28-member pack repeated the
warning 28 times)."""

import shutil
import warnings
from pathlib import Path

import pytest
import tomli_w

from kit.export.pack import pack_ensemble, pack_run
from kit.parity import run_parity

SAID = "changed since"


def _copies_on_an_edited_spec(runs: dict, workspace: Path, tmp_path: Path, names) -> list[Path]:
    """Copies of the fixture's runs whose config names a copy of their spec, with [limits]
    added after they trained."""
    spec = tmp_path / "tiny-lob.toml"
    spec.write_text((workspace / "tiny-lob.toml").read_text()
                    + "\n[limits]\ntime_limit_s = 3600\ntest_rows = 100000\n")
    copies = []
    for name in names:
        copy = tmp_path / "runs" / "e" / name
        shutil.copytree(runs[name], copy)
        config = copy / "config.toml"
        config.write_text(config.read_text().replace(str(workspace / "tiny-lob.toml"),
                                                     str(spec)))
        copies.append(copy)
    return copies


def _spec_warnings(record) -> list[str]:
    return [str(w.message) for w in record if SAID in str(w.message)
            and "spec 'tiny-lob'" in str(w.message)]


def test_an_ensembles_members_on_a_changed_spec_are_named_in_one_warning(workspace, runs,
                                                                          tmp_path):
    copies = _copies_on_an_edited_spec(runs, workspace, tmp_path,
                                       ["gru", "gru_b", "lstm", "lstm_b", "ssm"])
    path = tmp_path / "e.toml"
    path.write_text(tomli_w.dumps({"members": [
        {"name": run.name, "runs": [str(run)], "weights": [0.2, 0.2]} for run in copies]}))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        packed = pack_ensemble(path, "ens", tmp_path / "subs")
    (said,) = _spec_warnings(record)
    assert "its [limits] changed since 5 of its runs (" in said, said
    assert str(copies[0].resolve()) in said and "and 2 more" in said, said
    assert str(copies[-1].resolve()) not in said  # past the first three: counted, not named
    valid = workspace / "data" / "valid.parquet"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert run_parity(packed.folder, valid, seqs=2).ok
    assert len(_spec_warnings(record)) == 1


def test_a_single_runs_pack_names_the_run(workspace, runs, tmp_path):
    (copy,) = _copies_on_an_edited_spec(runs, workspace, tmp_path, ["gru"])
    with pytest.warns(RuntimeWarning) as record:
        pack_run(copy, "one", tmp_path / "subs")
    (said,) = _spec_warnings(record)
    assert f"its [limits] changed since {copy} trained;" in said, said
