import math
import re
import warnings

import numpy as np
import pytest

from kit.competition import load_spec
from kit.errors import DataError
from kit.metrics import (
    evaluate,
    mae,
    oracle_fraction,
    outputs_summary,
    r2,
    rmse,
    scored_truth,
    weighted_pearson,
)


def transcribed_weighted_pearson(y_true, y_pred):
    """The official formula written out term by term, with exact float sums."""
    y_pred = [min(max(float(p), -6.0), 6.0) for p in y_pred]
    y_true = [float(y) for y in y_true]
    w = [max(abs(y), 1e-8) for y in y_true]
    sw = math.fsum(w)
    mt = math.fsum(wi * y for wi, y in zip(w, y_true, strict=True)) / sw
    mp = math.fsum(wi * p for wi, p in zip(w, y_pred, strict=True)) / sw
    triples = zip(w, y_true, y_pred, strict=True)
    cov = math.fsum(wi * (y - mt) * (p - mp) for wi, y, p in triples) / sw
    vt = math.fsum(wi * (y - mt) ** 2 for wi, y in zip(w, y_true, strict=True)) / sw
    vp = math.fsum(wi * (p - mp) ** 2 for wi, p in zip(w, y_pred, strict=True)) / sw
    if vt <= 0 or vp <= 0:
        return 0.0
    return cov / math.sqrt(vt * vp)


@pytest.mark.parametrize("seed", range(5))
def test_weighted_pearson_matches_transcription_on_heavy_tails(seed):
    rng = np.random.default_rng(seed)
    y = rng.standard_t(2.5, 3000).astype(np.float32)
    p = (0.3 * y + rng.standard_t(3, 3000) * 2).astype(np.float32)  # many beyond the clip
    assert weighted_pearson(y, p) == pytest.approx(transcribed_weighted_pearson(y, p), abs=1e-12)


@pytest.mark.parametrize(
    "y, p, expected",
    [
        ([1.0, -2.0, 3.0], [0.5, 0.5, 0.5], 0.0),  # constant prediction
        ([2.0, 2.0, 2.0], [1.0, 2.0, 3.0], 0.0),  # constant target
        ([1.0, -2.0, 3.0], [10.0, 20.0, 30.0], 0.0),  # all clipped to 6: constant
        ([0.0, 0.0, 1.0], [0.0, 1.0, 2.0], None),  # zero targets get the 1e-8 weight floor
        ([1.0, -1.0, 2.0, -3.0], [np.inf, -np.inf, 1.0, -1.0], None),  # inf clipped
        ([5.0], [1.0], 0.0),  # one row: no variance
    ],
)
def test_weighted_pearson_edge_cases(y, p, expected):
    got = weighted_pearson(np.array(y), np.array(p))
    assert got == pytest.approx(transcribed_weighted_pearson(y, p), abs=1e-12)
    if expected is not None:
        assert got == expected


def test_weighted_pearson_weights_large_targets():
    y = np.array([10.0, 0.1, -0.1, -10.0])
    good_on_big = np.array([1.0, -1.0, 1.0, -1.0])
    good_on_small = np.array([0.0, 1.0, -1.0, 0.0])
    assert weighted_pearson(y, good_on_big) > weighted_pearson(y, good_on_small)


def test_weighted_pearson_accumulates_in_float64():
    # Small deviations around a large mean: float32 sums would lose most digits.
    rng = np.random.default_rng(1)
    y = (3 + 1e-3 * rng.standard_normal(200_000)).astype(np.float32)
    p = (y + 1e-3 * rng.standard_normal(200_000)).astype(np.float32)
    expected = transcribed_weighted_pearson(y, p)
    assert 0.5 < expected < 0.9
    assert weighted_pearson(y, p) == pytest.approx(expected, rel=1e-9)


def test_r2_matches_definition_and_sklearn_edge_cases():
    rng = np.random.default_rng(0)
    y = rng.standard_normal(500)
    p = y + rng.standard_normal(500) * 0.5
    ss_res = ((y - p) ** 2).sum()
    ss_tot = ((y - y.mean()) ** 2).sum()
    assert r2(y, p) == pytest.approx(1 - ss_res / ss_tot, abs=1e-12)
    assert r2([1.0, 1.0], [1.0, 1.0]) == 1.0
    assert r2([1.0, 1.0], [1.0, 2.0]) == 0.0
    assert np.isnan(r2([1.0], [1.0])) and np.isnan(r2([1.0], [2.0]))  # sklearn: < 2 samples
    assert r2(y, np.full_like(y, y.mean())) == pytest.approx(0.0, abs=1e-12)


