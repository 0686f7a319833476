"""r317: a project upgraded from a kit before r311, as the ensemble commands and kit runs see
its runs validated on their training rows, its out-of-fold groups missing a fold run, and its
ensemble files handed to select."""

import shutil

import pytest

from kit.ensemble import (
    EnsembleError,
    checkpoint_digest,
    expand_candidates,
    read_ensemble,
    select_ensemble,
    write_ensemble,
)
from kit.reports import format_runs, list_runs, write_ensemble_report
from tests.test_cv_r311 import _copy_group, _leaky_copy, trained  # noqa: F401 (a fixture)


def _old_selection(group, leak, out):
    """An ensemble file as a kit before r311 wrote it over an out-of-fold group and a run
    validated on its training rows: each weighted 0.5, as the picks say."""
    doc, _, _ = select_ensemble([group], iters=3, out=out.with_name("base.toml"))
    k = len(doc["ensemble"]["targets"])
    first = doc["members"][0]
    first.update(weights=[0.5] * k, weight=0.5, picks=[1] * k)
    doc["members"].append({
        "name": f"gru/{leak.name}", "path": str(leak), "runs": [str(leak)],
        "weights": [0.5] * k, "weight": 0.5, "picks": [1] * k,
        "checkpoints": {str(leak): checkpoint_digest(leak)},
        "score": first["score"], "per_target": first["per_target"]})
    doc["ensemble"].update(picks_total=[2] * k, candidates=2)
    return write_ensemble(doc, out)


def test_an_old_selection_of_in_sample_members_is_said_by_report_and_pack(trained, tmp_path):  # noqa: F811
    """r317 finding 1: kit report said only "Scored on 7,208 rows of train.parquet" and kit
    pack --ensemble packed silently an old selection whose member was validated on its
    training rows: its weights were chosen on in-sample predictions."""
    leak = _leaky_copy(trained["plain"], trained["oof6"], tmp_path / "gru")
    path = _old_selection(trained["oof5"], leak, tmp_path / "leak2.toml")
    said = (rf"member\(s\) validated on the rows they trained on .*gru/{leak.name} \(data.valid "
            r".* is data.train .*the same path.*\): the weights were chosen on their in-sample "
            r"predictions.*select again over held-out or out-of-fold runs")
    with pytest.warns(RuntimeWarning, match=said):
        text = write_ensemble_report(path, tmp_path / "report").read_text()
    assert f"gru/{leak.name}" in text and "in-sample predictions" in text, text
    from kit.ensemble import in_sample_members
    from kit.export.pack import pack_ensemble

    with pytest.warns(RuntimeWarning, match=said):  # kit pack --ensemble says it too
        pack_ensemble(path, "leak2", tmp_path / "subs", budget=False)
    assert in_sample_members(read_ensemble(tmp_path / "base.toml")) == []  # held out: nothing


def test_runs_marks_in_sample_runs_and_groups_missing_a_fold_run(trained, tmp_path):  # noqa: F811
    """r317 finding 5: kit runs listed an old run validated on its training rows as
    "train.parquet" with its score, and a group one of whose fold runs is gone as a whole
    "oof 2 folds" row; select refuses both."""
    runs_dir = tmp_path / "runs"
    leak = _leaky_copy(trained["plain"], trained["oof6"], runs_dir / "gru")
    group = _copy_group(trained["oof5"], runs_dir / "gru")
    fold = next((runs_dir / "gru").glob("*-s5-fold2of2"))
    shutil.rmtree(fold)
    rows = {row["run_id"]: row for row in list_runs(runs_dir)}
    assert rows[leak.name]["validated"] == "train.parquet (its training rows)"
    assert "the same path" in rows[leak.name]["in_sample"]
    assert rows[group.name]["missing_fold_runs"] == [str(fold)]
    assert "in_sample" not in rows[group.name] and "missing_fold_runs" not in rows[leak.name]
    table = format_runs(list(rows.values()))
    assert "train.parquet (its training rows)" in table, table
    assert f"note: {leak}: validated on the rows it trained on" in table, table
    assert (f"note: out-of-fold group {group} lists fold run {fold}, which is missing" in table
            and "kit ensemble select refuses it" in table), table


def test_a_folder_leaves_out_an_in_sample_run_and_refuses_it_named(trained, tmp_path):  # noqa: F811
    """r317 finding 6: one old run validated on its training rows refused the whole folder's
    selection, where ablate runs and broken groups are left out with a warning."""
    exp = tmp_path / "gru"
    group = _copy_group(trained["oof5"], exp)
    leak = _leaky_copy(trained["plain"], trained["oof6"], exp)
    with pytest.warns(UserWarning, match=rf"{exp}: left out 1 run\(s\) validated on the rows "
                      rf"they trained on .*{leak.name} \(score .*the same path.*in-sample"):
        got = expand_candidates([exp])
    assert got == [group.resolve()]
    with pytest.raises(EnsembleError, match=rf"{leak}: validated on the rows it trained on"):
        select_ensemble([leak], iters=3, out=tmp_path / "e.toml")  # named: refused
    shutil.rmtree(group)
    for fold in exp.glob("*-fold*"):
        shutil.rmtree(fold)
    with pytest.raises(EnsembleError, match=rf"{leak}: validated on the rows it trained on"):
        # nothing else left: refused, as named
        expand_candidates([exp])


def test_an_ensemble_file_given_to_select_names_its_members_folders(trained, tmp_path):  # noqa: F811
    """r317 finding 4: "a file; pass its run folder (runs/ensembles)" sent the user to a
    folder of ensemble files, where select said "no finished runs inside"."""
    doc, path, _ = select_ensemble([trained["oof5"]], iters=3, out=tmp_path / "val.toml")
    member = doc["members"][0]["path"]
    with pytest.raises(EnsembleError, match=rf"{path}: an ensemble file \(kit ensemble select "
                       rf"wrote it\), not a run: to select again over its members, pass their "
                       rf"run folders: {member}; to pack it, kit pack --ensemble {path}; to "
                       rf"read it, kit report {path}"):
        select_ensemble([path], iters=3)
    (tmp_path / "notes.toml").write_text("x = 1\n")  # another TOML: as any file
    with pytest.raises(EnsembleError, match=r"a file; pass its run folder"):
        expand_candidates([tmp_path / "notes.toml"])
