"""ARC voting evaluator: pass@k on hand-made votes, both scoring rules, pooling, submission.json, gather to rank 0."""

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hybrid.data.arc import augment, build_arc, grid_to_tokens, parse_variant_name
from hybrid.data.format import read_identifiers, read_split
from hybrid.eval.arc import ARCEvaluator, PASS_AT_K

WRONG_A = np.array([[9, 9], [9, 9]], dtype=np.uint8)
WRONG_B = np.array([[8]], dtype=np.uint8)


def grid(rng, colours=6):
    h, w = rng.integers(2, 6, size=2)
    return rng.integers(0, colours, size=(h, w)).tolist()


@pytest.fixture(scope="module")
def arc_root(tmp_path_factory):
    """Evaluation tasks A (two test inputs) and B (one), each with the original + 3 variants in the test split."""
    folder = tmp_path_factory.mktemp("arc")
    rng = np.random.default_rng(11)
    def task(num_tests):
        demos = [{"input": grid(rng), "output": grid(rng)} for _ in range(2)]
        return {"train": demos, "test": [{"input": grid(rng)} for _ in range(num_tests)]}

    tasks = {"A": task(2), "B": task(1)}
    solutions = {tid: [grid(rng) for _ in t["test"]] for tid, t in tasks.items()}
    (folder / "arc-agi_evaluation_challenges.json").write_text(json.dumps(tasks))
    (folder / "arc-agi_evaluation_solutions.json").write_text(json.dumps(solutions))
    return build_arc(input_file_prefix=folder / "arc-agi", subsets=["evaluation"], test_set_name="evaluation",
                     output_dir=folder / "built", num_aug=3, progress=False)


@pytest.fixture(scope="module")
def test_rows(arc_root):
    """The test split as a list of (row, task, test index, t, perm) plus its arrays."""
    ds = read_split(arc_root, "test", mmap=False)
    names = read_identifiers(arc_root)
    puzzles = json.loads((arc_root / "test_puzzles.json").read_text())
    rows = []
    for p, pid in enumerate(ds.puzzle_identifiers):
        task, t, perm = parse_variant_name(names[pid])
        for i, row in enumerate(range(ds.puzzle_indices[p], ds.puzzle_indices[p + 1])):
            rows.append(dict(row=row, pid=int(pid), task=task, test=i, t=t, perm=perm))
    return ds, rows, puzzles


def prediction_tokens(original_grid, r) -> np.ndarray:
    """What a model would output for row r if its answer, un-augmented, were `original_grid`."""
    return grid_to_tokens(augment(np.asarray(original_grid, dtype=np.uint8), r["t"], r["perm"]))


def batch(test_rows, plan):
    """plan: list of (task, test index, variant number, answer grid or 'truth', q_halt logit), in row order given."""
    ds, rows, puzzles = test_rows
    picked = {}
    for r in rows:
        picked.setdefault((r["task"], r["test"]), []).append(r)
    inputs, preds, ids, q = [], [], [], []
    for task, test, variant, answer, logit in plan:
        r = picked[(task, test)][variant]
        truth = puzzles[task]["test"][test]["output"]
        inputs.append(ds.inputs[r["row"]])
        preds.append(prediction_tokens(truth if isinstance(answer, str) else answer, r))
        ids.append(r["pid"])
        q.append(logit)
    # A padding row (blank id 0) as the test loader appends; it must be ignored.
    inputs.append(np.zeros(900, np.uint8))
    preds.append(np.zeros(900, np.uint8))
    ids.append(0)
    q.append(50.0)
    return dict(inputs=torch.tensor(np.stack(inputs)), predictions=torch.tensor(np.stack(preds)),
                puzzle_identifiers=torch.tensor(ids), q_halt_logits=torch.tensor(q))