def test_mae_rmse():
    assert mae([0, 0], [1, -3]) == 2.0
    assert rmse([0, 0], [3, 4]) == pytest.approx(math.sqrt(12.5))


def test_length_mismatch_and_empty_raise():
    with pytest.raises(DataError, match="3 values"):
        weighted_pearson(np.ones(3), np.ones(2))
    with pytest.raises(DataError, match="no scored rows"):
        r2([], [])


def test_evaluate_per_target_and_mean():
    spec = load_spec("predictorium")
    rng = np.random.default_rng(0)
    y = rng.standard_t(4, (400, 2))
    p = y * np.array([0.5, 0.1]) + rng.standard_normal((400, 2))
    report = evaluate(spec, y, p)
    assert list(report.per_target) == ["t0", "t1"]
    assert report.per_target["t0"] == weighted_pearson(y[:, 0], p[:, 0])
    assert report.score == pytest.approx(np.mean(list(report.per_target.values())))
    with pytest.raises(DataError, match=r"\(rows, 2\)"):
        evaluate(spec, y[:, :1], p[:, :1])


def test_evaluate_reports_mae_and_rmse_per_target():
    """The report's secondary errors are each the right one (mae held rmse's values); kit score
    --json shows them through MetricReport.to_dict."""
    spec = load_spec("predictorium")
    y = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    p = np.array([[1.0, 1.0], [-1.0, 1.0], [3.0, 1.0], [-3.0, 2.0]])
    report = evaluate(spec, y, p)
    assert report.mae == {"t0": 2.0, "t1": 0.25}  # mean |error|: (1+1+3+3)/4, 1/4
    assert report.rmse == {"t0": pytest.approx(math.sqrt(5.0)), "t1": 0.5}  # sqrt(20/4), sqrt(1/4)
    shown = report.to_dict()
    assert shown["mae"] == report.mae and shown["rmse"] == report.rmse and shown["rows"] == 4


def test_evaluate_next_state_uses_r2_over_features():
    spec = load_spec("rnn-challenge")
    rng = np.random.default_rng(0)
    y = rng.standard_normal((300, 32))
    p = 0.5 * y
    report = evaluate(spec, y, p)
    assert report.metric == "r2" and len(report.per_target) == 32
    assert report.score == pytest.approx(np.mean([r2(y[:, j], p[:, j]) for j in range(32)]))


def test_scored_truth_next_state_shifts_by_one_row():
    spec = load_spec("rnn-challenge")
    ids = np.array([0, 0, 0, 1, 1, 1])
    need = np.array([0, 1, 0, 1, 1, 0])
    feats = np.arange(6 * 32, dtype=float).reshape(6, 32)
    truth = scored_truth(ids, need, feats, None, spec)
    np.testing.assert_array_equal(truth, feats[[2, 4, 5]])
    with pytest.raises(DataError, match="last row of its sequence"):
        scored_truth(ids, np.array([0, 0, 1, 0, 0, 0]), feats, None, spec)


def test_scored_truth_next_state_refuses_the_last_row_of_the_file():
    """The file's very last row has no next row at all: a DataError naming it, not an
    IndexError from reading one row past the end."""
    spec = load_spec("rnn-challenge")
    ids = np.array([0, 0, 1, 1])
    feats = np.arange(4 * 32, dtype=float).reshape(4, 32)
    with pytest.raises(DataError, match=r"row 3 \(seq 1\) needs a prediction but is the last"):
        scored_truth(ids, np.array([1, 0, 0, 1]), feats, None, spec)


def test_scored_truth_targets_protocol_needs_labels():
    spec = load_spec("predictorium")
    with pytest.raises(DataError, match="labelled"):
        scored_truth(np.zeros(2), np.ones(2), np.zeros((2, 32)), None, spec)


