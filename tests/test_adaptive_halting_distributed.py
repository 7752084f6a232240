"""Adaptive halting with two CPU processes (gloo): ranks whose examples halt at different steps, and with different
numbers of batches, all finish, and every rank gets the result of one process over all the data."""

import json
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
from test_depth import scripted_batch, scripted_head

from hybrid.eval.depth import adaptive_evaluate

MAX_STEPS = 6
# Rank 0 halts early on one batch; rank 1 halts late on two batches.
RANK_DATA = {
    0: [([1, 1, 2, 3], [1, 2, 1, 2])],
    1: [([2, 5, 6, 9], [5, 6, 4, 6]), ([1, 3], [3, 5])],
}


def rank_batches(rank: int):
    return [scripted_batch(settle, halt_at, seed=10 * rank + i) for i, (settle, halt_at) in enumerate(RANK_DATA[rank])]


def worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        reasoner, head = scripted_head(MAX_STEPS)
        result = adaptive_evaluate(head, rank_batches(rank), max_steps=MAX_STEPS, threshold=0.0, world_size=2)
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"result": result, "batch_sizes": reasoner.batch_sizes}, f)
    finally:
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
def test_two_ranks_halting_at_different_steps(tmp_path):
    context = mp.start_processes(worker, args=(free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 180
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("adaptive halting did not finish on 2 ranks within 180 s (a rank is waiting forever)")

    _, head = scripted_head(MAX_STEPS)
    expected = adaptive_evaluate(head, rank_batches(0) + rank_batches(1), max_steps=MAX_STEPS, threshold=0.0)
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for run in runs:
        assert run["result"] == pytest.approx(expected)
    assert expected["count"] == 10 and 0 < expected["halted_early"] < 1
    # Real shrinking, and a finished rank runs no forward while the other is still working.
    assert runs[0]["batch_sizes"] == [4, 2]
    assert runs[1]["batch_sizes"] == [4, 4, 4, 4, 3, 2, 2, 2, 2, 1, 1]
