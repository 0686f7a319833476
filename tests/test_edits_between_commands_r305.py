"""What a competitor edits by hand between kit commands (r305): a manifest whose columns were
edited (the notebook used it), a spec file that no longer loads or lists its targets in
another order (its new limits were dropped without a word), `kit score --spec` with the
targets reordered (each output scored as another target), data rewritten under an ensemble's
runs, a package folder deleted with its zip kept, and a notebook dataset left stale by a
re-pack."""

import json
import shutil
import warnings
from pathlib import Path

import pytest

from kit.ensemble import select_ensemble
from kit.errors import SubmissionError
from kit.export.frozen import load_member
from kit.export.notebook import NotebookError, write_notebook
from kit.export.pack import PackError, pack_ensemble, pack_run, submission_spec
from kit.parity import refuse_missing
from kit.reports import write_ensemble_report
from kit.run_record import DATA_DIGESTS
from kit.scoring.sandbox import prepare_submission


def _said(record) -> list[str]:
    return [str(w.message) for w in record]


def _run_on_own_spec(runs: dict, workspace: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the fixture's GRU run whose config names a copy of its spec file."""
    spec = tmp_path / "own.toml"
    shutil.copy(workspace / "tiny-lob.toml", spec)
    run = tmp_path / "runs" / "gru" / runs["gru"].name
    shutil.copytree(runs["gru"], run)
    config = run / "config.toml"
    config.write_text(config.read_text().replace(str(workspace / "tiny-lob.toml"), str(spec)))
    return run, spec


def test_the_notebook_refuses_a_manifest_whose_columns_were_edited(runs, tmp_path):
    """The file hashes do not cover manifest.json, and the batch notebook selects its columns by
    its `inputs`: swapped there, the notebook predicted from scrambled columns (parity refused
    the same manifest)."""
    packed = pack_run(runs["gru"], "edited", tmp_path / "subs")
    path = packed.folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["inputs"][0], manifest["inputs"][12] = manifest["inputs"][12], manifest["inputs"][0]
    path.write_text(json.dumps(manifest))
    with pytest.raises(NotebookError, match=r"edited: manifest\.json: inputs\[0\] is 'v0' where "
                                            r"the spec's column is 'p0' .*re-pack the run"):
        write_notebook(packed.folder, tmp_path / "nb", owner="me", protocol="batch")
    assert not (tmp_path / "nb").exists()


def test_score_with_a_spec_listing_the_targets_in_another_order_is_refused(runs, workspace,
                                                                           tmp_path):
    """The feature columns were compared, the targets were not: each output was scored against
    the other target."""
    packed = pack_run(runs["gru"], "order", tmp_path / "subs")
    swapped = tmp_path / "swapped.toml"
    swapped.write_text((workspace / "tiny-lob.toml").read_text()
                       .replace('targets = ["t0", "t1"]', 'targets = ["t1", "t0"]'))
    assert 'targets = ["t1", "t0"]' in swapped.read_text()
    with pytest.raises(PackError, match=r"predicts \['t0', 't1'\]; --spec .*swapped\.toml "
                                        r"scores \['t1', 't0'\]: score it with its own spec"):
        submission_spec(packed.zip_path, str(swapped))
    same = tmp_path / "same.toml"
    shutil.copy(workspace / "tiny-lob.toml", same)
    assert submission_spec(packed.zip_path, str(same)).targets == ("t0", "t1")


@pytest.mark.parametrize("edit, said, advice", [
    (lambda text: text + "\n[limits]\ntime_limit_s = 20\nbroken = = 1\n", "does not load (",
     ": fix the file"),
    (lambda text: text.replace('targets = ["t0", "t1"]', 'targets = ["t1", "t0"]')
     + "\n[limits]\ntime_limit_s = 20\n", "now differs in targets ['t1', 't0'], against",
     ": give that other competition a name of its own"),
])
def test_a_spec_file_not_taken_is_said_not_dropped_in_silence(runs, workspace, tmp_path, edit,
                                                              said, advice):
    """A typo, or another competition under the name, kept the run's stored [limits] (the
    pack's budget and score's projection on the old 5,400 s) and said nothing."""
    run, spec = _run_on_own_spec(runs, workspace, tmp_path)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        load_member(run / "best.pt")
    assert not [m for m in _said(record) if "spec 'tiny-lob'" in m]  # unchanged: nothing said
    packed = pack_run(run, "before", tmp_path / "subs")
    spec.write_text(edit(spec.read_text()))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        member = load_member(run / "best.pt")
    assert member.spec.limits.time_limit_s == 5400.0  # the stored copy's, as before
    (message,) = [m for m in _said(record) if "spec 'tiny-lob'" in m]
    assert f"spec 'tiny-lob': {spec} {said}" in message, message
    assert f"keep the [metric] and [limits] stored when {run.resolve()} trained" in message
    assert message.endswith(advice), message  # a typo is not told to rename (r307)
    # kit score of the package made before the edit says it too
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert submission_spec(packed.zip_path).limits.time_limit_s == 5400.0
    (message,) = [m for m in _said(record) if "spec 'tiny-lob'" in m]
    assert f"{spec} {said}" in message and "scored with the [metric] and [limits] stored " \
        "when it was packed" in message and message.endswith(advice), message


def test_a_changed_spec_file_is_named_in_the_warning(runs, workspace, tmp_path):
    """"its [limits] changed" did not say which file it read ($KIT_SPEC_PATH may point
    elsewhere than ./competitions)."""
    run, spec = _run_on_own_spec(runs, workspace, tmp_path)
    spec.write_text(spec.read_text() + "\n[limits]\ntime_limit_s = 3600\n")
    with pytest.warns(RuntimeWarning, match=rf"spec 'tiny-lob' \({spec}\): its \[limits\] "
                                            "changed since"):
        assert load_member(run / "best.pt").spec.limits.time_limit_s == 3600


def _forget_data(run: Path) -> None:
    """The run's recorded digest of its valid file as another content's: the file was
    rewritten since it trained."""
    path = run / "metrics.json"
    metrics = json.loads(path.read_text())
    first = next(iter(metrics[DATA_DIGESTS]))
    metrics[DATA_DIGESTS][first] = "0" * 64
    path.write_text(json.dumps(metrics))


def test_an_ensembles_report_and_pack_say_what_changed_under_its_runs(runs, tmp_path):
    """select refused rewritten data, and `kit report RUN` named it; the ensemble's report and
    pack said nothing, nor did the report of a member run deleted since."""
    copies = []
    for name in ("gru", "gru_b"):
        copy = tmp_path / "runs" / name / runs[name].name
        shutil.copytree(runs[name], copy)
        copies.append(copy)
    _, path, _ = select_ensemble(copies, iters=4, init_best=2, out=tmp_path / "e.toml")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        report = write_ensemble_report(path, tmp_path / "report-before")
        pack_ensemble(path, "before", tmp_path / "subs")
    assert "Since the selection" not in report.read_text()
    assert not [m for m in _said(record) if "changed since" in m or "since the selection" in m]

    _forget_data(copies[0])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        text = write_ensemble_report(path, tmp_path / "report-data").read_text()
        pack_ensemble(path, "after", tmp_path / "subs")
    said = _said(record)
    assert "## Since the selection" in text and f"- {copies[0].resolve()} trained or " \
        "validated on" in text and "whose content has changed since" in text, text
    assert any("since the selection" in m and "select again" in m for m in said), said
    (drift,) = [w for w in record if "the weights were chosen on predictions of the old rows"
                in str(w.message)]
    assert drift.filename == __file__  # the caller's line, not kit's (r307)

    shutil.rmtree(copies[1])
    with pytest.warns(RuntimeWarning, match="since the selection"):
        text = write_ensemble_report(path, tmp_path / "report-gone").read_text()
    assert f"- {copies[1]} is gone (no best.pt there)" in text, text


def test_a_deleted_package_folder_points_at_its_zip(runs, tmp_path):
    packed = pack_run(runs["gru"], "kept", tmp_path / "subs")
    shutil.rmtree(packed.folder)
    there = f"; {packed.zip_path} is there: pass it"
    with pytest.raises(SubmissionError, match="no such package folder or zip") as caught:
        refuse_missing(packed.folder)
    assert there in str(caught.value)
    with pytest.raises(SubmissionError) as caught:
        prepare_submission(packed.folder, tmp_path / "work")
    assert there in str(caught.value)
    with pytest.raises(NotebookError) as caught:
        write_notebook(packed.folder, tmp_path / "nb", owner="me")
    assert there in str(caught.value)
    # and the other way round
    packed = pack_run(runs["gru"], "folder", tmp_path / "subs")
    packed.zip_path.unlink()
    with pytest.raises(SubmissionError) as caught:
        refuse_missing(packed.zip_path)
    assert f"; {packed.folder} is there: pass it" in str(caught.value)


def test_a_repack_says_the_notebook_dataset_beside_it_holds_the_previous_package(runs,
                                                                                 tmp_path):
    subs = tmp_path / "subs"
    first = pack_run(runs["gru"], "t1", subs)
    write_notebook(first.folder, subs / "t1-kaggle", owner="me")
    assert (subs / "t1-kaggle" / "dataset" / "model.onnx").is_file()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pack_run(runs["gru"], "t1", subs)  # the same model: the dataset still holds it
    assert not [m for m in _said(record) if "previous package" in m]
    with pytest.warns(RuntimeWarning, match=r"t1-kaggle/dataset holds the previous package of "
                                            r"t1: run kit notebook .*t1 again") as record:
        pack_run(runs["gru_b"], "t1", subs)
    (stale,) = [w for w in record if "previous package" in str(w.message)]
    assert stale.filename == __file__  # the caller's line, not kit's (r307)


def test_a_config_naming_another_file_is_not_called_a_rewritten_file(runs, workspace, tmp_path):
    """The drift note said the content of a file the run's config.toml newly names "has changed
    since", for a byte-identical copy the run never read (r307)."""
    from kit.ensemble import data_drift

    run = tmp_path / "runs" / "gru" / runs["gru"].name
    shutil.copytree(runs["gru"], run)
    copy = tmp_path / "valid-copy.parquet"
    shutil.copy(workspace / "data" / "valid.parquet", copy)
    config = run / "config.toml"
    config.write_text(config.read_text().replace(str(workspace / "data" / "valid.parquet"),
                                                 str(copy)))
    assert str(copy) in config.read_text()
    (note,) = data_drift(run)
    assert note == (f"{run}'s config.toml now names {copy}, not a file it trained or "
                    "validated on"), note
