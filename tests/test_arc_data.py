"""ARC builder: augmentations and inverses, canvas layout, crop, routing, determinism, published counts, bad input."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from hybrid.data.arc import (
    ARCDataError,
    AugmentationShortfallWarning,
    augment,
    augmentation_plans,
    build_arc,
    colour,
    crop,
    dihedral,
    grid_to_tokens,
    inverse_colour,
    inverse_dihedral,
    load_subset,
    pairs_hash,
    parse_variant_name,
    undo_augment,
    variant_name,
)
from hybrid.data.format import read_identifiers, read_split


def random_perm(rng) -> np.ndarray:
    return np.concatenate(([0], rng.permutation(9) + 1)).astype(np.uint8)


def random_task(rng, num_demos=3, num_tests=1, colours=5) -> dict:
    def grid():
        h, w = rng.integers(2, 7, size=2)
        return rng.integers(0, colours, size=(h, w)).tolist()

    return {
        "train": [{"input": grid(), "output": grid()} for _ in range(num_demos)],
        "test": [{"input": grid()} for _ in range(num_tests)],
        "solutions": [grid() for _ in range(num_tests)],
    }


def write_subset(folder: Path, subset: str, tasks: dict) -> None:
    challenges = {tid: {"train": t["train"], "test": t["test"]} for tid, t in tasks.items()}
    solutions = {tid: t["solutions"] for tid, t in tasks.items()}
    (folder / f"arc-agi_{subset}_challenges.json").write_text(json.dumps(challenges))
    (folder / f"arc-agi_{subset}_solutions.json").write_text(json.dumps(solutions))


@pytest.fixture
def small_arc(tmp_path) -> Path:
    """Two subsets of hand-made tasks: 'training' (3 tasks) and 'evaluation' (2 tasks, one with 2 test inputs)."""
    rng = np.random.default_rng(7)
    write_subset(tmp_path, "training", {f"tr{i}": random_task(rng) for i in range(3)})
    write_subset(tmp_path, "evaluation", {"ev0": random_task(rng, num_tests=2), "ev1": random_task(rng)})
    return tmp_path


def build_small(prefix_dir: Path, out: Path, **kw) -> Path:
    args = dict(subsets=["training", "evaluation"], test_set_name="evaluation", num_aug=3, progress=False)
    args.update(kw)
    return build_arc(input_file_prefix=prefix_dir / "arc-agi", output_dir=out, **args)


# --- augmentations ---------------------------------------------------------------------------------------------------


def test_dihedral_matches_numpy_rot90_convention():
    x = np.array([[1, 2, 3], [4, 5, 6]])
    expected = [
        x,
        [[3, 6], [2, 5], [1, 4]],  # counter-clockwise quarter turn
        [[6, 5, 4], [3, 2, 1]],
        [[4, 1], [5, 2], [6, 3]],
        [[3, 2, 1], [6, 5, 4]],
        [[4, 5, 6], [1, 2, 3]],
        [[1, 4], [2, 5], [3, 6]],
        [[6, 3], [5, 2], [4, 1]],  # anti-diagonal reflection
    ]
    for t, e in enumerate(expected):
        np.testing.assert_array_equal(dihedral(x, t), np.array(e), err_msg=f"t{t}")


def test_every_augmentation_then_inverse_is_identity_on_non_square_grids():
    rng = np.random.default_rng(0)
    for shape in [(3, 5), (7, 2), (1, 30), (30, 29)]:
        grid = rng.integers(0, 10, size=shape).astype(np.uint8)
        for t in range(8):
            np.testing.assert_array_equal(inverse_dihedral(dihedral(grid, t), t), grid)
            for _ in range(5):
                perm = random_perm(rng)
                np.testing.assert_array_equal(inverse_colour(colour(grid, perm), perm), grid)
                augmented = augment(grid, t, perm)
                assert augmented.shape == (shape if t in (0, 2, 4, 5) else shape[::-1])
                np.testing.assert_array_equal(undo_augment(augmented, t, perm), grid)


def test_colour_map_comes_before_dihedral_and_keeps_black():
    grid = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    perm = np.array([0, 5, 6, 7, 1, 2, 3, 4, 8, 9], dtype=np.uint8)
    np.testing.assert_array_equal(augment(grid, 1, perm), np.rot90(perm[grid]))
    assert augment(grid, 3, perm)[np.rot90(grid, 3) == 0].tolist() == [0]


def test_variant_names_round_trip():
    rng = np.random.default_rng(1)
    assert variant_name("abc", 0, np.arange(10, dtype=np.uint8)) == "abc"
    for t in range(8):
        perm = random_perm(rng)
        name = variant_name("abc", t, perm)
        task, t2, perm2 = parse_variant_name(name)
        assert (task, t2) == ("abc", t) and perm2.tolist() == perm.tolist()
    for bad in ["abc|||t9|||0123456789", "abc|||t1|||1023456789", "abc|||t1|||012345678", "abc|||x1|||0123456789"]:
        with pytest.raises(ValueError, match="abc"):
            parse_variant_name(bad)


def test_augmentation_plans_are_distinct_and_capped_for_single_colour_tasks():
    rng = np.random.default_rng(2)
    pairs = [(np.array([[1, 2], [3, 0]], np.uint8), np.array([[4, 0, 5]], np.uint8))]
    plans = augmentation_plans(pairs, 20, rng)
    assert len(plans) == 21 and plans[0][0] == 0 and plans[0][1].tolist() == list(range(10))
    hashes = {pairs_hash([(augment(x, t, p), augment(y, t, p)) for x, y in pairs]) for t, p in plans}
    assert len(hashes) == 21
    # One colour, no symmetry: 9 recolourings x 8 transforms = 72 variants at most.
    single = [(np.array([[1, 0, 0], [1, 1, 0]], np.uint8), np.array([[1, 0]], np.uint8))]
    plans = augmentation_plans(single, 100, np.random.default_rng(3))
    assert 1 < len(plans) <= 72


# --- tokens and crop -------------------------------------------------------------------------------------------------


def test_canvas_layout_with_eos_border():
    grid = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint8)
    canvas = grid_to_tokens(grid, row=1, col=2).reshape(30, 30)
    expected = np.zeros((30, 30), dtype=np.uint8)
    expected[1:3, 2:5] = [[2, 3, 4], [5, 6, 7]]
    expected[3, 2:5] = 1  # EOS row below, same columns
    expected[1:3, 5] = 1  # EOS column right, same rows; the corner (3, 5) stays PAD
    np.testing.assert_array_equal(canvas, expected)
    full_width = grid_to_tokens(np.zeros((2, 30), np.uint8)).reshape(30, 30)
    assert (full_width[2] == 1).all() and (full_width[:2] == 2).all() and (full_width[3:] == 0).all()
    assert (grid_to_tokens(np.full((30, 30), 9, np.uint8)) == 11).all()
    with pytest.raises(ValueError, match="does not fit"):
        grid_to_tokens(grid, row=29)


def test_crop_recovers_placed_grids():
    rng = np.random.default_rng(4)
    for shape in [(1, 1), (3, 7), (30, 30), (30, 1), (12, 30)]:
        grid = rng.integers(0, 10, size=shape).astype(np.uint8)
        np.testing.assert_array_equal(crop(grid_to_tokens(grid)), grid)


def test_crop_shrinks_width_and_breaks_ties_towards_fewer_rows():
    canvas = np.zeros((30, 30), dtype=np.int64)
    canvas[0, :3] = [2, 3, 4]  # row 0: width 3
    canvas[1, :4] = [5, 6, 7, 8]  # row 1 is wider but the allowed width already shrank to 3
    canvas[2, :2] = [9, 10]  # rows 0..2 at width 2: area 6 ties rows 0..1 at width 3
    canvas[2, 2] = 1
    out = crop(canvas.reshape(-1))
    np.testing.assert_array_equal(out, [[0, 1, 2], [3, 4, 5]])
    canvas[3, :2] = [11, 11]  # now 4 rows x 2 = 8 beats 6
    assert crop(canvas).shape == (4, 2)
    assert crop(np.zeros(900, dtype=np.int64)).shape == (0, 0)
    tall = np.zeros((30, 30), dtype=np.int64)
    tall[:, 0] = 2  # one full column: 30 x 1
    assert crop(tall).shape == (30, 1)


# --- building --------------------------------------------------------------------------------------------------------


def test_build_routes_pairs_shares_ids_and_undoes_augmentations(small_arc, tmp_path):
    out = build_small(small_arc, tmp_path / "out")
    train, test = read_split(out, "train"), read_split(out, "test")
    names = read_identifiers(out)
    tasks = {t.task_id: t for s in ("training", "evaluation") for t in load_subset(small_arc / "arc-agi", s)}

    assert train.num_groups == 5 and test.num_groups == 2
    assert train.num_puzzles == 5 * 4 and test.num_puzzles == 2 * 4  # original + 3 distinct variants each
    # Demos of every task plus test pairs of non-test-set tasks go to train; test-set test pairs only to test.
    routed_to_train = sum(len(t.demos) + (0 if tid.startswith("ev") else len(t.tests)) for tid, t in tasks.items())
    assert train.num_examples == 4 * routed_to_train
    assert test.num_examples == 4 * 3
    assert names[0] == "<blank>" and sorted(train.puzzle_identifiers.tolist()) == list(range(1, len(names)))
    assert set(test.puzzle_identifiers.tolist()) <= set(train.puzzle_identifiers.tolist())
    assert train.metadata.num_puzzle_identifiers == test.metadata.num_puzzle_identifiers == len(names)
    assert train.metadata.mean_puzzle_examples == pytest.approx(train.num_examples / train.num_puzzles)

    # Test rows sit at (0, 0): crop + undo gives the original test pair of the named task.
    for p, pid in enumerate(test.puzzle_identifiers):
        task_id, t, perm = parse_variant_name(names[pid])
        originals = {(x.tobytes(), y.tobytes()) for x, y in tasks[task_id].tests}
        for row in range(test.puzzle_indices[p], test.puzzle_indices[p + 1]):
            x = undo_augment(crop(test.inputs[row]), t, perm)
            y = undo_augment(crop(test.labels[row]), t, perm)
            assert (x.tobytes(), y.tobytes()) in originals

    # Train rows: one example per puzzle at the origin; input and output always share their offset.
    moved = 0
    for p in range(train.num_puzzles):
        rows = range(train.puzzle_indices[p], train.puzzle_indices[p + 1])
        origins = [r for r in rows if train.inputs[r][0] != 0 and train.labels[r][0] != 0]
        assert origins, f"puzzle {p} has no example at (0, 0)"
        for r in rows:
            ix, lx = (np.argwhere(a.reshape(30, 30) != 0).min(axis=0) for a in (train.inputs[r], train.labels[r]))
            assert tuple(ix) == tuple(lx)
            moved += tuple(ix) != (0, 0)
    assert moved > 0

    puzzles = json.loads((out / "test_puzzles.json").read_text())
    assert set(puzzles) == {"ev0", "ev1"}
    assert [p["output"] for p in puzzles["ev0"]["test"]] == [y.tolist() for _, y in tasks["ev0"].tests]


def test_build_is_byte_identical_for_one_seed(small_arc, tmp_path):
    a, b = build_small(small_arc, tmp_path / "a"), build_small(small_arc, tmp_path / "b")
    c = build_small(small_arc, tmp_path / "c", seed=43)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 2 * 6 + 2
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


def test_subsample_size_and_shortfall_warning(tmp_path):
    rng = np.random.default_rng(5)
    mono = {
        "train": [{"input": [[1, 0], [0, 0]], "output": [[1]]}],
        "test": [{"input": [[0, 1]]}],
        "solutions": [[[1, 1]]],
    }
    write_subset(tmp_path, "evaluation", {"mono": mono, "ev1": random_task(rng), "ev2": random_task(rng)})
    with pytest.warns(AugmentationShortfallWarning, match="mono") as caught:
        build_arc(input_file_prefix=tmp_path / "arc-agi", subsets=["evaluation"], test_set_name="evaluation",
                  output_dir=tmp_path / "full", num_aug=80, progress=False)
    # One colour, one pixel per grid, no symmetry: 9 recolourings x 8 transforms = 72 at most, minus the original.
    assert list(caught[0].message.shortfall) == ["mono"] and 0 < caught[0].message.shortfall["mono"] <= 71
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AugmentationShortfallWarning)
        out = build_arc(input_file_prefix=tmp_path / "arc-agi", subsets=["evaluation"], test_set_name="evaluation",
                        output_dir=tmp_path / "sub", num_aug=2, subsample_size=2, progress=False)
    assert read_split(out, "test").num_groups == 2
    assert len(json.loads((out / "test_puzzles.json").read_text())) == 2


# --- bad input -------------------------------------------------------------------------------------------------------


BAD_GRIDS = [  # (how to break the task, the error naming file, task and pair)
    (lambda t: t["train"][1].update(input=[[0] * 31]), r"task bad train pair 1 input: grid is 1x31, larger than 30"),
    (lambda t: t["train"][0].update(output=[[1, 2], [3]]), r"task bad train pair 0 output: grid is not rectangular"),
    (lambda t: t["train"].__setitem__(2, [[1]]), r"task bad train pair 2: expected an object with 'input' and"),
    (lambda t: t["test"][0].update(input=[[1, 10]]), r"task bad test pair 0 input: cell \(0, 1\) is 10"),
    (lambda t: t["solutions"][0][0].__setitem__(0, -1), r"solutions.json: task bad test pair 0 output: cell \(0, 0\)"),
    (lambda t: t["solutions"].append([[1]]), r"solutions.json: task bad has 2 outputs, expected 1"),
]


@pytest.mark.parametrize("mutate, message", BAD_GRIDS)
def test_bad_grids_name_file_task_and_pair(tmp_path, mutate, message):
    task = random_task(np.random.default_rng(6))
    mutate(task)
    write_subset(tmp_path, "training", {"bad": task})
    write_subset(tmp_path, "evaluation", {"ok": random_task(np.random.default_rng(8))})
    with pytest.raises(ARCDataError, match=message):
        build_small(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir()), "half-written output left behind"


def test_missing_files_and_unknown_names(small_arc, tmp_path):
    with pytest.raises(ARCDataError, match=r"unknown subset 'trainnig': .*arc-agi_trainnig_challenges.json"):
        build_small(small_arc, tmp_path / "out", subsets=["trainnig", "evaluation"])
    (small_arc / "arc-agi_training_solutions.json").unlink()
    with pytest.raises(ARCDataError, match=r"solutions file .*arc-agi_training_solutions.json does not exist"):
        build_small(small_arc, tmp_path / "out")
    with pytest.raises(ValueError, match="--test-set-name 'concept'"):
        build_small(small_arc, tmp_path / "out", test_set_name="concept")
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(small_arc, tmp_path):
    out = build_small(small_arc, tmp_path / "out", num_aug=1)
    with pytest.raises(FileExistsError, match="overwrite"):
        build_small(small_arc, out, num_aug=1)
    build_small(small_arc, out, num_aug=2, overwrite=True)
    assert read_split(out, "test").num_puzzles == 2 * 3


# --- the real data ---------------------------------------------------------------------------------------------------

PUBLISHED_COUNTS = {  # counted from the official Kaggle files: tasks, demonstration pairs, test pairs
    "training": (400, 1302, 416),
    "evaluation": (400, 1363, 419),
    "concept": (160, 427, 480),
    "training2": (1000, 3232, 1076),
    "evaluation2": (120, 358, 172),
}


@pytest.mark.parametrize("subset", list(PUBLISHED_COUNTS))
def test_published_counts(data_dir, subset):
    prefix = data_dir / "arc" / "arc-agi"
    if not Path(f"{prefix}_{subset}_challenges.json").is_file():
        pytest.skip(f"{prefix}_{subset}_challenges.json is absent")
    tasks = load_subset(prefix, subset)
    counts = (len(tasks), sum(len(t.demos) for t in tasks), sum(len(t.tests) for t in tasks))
    assert counts == PUBLISHED_COUNTS[subset]


def test_defaults_follow_the_official_builder(small_arc, tmp_path):
    import inspect

    defaults = {name: p.default for name, p in inspect.signature(build_arc).parameters.items()}
    assert (list(defaults["subsets"]), defaults["test_set_name"], defaults["num_aug"], defaults["seed"]) == (
        ["training", "evaluation", "concept"], "evaluation", 1000, 42)
    out = build_arc(tmp_path / "built", input_file_prefix=small_arc / "arc-agi", subsets=("training", "evaluation"),
                    num_aug=2, subsample_size=1)
    assert read_split(out, "train").num_groups == 2 and read_split(out, "test").num_puzzles == 3
