"""The built-in synthetic competitions: file contract, determinism, spec variants, realism."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from kit.baselines import evaluate_linear_baseline, fit_linear_baseline
from kit.competition import load_spec, spec_from_dict
from kit.data.stats import dataset_stats
from kit.data.synth import DEFAULT_SEQS, FULL_SEQS, synthesize
from kit.errors import KitError, SpecError
from tests.processes import dead_pid

PREDICTORIUM = load_spec("predictorium")
RNN = load_spec("rnn-challenge")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_small")
    return synthesize(PREDICTORIUM, out, train_seqs=8, valid_seqs=5, seed=3)


def test_files_follow_the_contract(small):
    train, valid = pl.read_parquet(small.train), pl.read_parquet(small.valid)
    for frame in (train, valid):
        assert frame.columns == PREDICTORIUM.columns
        assert frame.schema[PREDICTORIUM.id_col] == pl.Int64
        assert frame.schema[PREDICTORIUM.step_col] == pl.Int64
        assert frame.schema[PREDICTORIUM.need_col] == pl.Boolean
        for name in (*PREDICTORIUM.features, *PREDICTORIUM.targets):
            assert frame.schema[name] == pl.Float32, name
    assert (train.height, valid.height) == (small.train_rows, small.valid_rows) == (8000, 5000)
    assert sorted(p.name for p in small.train.parent.iterdir()) == [
        "train.parquet", "valid.parquet", "valid_oracle.parquet",
    ]  # fmt: skip


def test_ids_steps_and_need_prediction(small):
    train, valid = pl.read_parquet(small.train), pl.read_parquet(small.valid)
    assert train["seq_ix"].unique().sort().to_list() == list(range(8))
    assert valid["seq_ix"].unique().sort().to_list() == list(range(8, 13))
    for frame in (train, valid):
        assert frame.equals(frame.sort(["seq_ix", "step_in_seq"]))
        steps = frame["step_in_seq"].to_numpy()
        assert (steps.reshape(-1, 1000) == np.arange(1000)).all()
        expected = (steps >= PREDICTORIUM.warmup) & (steps < 1000 - PREDICTORIUM.tail)
        assert (frame["need_prediction"].to_numpy() == expected).all()


def test_oracle_file_matches_valid_rows(small):
    valid, oracle = pl.read_parquet(small.valid), pl.read_parquet(small.oracle)
    assert oracle.columns == ["seq_ix", "step_in_seq", "t0", "t1"]
    assert oracle.schema["t0"] == pl.Float32
    assert oracle.select("seq_ix", "step_in_seq").equals(valid.select("seq_ix", "step_in_seq"))
    assert np.isfinite(oracle.select("t0", "t1").to_numpy()).all()


def test_values_are_clipped_and_finite(small):
    for path in (small.train, small.valid):
        frame = pl.read_parquet(path)
        x = frame.select(PREDICTORIUM.features).to_numpy()
        y = frame.select(PREDICTORIUM.targets).to_numpy()
        assert np.isfinite(x).all() and np.isfinite(y).all()
        assert x.min() >= -5.2 and x.max() <= 5.2


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = synthesize(PREDICTORIUM, tmp_path / "a", train_seqs=3, valid_seqs=2, seed=11)
    b = synthesize(PREDICTORIUM, tmp_path / "b", train_seqs=3, valid_seqs=2, seed=11)
    c = synthesize(PREDICTORIUM, tmp_path / "c", train_seqs=3, valid_seqs=2, seed=12)
    for name in ("train", "valid", "oracle"):
        assert getattr(a, name).read_bytes() == getattr(b, name).read_bytes(), name
    assert pl.read_parquet(a.train).equals(pl.read_parquet(b.train))
    fa, fc = pl.read_parquet(a.train), pl.read_parquet(c.train)
    assert not np.allclose(fa["p0"].to_numpy(), fc["p0"].to_numpy())
    assert not np.allclose(fa["t0"].to_numpy(), fc["t0"].to_numpy())


@pytest.mark.parametrize("spec", [PREDICTORIUM, RNN], ids=["predictorium", "rnn-challenge"])
def test_valid_is_not_a_copy_of_trains_noise(tmp_path, spec):
    """The chunk's noise seed left the split out: with as many train as valid sequences,
    valid sequence i replayed train sequence i's draws (features and targets correlated
    0.65..0.99 with train's), so a validation score measured memorised noise."""
    r = synthesize(spec, tmp_path, train_seqs=3, valid_seqs=3, seed=4)
    train, valid = pl.read_parquet(r.train), pl.read_parquet(r.valid)
    assert train.height == valid.height
    for name in (*spec.features, *spec.targets):
        a, b = train[name].to_numpy(), valid[name].to_numpy()
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.4, name


