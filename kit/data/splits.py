"""Deterministic train/validation splits of sequence ids.

Every function sorts the ids before shuffling, so the same seed gives the same split whatever
order the ids come in, and returns sorted id arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kit.errors import KitError

FRACTION_TOL = 1e-6


class SplitError(KitError):
    """The arguments of a split are invalid."""


def random_split(
    ids: np.ndarray, fractions: Sequence[float] = (0.8, 0.2), seed: int = 0
) -> list[np.ndarray]:
    """Shuffle sequence ids and cut them into len(fractions) parts; sizes sum exactly to n."""
    ids = _check_ids(ids)
    fractions = _check_fractions(fractions)
    shuffled = np.random.default_rng(seed).permutation(np.sort(ids))
    cuts = np.cumsum(split_sizes(len(ids), fractions))[:-1]
    return [np.sort(part) for part in np.split(shuffled, cuts)]


def kfold(ids: np.ndarray, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train_ids, valid_ids) pairs; each id is in one valid fold; fold sizes differ by <= 1."""
    ids = _check_ids(ids)
    if not isinstance(k, int | np.integer) or not 2 <= k <= len(ids):
        raise SplitError(f"k={k!r} must be an integer with 2 <= k <= number of ids ({len(ids)})")
    folds = np.array_split(np.random.default_rng(seed).permutation(np.sort(ids)), k)
    return [
        (np.sort(np.concatenate(folds[:i] + folds[i + 1 :])), np.sort(fold))
        for i, fold in enumerate(folds)
    ]


