import numpy as np
import pytest
import torch

from hybrid.data.format import DatasetMetadata, GridDataset, read_split
from hybrid.core.losses import IGNORE_LABEL_ID
from hybrid.data.sampler import TrainSampler, eval_batches, global_batch_plan


def _dataset(puzzle_sizes_per_group: list[list[int]]) -> GridDataset:
    """Example e has every token equal to e % 250 + 1 in inputs; labels hold 0 (ignore) in column 0."""
    sizes = [s for group in puzzle_sizes_per_group for s in group]
    examples = sum(sizes)
    inputs = np.repeat((np.arange(examples) % 250 + 1)[:, None], 3, axis=1).astype(np.uint8)
    labels = inputs.copy()
    labels[:, 0] = 0
    meta = DatasetMetadata(seq_len=3, vocab_size=256, pad_id=0, ignore_label_id=0, blank_identifier_id=0,
                           num_puzzle_identifiers=len(sizes) + 1, total_groups=len(puzzle_sizes_per_group),
                           mean_puzzle_examples=examples / len(sizes), total_puzzles=len(sizes), sets=["all"])
    return GridDataset(inputs=inputs, labels=labels, puzzle_identifiers=np.arange(1, len(sizes) + 1, dtype=np.int32),
                       puzzle_indices=np.concatenate([[0], np.cumsum(sizes)]),
                       group_indices=np.concatenate([[0], np.cumsum([len(g) for g in puzzle_sizes_per_group])]),
                       metadata=meta)


def _official_composition(ds, global_batch_size, seed, iteration):
    """Group order / variant choice as the official loader draws them (scalar draws, one per group)."""
    rng = np.random.Generator(np.random.Philox(seed=seed + iteration))
    order = rng.permutation(ds.num_groups)
    return [int(rng.integers(ds.group_indices[g], ds.group_indices[g + 1])) for g in order]


def test_batch_composition_follows_official_rules():
    rng = np.random.default_rng(0)
    groups = [[int(s) for s in rng.integers(1, 6, size=rng.integers(1, 4))] for _ in range(40)]
    ds = _dataset(groups)
    plan = global_batch_plan(ds, global_batch_size=8, seed=3, iteration=1)
    chosen = _official_composition(ds, 8, 3, 1)
    walked = [p for _, puzzles in plan for p in dict.fromkeys(puzzles.tolist())]
    assert walked == chosen[: len(walked)]  # puzzles appear in the official order, one variant per group
    sizes = np.diff(ds.puzzle_indices)
    for b, (examples, puzzles) in enumerate(plan):
        assert len(examples) == 8
        for p in np.unique(puzzles):
            rows = examples[puzzles == p]
            assert np.all((rows >= ds.puzzle_indices[p]) & (rows < ds.puzzle_indices[p + 1]))
            assert len(np.unique(rows)) == len(rows)
            if p != puzzles[-1]:
                assert len(rows) == sizes[p]  # only the last puzzle of a batch may be truncated
    full_batches, filled = 0, 0
    for p in chosen:  # packing walk: truncate the puzzle that overflows, drop the ragged rest
        filled += min(sizes[p], 8 - filled)
        if filled == 8:
            full_batches, filled = full_batches + 1, 0
    assert len(plan) == full_batches


def test_rank_slices_partition_the_global_batch():
    ds = _dataset([[3, 2], [4], [1, 1, 5], [2]] * 10)
    full = [b["inputs"][:, 0] for b in TrainSampler(ds, global_batch_size=12, seed=1)]
    parts = [[b["inputs"][:, 0] for b in TrainSampler(ds, global_batch_size=12, seed=1, rank=r, world_size=3)]
             for r in range(3)]
    assert len(full) > 1
    for i, whole in enumerate(full):
        torch.testing.assert_close(torch.cat([parts[r][i] for r in range(3)]), whole)


def test_state_restore_gives_the_same_next_batches():
    ds = _dataset([[2, 3], [1], [4, 1]] * 8)
    sampler = TrainSampler(ds, global_batch_size=6, seed=7)
    stream, lengths = [], []
    for _ in range(3):
        stream.extend(sampler)
        lengths.append(len(stream) - sum(lengths))
    reference = TrainSampler(ds, global_batch_size=6, seed=7)
    it = iter(reference)
    for _ in range(2):
        next(it)
    state = reference.state_dict()
    resumed = TrainSampler(ds, global_batch_size=6, seed=7)
    resumed.load_state_dict(state)
    replay = list(resumed) + list(resumed)
    assert len(replay) == lengths[0] - 2 + lengths[1]
    for got, want in zip(replay, stream[2:]):
        for key in want:
            torch.testing.assert_close(got[key], want[key])
    assert resumed.state_dict()["iteration"] == 3


def test_labels_ignore_mapping_and_identifiers():
    ds = _dataset([[1], [2]] * 4)
    batch = next(iter(TrainSampler(ds, global_batch_size=4)))
    assert torch.all(batch["labels"][:, 0] == IGNORE_LABEL_ID) and torch.all(batch["labels"][:, 1:] > 0)
    rows = batch["inputs"][:, 0].numpy() - 1
    puzzle_of_row = np.searchsorted(ds.puzzle_indices, rows, side="right") - 1
    np.testing.assert_array_equal(batch["puzzle_identifiers"].numpy(), ds.puzzle_identifiers[puzzle_of_row])


def test_eval_batches_are_sequential_and_padded():
    ds = _dataset([[2], [3], [1]])  # 6 examples
    seen = []
    for rank in range(2):
        for batch, mask in eval_batches(ds, global_batch_size=4, rank=rank, world_size=2):
            assert batch["inputs"].shape == (2, 3)
            seen.extend(batch["inputs"][mask, 0].tolist())
            assert torch.all(batch["inputs"][~mask] == 0) and torch.all(batch["labels"][~mask] == IGNORE_LABEL_ID)
            assert torch.all(batch["puzzle_identifiers"][~mask] == 0)
    assert sorted(seen) == list(range(1, 7))


def test_sudoku_batches_match_official_order(data_dir):
    ds = read_split(data_dir / "sudoku-extreme/real-train-1k", "train")
    batches = list(TrainSampler(ds, global_batch_size=64, seed=0))
    assert len(batches) == 1000 // 64
    order = _official_composition(ds, 64, 0, 1)
    np.testing.assert_array_equal(batches[0]["inputs"].numpy(), np.asarray(ds.inputs[order[:64]], dtype=np.int64))


def test_bad_batch_configuration_is_rejected():
    ds = _dataset([[1]] * 4)
    with pytest.raises(ValueError, match="multiple of world_size"):
        TrainSampler(ds, global_batch_size=5, world_size=2)
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        next(iter(TrainSampler(ds, global_batch_size=8)))
