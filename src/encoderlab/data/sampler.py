"""Length-grouped batching: batches of similar length waste less compute on padding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Shuffle, cut into mega-batches of `batch_size * group_size` rows, sort each by length, then
    shuffle the resulting batches. Reseeded per epoch, so runs with the same seed repeat exactly."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, group_size: int = 50) -> None:
        self.lengths = torch.as_tensor(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_size = group_size
        self.epoch = 0

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.lengths), generator=g)
        mega = self.batch_size * self.group_size
        batches = []
        for start in range(0, len(order), mega):
            chunk = order[start : start + mega]
            chunk = chunk[torch.argsort(self.lengths[chunk], descending=True)]
            batches.extend(
                chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)
            )
        for i in torch.randperm(len(batches), generator=g).tolist():
            yield batches[i]