def group_kfold(
    ids: np.ndarray,
    groups: np.ndarray,
    k: int = 5,
    seed: int = 0,
    stratify: np.ndarray | None = None,
    n_bins: int = 5,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train_ids, valid_ids) pairs that keep every group on one side: each group validates
    in exactly one fold, folds hold about n / k sequences (and, with `stratify`, a similar
    spread of it), as group_split places groups."""
    ids = _check_ids(ids)
    n_groups = len(_group_index(groups, ids.shape)[0])
    if not isinstance(k, int | np.integer) or not 2 <= k <= n_groups:
        raise SplitError(f"k={k!r} must be an integer with 2 <= k <= number of groups "
                         f"({n_groups})")
    folds = group_split(ids, groups, [1.0 / k] * k, seed=seed, stratify=stratify,
                        n_bins=n_bins)
    return [(np.sort(np.concatenate(folds[:i] + folds[i + 1:])), fold)
            for i, fold in enumerate(folds)]


def group_split(
    ids: np.ndarray,
    groups: np.ndarray,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    stratify: np.ndarray | None = None,
    n_bins: int = 5,
) -> list[np.ndarray]:
    """Split so that all sequences of a group land together, in about `fractions` of sequences.

    With `stratify` (one value per sequence, averaged per group), groups are binned into
    `n_bins` quantile bins and each bin is split in the same fractions, so every part sees a
    similar distribution of that statistic.
    """
    ids = _check_ids(ids)
    fractions = _check_fractions(fractions)
    names, group_of = _group_index(groups, ids.shape)
    sizes = np.bincount(group_of)
    n_parts = int((fractions > 0).sum())
    if len(names) < n_parts:
        raise SplitError(
            f"groups holds {len(names)} distinct group(s), too few for "
            f"{n_parts} non-empty parts (fractions={fractions.tolist()})"
        )
    rng = np.random.default_rng(seed)
    # Sort ids (carrying their groups) so the result does not depend on the input order.
    order = np.argsort(ids, kind="stable")
    ids, group_of = ids[order], group_of[order]
    bins = np.zeros(len(names), dtype=np.int64)
    # checked with or without stratify, as documented (a bad value waits for the day it is used)
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise SplitError(f"n_bins={n_bins!r} must be a positive integer")
    if stratify is not None:
        values = _check_stratify(stratify, ids.shape)[order]
        bins = _quantile_bins(np.bincount(group_of, weights=values) / sizes, n_bins, rng)
    part_of_group = _assign_groups(sizes, bins, fractions, rng)
    part = part_of_group[group_of]
    return [ids[part == p] for p in range(len(fractions))]


def split_sizes(n: int, fractions: np.ndarray) -> np.ndarray:
    """Largest-remainder rounding of n * fractions: each size is floor or ceil, summing to n."""
    quotas = n * np.asarray(fractions, dtype=np.float64) / np.sum(fractions)
    sizes = np.floor(quotas).astype(np.int64)
    short = n - int(sizes.sum())
    sizes[np.argsort(-(quotas - sizes), kind="stable")[:short]] += 1
    return sizes


def _assign_groups(sizes, bins, fractions, rng) -> np.ndarray:
    """Greedy: largest groups first, each into the part furthest below its target share,
    counting both the group's bin and the whole set, among the parts still below their share
    of the whole set."""
    n_bins = int(bins.max()) + 1
    in_bin = np.zeros((n_bins, len(fractions)))
    overall = np.zeros(len(fractions))
    closed = np.where(fractions > 0, 0.0, -np.inf)  # a zero fraction never gets a group
    part_of_group = np.empty(len(sizes), dtype=np.int64)
    # Random order among groups of equal size: the seed decides who goes where.
    order = np.lexsort((rng.random(len(sizes)), -sizes))
    total = sizes.sum()
    for done, g in enumerate(order):
        b, m = bins[g], sizes[g]
        behind = fractions * (overall.sum() + m) - overall + closed
        # the bin's share counts among the parts still below their overall share only: the
        # two terms cancel often ([0, 10] + [10, 0]), and argmax gave every tie to part 0,
        # leaving a small part short or empty
        open_ = behind > 0
        # as many groups left as empty parts: each goes to an empty part that it brings
        # nearer its share (10 of a 50-sequence 0.9/0.1 split: 40/10, not 50/0)
        empty = (overall == 0) & (m <= 2 * fractions * total)
        if empty.any() and empty.sum() >= len(order) - done:
            open_ &= empty
        if not open_.any():
            p = int(np.argmax(behind))
        else:
            both = np.where(open_, fractions * (in_bin[b].sum() + m) - in_bin[b] + behind, -np.inf)
            p = int(np.lexsort((-behind, -both))[0])  # ties to the part furthest behind
        part_of_group[g] = p
        in_bin[b, p] += m
        overall[p] += m
    return part_of_group


def _quantile_bins(stat: np.ndarray, n_bins: int, rng) -> np.ndarray:
    """Equal-count bins by rank (ties broken at random), robust to repeated values."""
    ranks = np.empty(len(stat), dtype=np.int64)
    ranks[np.lexsort((rng.random(len(stat)), stat))] = np.arange(len(stat))
    return ranks * n_bins // len(stat)


def _check_ids(ids) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.size == 0:
        raise SplitError(
            f"ids must be a non-empty 1-D array of sequence ids, got shape {ids.shape}"
        )
    if ids.dtype.kind == "f" and not np.isfinite(ids).all():
        raise SplitError(f"ids holds {int((~np.isfinite(ids)).sum())} NaN/inf value(s); "
                         "every sequence needs an id")  # fmt: skip
    try:
        values, counts = np.unique(ids, return_counts=True)
    except TypeError as exc:  # mixed types in an object array: 'a' < 1
        raise SplitError(f"ids mix types that do not sort together ({exc}); give one type, "
                         "e.g. all int or all str") from None
    if len(values) != len(ids):
        raise SplitError(f"ids holds duplicates, e.g. {values[counts > 1][:5].tolist()}; "
                         "pass each sequence id once")  # fmt: skip
    return ids


def _group_index(groups, shape) -> tuple[np.ndarray, np.ndarray]:
    """(distinct groups, each id's index among them). A missing group (NaN, None) is refused:
    np.unique would make all of them one group and put those sequences on one side."""
    groups = np.asarray(groups)
    if groups.shape != shape:
        raise SplitError(f"groups has shape {groups.shape}; it needs one entry per id ({shape})")
    if groups.dtype.kind == "f":
        missing = int(np.isnan(groups).sum())
    elif groups.dtype.kind in "mM":  # dates and durations: NaT
        missing = int(np.isnat(groups).sum())
    elif groups.dtype.kind == "O":
        missing = sum(g is None or (isinstance(g, float | np.floating) and g != g)
                      for g in groups.tolist())
    else:
        missing = 0
    if missing:
        raise SplitError(f"groups holds {missing} missing value(s) (NaN, NaT or None); every id "
                         "needs a group: fill or drop them first")
    try:
        return np.unique(groups, return_inverse=True)
    except TypeError:
        raise SplitError("groups mixes values that do not compare (e.g. numbers and text); "
                         "give every id a group of one type") from None


def _check_fractions(fractions) -> np.ndarray:
    try:
        values = np.asarray(fractions, dtype=np.float64)
    except (TypeError, ValueError):
        raise SplitError(f"fractions={fractions!r} must be a list of numbers") from None
    if values.ndim != 1 or values.size == 0:
        raise SplitError(f"fractions={fractions!r} must be a non-empty list of numbers")
    if not np.isfinite(values).all() or (values < 0).any():
        raise SplitError(f"fractions={values.tolist()} must all be finite and >= 0")
    if abs(values.sum() - 1.0) > FRACTION_TOL:
        raise SplitError(f"fractions={values.tolist()} sum to {values.sum():g}; they must sum to 1")
    return values


def _check_stratify(stratify, shape) -> np.ndarray:
    try:
        values = np.asarray(stratify, dtype=np.float64)
    except (TypeError, ValueError):
        raise SplitError("stratify must hold one number per id") from None
    if values.shape != shape:
        raise SplitError(f"stratify has shape {values.shape}; it needs one value per id ({shape})")
    if not np.isfinite(values).all():
        raise SplitError(f"stratify holds {int((~np.isfinite(values)).sum())} NaN/inf value(s); "
                         "fill or drop them first")  # fmt: skip
    return values