def test_sizes():
    assert FULL_SEQS == {"train": 10_721, "valid": 1_444}
    assert DEFAULT_SEQS["train"] >= DEFAULT_SEQS["valid"] >= 100


def test_rejects_empty_split(tmp_path):
    with pytest.raises(KitError, match="valid-seqs"):
        synthesize(PREDICTORIUM, tmp_path, train_seqs=2, valid_seqs=0)


def _custom(**overrides):
    raw = PREDICTORIUM.to_dict() | {"name": "custom"} | overrides
    raw.pop("limits")
    return spec_from_dict(raw)


def test_spec_with_a_subset_of_features_and_other_length(tmp_path):
    spec = _custom(
        features=["v0", "p3", "dv1"], targets=["t1"], seq_len=120, warmup=10, tail=2,
        id_col="id", step_col="t", need_col="scored",
    )  # fmt: skip
    r = synthesize(spec, tmp_path, train_seqs=3, valid_seqs=2)
    frame = pl.read_parquet(r.valid)
    assert frame.columns == ["id", "t", "scored", "v0", "p3", "dv1", "t1"]
    assert frame.height == 240
    need = frame["scored"].to_numpy().reshape(2, 120)
    assert need[:, 10:118].all() and not need[:, :10].any() and not need[:, 118:].any()
    assert pl.read_parquet(r.oracle).columns == ["id", "t", "t1"]


def test_spec_with_32_own_feature_names_maps_by_position(tmp_path):
    spec = _custom(features=[f"f{i}" for i in range(32)], targets=["short", "long"])
    r = synthesize(spec, tmp_path, train_seqs=2, valid_seqs=1)
    assert pl.read_parquet(r.train).columns[3:] == [*spec.features, "short", "long"]


def test_spec_the_generator_cannot_make_is_refused(tmp_path):
    with pytest.raises(SpecError, match="p0..p11"):
        synthesize(_custom(features=["a", "b", "c"]), tmp_path, train_seqs=1, valid_seqs=1)
    with pytest.raises(SpecError, match="at most 4 targets"):
        synthesize(_custom(targets=list("abcde")), tmp_path, train_seqs=1, valid_seqs=1)


def test_rnn_challenge_generation(tmp_path):
    r = synthesize(RNN, tmp_path, train_seqs=4, valid_seqs=30, seed=1)
    valid, oracle = pl.read_parquet(r.valid), pl.read_parquet(r.oracle)
    assert valid.columns == RNN.columns and len(RNN.targets) == 0
    assert oracle.columns == [RNN.id_col, RNN.step_col, *RNN.features]
    assert oracle.height == valid.height == 30_000
    need = valid["need_prediction"].to_numpy().reshape(30, 1000)
    assert need[:, 99:999].all() and not need[:, 999].any() and not need[:, :99].any()
    x = valid.select(RNN.features).to_numpy()
    assert np.isfinite(x).all() and np.abs(x).max() <= 5.2
    assert np.abs(x.mean(axis=0)).max() < 0.2 and np.abs(x.std(axis=0) - 1).max() < 0.15
    stats = dataset_stats(r.valid, RNN, oracle=r.oracle)
    assert 0.3 <= stats["oracle"]["score"] <= 0.65  # mean R^2 of E[x_t+1 | latents]