# A0: truth and WRONG_A get two votes each; WRONG_A has the higher mean q, so it ranks first.
# A1: truth wins on count. B: WRONG_B x2 first; truth x1 (high q) ties WRONG_A x1 (low q, seen first) and wins on q.
HAND_PLAN = [
    ("A", 0, 0, "truth", -1.0), ("A", 0, 1, "truth", -1.0), ("A", 0, 2, WRONG_A, 2.0), ("A", 0, 3, WRONG_A, 2.0),
    ("A", 1, 0, "truth", 0.0), ("A", 1, 1, "truth", 0.0), ("A", 1, 2, "truth", 0.0), ("A", 1, 3, WRONG_A, 9.0),
    ("B", 0, 0, WRONG_B, 0.0), ("B", 0, 1, WRONG_B, 0.0), ("B", 0, 2, WRONG_A, -3.0), ("B", 0, 3, "truth", 3.0),
]


def test_hand_votes_give_known_pass_at_k_under_both_rules(arc_root, test_rows):
    trm = ARCEvaluator(arc_root, scoring="trm_fraction")
    hrm = ARCEvaluator(arc_root, scoring="hrm_all_or_nothing")
    for ev in (trm, hrm):
        ev.update(**batch(test_rows, HAND_PLAN))
    trm_result, hrm_result = trm.result(), hrm.result()
    # trm: A scores 1/2 at k=1 (A1 only), B 0 -> 0.25; hrm: A needs both -> 0.
    assert trm_result["pass@1"] == pytest.approx(0.25)
    assert hrm_result["pass@1"] == 0.0
    for k in PASS_AT_K[1:]:
        assert trm_result[f"pass@{k}"] == 1.0 and hrm_result[f"pass@{k}"] == 1.0
    assert set(trm_result) == {f"pass@{k}" for k in PASS_AT_K}


def test_all_correct_predictions_through_every_augmentation(arc_root, test_rows):
    _, rows, _ = test_rows
    plan = [(task, test, v, "truth", 0.0) for task, test in {(r["task"], r["test"]) for r in rows} for v in range(4)]
    ev = ARCEvaluator(arc_root, scoring="hrm_all_or_nothing")
    ev.update(**batch(test_rows, plan))
    assert ev.result()["pass@1"] == 1.0


def test_missing_predictions_count_as_unsolved(arc_root, test_rows):
    ev = ARCEvaluator(arc_root, scoring="trm_fraction")
    ev.update(**batch(test_rows, [("B", 0, 0, "truth", 0.0)]))
    assert ev.result()["pass@1"] == pytest.approx(0.5)  # A has no votes: 0; B: 1


def test_votes_are_cleared_between_evaluations_unless_pool(arc_root, test_rows):
    inputs = [("A", 0), ("A", 1), ("B", 0)]
    wrong_everywhere = [(task, test, v, WRONG_B, 0.0) for task, test in inputs for v in range(4)]
    right_once = [(task, test, 0, "truth", 0.0) for task, test in inputs]
    fresh = ARCEvaluator(arc_root, scoring="trm_fraction")
    fresh.update(**batch(test_rows, right_once))
    assert fresh.result()["pass@1"] == 1.0
    fresh.update(**batch(test_rows, wrong_everywhere))
    assert fresh.result()["pass@1"] == 0.0 and fresh.result()["pass@2"] == 0.0

    pooled = ARCEvaluator(arc_root, scoring="trm_fraction", pool=True)
    pooled.update(**batch(test_rows, right_once))
    pooled.result()
    pooled.update(**batch(test_rows, wrong_everywhere))
    second = pooled.result()
    assert second["pass@1"] == 0.0 and second["pass@2"] == 1.0  # the first round's votes are still there


