"""Behaviours of the normaliser, kit.train.data and kit.train.recipe that a mutation audit (r326)
found unpinned: transform block by block and of one row, a masked robust fit's subsample, the
mask's shape, bool inputs, a copy-on-write cache left as it was, and the trainer's data checks."""

import numpy as np
import pytest

from kit.features import normaliser as normaliser_module
from kit.features.normaliser import Normaliser, NormaliserError
from tests.cli import run_cli
from tests.test_train import env, workspace  # noqa: F401 (fixtures)

# --- kit.features.normaliser -------------------------------------------------------------------


def _fitted(width: int = 3, clip: float | None = 2.0) -> Normaliser:
    rows = np.random.default_rng(0).normal(4.0, 3.0, (500, width)).astype(np.float32)
    return Normaliser.fit(rows, clip=clip)


def test_transform_in_many_blocks_is_the_plain_arithmetic_for_every_row():
    """Kills: transform normalising the first block only, or skipping a block (out is
    np.empty: a block left unwritten holds garbage)."""
    norm = _fitted()
    x = np.random.default_rng(1).normal(4.0, 6.0, (37, 5, 3)).astype(np.float64)
    expected = np.clip((x.astype(np.float32) - norm.center) / norm.scale, -2.0, 2.0)
    row_bytes = 5 * 3 * 4
    for block_bytes in (1, row_bytes, 3 * row_bytes, 10 * row_bytes, 1 << 30):
        out = norm.transform(x, block_bytes=block_bytes)
        assert out.dtype == np.float32 and out.shape == x.shape
        assert out.tobytes() == expected.tobytes(), block_bytes


def test_transform_of_one_row_is_normalised_and_clipped():
    """Kills: a 1-D input (one row of features) copied out without being normalised."""
    norm = _fitted()
    row = np.array([4.0, 100.0, -100.0])
    out = norm.transform(row)
    expected = np.clip((row.astype(np.float32) - norm.center) / norm.scale, -2.0, 2.0)
    assert out.dtype == np.float32 and out.tobytes() == expected.tobytes()
    assert out[1] == 2.0 and out[2] == -2.0


@pytest.mark.parametrize("method", ["standard", "robust"])
def test_a_masked_fit_equals_the_fit_of_the_masked_rows_past_the_robust_sample(monkeypatch,
                                                                              method):
    """Kills: the robust subsample indexing all rows instead of the kept ones (it read the
    masked-out rows, here 1e6 padding, once the kept rows outnumbered ROBUST_SAMPLE)."""
    monkeypatch.setattr(normaliser_module, "ROBUST_SAMPLE", 300)
    rng = np.random.default_rng(7)
    x = rng.normal(2.0, 1.5, (40, 50, 2)).astype(np.float32)
    mask = np.zeros((40, 50), bool)
    mask[:, 20:] = True  # the first steps of every sequence are padding, never fitted
    x[~mask] = 1e6
    masked = Normaliser.fit(x, mask, method)
    plain = Normaliser.fit(x[mask], None, method)
    assert masked.center.tobytes() == plain.center.tobytes()
    assert masked.scale.tobytes() == plain.scale.tobytes()
    assert (np.abs(masked.center - 2.0) < 0.3).all() and (masked.scale < 3).all()


def test_a_mask_of_the_same_size_but_another_shape_is_refused():
    """Kills: the mask checked by its size only ((10, 4) flags for (4, 10) rows read as one
    flag per row, the wrong rows fitted)."""
    x = np.zeros((4, 10, 3), np.float32)
    with pytest.raises(NormaliserError, match=r"mask has shape \(10, 4\).*shape \(4, 10\)"):
        Normaliser.fit(x, np.ones((10, 4), bool))


def test_a_bool_feature_array_fits_as_numbers():
    """Kills: bool x refused as "not a float array" (a 0/1 flag column fits as 0.0/1.0)."""
    flags = np.random.default_rng(3).random((200, 2)) < 0.3
    norm = Normaliser.fit(flags, clip=None)
    as_float = Normaliser.fit(flags.astype(np.float64), clip=None)
    assert norm.center.tobytes() == as_float.center.tobytes()
    assert norm.scale.tobytes() == as_float.scale.tobytes()
    np.testing.assert_allclose(norm.center, flags.mean(0), rtol=1e-6)


