"""Resumable batch streams over an indexable dataset of examples (hybrid mode's text tasks).

Every rank draws the same permutation from one seeded generator and keeps its slice of each global batch, so the
ranks together see exactly the batches a single process would (the property the grid sampler has too).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

Collate = Callable[[list[dict]], dict[str, Tensor]]


class ShuffledBatches:
    """One epoch per `__iter__`: a fresh permutation (seed, epoch), global batches in order, the ragged end dropped."""

    def __init__(
        self, dataset: Sequence[dict], collate: Collate, *, global_batch_size: int, seed: int = 0, rank: int = 0,
        world_size: int = 1,
    ):
        if global_batch_size % world_size:
            raise ValueError(f"global batch {global_batch_size} is not divisible by {world_size} processes")
        if len(dataset) < global_batch_size:
            raise ValueError(f"{len(dataset)} training examples cannot fill one global batch of {global_batch_size}")
        self.dataset, self.collate = dataset, collate
        self.global_batch_size, self.local = global_batch_size, global_batch_size // world_size
        self.seed, self.rank = seed, rank
        self.epoch, self.batch = 0, 0

    def __len__(self) -> int:
        return len(self.dataset) // self.global_batch_size

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        order = np.random.Generator(np.random.Philox(key=[self.seed, self.epoch])).permutation(len(self.dataset))
        lo = self.rank * self.local
        for index in range(self.batch, len(self)):
            rows = order[index * self.global_batch_size :][lo : lo + self.local]
            self.batch = index + 1  # counted before the yield: a state saved after this batch resumes at the next
            yield self.collate([self.dataset[int(i)] for i in rows])
        self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


def padded_batches(
    dataset: Sequence[dict], collate: Collate, *, global_batch_size: int, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
    """Sequential (batch, real-row mask) pairs of one rank; the last batch is filled with copies of the first example
    whose labels are ignored, so every rank runs the same number of batches of one shape."""
    local = global_batch_size // world_size
    for start in range(0, len(dataset), global_batch_size):
        rows = [start + rank * local + i for i in range(local)]
        real = torch.tensor([r < len(dataset) for r in rows])
        batch = collate([dataset[r] if r < len(dataset) else dataset[0] for r in rows])
        labels = batch["labels"]
        batch["labels"] = torch.where(real.view((-1,) + (1,) * (labels.ndim - 1)), labels, -100)
        yield batch, real