def test_realism_bands_at_default_size(tmp_path):
    """Every realism band of docs/synth.md holds on the default-size valid set (seed 0)."""
    r = synthesize(PREDICTORIUM, tmp_path, seed=0)
    stats = dataset_stats(r.valid, PREDICTORIUM, oracle=r.oracle, reference=r.train)
    failed = [(c["label"], c["value"]) for c in stats["checks"] if not c["ok"]]
    assert not failed
    assert len(stats["checks"]) == 18  # oracle and reference bands were measured too
    ridge = evaluate_linear_baseline(fit_linear_baseline(r.train, PREDICTORIUM), r.valid,
                                     PREDICTORIUM).per_target
    # weak but learnable: well above 0, well below the oracle
    assert 0.1 < ridge["t0"] < stats["oracle"]["per_output"]["t0"] - 0.1
    assert 0.03 < ridge["t1"] < stats["oracle"]["per_output"]["t1"]


def test_an_interrupted_run_leaves_the_previous_files_whole_and_together(tmp_path, monkeypatch):
    """Train, valid and oracle are renamed into place together: a kill while valid was written
    left a new train.parquet beside the previous run's valid and oracle."""
    from kit.data.synth import predictorium

    before = synthesize(PREDICTORIUM, tmp_path, train_seqs=2, valid_seqs=1, seed=1)
    files = (before.train, before.valid, before.oracle)
    old = [f.read_bytes() for f in files]
    real_chunk = predictorium.LobGenerator.chunk

    def fails_on_valid(self, rng, regime, with_oracle):
        if with_oracle:  # only the valid split writes an oracle
            raise KeyboardInterrupt
        return real_chunk(self, rng, regime, with_oracle)

    monkeypatch.setattr(predictorium.LobGenerator, "chunk", fails_on_valid)
    with pytest.raises(KeyboardInterrupt):
        synthesize(PREDICTORIUM, tmp_path, train_seqs=3, valid_seqs=1, seed=2)
    assert [f.read_bytes() for f in files] == old
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in files)


def test_temp_files_of_killed_runs_are_removed(tmp_path):
    """Temp names carry their writer's pid, so no later run overwrites a killed one's."""
    import socket

    dead = dead_pid()
    host = socket.gethostname()
    stale = tmp_path / f".train.parquet.tmp-{host}-{dead}"
    stale.write_bytes(b"half a file")
    live = tmp_path / f".valid.parquet.tmp-{host}-1"  # a live process's (pid 1 always is)
    live.write_bytes(b"being written")
    elsewhere = tmp_path / f".train.parquet.tmp-other-host-{dead}"  # its pid means nothing here
    elsewhere.write_bytes(b"written on another machine sharing the folder")
    # host node-1's glob matched host node-1-gpu's files, whose pids mean nothing here either
    longer_host = tmp_path / f".valid.parquet.tmp-{host}-gpu-{dead}"
    longer_host.write_bytes(b"being written on a host whose name starts with this one's")
    synthesize(PREDICTORIUM, tmp_path, train_seqs=1, valid_seqs=1, seed=1)
    assert not stale.exists() and live.exists() and elsewhere.exists() and longer_host.exists()


@pytest.mark.parametrize("n", [10**20, 2.7, True, 0])
def test_sizes_past_reason_are_refused_before_anything_is_made(tmp_path, n):
    """10**20 sequences raised numpy's ValueError (a traceback from the CLI); 2.7 became 2."""
    with pytest.raises(KitError, match=r"train_seqs \(--train-seqs\) must be a whole number"):
        synthesize(PREDICTORIUM, tmp_path / "out", train_seqs=n, valid_seqs=1)
    assert not (tmp_path / "out").exists()


