"""Pins of kit/scoring/runner.py (the child of `kit score`) that a mutation audit found loose.

Most call the runner's functions in this process; a scorer run only where the behaviour lives
in the child (its signal handler, its import and loop clauses, the next-state truth)."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

import kit.scoring.runner as runner
from kit.errors import SubmissionError
from tests.test_scoring import NEXT_STATE, _timed_out, score, write_data, write_sub


@pytest.fixture(autouse=True)
def numpy_in_runner(monkeypatch):
    """The runner imports numpy as a global in run() (after pinning its CPU)."""
    monkeypatch.setattr(runner, "np", np, raising=False)


def rows(need: list[bool], features: int = 4) -> np.ndarray:
    """Float64 rows as the runner holds them: seq, step, need flag, then the features."""
    values = np.zeros((len(need), 3 + features))
    values[:, 1] = np.arange(len(need))
    values[:, 2] = need
    values[:, 3:] = np.arange(len(need) * features).reshape(len(need), features)
    return values


# --- the timeout's question (SIGUSR1) -------------------------------------------------------


@pytest.mark.parametrize("init", ["import io, sys; sys.stderr = io.StringIO()",
                                  "import sys; sys.stderr.close()"])
def test_a_timeout_names_the_row_when_the_submission_replaced_or_closed_stderr(tmp_path,
                                                                                init):
    """faulthandler wrote to the current sys.stderr and raised in the handler there (a
    StringIO has no fd, a closed file none either) before the H line: no row, no stack."""
    said, line = _timed_out(tmp_path, 1.5, init=init)
    assert "predict() was running on seq 0, step 3 (row 3)" in said
    assert f'solution.py", line {line} in predict' in said


# --- reused predictions ---------------------------------------------------------------------

OUT_VIEW = """\
    import numpy as np


    class PredictionModel:
        def __init__(self):
            self.out = np.zeros((1, 2))  # an output buffer, written in place each row

        def predict(self, dp):
            np.multiply(np.asarray(dp.state[:2], dtype=float)[None], 1.0, out=self.out)
            return self.out[0] if dp.need_prediction else None  # a fresh view of it each row
    """


def test_a_fresh_view_of_one_buffer_each_row_is_warned_as_reused(tmp_path):
    data, _ = write_data(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = score(write_sub(tmp_path, OUT_VIEW), data)
    said = ("returned an object it had returned before on 44 scored row(s), "
            "the first at seq 0 step 6")
    assert any(said in note for note in result.warnings)
    assert any(said in str(w.message) for w in caught)
    assert result.score == 0.0 and (result.predictions == result.predictions[-1]).all()
    # what to do, and when it is no fault: a table that predict() only reads
    assert any("return a new array each row, e.g. buffer.copy(); an object or table that "
               "predict() only reads is scored as returned)" in note for note in result.warnings)


def test_reused_objects_finds_views_of_one_memory_and_not_distinct_memory():
    out = np.zeros((1, 2))
    assert runner.reused_objects([out[0] for _ in range(5)]) == (4, 1)
    assert runner.reused_objects([out, out[0], out[:][0]]) == (2, 1)  # the buffer and views
    ring = np.zeros((3, 2))  # views of one buffer, one row of it after another
    assert runner.reused_objects([ring[i % 3] for i in range(7)]) == (4, 3)
    # distinct memory: fresh arrays, views of fresh ones, one table made once, the rows
    assert runner.reused_objects([np.zeros(2) for _ in range(5)]) == (0, None)
    assert runner.reused_objects([np.zeros((1, 9, 2))[0, -1] for _ in range(5)]) == (0, None)
    table = np.zeros((10, 2))
    assert runner.reused_objects([table[i] for i in range(10)]) == (0, None)
    values = rows([True] * 6)
    assert runner.reused_objects([r[3:5] for r in values], values) == (0, None)
    # the same object still counts, of any type
    same = [1.0, 2.0]
    assert runner.reused_objects([[0.0, 0.0], same, same, same]) == (2, 2)


def test_views_of_one_torch_buffer_are_reused_and_fresh_tensors_not():
    torch = pytest.importorskip("torch")
    out = torch.zeros(1, 2)
    assert runner.reused_objects([out[0] for _ in range(5)]) == (4, 1)
    assert runner.reused_objects([torch.zeros(2) for _ in range(5)]) == (0, None)
    table = torch.zeros(10, 2)
    assert runner.reused_objects([table[i] for i in range(10)]) == (0, None)


# --- what the loop and the checks name ------------------------------------------------------


def test_sys_exit_at_import_is_named(tmp_path):
    data, _ = write_data(tmp_path)
    sub = write_sub(tmp_path, "import sys\nsys.exit(2)\n")
    with pytest.raises(SubmissionError, match="importing solution.py raised SystemExit"):
        score(sub, data)


def test_sys_exit_in_predict_is_named_with_its_row(tmp_path):
    data, _ = write_data(tmp_path)
    sub = write_sub(tmp_path, """\
        import sys

        import numpy as np


        class PredictionModel:
            def predict(self, dp):
                if dp.seq_ix == 1 and dp.step_in_seq == 7:
                    sys.exit(1)
                return np.zeros(2) if dp.need_prediction else None
        """)
    with pytest.raises(SubmissionError, match=r"seq 1, step 7.*predict\(\) raised SystemExit"):
        score(sub, data)


def test_text_written_into_an_object_state_is_refused_for_the_next_state_truth(tmp_path):
    data, _ = write_data(tmp_path, NEXT_STATE)  # a Boolean need flag: object rows
    sub = write_sub(tmp_path, """\
        import numpy as np


        class PredictionModel:
            def predict(self, dp):
                dp.state[0] = "x"  # an object row takes text
                return np.zeros(4) if dp.need_prediction else None
        """)
    with pytest.raises(SubmissionError, match=r"predict\(\) wrote values that are not numbers "
                       r"into dp.state \(ValueError.*copy the state before changing it"):
        score(sub, data, NEXT_STATE)


def test_none_inside_an_object_prediction_is_refused_naming_its_row():
    values = rows([False, True, True, True])
    preds = [np.array([0.0, 1.0]), np.array([None, 0.0], dtype=object), np.zeros(2)]
    with pytest.raises(runner.Failure) as info:
        runner.collect(preds, 2, values)
    assert "stack into object values" in info.value.info["message"]
    assert (info.value.info["row"], info.value.info["step"]) == (2, 2.0)


def test_bool_predictions_are_taken_as_np_clip_takes_them():
    flags = np.array([True, False])
    assert runner._numbers(flags)
    np.clip(np.array([flags, flags]), -6, 6)  # (the official metric's clip takes them)
    got = runner.collect([flags, flags.copy()], 2, rows([True, True]))
    np.testing.assert_array_equal(got, [[1.0, 0.0], [1.0, 0.0]])


def test_no_scored_row_collects_k_columns():
    assert runner.collect([], 2).shape == (0, 2)


def test_contract_messages_in_full():
    values = rows([False, True])
    none = runner.contract_info(values, values[1], None, 2)["message"]
    assert none == ("predict() returned None on a row with need_prediction = True; it must "
                    "return an array of shape (2,)")
    extra = runner.contract_info(values, values[0], np.zeros(2), 2)["message"]
    assert extra.startswith("predict() returned ndarray of shape (2,) on a row with "
                            "need_prediction = False")


def test_an_object_whose_repr_raises_is_described_not_raised():
    class Unprintable:
        def __repr__(self):
            raise RuntimeError("no")

    assert runner.describe(Unprintable()) == "Unprintable (it cannot be printed)"


def test_int_ids_beside_an_object_column_arrive_as_python_ints():
    values = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, np.nan]])
    typed = runner.pandas_rows(values, ["int64", "int64", "object"])
    assert typed.dtype == object and type(typed[0, 0]) is int and type(typed[1, 1]) is int


def test_an_optional_import_that_failed_is_no_needed_package(tmp_path):
    log = runner.ImportLog()
    log.own = str(tmp_path) + "/"
    log.names = {"numpy", "not_there_xyz_259"}
    assert "numpy" in sys.modules and "not_there_xyz_259" not in sys.modules
    assert log.third_party() == ["numpy"]


# --- memory kept per scored row -------------------------------------------------------------


def test_allocator_size_classes():
    assert [runner._in_allocator(n) for n in (0, 1, 16, 32, 33, 48, 112, 113)] == [
        32, 32, 32, 32, 48, 48, 112, 128]


def test_the_documented_152_and_120_bytes_a_scored_row():
    """docs/scoring.md: a fresh 2-float array and its pointer, 152 bytes; the label view, 120
    (numpy 2's 112-byte array header; another numpy's header moves both by as much)."""
    values = rows([True] * 10, features=35)
    preds = [np.zeros(2) for _ in range(10)]
    kept, labels = runner.kept_bytes(preds, values)
    header = max(32, -(-sys.getsizeof(np.empty(0)) // 16) * 16)  # in its 16-byte class
    # a pointer, the header, 16 bytes of data in the 32-byte class; a pointer and the header
    assert (kept, labels) == (10 * (8 + header + 32), 10 * (8 + header))
    if sys.getsizeof(np.empty(0)) == 112:  # the figures the docs give
        assert (kept, labels) == (10 * 152, 10 * 120)


def test_a_table_made_once_is_no_cost_per_row():
    table = np.zeros((10_000, 2))
    preds = [table[i] for i in range(45)]
    kept, _ = runner.kept_bytes(preds, rows([True] * 45))
    assert kept == 45 * runner._own_bytes(preds[0]) and kept / 45 < 150


def test_one_scored_row_counts_what_its_view_keeps_alive():
    kept, _ = runner.kept_bytes([np.zeros((1, 200, 2))[0, -1]], rows([True]))
    assert kept >= 3200


def test_a_view_of_a_memoryview_counts_the_buffer():
    preds = [np.frombuffer(memoryview(bytearray(3200)))[:2] for _ in range(20)]
    kept, _ = runner.kept_bytes(preds, rows([True] * 20))
    assert kept >= 20 * 3200


def test_own_bytes_are_averaged_over_the_whole_run():
    preds = [np.zeros(2) for _ in range(500)] + [np.zeros(200) for _ in range(500)]
    mean = (runner._own_bytes(preds[0]) + runner._own_bytes(preds[-1])) / 2
    kept, _ = runner.kept_bytes(preds, rows([True] * 1000))
    assert kept / 1000 == pytest.approx(mean, rel=0.05)



def test_a_table_read_by_step_is_not_reused_but_a_buffer_in_one_sequence_is():
    """A per-step table (`table[step]`, a common baseline) returns the same memory at the same
    step of every sequence: the predictions are right, and it is no reuse (r261). Memory a
    sequence returns twice is (a buffer written in place, a ring of a few), on every row after
    its first, in any sequence."""
    values = rows([True] * 12)
    values[:, 0] = np.repeat([7.0, 8.0, 9.0], 4)  # three sequences of four scored rows
    table = np.arange(8.0).reshape(4, 2)
    assert runner.reused_objects([table[i % 4] for i in range(12)], values) == (0, None)
    out = np.zeros((1, 2))
    assert runner.reused_objects([out[0] for _ in range(12)], values) == (11, 1)
    ring = np.zeros((2, 2))
    assert runner.reused_objects([ring[i % 2] for i in range(12)], values) == (10, 2)
    # without the rows' sequence ids, one sequence: the table's repeats count
    assert runner.reused_objects([table[i % 4] for i in range(12)]) == (8, 4)