def test_transform_leaves_a_copy_on_write_mapping_s_own_changes(tmp_path):
    """Kills: drop_mapped_pages releasing the pages of a writable (copy-on-write) mapping: the
    caller's edits of np.load(mmap_mode="c") were lost (read back from the file)."""
    x = np.random.default_rng(0).normal(size=(50, 100, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="c")
    flat = mapped.reshape(-1)
    flat[5000:6000] = 123.0  # bytes 20000..24000: inside whole pages of the block
    out = Normaliser(method="standard", clip=None, center=np.zeros(4, np.float32),
                     scale=np.ones(4, np.float32)).transform(mapped)
    assert (out.reshape(-1)[5000:6000] == 123.0).all()
    assert (mapped.reshape(-1)[5000:6000] == 123.0).all()  # the caller's array keeps them


# --- kit.train.data ----------------------------------------------------------------------------


def test_a_valid_file_of_the_train_file_s_size_but_other_bytes_is_not_refused(tmp_path):
    """Kills: same_data_file taking two files of one size for copies without comparing their
    sha256 (a valid file that happens to have the train file's size was refused)."""
    from kit.train.data import check_data_files, same_data_file

    (tmp_path / "train.parquet").write_bytes(b"PAR1" + bytes(range(200)) + b"PAR1")
    (tmp_path / "valid.parquet").write_bytes(b"PAR1" + bytes(range(1, 201)) + b"PAR1")
    (tmp_path / "copy.parquet").write_bytes((tmp_path / "train.parquet").read_bytes())
    (tmp_path / "sub").mkdir()
    train, valid = str(tmp_path / "train.parquet"), str(tmp_path / "valid.parquet")
    cache = str(tmp_path / "cache")
    assert same_data_file(train, valid, cache) is None
    assert same_data_file(train, str(tmp_path / "copy.parquet"), cache) == \
        "a byte-identical copy of"
    spelt = str(tmp_path / "sub" / ".." / "." / "train.parquet")  # one path, spelt otherwise
    assert same_data_file(train, spelt, cache) == "the same file as"
    check_data_files({"train": train, "valid": valid, "split": "file", "fold": None,
                      "cache_dir": cache})  # no refusal



def test_startup_lines_count_the_sequences_the_limits_keep(env):  # noqa: F811
    """Kills: the "normalising N training and M validation sequences" line counting the whole
    files when train.max_train_seqs / max_valid_seqs keep fewer (what is normalised)."""
    import copy

    from kit.config import load_experiment, resolve
    from kit.train.data import load_train_data

    config = copy.deepcopy(resolve(load_experiment("tiny")))
    config["train"].update(max_train_seqs=2, max_valid_seqs=3)
    said = []
    data = load_train_data(config, status=said.append)
    assert (len(data.train), len(data.valid)) == (2, 3)
    rows = int(data.train.x.shape[0] * data.train.x.shape[1])  # whole sequences, no padding
    assert f"fitting the standard normaliser on {rows:,} training rows..." in said, said
    assert "normalising 2 training and 3 validation sequences..." in said, said



def test_every_seed_of_a_held_out_split_validates_on_the_same_rows(env):  # noqa: F811
    """Kills: holdout_ids seeding data.split = "random" by the run's seed instead of
    data.split_seed (a seed group's runs validated on different rows: no blend of them)."""
    import copy

    from kit.config import load_experiment, resolve
    from kit.train.data import load_train_data

    def valid_rows(seed: int, split_seed: int = 0) -> list[int]:
        config = copy.deepcopy(resolve(load_experiment("tiny")))
        config["seed"] = seed
        config["data"].update(split="random", valid_fraction=0.25, split_seed=split_seed)
        return load_train_data(config).valid.rows.tolist()

    first = valid_rows(1)
    assert valid_rows(2) == first and valid_rows(12345) == first
    assert valid_rows(1, split_seed=9) != first  # the split's own seed moves it


# --- kit.train.recipe --------------------------------------------------------------------------


def test_a_jobs_worker_prints_no_startup_lines_of_its_own(monkeypatch, capsys):
    """Kills: startup_status ignoring TRAIN_WORKER_ENV (each --jobs worker said "reading the
    features..." again beside its parent's)."""
    from kit.train.recipe import startup_status
    from kit.workers import TRAIN_WORKER_ENV

    monkeypatch.delenv(TRAIN_WORKER_ENV, raising=False)
    assert startup_status(False) is None
    status = startup_status(True)
    status("fitting the standard normaliser on 3 training rows...")
    out = capsys.readouterr()
    assert out.out == "" and out.err == "fitting the standard normaliser on 3 training rows...\n"
    monkeypatch.setenv(TRAIN_WORKER_ENV, "1")
    assert startup_status(True) is None


def test_folds_with_a_run_dir_are_refused_before_anything_is_made(env, tmp_path):  # noqa: F811
    """Kills: --folds K --run-dir D accepted (the fold group names its own run folders, so the
    user's folder was ignored without a word)."""
    out = run_cli("train", "exp=tiny", "--folds", "2", "--run-dir", tmp_path / "mine", "-q",
                  expect=2).output
    assert "--folds names its own run directories: it does not combine with --run-dir" in out
    assert not (tmp_path / "mine").exists() and not (tmp_path / "runs").exists()
