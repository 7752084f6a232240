"""ARC scoring by voting over augmented copies (official TRM evaluators/arc.py, `ARC`).

Per test row: crop the argmax prediction and the input, undo the row's augmentation, identify the test input by the
hash of its un-augmented grid, and cast one vote for the predicted grid carrying sigmoid(q_halt). Candidates of one
(task, test input) are ranked by (vote count, mean halting confidence), so q_halt only breaks ties. pass@k asks whether
the ground truth is among the top k.

Two scoring rules, never chosen implicitly:
- "trm_fraction": a task scores the fraction of its test inputs solved; the metric is the mean over tasks (TRM).
- "hrm_all_or_nothing": a task counts only if all its test inputs are solved (HRM's arc_eval notebook).

An evaluator scores one evaluation: `result()` clears the stored votes. TRM's evaluator never clears them
(aggregated_voting, TRM issue #35), which silently ensembles every checkpoint evaluated so far; `pool=True` reproduces
that on purpose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from hybrid.data.arc import crop, grid_hash, parse_variant_name, undo_augment
from hybrid.data.format import read_identifiers

PASS_AT_K = (1, 2, 5, 10, 100, 1000)
SCORING_RULES = ("trm_fraction", "hrm_all_or_nothing")


@dataclass
class Candidate:
    """One distinct predicted grid of one test input, with its votes."""

    grid: np.ndarray
    count: int = 0
    q_sum: float = 0.0

    @property
    def mean_q(self) -> float:
        return self.q_sum / self.count


# (task id, hash of the un-augmented test input) -> {hash of predicted grid -> Candidate}
Votes = dict[tuple[str, str], dict[str, Candidate]]


def merge_votes(into: Votes, other: Votes) -> Votes:
    """Add `other`'s votes to `into` (counts and q sums add, so mean q equals the mean over all pooled rows)."""
    for key, candidates in other.items():
        mine = into.setdefault(key, {})
        for h, c in candidates.items():
            target = mine.setdefault(h, Candidate(grid=c.grid))
            target.count += c.count
            target.q_sum += c.q_sum
    return into


def rank_candidates(candidates: dict[str, Candidate]) -> list[tuple[str, Candidate]]:
    """Descending by (count, mean q); Python's stable sort keeps first-seen order on an exact tie."""
    return sorted(candidates.items(), key=lambda item: (item[1].count, item[1].mean_q), reverse=True)


@dataclass
class TestInput:
    input_hash: str
    output_hash: str


@dataclass
class ARCEvaluator:
    """Collects predictions of test rows and scores them against `<data_root>/test_puzzles.json`."""

    data_root: Path
    scoring: str
    # True keeps votes across result() calls: TRM's aggregated_voting, an implicit ensemble of every checkpoint
    # evaluated so far (TRM issue #35). Off unless asked for, so a reported pass@k belongs to one checkpoint.
    pool: bool = False
    ks: tuple[int, ...] = PASS_AT_K
    group: "dist.ProcessGroup | None" = None  # a Gloo group when the default group is NCCL (gather_object on CPU)
    votes: Votes = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.scoring not in SCORING_RULES:
            raise ValueError(f"scoring must be one of {SCORING_RULES}, got {self.scoring!r}")
        self.data_root = Path(self.data_root)
        self.identifiers = read_identifiers(self.data_root)
        path = self.data_root / "test_puzzles.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing test_puzzles.json (build the ARC dataset with hybrid.data.arc)")
        with path.open() as f:
            puzzles = json.load(f)
        self.tests: dict[str, list[TestInput]] = {
            task_id: [TestInput(_json_grid_hash(p["input"]), _json_grid_hash(p["output"])) for p in task["test"]]
            for task_id, task in puzzles.items()
        }

    def update(self, *, inputs, predictions, puzzle_identifiers, q_halt_logits) -> None:
        """Record one batch: inputs / predictions [B, 900] tokens, puzzle_identifiers [B], q_halt_logits [B].

        Rows with the blank identifier 0 are padding and are skipped."""
        inputs, predictions, ids, q = (_numpy(a) for a in (inputs, predictions, puzzle_identifiers, q_halt_logits))
        if not (len(inputs) == len(predictions) == len(ids) == len(q)):
            raise ValueError(
                f"batch sizes differ: inputs {len(inputs)}, predictions {len(predictions)}, "
                f"puzzle_identifiers {len(ids)}, q_halt_logits {len(q)}"
            )
        confidence = torch.sigmoid(torch.as_tensor(q, dtype=torch.float64)).numpy()
        for row in np.flatnonzero(ids != 0):
            pid = int(ids[row])
            if pid >= len(self.identifiers):
                raise ValueError(f"puzzle identifier {pid} is beyond identifiers.json ({len(self.identifiers)} names)")
            name = self.identifiers[pid]
            task_id, t, perm = parse_variant_name(name)
            if task_id not in self.tests:
                raise ValueError(f"puzzle {name!r} (id {pid}): task {task_id} is not in test_puzzles.json")
            input_hash = grid_hash(undo_augment(crop(inputs[row]), t, perm))
            if all(ti.input_hash != input_hash for ti in self.tests[task_id]):
                raise ValueError(
                    f"puzzle {name!r} (id {pid}): the un-augmented input matches none of task "
                    f"{task_id}'s test inputs; is this a test-split row of the dataset at {self.data_root}?"
                )
            grid = undo_augment(crop(predictions[row]), t, perm)
            candidate = self.votes.setdefault((task_id, input_hash), {}).setdefault(grid_hash(grid), Candidate(grid))
            candidate.count += 1
            candidate.q_sum += float(confidence[row])

    def result(self, *, submission_path: str | Path | None = None) -> dict[str, float] | None:
        """pass@k under `scoring` on rank 0 (None elsewhere); optionally write submission.json there.

        Every rank must call it: votes are gathered to rank 0 when torch.distributed is initialised."""
        votes = self._gather()
        if not self.pool:
            self.votes = {}
        if votes is None:
            return None
        ranked = {key: rank_candidates(c) for key, c in votes.items()}
        metrics = score(ranked, self.tests, ks=self.ks, scoring=self.scoring)
        if submission_path is not None:
            write_submission(submission_path, ranked, self.tests)
        return metrics

    def _gather(self) -> Votes | None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(self.group) == 1:
            return merge_votes({}, self.votes)
        rank = dist.get_rank(self.group)
        gathered = [None] * dist.get_world_size(self.group) if rank == 0 else None
        dst = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        dist.gather_object(self.votes, gathered, dst=dst, group=self.group)
        if rank != 0:
            return None
        pooled: Votes = {}
        for part in gathered:
            merge_votes(pooled, part)
        return pooled


