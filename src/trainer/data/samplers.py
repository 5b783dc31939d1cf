"""Samplers for one or many processes: a training order and augmentation that do not depend on the worker count,
and a validation split over ranks that neither pads nor drops.

Training. PyTorch's DistributedSampler shuffles with a generator seeded by seed + epoch, but the augmentation's
random draws come from each DataLoader worker's own RNG, so the same seed gives other crops with 0, 2 or 8
workers. `SeededDistributedSampler` yields `(index, sample_seed)` pairs, the seed a function of (seed, epoch,
index) only; `SeededDataset` seeds torch's and Python's RNGs with it around each sample's transform and restores
them afterwards (so the main process's RNG, used by dropout when there are no workers, is left as it was). The
same seed then gives the same batches whatever `data.num_workers` is. The order itself pads with repeats, as
DistributedSampler does, so that every rank takes the same number of optimizer steps.

Validation. DistributedSampler pads the set so every rank gets ceil(n / world_size) samples, counting some twice
(and `drop_last` would drop some instead). Lightning's `UnrepeatedDistributedSampler` gives rank r the samples
r, r + world_size, ... with no padding; the metrics sum their counts over ranks (torchmetrics' states), so the
reported top-1 is that of the whole set, as one process would compute it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["SeededDataset", "SeededDistributedSampler", "UnrepeatedDistributedSampler", "sample_seed"]

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads nearby (seed, epoch, index) far apart


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation in one epoch (splitmix64 of the three numbers)."""
    x = (seed * _MIX + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    return x >> 1


class SeededDistributedSampler(DistributedSampler):
    """DistributedSampler (shuffled by seed + epoch, padded to equal shares) that yields `(index, sample_seed)`.

    Works for one process too (`num_replicas=1, rank=0`). Lightning calls `set_epoch` at every epoch start and,
    since this is a DistributedSampler, does not replace it with its own; the data module sets it too, as each
    epoch's iterator is made (Lightning's call comes after that).

    `skip_next(n)`: the next iteration starts at this rank's n-th sample of the epoch (a run resumed in the middle
    of an epoch): the samples before it are never read. Later iterations start at 0 again. The length stays the
    epoch's, which is what Lightning counts the epoch's steps by.
    """

    _skip = 0

    def skip_next(self, samples: int) -> None:
        self._skip = max(int(samples), 0)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch, skip = self.epoch, self._skip
        self._skip = 0
        indices = list(super().__iter__())[skip:]
        return ((index, sample_seed(self.seed, epoch, index)) for index in indices)


class SeededDataset(Dataset):
    """`dataset[index]` with torch's and Python's RNGs seeded by the sampler's per-sample seed, then restored."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
