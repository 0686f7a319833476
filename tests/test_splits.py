import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.config import ConfigError
from kit.data.splits import SplitError, group_kfold, group_split, kfold, random_split
from kit.errors import KitError
from kit.train.data import check_fold_count, load_train_data
from tests.test_train import EXPERIMENT, _sequence_ids, _split_config, tiny_competition

unique_ids = st.lists(st.integers(-(10**6), 10**6), min_size=1, max_size=300, unique=True).map(
    np.array
)


@st.composite
def fractions(draw, max_parts=4):
    weights = draw(st.lists(st.integers(0, 20), min_size=1, max_size=max_parts))
    if sum(weights) == 0:
        weights[0] = 1
    return [w / sum(weights) for w in weights]


def assert_partition(parts, ids):
    """Every id in exactly one part; parts sorted."""
    joined = np.concatenate(parts)
    assert len(joined) == len(ids)
    np.testing.assert_array_equal(np.sort(joined), np.sort(ids))
    for part in parts:
        np.testing.assert_array_equal(part, np.sort(part))


@given(ids=unique_ids, fracs=fractions(), seed=st.integers(0, 2**32 - 1))
def test_random_split_partitions_with_rounded_sizes(ids, fracs, seed):
    parts = random_split(ids, fracs, seed)
    assert len(parts) == len(fracs)
    assert_partition(parts, ids)
    for part, f in zip(parts, fracs, strict=True):
        assert abs(len(part) - f * len(ids)) < 1
    again = random_split(np.random.default_rng(seed).permutation(ids), fracs, seed)
    for a, b in zip(parts, again, strict=True):
        np.testing.assert_array_equal(a, b)  # same seed, any input order: same split


@given(data=st.data(), ids=unique_ids.filter(lambda a: len(a) >= 2), seed=st.integers(0, 99))
def test_kfold_puts_each_id_in_one_valid_fold(data, ids, seed):
    k = data.draw(st.integers(2, min(len(ids), 10)))
    folds = kfold(ids, k, seed)
    assert len(folds) == k
    assert_partition([valid for _, valid in folds], ids)
    for train, valid in folds:
        assert_partition([train, valid], ids)
        assert abs(len(valid) - len(ids) / k) < 1
    assert kfold(ids[::-1], k, seed)[0][1].tolist() == folds[0][1].tolist()


@settings(deadline=None)
@given(
    ids=unique_ids,
    data=st.data(),
    fracs=fractions(max_parts=3),
    seed=st.integers(0, 99),
    stratified=st.booleans(),
)
def test_group_split_keeps_groups_whole_and_ratios_close(ids, data, fracs, seed, stratified):
    n_groups = data.draw(st.integers(1, len(ids)))
    groups = np.array(data.draw(st.lists(st.integers(0, n_groups - 1), min_size=len(ids),
                                         max_size=len(ids))))  # fmt: skip
    n_parts = sum(f > 0 for f in fracs)
    stratify = np.random.default_rng(seed).standard_normal(len(ids)) if stratified else None
    if len(np.unique(groups)) < n_parts:
        with pytest.raises(SplitError, match="groups"):
            group_split(ids, groups, fracs, seed, stratify=stratify)
        return
    parts = group_split(ids, groups, fracs, seed, stratify=stratify)
    assert_partition(parts, ids)
    group_of = dict(zip(ids.tolist(), groups.tolist(), strict=True))
    seen = [{group_of[i] for i in part.tolist()} for part in parts]
    for a in range(len(parts)):
        for b in range(a + 1, len(parts)):
            assert not seen[a] & seen[b]
    largest = np.bincount(groups).max()
    for part, f in zip(parts, fracs, strict=True):
        assert abs(len(part) - f * len(ids)) <= largest  # off by at most one group
        if f == 0:
            assert len(part) == 0


def test_group_split_ratios_with_many_small_groups():
    rng = np.random.default_rng(0)
    ids = np.arange(3000)
    groups = rng.integers(0, 400, len(ids))
    parts = group_split(ids, groups, (0.7, 0.15, 0.15), seed=3, stratify=rng.random(len(ids)))
    ratios = np.array([len(p) for p in parts]) / len(ids)
    np.testing.assert_allclose(ratios, [0.7, 0.15, 0.15], atol=0.01)