def test_a_folder_in_the_way_is_found_before_any_file_is_replaced(tmp_path):
    """A folder named valid_oracle.parquet: train and valid were replaced, then the oracle's
    rename failed, leaving two runs' files and a temp file."""
    before = synthesize(PREDICTORIUM, tmp_path, train_seqs=2, valid_seqs=1, seed=1)
    old = before.train.read_bytes(), before.valid.read_bytes()
    before.oracle.unlink()
    before.oracle.mkdir()
    with pytest.raises(KitError, match="valid_oracle.parquet is not a file"):
        synthesize(PREDICTORIUM, tmp_path, train_seqs=2, valid_seqs=1, seed=5)
    assert (before.train.read_bytes(), before.valid.read_bytes()) == old
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_split_whose_file_fails_to_close_leaves_no_temp_file(tmp_path, monkeypatch):
    """A full disk met by the oracle's footer: the valid file, closed fine just before, kept
    its temp file (the split raised before its sinks were handed back to be discarded)."""
    import errno

    from kit.data.synth import core

    real_close = core.ParquetSink.close

    def disk_full_on_oracle(self, ok=True):
        real_close(self, ok)
        if self.path.name == "valid_oracle.parquet":
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(core.ParquetSink, "close", disk_full_on_oracle)
    with pytest.raises(OSError, match="No space left"):
        synthesize(PREDICTORIUM, tmp_path, train_seqs=2, valid_seqs=1, seed=1)
    assert list(tmp_path.iterdir()) == []


def test_the_generators_names_in_a_custom_spec_keep_their_own_data(tmp_path):
    """A known name beside names of one's own switched every name to position: the column
    named p0 held v0's values, and t1 beside "ret" became the 3-step target."""
    from kit.data.synth.predictorium import _target_horizons

    assert _target_horizons(_custom(targets=["t1", "ret"])) == [20, 3]
    assert _target_horizons(_custom(targets=["a", "b"])) == [3, 20]  # own names: by position
    own = [f"x{i}" for i in range(12)] + [f"p{i}" for i in range(12)] + [f"z{i}" for i in range(8)]
    with pytest.raises(SpecError, match="'p0' is column 12 of the spec, but the generator's p0"):
        synthesize(_custom(features=own), tmp_path, train_seqs=1, valid_seqs=1)


def test_a_spec_whose_warmup_leaves_no_scored_step_is_refused(tmp_path):
    # without a seq_len the generator's sequences are 1000 steps: a warm-up past them would
    # write files that pass the contract with nothing to score
    spec = spec_from_dict({"name": "long-warmup", "features": ["p0", "v0"], "targets": ["t0"],
                           "seq_len": 0, "warmup": 1200}, "<tests>")
    with pytest.raises(KitError, match="warmup 1200 \\+ tail 0 leave no scored step"):
        synthesize(spec, tmp_path / "d", train_seqs=1, valid_seqs=1)
    assert not (tmp_path / "d" / "train.parquet").exists()


def test_a_command_under_nohup_outlives_a_closed_terminal(tmp_path):
    """kit's commands take SIGHUP over to clean up on the way out; one whose caller ignores it
    (nohup) must go on ignoring it, as it did before."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    proc = subprocess.Popen(
        [sys.executable, "-m", "kit", "data", "synth", "--out", str(tmp_path), "--train-seqs",
         "1500", "--valid-seqs", "10", "-q"],
        env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])},
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".train.parquet.tmp-*")) and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert (tmp_path / "valid_oracle.parquet").is_file()


@pytest.fixture(scope="module")
def seed0(tmp_path_factory):
    """200 + 200 sequences, seed 0: enough rows for set-level statistics to be stable."""
    out = tmp_path_factory.mktemp("synth_seed0")
    return synthesize(PREDICTORIUM, out, train_seqs=200, valid_seqs=200, seed=0)


def test_the_oracle_predicts_the_targets_with_a_slope_of_about_one(seed0):
    """docs/synth.md: the oracle is E[target | latents], so regressing the target on it gives a
    slope of ~1; an oracle that skipped the first step of the horizon (range(1, h)) gave 2.3."""
    valid, oracle = pl.read_parquet(seed0.valid), pl.read_parquet(seed0.oracle)
    need = valid["need_prediction"].to_numpy()
    for name in PREDICTORIUM.targets:
        slope = np.polyfit(oracle[name].to_numpy()[need], valid[name].to_numpy()[need], 1)[0]
        assert 0.85 < slope < 1.15, (name, slope)


def test_train_targets_are_scaled_to_about_unit_std(seed0):
    """The target scales are fitted on the train-regime half of the reference sample; fitted on
    all of it (valid regimes are more volatile) the train targets' std fell to ~0.83."""
    train = pl.read_parquet(seed0.train)
    for name in PREDICTORIUM.targets:
        assert 0.88 < train[name].std() < 1.12, name


