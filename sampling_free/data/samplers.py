"""The training batch stream: infinite, aspect-ratio grouped, and a pure function of the seed.

Each element is a list of ``(dataset index, hflip, size index)`` triples. Because augmentation choices come from
the sampler rather than from worker processes, a run resumed at iteration k sees exactly the batches an
uninterrupted run would (the stream is regenerated and its first k batches skipped, which costs index arithmetic
only), and a run split over several processes sees the same global batches as a single process.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch


class GroupedBatchStream(torch.utils.data.Sampler):
    def __init__(self, aspect_groups: Sequence[int], global_batch: int, *, seed: int, hflip_prob: float,
                 num_sizes: int, start_iter: int = 0, rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            raise ValueError(f"SOLVER.IMS_PER_BATCH={global_batch} is not divisible by {world_size} processes")
        if len(aspect_groups) == 0:
            raise ValueError("the training set is empty")
        self.groups = torch.as_tensor(list(aspect_groups))
        self.global_batch, self.seed, self.hflip_prob, self.num_sizes = global_batch, seed, hflip_prob, num_sizes
        self.start_iter, self.rank, self.world_size = start_iter, rank, world_size

    def global_batches(self) -> Iterator[list[tuple[int, bool, int]]]:
        buckets: dict[int, list[int]] = {}
        epoch = 0
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.groups), generator=g).tolist()
            flips = (torch.rand(len(order), generator=g) < self.hflip_prob).tolist()
            sizes = torch.randint(self.num_sizes, (len(order),), generator=g).tolist()
            for i, flip, size in zip(order, flips, sizes):
                bucket = buckets.setdefault(int(self.groups[i]), [])
                bucket.append((i, bool(flip), int(size)))
                if len(bucket) == self.global_batch:
                    yield list(bucket)
                    bucket.clear()
            epoch += 1

    def __iter__(self) -> Iterator[list[tuple[int, bool, int]]]:
        per_rank = self.global_batch // self.world_size
        for step, batch in enumerate(self.global_batches()):
            if step >= self.start_iter:
                yield batch[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __len__(self) -> int:  # infinite; DataLoader only needs this for progress estimates
        return 2**62


def aspect_groups(sizes: Sequence[tuple[int, int]], enabled: bool) -> list[int]:
    """Group 1 for landscape (w >= h), 0 for portrait; all 0 when grouping is off."""
    return [int(w >= h) if enabled else 0 for h, w in sizes]