def test_stratified_group_splits_keep_their_sizes():
    """The bin's and the whole set's shortfalls cancel often ([0, 10] + [10, 0]), and every
    tie went to the first part: equal groups split 160/40 for 0.75/0.25 (150/50 unstratified),
    8 groups 80/0 for 0.9/0.1, and one-sequence folds came out 5/4/3."""
    groups = np.repeat(np.arange(20), 10)
    ids = np.arange(200)
    sizes = [len(p) for p in group_split(ids, groups, (0.75, 0.25), 2, stratify=groups * 1.0)]
    assert sizes == [150, 50]
    eight = np.repeat(np.arange(8), 10)
    sizes = [len(p) for p in group_split(np.arange(80), eight, (0.9, 0.1), 0,
                                         stratify=np.arange(80.0))]
    assert sizes == [70, 10]
    # unstratified too: the last group went to the part furthest behind in sequences (the
    # 0.9 part, by 5 of 45, as the 0.1 part by 5 of 5), leaving validation empty
    five = np.repeat(np.arange(5), 10)
    for seed in range(5):
        assert [len(p) for p in group_split(np.arange(50), five, (0.9, 0.1), seed)] == [40, 10]
    for n in range(5, 61, 5):
        for k in (3, 4, 5, 7, 10):
            for seed in range(5):
                if k > n:
                    continue
                one_each = np.arange(n)
                stat = np.random.default_rng(seed).normal(size=n)
                sizes = [len(v) for _, v in group_kfold(one_each, one_each, k, seed, stat)]
                assert max(sizes) - min(sizes) <= 1, (n, k, seed, sizes)


def test_same_seed_same_split_and_seeds_differ():
    ids = np.arange(100) * 7
    groups = ids // 21
    for split in (
        lambda seed: random_split(ids, (0.5, 0.5), seed),
        lambda seed: [v for _, v in kfold(ids, 4, seed)],
        lambda seed: group_split(ids, groups, (0.5, 0.5), seed),
        lambda seed: group_split(ids, groups, (0.5, 0.5), seed, stratify=ids % 13),
    ):
        a, b, c = split(0), split(0), split(1)
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        assert not all(np.array_equal(x, z) for x, z in zip(a, c, strict=True))


def imbalance(parts, ids, stat) -> float:
    """Mean distance of each part's mean statistic from the overall mean."""
    where = {i: k for k, i in enumerate(ids.tolist())}
    return np.mean([abs(stat[[where[i] for i in p.tolist()]].mean() - stat.mean()) for p in parts])


def test_stratification_balances_the_statistic():
    rng = np.random.default_rng(7)
    plain, stratified = [], []
    for seed in range(30):
        ids = rng.permutation(300)
        groups = rng.integers(0, 60, len(ids))
        stat = rng.standard_normal(60)[groups] + 0.3 * rng.standard_normal(len(ids))
        fracs = (0.6, 0.2, 0.2)
        plain.append(imbalance(group_split(ids, groups, fracs, seed), ids, stat))
        stratified.append(imbalance(group_split(ids, groups, fracs, seed, stat), ids, stat))
    assert np.mean(stratified) < 0.8 * np.mean(plain)


