"""r300's review of model options: a width of 1 under a LayerNorm (a constant prediction) is
refused and a budget never solves to it; parity says when the model's own float32 rounding, not
the package, exceeds the tolerance; the run report shows every model setting."""

import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch

from kit import parity
from kit.competition import load_spec
from kit.export.pack import pack_run
from kit.models import ModelConfigError, build_model, count_params, model_values, solve_width
from kit.parity import Tolerance, float32_advice, paths_agree, run_parity
from kit.reports import write_report
from tests.conftest import raw_gru_run
from tests.test_reports import make_run, small_spec, write_data
from tests.test_train import tiny_project

# --- 1. a width of 1 under a LayerNorm ------------------------------------------------------

NORMED_WIDTH_ONE = [
    ({"type": "tcn", "channels": 1}, "channels"),
    ({"type": "ssm", "d_model": 1}, "d_model"),
    ({"type": "transformer", "d_model": 1, "n_heads": 1}, "d_model"),
    ({"type": "patchtst", "d_model": 1, "n_heads": 1, "window": 4, "patch_len": 2}, "d_model"),
    ({"type": "gru", "hidden": 1, "layer_norm": True}, "hidden"),
    ({"type": "lstm", "hidden": 1, "layer_norm": True}, "hidden"),
    ({"type": "attention_gru", "hidden": 1, "layer_norm": True}, "hidden"),
]


@pytest.mark.parametrize(("config", "key"), NORMED_WIDTH_ONE, ids=lambda v: str(v)[:40])
def test_a_width_of_one_under_a_layer_norm_is_refused_naming_the_setting(config, key):
    """LayerNorm over one value outputs its bias: every prediction the same, score 0."""
    for check in (model_values, lambda c: build_model(c, 5, 2)):
        with pytest.raises(ModelConfigError) as caught:
            check(config)
        text = str(caught.value)
        assert text.startswith(f"model.{key} = 1"), text
        assert "LayerNorm over one" in text and "outputs a constant" in text
        assert "use >= 2" in text
        assert f"model.{key}" in caught.value.settings  # a sweep judges the combination
    if key == "hidden":
        assert "model.layer_norm" in caught.value.settings and "layer_norm = false" in text


def test_the_refused_width_did_predict_a_constant_and_two_does_not():
    """Why it is refused: channels 1 gives the same output whatever the input."""
    torch.manual_seed(0)
    x = torch.randn(3, 20, 5)
    for channels, constant in ((1, True), (2, False)):
        model = _unchecked("tcn", {"channels": channels}, 5, 2)
        with torch.no_grad():
            model.norm.bias.normal_()
            y, _ = model(x, model.init_state(3))
        assert bool(y.std(dim=(0, 1)).max() < 1e-6) == constant


def _unchecked(kind: str, values: dict, n_in: int, n_out: int):
    from kit.models import MODELS

    return MODELS[kind](n_in, n_out, **values)


@pytest.mark.parametrize("config", [{"type": "gru", "hidden": 1},
                                    {"type": "lstm", "hidden": 1, "layer_norm": False}])
def test_a_recurrent_width_of_one_without_layer_norm_is_still_allowed(config):
    assert model_values(config)["hidden"] == 1


@pytest.mark.parametrize(("kind", "extra"), [("tcn", {}), ("ssm", {}),
                                             ("transformer", {"n_heads": 1}),
                                             ("gru", {"layer_norm": True})])
def test_a_budget_never_solves_to_width_one_and_its_floor_is_width_two(kind, extra):
    from kit.models import MODELS

    key = MODELS[kind].width_key
    two = count_params(build_model({"type": kind, key: 2, **extra}, 3, 1))
    # a budget that fits width 1 but not width 2: the old solver gave width 1 silently
    with pytest.raises(ModelConfigError) as caught:
        solve_width({"type": kind, "params": two - 1, **extra}, 3, 1)
    assert f"{key} = 2 already has {two:,} parameters" in str(caught.value), str(caught.value)
    assert solve_width({"type": kind, "params": two, **extra}, 3, 1)[key] == 2


def test_a_budget_without_a_layer_norm_still_solves_to_width_one():
    one = count_params(build_model({"type": "gru", "hidden": 1}, 3, 1))
    assert solve_width({"type": "gru", "params": one}, 3, 1)["hidden"] == 1


# --- 2. parity on a model whose own float32 rounding exceeds the tolerance -----------------

TOL = Tolerance(1e-5, 0.0)


def _diff(pair: str, max_abs: float, rows_over: int) -> dict:
    return {"pair": pair, "max_abs": max_abs, "rows_over": rows_over,
            "first_over": {"seq": 24.0, "step": 709.0} if rows_over else None,
            "per_target": {"t1": {"max_abs": max_abs, "max_rel": 1e-3, "seq": 24.0,
                                  "step": 709.0}}}


ROUNDING = [_diff("sequence vs step", 3.11e-5, 2), _diff("sequence vs package", 1.8e-5, 1),
            _diff("step vs package", 1.31e-5, 2)]
PATCHTST = [{"type": "patchtst", "d_model": 3, "n_heads": 1}]


def test_paths_apart_by_rounding_say_the_model_is_not_stable_in_float32():
    advice = float32_advice(ROUNDING, TOL, PATCHTST, off_float64=1.1e-5, package_off=1.5e-5)
    assert advice.startswith("the model itself is not stable in float32 at this size: its two "
                             "PyTorch paths (sequence vs step, the same weights) differ by "
                             "3.11e-05, beyond the tolerance 1e-05"), advice
    assert ("the package is as near the model in float64 (1.50e-05), its differences from "
            "the paths (up to 1.80e-05) of that size") in advice
    assert "larger width (model.d_model)" in advice and "--atol 0.0001" in advice
    check = paths_agree(ROUNDING, TOL)
    assert not check.ok and "the two PyTorch paths differ themselves in 2 row(s)" in check.detail


