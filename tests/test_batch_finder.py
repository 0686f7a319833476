import pytest
import torch

from kit.config import ConfigError
from kit.train.batch_finder import batch_with_headroom, find_batch_size, largest_fitting


@pytest.mark.parametrize("capacity", [1, 2, 7, 8, 9, 100, 1000, 4096])
def test_largest_fitting_finds_the_capacity(capacity):
    probes = []

    def fits(size):
        probes.append(size)
        return size <= capacity

    assert largest_fitting(fits, start=8, limit=4096) == capacity
    assert len(probes) <= 30  # doubling then bisection, not a scan


def test_limits():
    assert largest_fitting(lambda size: True, limit=50) == 50
    with pytest.raises(ConfigError, match="not even a batch of one"):
        largest_fitting(lambda size: False)


def test_auto_batch_needs_cuda():
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        find_batch_size(torch.nn.Linear(2, 2), 2, 10, 10, torch.device("cpu"))


@pytest.mark.parametrize("n_seqs, batch", [(10, 10), (24, 24), (999, 900), (1000, 900),
                                           (1001, 900), (5000, 900)])
def test_the_batch_keeps_headroom_unless_the_train_set_fits_with_room(n_seqs, batch):
    # memory holds 1000 sequences: a set of 1000 fits only just and keeps the 10% headroom
    # (it trained at 1000); a small set trains as one batch (it lost 10% for nothing)
    assert batch_with_headroom(lambda size: size <= 1000, n_seqs) == batch


def test_a_device_that_holds_one_sequence_trains_batches_of_one():
    """90% of 1 is 0: the batch stays 1 (0 divided the epoch's batch count by zero)."""
    assert batch_with_headroom(lambda size: size <= 1, 10) == 1


def test_the_search_never_probes_past_its_limit():
    """A start above the limit begins at the limit: a probe past it would ask the device for
    a batch the caller ruled out (and return it)."""
    probes = []

    def fits(size):
        probes.append(size)
        return size <= 7

    assert largest_fitting(fits, start=8, limit=5) == 5
    assert max(probes) == 5