def test_two_bins_split_a_bimodal_statistic_in_proportion():
    """With n_bins = 2 the low and the high half of the groups are binned apart and each split
    in the fractions (the bins were cut at n_bins - 1: two bins made one, no stratification)."""
    ids = np.arange(40)
    groups = ids // 2  # 20 groups of 2 sequences
    stat = np.where(groups < 10, 0.0, 10.0) + 0.01 * ids  # 10 low groups, 10 high groups
    for seed in range(5):
        parts = group_split(ids, groups, (0.5, 0.5), seed, stratify=stat, n_bins=2)
        assert [len(p) for p in parts] == [20, 20]
        assert [int((stat[p] >= 10).sum()) for p in parts] == [10, 10], seed


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: random_split(np.arange(5), (0.5, 0.6)), "fractions.*sum to 1.1"),
        # a few hundredths short is a typo, not rounding: it was renormalised without a word
        (lambda: random_split(np.arange(5), (0.5, 0.45)), "fractions.*sum to 0.95"),
        (lambda: group_split(np.arange(5), np.arange(5), (0.7, 0.15, 0.1)), "sum to 0.95"),
        (lambda: random_split(np.arange(5), (1.5, -0.5)), "fractions.*>= 0"),
        (lambda: random_split(np.arange(5), ()), "fractions"),
        (lambda: random_split(np.arange(5), "ab"), "fractions"),
        (lambda: random_split(np.array([1, 2, 2, 3])), r"ids holds duplicates, e.g. \[2\]"),
        (lambda: random_split(np.array([], dtype=int)), "ids must be a non-empty"),
        (lambda: random_split(np.zeros((2, 2))), "ids must be"),
        (lambda: random_split(np.array([1, "a", 2.5, 3], dtype=object)), "ids mix types"),
        (lambda: kfold(np.array([1.0, np.nan, 3.0]), 2), r"ids holds 1 NaN/inf"),
        (lambda: kfold(np.arange(5), 1), "k=1"),
        (lambda: kfold(np.arange(5), 6), r"k=6.*\(5\)"),
        (lambda: kfold(np.arange(5), 2.5), "k=2.5"),
        (lambda: kfold(np.array([4, 4, 5]), 2), "ids holds duplicates"),
        (lambda: group_split(np.arange(5), np.arange(4)), "groups has shape"),
        (lambda: group_split(np.arange(5), np.zeros(5)), "1 distinct group"),
        # missing groups would be one group of their own, all on one side
        (lambda: group_split(np.arange(4), [np.nan, np.nan, 1.0, 2.0]),
         r"2 missing value\(s\) \(NaN, NaT or None\)"),
        (lambda: group_split(np.arange(4), np.array([None, 1, 2, 3], dtype=object)),
         r"1 missing value"),
        (lambda: group_split(np.arange(4), np.array(["a", 1, "b", 2], dtype=object)),
         "do not compare"),
        (lambda: group_kfold(np.arange(4), [np.nan, np.nan, 1.0, 2.0], 2), "missing value"),
        (lambda: group_split(np.arange(4), np.array(["2020-01-01", "NaT", "2020-01-02", "NaT"],
                                                    dtype="datetime64[D]")), "2 missing value"),
        (lambda: group_split(np.arange(5), np.arange(5), stratify=np.ones(4)), "stratify"),
        (lambda: group_split(np.arange(3), np.arange(3), stratify=[1, np.nan, 2]), "NaN"),
        (lambda: group_split(np.arange(5), np.arange(5), stratify=np.ones(5), n_bins=0),
         "n_bins"),
        # without stratify too, as docs/data.md says (it passed silently)
        (lambda: group_split(np.arange(8), np.arange(8), n_bins=-1), "n_bins=-1"),
        (lambda: group_kfold(np.arange(8), np.arange(8), k=2, n_bins=0), "n_bins=0"),
    ],
)  # fmt: skip
def test_bad_arguments_are_rejected(call, message):
    with pytest.raises(SplitError, match=message) as info:
        call()
    assert isinstance(info.value, KitError)


def test_group_kfold_keeps_groups_whole_and_folds_even():
    ids = np.arange(100, 160)
    groups = (ids - 100) // 3  # 20 groups of 3
    folds = group_kfold(ids, groups, k=4, seed=7)
    assert len(folds) == 4
    seen = []
    for train, valid in folds:
        assert not set(groups[np.isin(ids, train)]) & set(groups[np.isin(ids, valid)])
        assert sorted([*train, *valid]) == ids.tolist()
        assert len(valid) == 15  # 5 groups of 3 each
        seen += valid.tolist()
    assert sorted(seen) == ids.tolist()
    again = group_kfold(ids[::-1], groups[::-1], k=4, seed=7)  # input order does not matter
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    with pytest.raises(SplitError, match="number of groups"):
        group_kfold(ids, groups, k=21)


def test_group_kfold_uses_its_seed_and_stratify():
    """The seed reaches the group split (seed 1 and 2 gave the same folds), and so does
    `stratify`: with 10 low and 10 high groups in 2 bins, each of 2 folds validates 5 of each,
    whatever the seed (dropped, the folds took 6/14 or 8/12)."""
    ids = np.arange(40)
    groups = ids // 2  # 20 groups of 2
    one = [v.tolist() for _, v in group_kfold(ids, groups, k=4, seed=1)]
    two = [v.tolist() for _, v in group_kfold(ids, groups, k=4, seed=2)]
    assert one != two
    stat = np.where(groups < 10, 0.0, 10.0) + 0.01 * ids
    for seed in range(10):
        folds = group_kfold(ids, groups, k=2, seed=seed, stratify=stat, n_bins=2)
        assert [int((stat[valid] >= 10).sum()) for _, valid in folds] == [10, 10], seed