def test_oracle_fraction_reads_one_for_the_oracle_and_less_for_worse_either_direction():
    assert oracle_fraction(0.25, 0.5, higher_is_better=True) == 0.5
    assert oracle_fraction(2.0, 1.0, higher_is_better=False) == 0.5  # twice the oracle's error
    assert oracle_fraction(1.0, 1.0, higher_is_better=False) == 1.0
    assert oracle_fraction(0.0, 0.0, higher_is_better=False) == 1.0
    assert math.isnan(oracle_fraction(0.3, 0.0, higher_is_better=True))
    assert math.isnan(oracle_fraction(0.0, 0.5, higher_is_better=False))


def test_weighted_pearson_of_tiny_values_does_not_underflow():
    # var_y * var_p is below the smallest double here; each root on its own is not
    rng = np.random.default_rng(0)
    y = rng.standard_t(3, 2000) * 1e-80
    p = (0.5 * y / 1e-80 + rng.standard_normal(2000)) * 1e-85
    expected = np.corrcoef(y * 1e80, p * 1e85)[0, 1]  # every weight is the 1e-8 floor: plain r
    assert weighted_pearson(y, p) == pytest.approx(expected, rel=1e-9)


def test_a_spec_clip_applies_to_every_metric():
    from kit.competition import spec_from_dict
    from kit.metrics import metric_value

    rng = np.random.default_rng(1)
    y, p = rng.standard_normal(500), rng.standard_normal(500) * 4
    for name, plain in (("r2", r2), ("mae", mae), ("rmse", rmse)):
        spec = spec_from_dict({"name": "c", "features": ["a"], "targets": ["t"],
                               "metric": {"name": name, "clip": [-1.0, 1.0]}})
        assert metric_value(spec, y, p) == pytest.approx(plain(y, np.clip(p, -1, 1)), rel=1e-12)
        assert metric_value(spec, y, p) != pytest.approx(plain(y, p), rel=1e-6)


def test_outputs_summary_skips_a_nan_output():
    """One output scored NaN (a constant or NaN truth column) must not make the printed least
    and greatest scores nan too."""
    summary = outputs_summary({"a": 0.5, "b": float("nan"), "c": -0.25, "d": 0.125})
    assert summary == "4 outputs, 1 nan (b), min -0.2500, max 0.5000"  # named (r280)
    many = {str(i): float("nan") if i % 4 == 0 else i / 10 for i in range(32)}
    assert outputs_summary(many) == "32 outputs, 8 nan (0, 4, 8, 12, 16, 20, ...), min 0.1000, " \
        "max 3.1000"


