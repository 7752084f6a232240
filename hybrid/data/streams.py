"""Resumable batch streams over an indexable dataset of examples (hybrid mode's text tasks).

Every rank draws the same permutation from one seeded generator and keeps its slice of each global batch, so the
ranks together see exactly the batches a single process would (the property the grid sampler has too).
`BucketedBatches` groups texts of similar length into a batch, so that a collator padding each batch to its own
longest text (`TextCollator(pad_to=None)`) computes little padding.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from hybrid.core.losses import IGNORE_LABEL_ID

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
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.batch = 0, 0

    def __len__(self) -> int:
        return len(self.dataset) // self.global_batch_size

    def _generator(self) -> np.random.Generator:
        return np.random.Generator(np.random.Philox(key=[self.seed, self.epoch]))

    def global_batches(self) -> list[np.ndarray]:
        """This epoch's global batches (example indices) in order: consecutive slices of a permutation."""
        order = self._generator().permutation(len(self.dataset))
        return [order[i * self.global_batch_size : (i + 1) * self.global_batch_size] for i in range(len(self))]

    def local_rows(self, rows: np.ndarray) -> np.ndarray:
        return rows[self.rank * self.local : (self.rank + 1) * self.local]

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        batches = self.global_batches()
        for index in range(self.batch, len(batches)):
            self.batch = index + 1  # counted before the yield: a state saved after this batch resumes at the next
            yield self.collate([self.dataset[int(i)] for i in self.local_rows(batches[index])])
        self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


class BucketedBatches(ShuffledBatches):
    """Length-bucketed global batches: each epoch's permutation is cut into chunks of `chunk_batches` global batches,
    each chunk sorted by length (longest first) and cut into batches, and the batches then shuffled. Batches stay
    random in which texts they hold and when they come, but hold texts of similar length.

    Deterministic in (seed, epoch) and resumable like `ShuffledBatches`; every rank builds the same global batches
    and keeps every world_size-th row of its length-sorted rows, so ranks get equally long texts. lengths: the token
    count of each example (e.g. `CachedFeatureDataset.lengths`). A larger chunk pads less and mixes less.
    """

    def __init__(
        self, dataset: Sequence[dict], collate: Collate, *, lengths: Sequence[int], global_batch_size: int,
        chunk_batches: int = 16, seed: int = 0, rank: int = 0, world_size: int = 1,
    ):
        super().__init__(dataset, collate, global_batch_size=global_batch_size, seed=seed, rank=rank,
                         world_size=world_size)
        if len(lengths) != len(dataset):
            raise ValueError(f"{len(lengths)} lengths for {len(dataset)} examples")
        if chunk_batches < 1:
            raise ValueError(f"chunk_batches must be >= 1, got {chunk_batches}")
        self.lengths = np.asarray(lengths)
        self.chunk_batches = chunk_batches

    def global_batches(self) -> list[np.ndarray]:
        generator = self._generator()
        order = generator.permutation(len(self.dataset))[: len(self) * self.global_batch_size]
        chunk = self.chunk_batches * self.global_batch_size
        batches = []
        for start in range(0, len(order), chunk):
            rows = order[start : start + chunk]
            rows = rows[np.argsort(-self.lengths[rows], kind="stable")]
            batches += [rows[i : i + self.global_batch_size] for i in range(0, len(rows), self.global_batch_size)]
        return [batches[i] for i in generator.permutation(len(batches))]

    def local_rows(self, rows: np.ndarray) -> np.ndarray:
        return rows[self.rank :: self.world_size]


def padded_batches(
    dataset: Sequence[dict], collate: Collate, *, global_batch_size: int, rank: int = 0, world_size: int = 1,
    lengths: Sequence[int] | None = None,
) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
    """Sequential (batch, real-row mask) pairs of one rank; the last batch is filled with copies of the first example
    whose labels are ignored, so every rank runs the same number of batches of one shape. With `lengths` the
    examples go longest first, so that a collator padding each batch to its own longest text pads little (the
    metrics are sums over examples: the order does not change them)."""
    local = global_batch_size // world_size
    order = np.argsort(-np.asarray(lengths), kind="stable") if lengths is not None else np.arange(len(dataset))
    for start in range(0, len(dataset), global_batch_size):
        rows = [start + rank * local + i for i in range(local)]
        real = torch.tensor([r < len(dataset) for r in rows])
        batch = collate([dataset[int(order[r])] if r < len(dataset) else dataset[0] for r in rows])
        labels = batch["labels"]
        batch["labels"] = torch.where(real.view((-1,) + (1,) * (labels.ndim - 1)), labels, IGNORE_LABEL_ID)
        yield batch, real
