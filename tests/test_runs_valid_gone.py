"""kit runs says when the file a run validated on is gone from its path: such a run was listed
with no word, and kit ensemble select and kit report then failed on it (left alone in r313)."""

from kit.reports import format_runs, list_runs
from tests.frames import small_spec
from tests.test_reports import make_run, write_data


def test_a_run_whose_validation_file_is_gone_is_noted(tmp_path):
    valid, spec_path = write_data(tmp_path / "data", small_spec())
    runs = tmp_path / "runs"
    run = make_run(runs, "exp", "r1", valid, spec_path)
    listed = list_runs(runs)
    assert "valid_gone" not in listed[0]
    assert "not found from here" not in format_runs(listed)
    valid.rename(valid.with_name("moved.parquet"))
    [row] = list_runs(runs)
    assert row["valid_gone"] == str(valid) and row.get("oracle_fraction") is None
    assert (f"note: {run}: the file it validated on, {valid}, is not found from here (moved or "
            "deleted): no oracle figures, and kit ensemble select and kit report") in \
        format_runs([row])
