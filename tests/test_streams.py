"""Batch streams of hybrid mode: length-bucketed batches are a deterministic, resumable shuffle of the same examples
that pads far less, and ranks together see the single-process global batches."""

import numpy as np
import torch

from hybrid.data.streams import BucketedBatches, ShuffledBatches, padded_batches
from hybrid.data.text_tasks import TextCollator

LENGTHS = np.random.default_rng(0).integers(30, 250, size=203).tolist()
DATA = [{"input_ids": [7] * n, "label": i} for i, n in enumerate(LENGTHS)]
COLLATE = TextCollator(pad_token_id=0)


def _ids(batch):
    return batch["labels"].tolist()


def _epoch(stream):
    return [_ids(b) for b in stream]


def test_bucketed_batches_cover_each_example_once_and_pad_little():
    stream = BucketedBatches(DATA, COLLATE, lengths=LENGTHS, global_batch_size=16, chunk_batches=4, seed=3)
    first = _epoch(stream)
    flat = [i for batch in first for i in batch]
    assert len(first) == len(stream) == 12 and len(flat) == len(set(flat)) == 192  # the ragged 11 dropped
    shuffled = _epoch(ShuffledBatches(DATA, COLLATE, global_batch_size=16, seed=3))

    def padded_tokens(batches):
        return sum(len(b) * max(LENGTHS[i] for i in b) for b in batches)

    real = sum(LENGTHS[i] for i in flat)
    assert padded_tokens(first) < 1.25 * real and padded_tokens(shuffled) > 1.5 * real
    assert _epoch(stream) != first  # a new epoch, a new order
    again = BucketedBatches(DATA, COLLATE, lengths=LENGTHS, global_batch_size=16, chunk_batches=4, seed=3)
    assert _epoch(again) == first  # deterministic in (seed, epoch)
    assert sorted(len(b) for b in first) == [16] * 12
    batch = next(iter(BucketedBatches(DATA, COLLATE, lengths=LENGTHS, global_batch_size=16, seed=3)))
    assert batch["input_ids"].shape[1] == max(LENGTHS[i] for i in _ids(batch))  # padded to its own longest only


def test_bucketed_batches_resume_exactly():
    def make():
        return BucketedBatches(DATA, COLLATE, lengths=LENGTHS, global_batch_size=16, seed=1)

    whole = make()
    reference = _epoch(whole) + _epoch(whole)
    stream = make()
    seen = []
    for batch in stream:
        seen.append(_ids(batch))
        if len(seen) == 5:
            break
    resumed = make()
    resumed.load_state_dict(stream.state_dict())
    seen += _epoch(resumed) + _epoch(resumed)
    assert seen == reference


def test_ranks_together_see_the_single_process_batches():
    single = _epoch(BucketedBatches(DATA, COLLATE, lengths=LENGTHS, global_batch_size=16, seed=2))
    ranks = [BucketedBatches(DATA, COLLATE, lengths=LENGTHS, global_batch_size=16, seed=2, rank=r, world_size=2)
             for r in range(2)]
    per_rank = [_epoch(r) for r in ranks]
    for whole, part0, part1 in zip(single, *per_rank):
        assert sorted(part0 + part1) == sorted(whole) and len(part0) == len(part1) == 8
        # each rank gets every other row of the length-sorted batch: equally long texts on both
        assert LENGTHS[part0[0]] >= LENGTHS[part1[0]] >= LENGTHS[part0[1]]


def test_padded_batches_in_length_order_cover_every_example_once():
    seen, shapes = [], []
    for batch, real in padded_batches(DATA, COLLATE, global_batch_size=16, lengths=LENGTHS):
        seen += [i for i, keep in zip(batch["labels"].tolist(), real.tolist()) if keep]
        shapes.append(batch["input_ids"].shape[1])
        assert torch.equal(batch["labels"] == -100, ~real)
    assert sorted(seen) == list(range(len(DATA))) and shapes[:-1] == sorted(shapes[:-1], reverse=True)
