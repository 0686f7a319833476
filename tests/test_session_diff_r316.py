"""Fixes from the review of the twenty-ninth session's diff (r316)."""

from __future__ import annotations

import shutil

import tests.test_notebook as notebook_tests
from kit.export.notebook import write_notebook
from tests.test_loss_metric_r314 import note_for, project  # noqa: F401 (a fixture)
from tests.test_notebook_r310 import _settings

package = notebook_tests.package  # its fixture: the GRU run packed as `nb`


def test_a_dataset_folder_written_into_another_packages_out_keeps_nothing_of_it(package,
                                                                                 tmp_path):
    """`kit notebook ALPHA-kaggle/dataset --out BETA-kaggle` took beta's notebook's title,
    competition and protocol (and so its kernel id) for alpha's package."""
    alpha, beta = tmp_path / "alpha", tmp_path / "beta"
    shutil.copytree(package.folder, alpha)
    shutil.copytree(package.folder, beta)
    write_notebook(alpha, tmp_path / "alpha-kaggle", owner="me", protocol="batch",
                   keep_columns=["row_id"], title="Alpha notebook")
    write_notebook(beta, tmp_path / "beta-kaggle", owner="me", title="Beta notebook",
                   competition="comp-b", rename="t0=responder_6")
    written = write_notebook(tmp_path / "alpha-kaggle/dataset", tmp_path / "beta-kaggle",
                             owner="me")
    assert written["kept"] == {}, written["kept"]
    got = _settings(tmp_path / "beta-kaggle")
    assert got["kernel"]["id"] != "me/beta-notebook", got["kernel"]
    assert got["kernel"]["competition_sources"] == []
    assert got["recorded"]["rename"] == {}
    # its own OUT again: alpha's options kept, as before
    again = write_notebook(tmp_path / "alpha-kaggle/dataset", tmp_path / "alpha-kaggle",
                           owner="me")
    assert again["protocol"] == "batch" and again["kept"]["keep columns"] == "row_id"


def test_a_dotted_loss_term_override_keeps_the_note_of_the_terms_it_leaves(project):  # noqa: F811
    """`loss.terms.mse=1.0` merges into base's wmse and pearson, which still train: the
    note stayed silent as for `loss.terms={...}`."""
    merged = note_for("gru_base", ["spec=rnn-challenge", "loss.terms.mse=1.0"])
    assert merged is not None and "(wmse, pearson)" in merged, merged
    assert note_for("gru_base", ["spec=rnn-challenge", "loss.terms.wmse=0",
                                 "loss.terms.pearson=0", "loss.terms.mse=1.0"]) is None
    assert note_for("gru_base", ["spec=rnn-challenge", "loss.terms={mse=1.0}"]) is None
