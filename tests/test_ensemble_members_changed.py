"""A package whose models are not the ones the selection scored (r294): `--force` past a
retrained or swapped-in member says so at pack and in the manifest, and a fold run dropped
from an out-of-fold member's runs (the others took its weight) is refused without --force."""

import shutil
import tomllib
import warnings
from pathlib import Path

import pytest
import tomli_w

from kit.ensemble import checkpoint_digest, format_selection, read_ensemble, select_ensemble
from kit.export.pack import PackError, pack_ensemble


def _forced(path: Path, name: str, out: Path):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        packed = pack_ensemble(path, name, out, force=True)
    return packed, [str(w.message) for w in record if "packed as --force asks" in str(w.message)]


def test_a_pack_forced_past_a_retrained_member_says_its_scores_are_not_the_selections(
        runs, tmp_path):
    member = tmp_path / "runs" / "gru_b" / runs["gru_b"].name
    shutil.copytree(runs["gru_b"], member)
    _, path, _ = select_ensemble([runs["gru"], member], iters=4, init_best=2,
                                 out=tmp_path / "e.toml")  # both picked
    untouched = pack_ensemble(path, "same", tmp_path / "subs")
    assert untouched.manifest["ensemble"]["members_changed"] == []
    shutil.copy(runs["gru"] / "best.pt", member / "best.pt")  # "trained again"
    packed, said = _forced(path, "forced", tmp_path / "subs")
    (changed,) = packed.manifest["ensemble"]["members_changed"]
    assert "best.pt changed since the selection (the run was trained again)" in changed
    assert len(said) == 1 and changed in said[0] and "recorded scores are not this " \
        "package's" in said[0], said


def test_a_fold_run_dropped_from_a_members_runs_is_refused_unless_forced(runs, tmp_path):
    """As a selection writes an out-of-fold member: its fold runs share its weight, each
    recorded in checkpoints. With one deleted from runs by hand the other took the whole
    weight (0.25 where each had 0.125), packed without a word."""
    folds = [runs["gru"], runs["gru_b"]]
    member = {"name": "g-oof", "runs": [str(r.resolve()) for r in folds],
              "weights": [1.0, 1.0],
              "checkpoints": {str(r.resolve()): checkpoint_digest(r) for r in folds}}
    whole = tmp_path / "whole.toml"
    whole.write_text(tomli_w.dumps({"members": [member]}))
    assert pack_ensemble(whole, "whole", tmp_path / "subs").manifest["ensemble"][
        "members_changed"] == []
    dropped = tmp_path / "dropped.toml"
    dropped.write_text(tomli_w.dumps({"members": [{**member, "runs": member["runs"][:1]}]}))
    with pytest.raises(PackError, match=r"member 'g-oof': 1 of the 2 runs the selection chose "
                                        r"are not in its runs \(.*\): the others take their "
                                        r"weight, on predictions the selection never scored; "
                                        r"put them back, select again, or --force"):
        pack_ensemble(dropped, "dropped", tmp_path / "subs")
    packed, said = _forced(dropped, "dropped", tmp_path / "subs")
    assert packed.manifest["members"][0]["weights"] == [1.0, 1.0]
    (changed,) = packed.manifest["ensemble"]["members_changed"]
    assert f"are not in its runs ({runs['gru_b'].resolve()})" in changed  # the folder
    assert len(said) == 1


def test_a_run_swapped_in_and_forced_is_recorded(runs, tmp_path):
    _, path, _ = select_ensemble([runs["gru"], runs["gru_b"]], iters=4, init_best=2,
                                 out=tmp_path / "e.toml")
    shutil.copy(path, tmp_path / "e.toml.orig")
    doc = tomllib.loads(path.read_text())
    picked = next(m for m in doc["members"] if any(m["weights"]))
    picked["runs"] = [str(runs["lstm"])]
    path.write_text(tomli_w.dumps(doc))
    with pytest.raises(PackError, match="is not a run the selection chose"):
        pack_ensemble(path, "swapped", tmp_path / "subs")
    # kit report on the file says its scores are of other models (it said nothing)
    assert f"the runs of {picked['name']} are not the ones the selection chose" in \
        format_selection(read_ensemble(path))
    assert "are not the ones" not in format_selection(read_ensemble(tmp_path / "e.toml.orig"))
    packed, said = _forced(path, "swapped", tmp_path / "subs")
    # one swap, said once (its chosen run was also reported as dropped: r297)
    (changed,) = packed.manifest["ensemble"]["members_changed"]
    assert f"{runs['lstm']} is not a run the selection chose" in changed
    assert len(said) == 1