@pytest.fixture(scope="module")
def split_competition(tmp_path_factory):
    """The tiny competition of tests/test_train.py with grouped.parquet: its train file with a
    user column (3 sequences per user), a per-sequence level, a user column that changes from
    0 to 1 inside sequence 0, and short_*.parquet: its files cut to 8 steps (warm-up 10)."""
    root = tmp_path_factory.mktemp("splits")
    exps = tiny_competition(root, train_seqs=24, valid_seqs=8, seed=1)
    (exps / "tiny.toml").write_text(EXPERIMENT.format(spec=root / "tiny-lob.toml",
                                                      data=root / "data", root=root))
    frame = pl.read_parquet(root / "data" / "train.parquet")
    frame.with_columns(
        (pl.col("seq_ix") // 3).alias("user"),
        (pl.col("p0") * 0 + pl.col("seq_ix") % 5).alias("level"),
        pl.when((pl.col("seq_ix") == 0) & (pl.col("step_in_seq") >= 30)).then(1)
        .otherwise(pl.col("seq_ix") // 3).alias("two_users"),
    ).write_parquet(root / "grouped.parquet")
    for name in ("train", "valid"):
        pl.read_parquet(root / "data" / f"{name}.parquet").filter(
            pl.col("step_in_seq") < 8).write_parquet(root / f"short_{name}.parquet")
    return root


@pytest.fixture
def split_env(split_competition, monkeypatch, tmp_path):
    monkeypatch.setenv("KIT_EXPERIMENTS", str(split_competition / "experiments"))
    monkeypatch.chdir(tmp_path)
    return split_competition


def test_grouped_folds_follow_the_config_seed_and_stratify(split_env):
    """A grouped fold run is group_kfold's fold with the run's seed and the data.stratify
    column's per-sequence mean (seed 0 and the unstratified folds were used)."""
    grouped = split_env / "grouped.parquet"
    config = _split_config(grouped, split="group", group="user", stratify="level")
    per_seq = pl.read_parquet(grouped).group_by("seq_ix", maintain_order=True).agg(
        pl.col("user").first(), pl.col("level").mean())
    ids, users, level = (per_seq[c].to_numpy() for c in ("seq_ix", "user", "level"))
    for seed in (1, 2):
        config["seed"] = seed
        valid = _sequence_ids(grouped, load_train_data(config, fold=(4, 0)).valid.rows)
        expected = group_kfold(ids, users, 4, seed=seed, stratify=level)[0][1]
        np.testing.assert_array_equal(valid, expected)
    seeds = [group_kfold(ids, users, 4, seed=s, stratify=level)[0][1].tolist() for s in (1, 2)]
    assert seeds[0] != seeds[1]  # so the seed shows
    plain = group_kfold(ids, users, 4, seed=2)[0][1]
    assert plain.tolist() != expected.tolist()  # so stratify shows


@pytest.mark.parametrize(("data", "message"), [
    ({"split": "random", "stratify": "level", "valid_fraction": 0.25},
     r'data.group and data.stratify need data.split = "group"$'),
    ({"split": "group", "group": "two_users", "valid_fraction": 0.3},
     r"'two_users' changes within sequence 0 "),
    ({"split": "random", "valid_fraction": 0.99},
     "0.99 of 24 sequences leaves the training part empty"),
    ({"fold": [4, -1]}, r"data.fold is \[k, i\] with 0 <= i < k .*got \[4, -1\]"),
], ids=["random-stratified", "two-groups-in-a-sequence", "no-training", "negative-fold"])
def test_split_settings_are_refused(split_env, data, message):
    """Each was let through: stratify on a random split (ignored), a group that takes exactly
    two values in a sequence, a training part left empty, a negative fold index (fold 3)."""
    with pytest.raises(ConfigError, match=message):
        load_train_data(_split_config(split_env / "grouped.parquet", **data))


def test_as_many_folds_as_sequences_or_groups_are_allowed(split_env):
    grouped = split_env / "grouped.parquet"
    check_fold_count(_split_config(grouped), 24)  # 24 sequences
    check_fold_count(_split_config(grouped, split="group", group="user"), 8)  # 8 users
    with pytest.raises(ConfigError, match="has 24 sequences"):
        check_fold_count(_split_config(grouped), 25)


def test_splits_with_no_scored_step_are_refused_with_the_warmup_hint(split_env):
    """A training file shorter than the warm-up is refused (only validation was checked), and
    a max_valid_seqs that keeps every validation sequence is not blamed for it."""
    shorter = "the training sequences keep no step .*they are all shorter than the warm-up"
    with pytest.raises(ConfigError, match=shorter):
        load_train_data(_split_config(split_env / "short_train.parquet"))
    config = _split_config(split_env / "data" / "train.parquet",
                           valid=str(split_env / "short_valid.parquet"))
    config["train"]["max_valid_seqs"] = 8  # all 8
    with pytest.raises(ConfigError, match="the validation sequences keep no step") as info:
        load_train_data(config)
    assert "they are all shorter than the warm-up" in str(info.value)
    assert "max_valid_seqs" not in str(info.value)