def score(
    ranked: dict[tuple[str, str], list[tuple[str, Candidate]]],
    tests: dict[str, list[TestInput]],
    *,
    ks: tuple[int, ...] = PASS_AT_K,
    scoring: str,
) -> dict[str, float]:
    """pass@k averaged over every task of `tests` (a test input without predictions counts as unsolved)."""
    if scoring not in SCORING_RULES:
        raise ValueError(f"scoring must be one of {SCORING_RULES}, got {scoring!r}")
    if not tests:
        raise ValueError("no test tasks to score")
    totals = dict.fromkeys(ks, 0.0)
    for task_id, inputs in tests.items():
        for k in ks:
            solved = [
                any(h == ti.output_hash for h, _ in ranked.get((task_id, ti.input_hash), [])[:k]) for ti in inputs
            ]
            totals[k] += sum(solved) / len(solved) if scoring == "trm_fraction" else float(all(solved))
    return {f"pass@{k}": totals[k] / len(tests) for k in ks}


def submission(ranked: dict[tuple[str, str], list[tuple[str, Candidate]]], tests: dict[str, list[TestInput]]) -> dict:
    """ARC Prize format: {task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]} in test-input order.

    A test input with a single candidate repeats it as attempt_2 (the format requires both keys)."""
    out = {}
    for task_id, inputs in tests.items():
        attempts = []
        for i, ti in enumerate(inputs):
            top = ranked.get((task_id, ti.input_hash), [])[:2]
            if not top:
                raise ValueError(f"task {task_id} test input {i} has no prediction; cannot write a complete submission")
            grids = [c.grid.tolist() for _, c in top]
            attempts.append({"attempt_1": grids[0], "attempt_2": grids[-1]})
        out[task_id] = attempts
    return out


def write_submission(path: str | Path, ranked, tests: dict[str, list[TestInput]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(submission(ranked, tests)))
    return path


def _json_grid_hash(grid: list[list[int]]) -> str:
    return grid_hash(np.array(grid, dtype=np.uint8))


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64 if x.is_floating_point() else torch.int64).numpy()
    return np.asarray(x)


class ARCLoopEvaluator:
    """Adapter from the evaluation loop (`hybrid.eval.loop.evaluate`) to `ARCEvaluator`: feeds the final step's
    predictions of real rows. Make one per evaluation, so votes never pool across checkpoints."""

    def __init__(self, data_root: str | Path, *, scoring: str, submission_path: str | Path | None = None):
        self.votes = ARCEvaluator(data_root, scoring=scoring)
        self.submission_path = submission_path

    def update(self, batch: dict, outputs: dict, mask) -> None:
        mask = mask.to(batch["inputs"].device)
        self.votes.update(
            inputs=batch["inputs"][mask].cpu(),
            predictions=outputs["preds"][mask].cpu(),
            puzzle_identifiers=batch["puzzle_identifiers"][mask].cpu(),
            q_halt_logits=outputs["q_halt_logits"][mask].cpu(),
        )

    def result(self) -> dict[str, float]:
        return self.votes.result(submission_path=self.submission_path) or {}
