import random

import numpy as np
import pytest

from hybrid.data.format import read_split
from hybrid.data.sudoku import BitmaskSolver, generate_puzzle, generate_sudoku_dataset
from hybrid.data.sudoku_extreme import (
    augment,
    build_sudoku_extreme,
    build_tdoku_test,
    equivalent,
    read_sudoku_csv,
    select_rows,
)
from test_data_format import _hash_tree


def _valid_solution(grid: np.ndarray, box_rows: int, box_cols: int) -> bool:
    n = box_rows * box_cols
    g = grid.reshape(n, n)
    units = [g[r] for r in range(n)] + [g[:, c] for c in range(n)]
    units += [g[r:r + box_rows, c:c + box_cols].ravel() for r in range(0, n, box_rows) for c in range(0, n, box_cols)]
    return all(sorted(u) == list(range(1, n + 1)) for u in units)


@pytest.fixture(scope="module")
def real(data_dir):
    return read_sudoku_csv(data_dir / "sudoku-extreme/real-train-1k/train.csv")


def _write_csv(path, rows, idx):
    lines = ["source,question,answer,rating"]
    for i in idx:
        q = "".join("." if v == 0 else str(v) for v in rows.questions[i])
        lines.append(f"x,{q},{''.join(map(str, rows.answers[i]))},{i}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_matches_official_arrays(data_dir, real):
    ds = read_split(data_dir / "sudoku-extreme/real-train-1k", "train")
    np.testing.assert_array_equal(real.questions + 1, ds.inputs)
    np.testing.assert_array_equal(real.answers + 1, ds.labels)


def test_augmentation_keeps_validity(real):
    rng = np.random.default_rng(0)
    for i in range(5):
        q, a = augment(real.questions[i], real.answers[i], 50, rng)
        assert all(_valid_solution(s, 3, 3) for s in a)
        assert np.all((q == 0) | (q == a))
        assert np.all((q > 0).sum(1) == (real.questions[i] > 0).sum())
        assert len({x.tobytes() for x in q}) > 40  # the copies really differ
        assert equivalent(q[7], real.questions[i]) and equivalent(real.questions[i], q[11])


def test_equivalence_removal_drops_augmented_training_copies(real):
    rng = np.random.default_rng(1)
    candidates = select_rows(real, np.arange(12))
    train = np.stack([augment(real.questions[i], real.answers[i], 1, rng)[0][0] for i in (2, 9)] + [real.questions[100]])
    test_q, test_a = build_tdoku_test(candidates, train, np.random.default_rng(5), None)
    assert len(test_q) == 10
    assert not any(equivalent(q, t) for q in test_q for t in train)
    assert all(_valid_solution(a, 3, 3) for a in test_a) and np.all((test_q == 0) | (test_q == test_a))
    # every kept puzzle is a permuted copy of one of the 10 candidates that were not in training
    kept = [i for i in range(12) if i not in (2, 9)]
    assert all(any(equivalent(q, real.questions[i]) for i in kept) for q in test_q)


def test_build_is_seeded_and_byte_identical(real, tmp_path):
    train_csv = _write_csv(tmp_path / "train.csv", real, range(20))
    test_csv = _write_csv(tmp_path / "tdoku.csv", real, range(15, 30))
    hashes = []
    for name in ("a", "b"):
        build_sudoku_extreme(tmp_path / name, train_file=str(train_csv), test_tdoku=[str(test_csv)], subsample_size=10,
                             num_aug=3, seed=4)
        hashes.append(_hash_tree(tmp_path / name))
    assert hashes[0] == hashes[1]
    train, test = read_split(tmp_path / "a", "train"), read_split(tmp_path / "a", "test")
    assert train.num_groups == 10 and train.num_puzzles == 40 and train.metadata.vocab_size == 11
    assert test.num_groups == test.num_puzzles <= 15 and test.num_groups >= 5  # never augmented
    with pytest.raises(FileExistsError, match="already exists"):
        build_sudoku_extreme(tmp_path / "a", train_file=str(train_csv))


@pytest.mark.parametrize(
    "row, message",
    [
        ("x,1234,5678,3", r"bad\.csv:3: question has 4 cells, expected 81"),
        ("x," + "." * 81 + ",1", r"bad\.csv:3: 3 fields, expected 4"),
        ("x," + "a" * 81 + "," + "1" * 81 + ",1", r"bad\.csv:3: question .* digits 1-9"),
    ],
)
def test_malformed_rows_name_file_and_line(real, tmp_path, row, message):
    bad = _write_csv(tmp_path / "bad.csv", real, [0])
    bad.write_text(bad.read_text() + row + "\n")
    with pytest.raises(ValueError, match=message):
        read_sudoku_csv(bad)
    with pytest.raises(ValueError):
        build_sudoku_extreme(tmp_path / "out", train_file=str(bad))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("box_rows, box_cols, givens", [(2, 2, 6), (2, 3, 12), (3, 3, 30)])
def test_generated_puzzles_are_unique_with_target_givens(box_rows, box_cols, givens):
    solver = BitmaskSolver(box_rows, box_cols)
    for i in range(5):
        puzzle, solution = generate_puzzle(solver, random.Random(i), givens=givens)
        assert sum(v > 0 for v in puzzle) == givens
        assert _valid_solution(np.asarray(solution), box_rows, box_cols)
        count, found = solver.solve(puzzle, limit=5)
        assert count == 1 and found == solution


def test_solver_counts_multiple_solutions():
    solver = BitmaskSolver(2, 2)
    assert solver.solve([0] * 16, limit=1000)[0] == 288  # all 4x4 Sudoku grids
    assert solver.solve([1, 1] + [0] * 14, limit=2)[0] == 0


def test_generator_build_is_seeded(tmp_path):
    hashes = []
    for name in ("a", "b"):
        generate_sudoku_dataset(tmp_path / name, size=6, givens=14, train_size=30, test_size=5, seed=2)
        hashes.append(_hash_tree(tmp_path / name))
    assert hashes[0] == hashes[1]
    ds = read_split(tmp_path / "a", "train")
    assert ds.metadata.vocab_size == 8 and ds.metadata.seq_len == 36
    assert np.all((np.asarray(ds.inputs) > 1).sum(1) == 14) and np.asarray(ds.labels).min() == 2
