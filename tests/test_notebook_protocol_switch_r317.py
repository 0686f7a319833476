"""A notebook written again with the rows protocol says the keep columns it drops (r317)."""

from __future__ import annotations

import tests.test_notebook as notebook_tests
from kit.export.notebook import kept_note, write_notebook

package = notebook_tests.package  # its fixture: the GRU run packed as `nb`


def test_switching_to_rows_says_the_keep_columns_it_drops(package, tmp_path):
    out = tmp_path / "kg"
    write_notebook(package.zip_path, out, owner="me", protocol="batch",
                   keep_columns=["row_id"], rename="t0=responder_6")
    rows = write_notebook(package.zip_path, out, owner="me", protocol="rows")
    said = kept_note(rows)
    assert ("keep columns none (row_id dropped: the rows protocol takes none; give "
            "--keep-columns again with --protocol batch)") in said, said
    assert "rename t0=responder_6" in said, said
    back = write_notebook(package.zip_path, out, owner="me", protocol="batch")
    assert "keep columns" not in kept_note(back)  # nothing kept to say: none on record
