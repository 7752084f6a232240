"""Training and evaluation batch iterators over a GridDataset (official puzzle_dataset.py, `PuzzleDataset`).

Training batches follow the official composition: walk a random order of the groups; per group draw one random
variant (puzzle) and append all its examples in random order; pack into a fixed global batch, truncating the last
puzzle to fit; drop the ragged last batch. One call of `__iter__` is one official loader iteration
(`epochs_per_iter` passes over the groups), and the iteration counter starts at 1 as in the official code.

Group order and variant choice use the official Philox(seed + iteration) stream, so they match the official loader
draw for draw. The official code (puzzle_dataset.py, `_sample_batch`) takes the example order inside a puzzle from the
rank-seeded worker RNG, so ranks can disagree about a multi-example puzzle that straddles a rank boundary. Here that
order comes from a second generator keyed by (seed, iteration) as well: every rank builds the identical global batch
and keeps its slice [rank * local : (rank + 1) * local], so the slices always partition it.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from hybrid.core.losses import IGNORE_LABEL_ID
from hybrid.data.format import GridDataset



def _local_batch_size(global_batch_size: int, world_size: int, rank: int) -> int:
    if global_batch_size <= 0 or world_size <= 0 or global_batch_size % world_size:
        raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of world_size {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} must be in 0..{world_size - 1}")
    return global_batch_size // world_size


def _to_batch(ds: GridDataset, example_ids: np.ndarray, puzzle_ids: np.ndarray) -> dict[str, torch.Tensor]:
    inputs = torch.from_numpy(np.asarray(ds.inputs[example_ids], dtype=np.int64))
    labels = torch.from_numpy(np.asarray(ds.labels[example_ids], dtype=np.int64))
    if ds.metadata.ignore_label_id is not None:
        labels[labels == ds.metadata.ignore_label_id] = IGNORE_LABEL_ID
    identifiers = torch.from_numpy(ds.puzzle_identifiers[puzzle_ids].astype(np.int64))
    return {"inputs": inputs, "labels": labels, "puzzle_identifiers": identifiers}


def global_batch_plan(
    ds: GridDataset, *, global_batch_size: int, seed: int, iteration: int, epochs_per_iter: int = 1
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (example indices, puzzle indices) of every full global batch of one iteration, in order."""
    if ds.num_groups == 0:
        return []
    rng = np.random.Generator(np.random.Philox(seed=seed + iteration))
    group_order = np.concatenate([rng.permutation(ds.num_groups) for _ in range(epochs_per_iter)])
    # One vectorised draw gives the same stream as the official per-group scalar draws (checked in the tests).
    puzzles = rng.integers(ds.group_indices[group_order], ds.group_indices[group_order + 1])
    starts = ds.puzzle_indices[puzzles].astype(np.int64)
    sizes = ds.puzzle_indices[puzzles + 1].astype(np.int64) - starts
    ends = np.cumsum(sizes)

    # Flatten every chosen puzzle's examples, each puzzle's in its own random order.
    segment = np.repeat(np.arange(len(puzzles)), sizes)
    within = np.arange(ends[-1]) - np.repeat(ends - sizes, sizes)
    if np.any(sizes > 1):  # single-example puzzles (Sudoku, Maze) have nothing to shuffle
        order_rng = np.random.Generator(np.random.Philox(key=np.random.SeedSequence([seed, iteration]).generate_state(2)))
        shuffled = np.lexsort((order_rng.random(len(segment)), segment))
        within = within[shuffled]
    examples = np.repeat(starts, sizes) + within

    batches, first = [], 0  # first = flat position where the next batch starts
    while True:
        last_puzzle = int(np.searchsorted(ends, first + global_batch_size, side="left"))
        if last_puzzle == len(ends):
            return batches  # the ragged last batch is dropped
        rows = slice(first, first + global_batch_size)
        batches.append((examples[rows], puzzles[segment[rows]]))
        first = int(ends[last_puzzle])  # the rest of a truncated puzzle is dropped, as in the official loader


class TrainSampler:
    """Endless-by-iteration training batches of one rank; `state_dict()` after a batch resumes at the next batch."""

    def __init__(
        self,
        dataset: GridDataset,
        *,
        global_batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epochs_per_iter: int = 1,
    ):
        self.dataset = dataset
        self.global_batch_size = global_batch_size
        self.local_batch_size = _local_batch_size(global_batch_size, world_size, rank)
        self.seed, self.rank, self.epochs_per_iter = seed, rank, epochs_per_iter
        self.iteration = 1  # the iteration being (or about to be) produced
        self.batch = 0  # batches of it already handed out

    def batches_per_iter(self) -> int:
        return len(self._plan(self.iteration))

    def _plan(self, iteration: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return global_batch_plan(
            self.dataset,
            global_batch_size=self.global_batch_size,
            seed=self.seed,
            iteration=iteration,
            epochs_per_iter=self.epochs_per_iter,
        )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        plan = self._plan(self.iteration)
        if not plan:
            raise ValueError(
                f"dataset ({self.dataset.num_examples} examples) cannot fill one global batch of {self.global_batch_size}"
            )
        lo, hi = self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size
        for index in range(self.batch, len(plan)):
            examples, puzzles = plan[index]
            self.batch = index + 1  # counted before the yield so a state saved after using this batch skips it
            yield _to_batch(self.dataset, examples[lo:hi], puzzles[lo:hi])
        self.iteration, self.batch = self.iteration + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"iteration": self.iteration, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        missing = {"iteration", "batch"} - set(state)
        if missing:
            raise ValueError(f"sampler state is missing {sorted(missing)}; got keys {sorted(state)}")
        self.iteration, self.batch = int(state["iteration"]), int(state["batch"])


def eval_batches(
    dataset: GridDataset, *, global_batch_size: int, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Sequential (batch, mask) pairs of one rank; the last batch is padded (pad inputs, labels -100, blank puzzle id)
    and mask[b] is True for real rows."""
    local = _local_batch_size(global_batch_size, world_size, rank)
    meta = dataset.metadata
    # Example -> puzzle index, so every row carries its own puzzle identifier.
    example_puzzle = np.repeat(np.arange(dataset.num_puzzles), np.diff(dataset.puzzle_indices))
    for start in range(0, dataset.num_examples, global_batch_size):
        lo = min(start + rank * local, dataset.num_examples)
        hi = min(start + (rank + 1) * local, dataset.num_examples)
        ids = np.arange(lo, hi)
        batch = _to_batch(dataset, ids, example_puzzle[ids])
        real = hi - lo
        if real < local:
            pad = local - real
            batch["inputs"] = torch.cat([batch["inputs"], torch.full((pad, meta.seq_len), meta.pad_id)])
            batch["labels"] = torch.cat([batch["labels"], torch.full((pad, meta.seq_len), IGNORE_LABEL_ID)])
            batch["puzzle_identifiers"] = torch.cat(
                [batch["puzzle_identifiers"], torch.full((pad,), meta.blank_identifier_id)]
            )
        yield batch, torch.arange(local) < real
