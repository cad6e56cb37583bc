"""Training samplers: shuffled per epoch from (seed, epoch) alone, so a run with the same seed repeats
exactly and a resumed run (encoderlab resume) continues mid-epoch with the batches it had not seen."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class _EpochSeeded:
    """The epoch bookkeeping both samplers share: `set_epoch` (Lightning calls it before each epoch;
    without it each iteration moves to the next epoch) and `resume_at`, which makes the iteration of one
    epoch skip what a resumed run already trained on."""

    seed: int
    epoch: int = 0
    _skip: tuple[int, int] | None = None  # (epoch, items to skip)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, items: int) -> None:
        """The next iteration of `epoch` starts after its first `items` items (batches or indices)."""
        self._skip = (epoch, items)

    def _begin(self) -> tuple[torch.Generator, int]:
        """The generator of the epoch being iterated and how many of its items to skip."""
        epoch, self.epoch = self.epoch, self.epoch + 1
        skip = 0
        if self._skip is not None and self._skip[0] == epoch:
            skip, self._skip = self._skip[1], None
        return torch.Generator().manual_seed(self.seed + epoch), skip


class EpochShuffleSampler(_EpochSeeded, Sampler[int]):
    """A random permutation of range(n) per epoch, drawn from seed + epoch (not from torch's global RNG,
    which dropout also draws from)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g, skip = self._begin()
        yield from torch.randperm(self.n, generator=g)[skip:].tolist()


class LengthGroupedBatchSampler(_EpochSeeded, Sampler[list[int]]):
    """Shuffle, cut into mega-batches of `batch_size * group_size` rows, sort each by length, then
    shuffle the resulting batches. Reseeded per epoch, so runs with the same seed repeat exactly."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, group_size: int = 50) -> None:
        self.lengths = torch.as_tensor(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_size = group_size
        self.epoch = 0

    @property
    def sampler(self) -> LengthGroupedBatchSampler:
        """Lightning calls set_epoch on a DataLoader's `batch_sampler.sampler` (not on the batch sampler)."""
        return self

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        g, skip = self._begin()
        order = torch.randperm(len(self.lengths), generator=g)
        mega = self.batch_size * self.group_size
        batches = []
        for start in range(0, len(order), mega):
            chunk = order[start : start + mega]
            chunk = chunk[torch.argsort(self.lengths[chunk], descending=True)]
            batches.extend(
                chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)
            )
        for i in torch.randperm(len(batches), generator=g).tolist()[skip:]:
            yield batches[i]
