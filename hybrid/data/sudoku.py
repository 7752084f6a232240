"""Sudoku boards on disk and a generator of n x n puzzles with rectangular boxes (unique solutions, seeded).

Boards are int arrays of n*n cells, 0 = blank, 1..n = digits. On disk a cell is stored as value + 1 (1 = blank,
2..n+1 = digits, 0 = pad), vocab n + 2, all puzzle identifiers 0, every cell supervised (ignore id 0 never occurs).
Sudoku-Extreme (the papers' data) is read, augmented and built in `hybrid.data.sudoku_extreme`.
"""

from __future__ import annotations

import random
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hybrid.data.format import DatasetMetadata, atomic_output_dir, write_identifiers, write_split


def valid_solutions(boards: np.ndarray, *, box_rows: int, box_cols: int) -> np.ndarray:
    """mask[i] = boards[i] (flat, n*n) holds every digit 1..n once in each row, column and box."""
    n = box_rows * box_cols
    grids = boards.reshape(-1, n, n)
    boxes = grids.reshape(-1, n // box_rows, box_rows, n // box_cols, box_cols).transpose(0, 1, 3, 2, 4)
    digits = np.arange(1, n + 1)
    return np.all([np.all(np.sort(units.reshape(-1, n, n), axis=2) == digits, axis=(1, 2))
                   for units in (grids, grids.transpose(0, 2, 1), boxes)], axis=0)


def write_sudoku_split(root: Path, split: str, groups: list[tuple[np.ndarray, np.ndarray]], n: int) -> None:
    """groups[g] = (puzzles [variants, n*n], solutions): one group per original puzzle, one example per variant."""
    inputs = np.concatenate([q for q, _ in groups]) + 1
    labels = np.concatenate([a for _, a in groups]) + 1
    puzzles = len(inputs)
    write_split(
        root,
        split,
        inputs=inputs,
        labels=labels,
        puzzle_identifiers=np.zeros(puzzles, dtype=np.int32),
        puzzle_indices=np.arange(puzzles + 1),
        group_indices=np.concatenate([[0], np.cumsum([len(q) for q, _ in groups])]),
        metadata=DatasetMetadata(
            seq_len=n * n,
            vocab_size=n + 2,
            pad_id=0,
            ignore_label_id=0,
            blank_identifier_id=0,
            num_puzzle_identifiers=1,
            total_groups=len(groups),
            mean_puzzle_examples=1.0,
            total_puzzles=len(groups),  # as official build_sudoku_dataset.py: the group count
            sets=["all"],
        ),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Generator: n x n boards with box_rows x box_cols boxes


class BitmaskSolver:
    """Backtracking over bitmasks of used digits per row, column and box, always branching on the cell with the fewest
    candidates. `nodes` counts branching points of the last call: the difficulty measure ("solver effort")."""

    def __init__(self, box_rows: int, box_cols: int):
        self.n = n = box_rows * box_cols
        self.full = (1 << n) - 1
        self.row = [i // n for i in range(n * n)]
        self.col = [i % n for i in range(n * n)]
        self.box = [(i // n) // box_rows * (n // box_cols) + (i % n) // box_cols for i in range(n * n)]
        self.popcount = [bin(m).count("1") for m in range(1 << n)]
        self.nodes = 0
        self.first: list[int] | None = None

    def load(self, grid) -> bool:
        """Make `grid` the current position; False when its givens already clash."""
        self.grid = [int(v) for v in grid]
        self.empties = [i for i, v in enumerate(self.grid) if not v]
        self.used = [[0] * self.n for _ in range(3)]
        for i, v in enumerate(self.grid):
            if v:
                if self._lines_using(i, 1 << (v - 1)):
                    return False
                self._toggle(i, v)
        return True

    def _lines_using(self, cell: int, bit: int) -> bool:
        rows, cols, boxes = self.used
        return bool((rows[self.row[cell]] | cols[self.col[cell]] | boxes[self.box[cell]]) & bit)

    def _toggle(self, cell: int, value: int) -> None:
        bit = 1 << (value - 1)
        rows, cols, boxes = self.used
        rows[self.row[cell]] ^= bit
        cols[self.col[cell]] ^= bit
        boxes[self.box[cell]] ^= bit

    def count(self, *, limit: int, rnd: random.Random | None = None) -> int:
        """Solutions of the current position, counted up to `limit`; the first one found is kept in `first`."""
        self.nodes = 0
        self.first = None
        return self._search(self.grid, self.empties, *self.used, limit, rnd)

    def solve(self, grid, *, limit: int, rnd: random.Random | None = None) -> tuple[int, list[int] | None]:
        """(number of solutions up to `limit`, the first solution found); rnd randomises the digit order."""
        if not self.load(grid):
            return 0, None
        return self.count(limit=limit, rnd=rnd), self.first

    def remove_if_unique(self, cell: int) -> bool:
        """Blank `cell` of the current (uniquely solvable) position if the solution stays unique, i.e. no other digit
        at `cell` leads to a solution; otherwise leave the position unchanged."""
        value = self.grid[cell]
        self._toggle(cell, value)
        self.grid[cell] = 0
        for other in range(1, self.n + 1):
            if other != value and not self._lines_using(cell, 1 << (other - 1)):
                self._toggle(cell, other)
                self.grid[cell] = other
                found = self._search(self.grid, self.empties, *self.used, 1, None)
                self._toggle(cell, other)
                self.grid[cell] = 0
                if found:
                    self.grid[cell] = value
                    self._toggle(cell, value)
                    return False
        self.empties.append(cell)
        return True

    def _search(self, grid, empties, rows, cols, boxes, limit, rnd) -> int:
        if not empties:
            if self.first is None:
                self.first = list(grid)
            return 1
        best, best_count, best_mask = 0, self.n + 1, 0
        for k, i in enumerate(empties):
            mask = self.full & ~(rows[self.row[i]] | cols[self.col[i]] | boxes[self.box[i]])
            count = self.popcount[mask]
            if count < best_count:
                best, best_count, best_mask = k, count, mask
                if count <= 1:
                    break
        if best_count == 0:
            return 0
        if best_count > 1:
            self.nodes += 1
        cell = empties[best]
        empties[best] = empties[-1]
        empties.pop()
        r, c, b = self.row[cell], self.col[cell], self.box[cell]
        bits = [1 << d for d in range(self.n) if best_mask >> d & 1]
        if rnd is not None:
            rnd.shuffle(bits)
        total = 0
        for bit in bits:
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            grid[cell] = bit.bit_length()
            total += self._search(grid, empties, rows, cols, boxes, limit, rnd)
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
            if total >= limit:
                break
        grid[cell] = 0
        empties.append(cell)
        empties[best], empties[-1] = empties[-1], empties[best]
        return total


def generate_puzzle(
    solver: BitmaskSolver, rnd: random.Random, *, givens: int, min_effort: int = 0, max_tries: int = 1000
) -> tuple[list[int], list[int]]:
    """A random solved grid, then givens removed in random order while the solution stays unique, down to `givens`;
    retried (new grid) until `givens` is reached and solving takes at least `min_effort` branching nodes."""
    cells = solver.n * solver.n
    if not 0 < givens <= cells:
        raise ValueError(f"givens {givens} must be in 1..{cells}")
    for _ in range(max_tries):
        _, solution = solver.solve([0] * cells, limit=1, rnd=rnd)
        solver.load(solution)
        left = cells
        order = list(range(cells))
        rnd.shuffle(order)
        for i in order:
            if left == givens:
                break
            left -= solver.remove_if_unique(i)
        puzzle = list(solver.grid)
        if left == givens and (min_effort == 0 or (solver.count(limit=2) == 1 and solver.nodes >= min_effort)):
            return puzzle, solution
    raise ValueError(
        f"no {solver.n}x{solver.n} puzzle with {givens} givens and effort >= {min_effort} in {max_tries} tries; "
        "raise --givens or lower --min-effort"
    )


def _generate_chunk(job: tuple[int, int, int, int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    box_rows, box_cols, givens, min_effort, seed, start, stop = job
    solver = BitmaskSolver(box_rows, box_cols)
    puzzles, solutions = [], []
    for index in range(start, stop):
        # One generator per puzzle index, so the output does not depend on chunking or the number of workers.
        q, a = generate_puzzle(solver, random.Random(f"sudoku-gen:{seed}:{index}"), givens=givens, min_effort=min_effort)
        puzzles.append(q)
        solutions.append(a)
    return np.asarray(puzzles, dtype=np.uint8), np.asarray(solutions, dtype=np.uint8)


def generate_puzzles(
    count: int, *, box_rows: int, box_cols: int, givens: int, min_effort: int = 0, seed: int = 0, first_index: int = 0,
    workers: int = 1, desc: str | None = "sudoku-gen",
) -> tuple[np.ndarray, np.ndarray]:
    """[count, n*n] puzzles and solutions; puzzle i depends only on (seed, first_index + i)."""
    chunk = 256
    jobs = [
        (box_rows, box_cols, givens, min_effort, seed, s, min(s + chunk, first_index + count))
        for s in range(first_index, first_index + count, chunk)
    ]
    bar = tqdm(total=count, desc=desc, disable=desc is None)  # desc=None: no progress bar
    parts = []
    with Pool(workers) if workers > 1 else _Serial() as pool:
        for q, a in pool.imap(_generate_chunk, jobs):
            parts.append((q, a))
            bar.update(len(q))
    bar.close()
    n = box_rows * box_cols
    if not parts:
        return np.zeros((0, n * n), np.uint8), np.zeros((0, n * n), np.uint8)
    return np.concatenate([q for q, _ in parts]), np.concatenate([a for _, a in parts])


class _Serial:
    """The in-process stand-in for a Pool, so one code path serves workers == 1."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap(fn, jobs):
        return map(fn, jobs)


BOXES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}


def generate_sudoku_dataset(
    output_dir: Path, *, givens: int, train_size: int, test_size: int = 0, size: int = 6, min_effort: int = 0,
    workers: int = 1, seed: int = 0, overwrite: bool = False,
) -> Path:
    """Write `train_size` (and `test_size`) generated `size` x `size` puzzles with unique solutions to `output_dir`
    in the official format; return `output_dir`.

    size: the board side n, one of BOXES (boxes 2x2, 2x3, 3x3).
    givens: the target number of givens (the difficulty knob).
    min_effort: the fewest solver branching nodes a puzzle needs.
    workers: generator processes; the output does not depend on it.
    Puzzle i depends only on (seed, i); test puzzles take the indices after the training ones.
    overwrite: replace an existing `output_dir` (else FileExistsError).
    Raises ValueError for a size not in BOXES or a split size below 1 (train) / 0 (test).
    """
    if size not in BOXES:
        raise ValueError(f"--size {size} must be one of {sorted(BOXES)}")
    if train_size < 1 or test_size < 0:
        raise ValueError(f"--train-size {train_size} must be >= 1 and --test-size {test_size} >= 0")
    box_rows, box_cols = BOXES[size]
    common = dict(box_rows=box_rows, box_cols=box_cols, givens=givens, min_effort=min_effort, seed=seed,
                  workers=workers)
    train_q, train_a = generate_puzzles(train_size, **common, desc="sudoku-gen train")
    # Test puzzles use indices after the training ones, so they are independent draws; exact repeats are dropped.
    test_q, test_a = generate_puzzles(test_size, **common, first_index=train_size, desc="sudoku-gen test")
    seen = {q.tobytes() for q in train_q}
    fresh = np.asarray([q.tobytes() not in seen for q in test_q], dtype=bool)
    with atomic_output_dir(output_dir, overwrite=overwrite) as out:
        write_sudoku_split(out, "train", [(q[None], a[None]) for q, a in zip(train_q, train_a)], size)
        if test_size:
            write_sudoku_split(out, "test", [(q[None], a[None]) for q, a in zip(test_q[fresh], test_a[fresh])], size)
        write_identifiers(out, ["<blank>"])
    return Path(output_dir)
