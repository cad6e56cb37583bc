"""Batch samplers: the training order of each epoch comes from (seed, epoch) alone, so a run with the same
seed repeats exactly, a resumed run (encoderlab resume) continues mid-epoch with the batches it had not
seen, and the processes of a distributed run share one global order.

With `num_replicas` processes (DDP), the samplers cut the epoch into *global* batches of
`batch_size * num_replicas` rows, exactly the batches a one-process run with that batch size would train
on, and give process `rank` its contiguous part of each: every process gets the same number of batches,
and together they see each row of the epoch once (a last global batch with fewer rows than processes
repeats one row so that no process is left without a batch)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def rank_part(batch: list[int], rank: int, num_replicas: int) -> list[int]:
    """Process `rank`'s contiguous share of a global batch (sizes differ by at most one row)."""
    if num_replicas == 1:
        return batch
    n = len(batch)
    start, stop = rank * n // num_replicas, (rank + 1) * n // num_replicas
    return batch[start:stop] or batch[-1:]


class _EpochBatches(Sampler[list[int]]):
    """The bookkeeping both samplers share: `set_epoch` (Lightning calls it before each epoch; without it
    each iteration moves to the next epoch), `resume_at` (the iteration of one epoch skips the batches a
    resumed run already trained on) and the split of global batches between processes."""

    def __init__(self, n: int, batch_size: int, seed: int, num_replicas: int, rank: int) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.n = n
        self.batch_size = batch_size  # per process
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, batches to skip)

    @property
    def sampler(self) -> _EpochBatches:
        """Lightning calls set_epoch on a DataLoader's `batch_sampler.sampler` (not on the batch sampler)."""
        return self

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches: int) -> None:
        """The next iteration of `epoch` starts after its first `batches` batches."""
        self._skip = (epoch, batches)

    def __len__(self) -> int:
        return (self.n + self.global_batch_size - 1) // self.global_batch_size

    def global_batches(self, g: torch.Generator) -> list[list[int]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        skip = 0
        if self._skip is not None and self._skip[0] == epoch:
            skip, self._skip = self._skip[1], None
        # drawn from seed + epoch, not from torch's global RNG (which dropout draws from)
        batches = self.global_batches(torch.Generator().manual_seed(self.seed + epoch))
        for batch in batches[skip:]:
            yield rank_part(batch, self.rank, self.num_replicas)


class EpochShuffleSampler(_EpochBatches):
    """A random permutation of range(n) per epoch, cut into batches."""

    def global_batches(self, g: torch.Generator) -> list[list[int]]:
        order = torch.randperm(self.n, generator=g).tolist()
        size = self.global_batch_size
        return [order[i : i + size] for i in range(0, self.n, size)]


def balance_groups(labels: np.ndarray) -> np.ndarray:
    """The class each row is balanced by: its label (single-label, (N,) ids), or its rarest positive label
    (multi-label, (N, C) 0/1), -1 for a row with no label on (a group of its own)."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels.astype(np.int64)
    on = labels > 0
    counts = on.sum(axis=0)
    rarity = np.where(on, counts[None, :], np.iinfo(np.int64).max)  # the rarest label has the least rows
    return np.where(on.any(axis=1), rarity.argmin(axis=1), -1).astype(np.int64)


class BalancedSampler(_EpochBatches):
    """Each epoch draws n rows with replacement, a row with probability inverse to its class's rows (see
    balance_groups), so every class is drawn about equally often; the same epoch length as a shuffle."""

    def __init__(
        self, groups: Sequence[int], batch_size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__(len(groups), batch_size, seed, num_replicas, rank)
        groups_t = torch.as_tensor(np.asarray(groups), dtype=torch.long)
        _, inverse, counts = torch.unique(groups_t, return_inverse=True, return_counts=True)
        self.row_weights = 1.0 / counts[inverse].double()

    def global_batches(self, g: torch.Generator) -> list[list[int]]:
        order = torch.multinomial(self.row_weights, self.n, replacement=True, generator=g).tolist()
        size = self.global_batch_size
        return [order[i : i + size] for i in range(0, self.n, size)]


class LengthGroupedBatchSampler(_EpochBatches):
    """Shuffle, cut into mega-batches of `batch_size * group_size` rows, sort each by length, cut into
    batches, then shuffle the batches: batches of similar lengths (little padding) in random order."""

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        group_size: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(len(lengths), batch_size, seed, num_replicas, rank)
        self.lengths = torch.as_tensor(lengths)
        self.group_size = group_size

    def global_batches(self, g: torch.Generator) -> list[list[int]]:
        order = torch.randperm(self.n, generator=g)
        size = self.global_batch_size
        mega = size * self.group_size
        batches = []
        for start in range(0, self.n, mega):
            chunk = order[start : start + mega]
            chunk = chunk[torch.argsort(self.lengths[chunk], descending=True)]
            batches.extend(chunk[i : i + size].tolist() for i in range(0, len(chunk), size))
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def eval_batches(
    n: int, batch_size: int, lengths: Sequence[int] | None = None, num_replicas: int = 1, rank: int = 0
) -> list[list[int]]:
    """Process `rank`'s batches of a validation/test split of `n` rows: longest rows first when `lengths`
    is given (padding then only fills up to similar-length neighbours), else in dataset order. Processes
    take whole batches in turn and no row is repeated, so metrics gathered over processes count each row
    once."""
    if lengths is not None:
        order = torch.argsort(torch.as_tensor(lengths), descending=True, stable=True).tolist()
    else:
        order = list(range(n))
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if num_replicas > 1 and len(batches) < num_replicas:  # too few batches: a share of the rows each
        batches = [order[r * n // num_replicas : (r + 1) * n // num_replicas] for r in range(num_replicas)]
    return [b for b in batches[rank::num_replicas] if b]