def test_submission_json_format(arc_root, test_rows, tmp_path):
    ev = ARCEvaluator(arc_root, scoring="trm_fraction")
    plan = HAND_PLAN[:4] + [("A", 1, 0, "truth", 0.0)] + [("B", 0, 0, WRONG_B, 0.0)] * 2 + [("B", 0, 3, "truth", 1.0)]
    ev.update(**batch(test_rows, plan))
    path = tmp_path / "sub" / "submission.json"
    ev.result(submission_path=path)
    sub = json.loads(path.read_text())
    _, _, puzzles = test_rows
    assert set(sub) == {"A", "B"} and [len(sub["A"]), len(sub["B"])] == [2, 1]
    for attempts in sub.values():
        for a in attempts:
            assert set(a) == {"attempt_1", "attempt_2"}
            assert all(isinstance(row, list) and all(isinstance(c, int) for c in row) for g in a.values() for row in g)
    assert sub["A"][0] == {"attempt_1": WRONG_A.tolist(), "attempt_2": puzzles["A"]["test"][0]["output"]}
    truth_a1 = puzzles["A"]["test"][1]["output"]
    assert sub["A"][1] == {"attempt_1": truth_a1, "attempt_2": truth_a1}  # a single candidate fills both attempts
    assert sub["B"][0] == {"attempt_1": WRONG_B.tolist(), "attempt_2": puzzles["B"]["test"][0]["output"]}

    incomplete = ARCEvaluator(arc_root, scoring="trm_fraction")
    incomplete.update(**batch(test_rows, HAND_PLAN[:4] + HAND_PLAN[8:]))
    with pytest.raises(ValueError, match="task A test input 1 has no prediction"):
        incomplete.result(submission_path=tmp_path / "bad.json")


def test_bad_input(arc_root, test_rows, tmp_path):
    with pytest.raises(ValueError, match="scoring must be one of"):
        ARCEvaluator(arc_root, scoring="mean")
    ev = ARCEvaluator(arc_root, scoring="trm_fraction")
    b = batch(test_rows, HAND_PLAN[:1])
    b["inputs"][0] = torch.tensor(grid_to_tokens(np.full((3, 3), 4, np.uint8)))
    with pytest.raises(ValueError, match="matches none of task A's test inputs"):
        ev.update(**b)
    b = batch(test_rows, HAND_PLAN[:1])
    b["puzzle_identifiers"][0] = 10_000
    with pytest.raises(ValueError, match="puzzle identifier 10000 is beyond identifiers.json"):
        ev.update(**b)
    b = batch(test_rows, HAND_PLAN[:2])
    b["q_halt_logits"] = b["q_halt_logits"][:1]
    with pytest.raises(ValueError, match="batch sizes differ"):
        ev.update(**b)
    no_puzzles = tmp_path / "no_puzzles"
    no_puzzles.mkdir()
    (no_puzzles / "identifiers.json").write_bytes((arc_root / "identifiers.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="no_puzzles/test_puzzles.json: missing"):
        ARCEvaluator(no_puzzles, scoring="trm_fraction")


def _gather_worker(rank, world, init_file, arc_root, plan_parts, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ev = ARCEvaluator(arc_root, scoring="trm_fraction")
        ev.update(**plan_parts[rank])
        results[rank] = ev.result()
    finally:
        dist.destroy_process_group()


@pytest.mark.multiprocess
def test_two_ranks_gather_to_rank_zero(arc_root, test_rows, tmp_path):
    # Each rank holds half of the votes; apart they would rank differently (A0's truth only wins with both halves).
    halves = [
        [("A", 0, 0, "truth", 0.0), ("A", 0, 2, WRONG_A, 1.0), ("A", 1, 0, "truth", 0.0)],
        [("A", 0, 1, "truth", 0.0), ("B", 0, 0, "truth", 0.0)],
    ]
    single = ARCEvaluator(arc_root, scoring="trm_fraction")
    for h in halves:
        single.update(**batch(test_rows, h))
    expected = single.result()
    assert expected["pass@1"] == 1.0
    results = mp.Manager().dict()
    parts = [batch(test_rows, h) for h in halves]
    mp.spawn(_gather_worker, args=(2, tmp_path / "init", arc_root, parts, results), nprocs=2)
    assert results[1] is None
    assert results[0] == expected