def test_four_targets_are_made_and_a_fifth_is_refused(tmp_path):
    """Up to 4 targets (one per horizon) is allowed: a `<` in the count check refused 4."""
    r = synthesize(_custom(targets=["t0", "t1", "t2", "t3"]), tmp_path, train_seqs=1,
                   valid_seqs=1)
    assert pl.read_parquet(r.train).columns[-4:] == ["t0", "t1", "t2", "t3"]
    assert pl.read_parquet(r.oracle).columns[2:] == ["t0", "t1", "t2", "t3"]
    with pytest.raises(SpecError, match="at most 4 targets"):
        synthesize(_custom(targets=["t0", "t1", "t2", "t3", "t4"]), tmp_path / "five",
                   train_seqs=1, valid_seqs=1)


def test_33_own_feature_names_are_refused_with_the_generators_names(tmp_path):
    """Only exactly 32 own names map by position: 33 fell into that branch and died on a bare
    ValueError from zip() instead of saying which features the generator makes."""
    spec = _custom(features=[f"f{i}" for i in range(33)])
    with pytest.raises(SpecError, match="p0..p11"):
        synthesize(spec, tmp_path, train_seqs=1, valid_seqs=1)


def test_the_same_arguments_give_the_same_bytes_in_another_process(tmp_path):
    """The fixed structure and reference constants are cached per process, so an unseeded
    default_rng() there passed the in-process determinism test; a fresh process shows it."""
    import hashlib
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import sys; from pathlib import Path; from kit.competition import load_spec; "
        "from kit.data.synth import synthesize\n"
        "for name in ('predictorium', 'rnn-challenge'):\n"
        "    synthesize(load_spec(name), Path(sys.argv[1]) / name, train_seqs=1, valid_seqs=1, "
        "seed=7)\n"
    )
    root = str(Path(__file__).parents[1])
    env = os.environ | {"PYTHONPATH": os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "other")], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for spec in (PREDICTORIUM, RNN):
        here = synthesize(spec, tmp_path / "here" / spec.name, train_seqs=1, valid_seqs=1, seed=7)
        there = tmp_path / "other" / spec.name / "valid.parquet"
        assert (hashlib.sha256(here.valid.read_bytes()).hexdigest()
                == hashlib.sha256(there.read_bytes()).hexdigest()), spec.name


def test_rnn_features_are_clipped_at_exactly_5_2(tmp_path):
    """Standardised features are clipped at +-5.2 (docs/synth.md); 50 sequences reach the clip,
    so an unclipped generator shows values past it."""
    r = synthesize(RNN, tmp_path, train_seqs=2, valid_seqs=50, seed=0)
    x = pl.read_parquet(r.valid).select(RNN.features).to_numpy()
    assert np.abs(x).max() <= 5.2 + 1e-6
    assert abs(np.abs(x).max() - 5.2) < 1e-6  # the clip is reached: the bound is not vacuous


def test_warmup_plus_tail_equal_to_the_sequence_length_is_refused(tmp_path):
    """600 + 400 on the generator's 1000-step sequences leaves no scored step, just as a
    warm-up past the end does: a `>` in the check let this edge through."""
    spec = spec_from_dict({"name": "edge", "features": ["p0", "v0"], "targets": ["t0"],
                           "seq_len": 0, "warmup": 600, "tail": 400}, "<tests>")
    with pytest.raises(KitError, match=r"warmup 600 \+ tail 400 leave no scored step"):
        synthesize(spec, tmp_path / "d", train_seqs=1, valid_seqs=1)
    assert not (tmp_path / "d").exists()