def test_outputs_summary_of_all_nan_outputs_prints_nan_without_a_warning():
    """Every output NaN (a NaN prediction in each): nan, not numpy's "All-NaN slice" warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = outputs_summary({"a": float("nan"), "b": float("nan")})
    assert summary == "2 outputs, all nan"


def _one_output_spec(metric: str, clip: list[float] | None = None):
    from kit.competition import spec_from_dict

    raw = {"name": "c", "features": ["a"], "targets": ["t"], "metric": {"name": metric}}
    if clip is not None:
        raw["metric"]["clip"] = clip
    return spec_from_dict(raw)


@pytest.mark.parametrize("name, expected", [
    ("mae", 3.75 / 4),  # |errors| 0.5, 1, 0.25, 2 after the clip
    ("rmse", math.sqrt(5.3125 / 4)),  # squares 0.25, 1, 0.0625, 4
    ("r2", -10 / 7),  # 1 - 5.3125 / 2.1875 (the truth's mean is 0.125)
])
def test_an_asymmetric_spec_clip_applies_each_bound(name, expected):
    """clip [-2, 0.5]: p [3, -3, 0.25, -1.5] is scored as [0.5, -2, 0.25, -1.5]; the upper bound
    mirrored (-0.5) or the lower one alone would give other values."""
    from kit.metrics import metric_value

    y = np.array([1.0, -1.0, 0.0, 0.5])
    p = np.array([3.0, -3.0, 0.25, -1.5])
    assert metric_value(_one_output_spec(name, [-2.0, 0.5]), y, p) == pytest.approx(
        expected, rel=1e-12)


def test_a_nan_output_makes_the_score_nan():
    """docs/scoring.md: one NaN output makes the mean NaN; it is not skipped."""
    spec = load_spec("predictorium")
    y = np.array([[1.0, -1.0], [2.0, 0.5], [-1.0, 2.0]])
    p = y.copy()
    p[1, 0] = np.nan
    report = evaluate(spec, y, p)
    assert math.isnan(report.per_target["t0"]) and report.per_target["t1"] == pytest.approx(1.0)
    assert math.isnan(report.score)


def test_evaluate_of_inf_truth_is_nan_without_a_numpy_warning():
    """inf - inf in r2's sums: the answer is NaN (callers say why), not a RuntimeWarning."""
    spec = _one_output_spec("r2")
    y = np.array([[1.0], [np.inf], [2.0]])
    p = np.array([[1.0], [0.0], [2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = evaluate(spec, y, p)
    assert math.isnan(report.score) and math.isnan(report.per_target["t"])


@pytest.mark.parametrize("truth, pred", [
    ((4, 2), (4, 3)),  # one column too many: was scored on the first two
    ((4, 2), (3, 2)),
    ((4,), (4,)),  # 1-D: an IndexError before
])
def test_evaluate_refuses_shapes_naming_both(truth, pred):
    spec = load_spec("predictorium")
    shapes = rf"\(rows, 2\); got {re.escape(str(truth))} and {re.escape(str(pred))}"
    with pytest.raises(DataError, match=shapes):
        evaluate(spec, np.zeros(truth), np.zeros(pred))


def test_scored_truth_is_float64_whatever_the_targets():
    """All sums run in float64: 0.1 and 1/3 must reach the metric unrounded to float32."""
    spec = load_spec("predictorium")
    targets = np.array([[0.1, 1 / 3], [0.2, 2 / 3], [0.7, 1e-300]])
    truth = scored_truth(np.zeros(3), np.array([True, False, True]), np.zeros((3, 32)),
                         targets, spec)
    assert truth.dtype == np.float64
    np.testing.assert_array_equal(truth, targets[[0, 2]])


def test_scored_truth_reads_an_integer_need_as_a_mask():
    """need 0/1 as ints picks rows 1 and 2; taken as indices it gave rows 0, 1, 1."""
    spec = load_spec("predictorium")
    targets = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    truth = scored_truth(np.zeros(3), np.array([0, 1, 1]), np.zeros((3, 32)), targets, spec)
    np.testing.assert_array_equal(truth, targets[[1, 2]])


def test_scored_truth_next_state_names_the_first_bad_row():
    """Row 0 is its sequence's last row; row 1, after it, is fine: the error names row 0."""
    spec = load_spec("rnn-challenge")
    feats = np.zeros((3, 32))
    with pytest.raises(DataError, match=r"row 0 \(seq 0\) needs a prediction but is the last"):
        scored_truth(np.array([0, 1, 1]), np.array([1, 1, 0]), feats, None, spec)


def test_oracle_fraction_of_a_negative_oracle_is_the_ratio():
    """NaN only for an oracle of 0: a negative oracle score (r2 can be) still divides."""
    assert oracle_fraction(0.1, -0.2, higher_is_better=True) == -0.5


@pytest.mark.parametrize("outputs, summarised", [(6, False), (7, True)])
def test_score_lines_summarise_past_six_outputs(outputs, summarised):
    """docs/decisions.md: past SHOWN_OUTPUTS (6) outputs kit score prints min and max, up to
    it each output's figure."""
    from kit.metrics import MetricReport
    from kit.scoring.score import ScoreResult

    per = {f"o{j}": j / 10 for j in range(outputs)}
    report = MetricReport("r2", per, float(np.mean(list(per.values()))))
    text = ScoreResult("sub", "data", "spec", report, rows=10, scored_rows=5, sequences=1,
                       init_s=0.0, loop_s=0.0, rows_per_s=1.0, us_per_row=1.0, projected_s=1.0,
                       limit_s=2.0, projected_fraction=0.5, cpu=None).format()
    assert (f"{outputs} outputs, min 0.0000, max {(outputs - 1) / 10:.4f}" in text) == summarised
    assert ("o5 0.5" in text) != summarised