def test_no_rounding_advice_for_paths_that_agree_or_a_path_that_is_off():
    agree = [_diff("sequence vs step", 2e-6, 0), _diff("step vs package", 1e-3, 40)]
    assert float32_advice(agree, TOL, PATCHTST, off_float64=None) is None
    assert "PyTorch paths" not in paths_agree(agree, TOL).detail
    # one path is the float64 model's to 1e-7: a bug of the other, not rounding
    assert float32_advice(ROUNDING, TOL, PATCHTST, off_float64=1e-7) is None
    # a package far past the model's own rounding is not excused
    worse = [*ROUNDING[:1], _diff("step vs package", 5e-3, 80)]
    advice = float32_advice(worse, TOL, PATCHTST, off_float64=2e-5, package_off=5e-3)
    assert "the package is further off (5.00e-03 from the model in float64)" in advice
    assert "look at it" in advice and "--atol" not in advice
    # 10x the paths' own distance from float64 is no rounding either, and no tolerance that
    # would pass it is suggested (it said "of that size ... --atol 0.001": r301)
    tenfold = [*ROUNDING[:1], _diff("step vs package", 3e-4, 80)]
    advice = float32_advice(tenfold, TOL, PATCHTST, off_float64=2.5e-5, package_off=3e-4)
    assert "further off" in advice and "--atol" not in advice, advice


@pytest.fixture(scope="module")
def gru_package(tmp_path_factory) -> tuple[Path, Path]:
    """A random GRU (no training) packed: (the package, its project)."""
    project = tiny_project(tmp_path_factory.mktemp("r300"), train_seqs=4, valid_seqs=3, seed=3)
    spec = load_spec(str(project / "tiny-lob.toml"))
    run = raw_gru_run(project / "run", spec)
    return pack_run(run, "raw", project / "submissions", budget=False).folder, project


def test_parity_names_the_models_rounding_and_still_fails(gru_package, monkeypatch):
    """Both PyTorch paths 2e-5 either side of the float64 model (as a tiny model's rounding):
    the report's last line says so, not that the package is broken; it still fails."""
    package, project = gru_package
    real_sequence, real_step = parity.sequence_path, parity.step_path
    monkeypatch.setattr(parity, "sequence_path", lambda m, r: real_sequence(m, r) + 2e-5)
    monkeypatch.setattr(parity, "step_path", lambda m, r: real_step(m, r) - 2e-5)
    report = run_parity(package, project / "data/valid.parquet", seqs=2, record=False)
    assert not report.ok
    last = report.format().splitlines()[-1]
    assert "the model itself is not stable in float32 at this size" in last, last
    assert "model.hidden" in last and "--atol 0.0001" in last
    assert report.to_dict()["advice"] == report.advice


def test_a_package_that_fails_to_run_gets_no_rounding_advice(gru_package, monkeypatch):
    """The paths apart by rounding, but the package crashed: the rounding explains nothing of
    that, and its advice (a larger --atol) was the report's last line all the same (r301)."""
    from kit.errors import SubmissionError

    package, project = gru_package
    real_sequence, real_step = parity.sequence_path, parity.step_path
    monkeypatch.setattr(parity, "sequence_path", lambda m, r: real_sequence(m, r) + 2e-5)
    monkeypatch.setattr(parity, "step_path", lambda m, r: real_step(m, r) - 2e-5)

    def crashed(self, rows):
        raise SubmissionError("solution.py crashed at seq 0, step 0")

    monkeypatch.setattr(parity.Package, "run", crashed)
    report = run_parity(package, project / "data/valid.parquet", seqs=2, record=False)
    assert not report.ok and report.advice is None, report.format()


def test_parity_of_a_path_off_by_a_bug_gives_no_rounding_advice(gru_package, monkeypatch):
    package, project = gru_package
    real = parity.sequence_path
    monkeypatch.setattr(parity, "sequence_path", lambda m, r: real(m, r) + 1e-3)
    report = run_parity(package, project / "data/valid.parquet", seqs=1, record=False)
    assert not report.ok and report.advice is None, report.format()


# --- 3. the run report's model settings ----------------------------------------------------


def test_the_report_shows_every_model_setting(tmp_path: Path):
    spec = small_spec()
    valid, spec_path = write_data(tmp_path / "data", spec)
    texts = []
    for run_id, kernel in (("a", 2), ("b", 3)):
        run = make_run(tmp_path / "runs", "tcn", run_id, valid, spec_path)
        config = tomllib.loads((run / "config.toml").read_text())
        config["model"] = {"type": "tcn", "channels": 4, "kernel": kernel, "dilations": [1, 2],
                           "params": 900}
        (run / "config.toml").write_text(tomli_w.dumps(config))
        texts.append(write_report(run).read_text())
    lines = [next(x for x in t.splitlines() if x.startswith("- model settings:")) for t in texts]
    assert lines[0] == ("- model settings: channels 4, kernel 2, dilations [1, 2], dropout 0.0, "
                        "head linear, heads shared; channels solved from params 900"), lines[0]
    assert lines[1] != lines[0] and "kernel 3" in lines[1]
    assert np.all(["- model: tcn (channels 4)" in t for t in texts])