def test_a_negative_seed_is_refused(tmp_path):
    """-1 reached numpy, whose ValueError is a traceback from the CLI."""
    with pytest.raises(KitError, match=r"seed \(--seed\) must be >= 0, got -1"):
        synthesize(PREDICTORIUM, tmp_path / "d", train_seqs=1, valid_seqs=1, seed=-1)
    assert not (tmp_path / "d").exists()


def test_ar1_starts_stationary_and_correlated_from_its_first_step():
    """x[0] has the stationary std (not the innovation's) and x[1] follows from it: a first
    step drawn with the innovation std had std 0.04, a filter starting at t=2 corr 0.007."""
    from kit.data.synth.core import ar1

    x = ar1(np.random.default_rng(0), 50, 20_000, [0.98], [0.2])
    assert x.shape == (1, 50, 20_000) and x.dtype == np.float32
    assert 0.19 < x[0, 0].std() < 0.21 and 0.19 < x[0, -1].std() < 0.21
    assert 0.97 < np.corrcoef(x[0, 0], x[0, 1])[0, 1] < 0.99


def test_linear_filter_runs_from_the_second_step():
    from kit.data.synth.core import linear_filter

    x = np.ones((4, 2))
    np.testing.assert_allclose(linear_filter(x, 0.5)[:, 0], [1.0, 1.5, 1.75, 1.875])


def test_stratified_normal_gives_the_normal_quantiles_at_cell_midpoints():
    """Probabilities (i + 0.5) / n: symmetric about 0; `/ (n + 1)` shifted them all down."""
    from kit.data.synth.core import stratified_normal

    got = np.sort(stratified_normal(np.random.default_rng(1), 4))
    np.testing.assert_allclose(got, [-1.150349, -0.318639, 0.318639, 1.150349], atol=1e-5)


def test_float_columns_are_not_dictionary_encoded(small):
    """Dictionary-encoding float columns made writes ~10x slower for nothing (docs)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(small.train).metadata
    names = [meta.schema.column(j).name for j in range(meta.num_columns)]
    for j, name in enumerate(names):
        if name in (*PREDICTORIUM.features, *PREDICTORIUM.targets):
            encodings = meta.row_group(0).column(j).encodings
            assert not {"RLE_DICTIONARY", "PLAIN_DICTIONARY"} & set(encodings), (name, encodings)


def test_a_temp_file_of_another_users_live_process_is_kept(tmp_path, monkeypatch):
    """os.kill raises PermissionError for a live process of another user: taking that for
    dead would delete a file another user is still writing."""
    import socket

    from kit.data.synth import core

    def not_yours(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    theirs = tmp_path / f".train.parquet.tmp-{socket.gethostname()}-12345"
    theirs.write_bytes(b"being written by another user")
    monkeypatch.setattr(core.os, "kill", not_yours)
    core.remove_dead_temp_files(tmp_path)
    assert theirs.exists()


def test_numpy_integers_as_sizes_and_seed_generate_and_mark_the_files(tmp_path):
    """The generation mark is JSON: numpy sizes (accepted by the size check) and a numpy seed
    raised "Object of type int64 is not JSON serializable" (r244)."""
    import json

    import pyarrow.parquet as pq

    from kit.data.synth import GENERATION_KEY

    spec = load_spec("predictorium")
    result = synthesize(spec, tmp_path, train_seqs=np.int64(2), valid_seqs=np.int32(1),
                        seed=np.int64(3))
    for path in (result.train, result.valid, result.oracle):
        mark = json.loads(pq.read_schema(path).metadata[GENERATION_KEY.encode()])
        assert mark == {"spec": "predictorium", "seed": 3, "train_seqs": 2, "valid_seqs": 1}
    again = synthesize(spec, tmp_path / "b", train_seqs=2, valid_seqs=1, seed=3)
    assert again.valid.read_bytes() == result.valid.read_bytes()
