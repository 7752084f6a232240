"""Sudoku data: Sudoku-Extreme (official dataset/build_sudoku_dataset.py) and a generator of n x n puzzles with
rectangular boxes.

Boards are int arrays of n*n cells, 0 = blank, 1..n = digits. On disk a cell is stored as value + 1 (1 = blank,
2..n+1 = digits, 0 = pad), vocab n + 2, all puzzle identifiers 0, every cell supervised (ignore id 0 never occurs).
"""

from __future__ import annotations

import argparse
import itertools
import random
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hybrid.data.format import (
    DatasetMetadata, atomic_output_dir, iter_hub_csv, resolve_hub_csv, write_identifiers, write_split,
)

HUB_REPO = "sapientinc/sudoku-extreme"


# ---------------------------------------------------------------------------------------------------------------------
# Reading the Hub CSV layout


@dataclass
class SudokuRows:
    sources: list[str]
    questions: np.ndarray  # [N, 81] uint8, 0 = blank
    answers: np.ndarray  # [N, 81] uint8
    ratings: np.ndarray  # [N] int64, -1 where the file leaves the rating empty


def _parse_cells(text: str, *, blanks: str, where: str, what: str) -> np.ndarray:
    if len(text) != 81:
        raise ValueError(f"{where}: {what} has {len(text)} cells, expected 81")
    cells = np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8).copy()
    for blank in blanks:
        cells[cells == ord(blank)] = ord("0")
    if np.any((cells < ord("0")) | (cells > ord("9"))):
        raise ValueError(f"{where}: {what} {text!r} must hold digits 1-9 and blanks {blanks!r} only")
    return cells - ord("0")


def read_sudoku_csv(path: Path) -> SudokuRows:
    """Rows `source,question,answer,rating` ('.' = blank); a malformed row raises ValueError naming file and line."""
    sources, questions, answers, ratings, wheres = [], [], [], [], []
    for where, (source, question, answer, rating) in iter_hub_csv(path):
        q = _parse_cells(question, blanks=".0", where=where, what="question")
        a = _parse_cells(answer, blanks="", where=where, what="answer")
        if np.any(a == 0) or np.any((q != 0) & (q != a)):
            raise ValueError(f"{where}: answer must be complete and agree with every given of the question")
        if rating and not rating.isdigit():
            raise ValueError(f"{where}: rating {rating!r} is not a non-negative integer")
        sources.append(source)
        questions.append(q)
        answers.append(a)
        ratings.append(int(rating) if rating else -1)
        wheres.append(where)
    if not questions:
        raise ValueError(f"{path}: no puzzles")
    broken = np.flatnonzero(~valid_solutions(np.stack(answers), box_rows=3, box_cols=3))
    if broken.size:
        raise ValueError(f"{wheres[broken[0]]}: answer breaks the Sudoku rules (a digit repeats in a row, column or "
                         f"box); {broken.size} such row(s) in the file")
    return SudokuRows(sources, np.stack(questions), np.stack(answers), np.asarray(ratings, dtype=np.int64))


def valid_solutions(boards: np.ndarray, *, box_rows: int, box_cols: int) -> np.ndarray:
    """mask[i] = boards[i] (flat, n*n) holds every digit 1..n once in each row, column and box."""
    n = box_rows * box_cols
    grids = boards.reshape(-1, n, n)
    boxes = grids.reshape(-1, n // box_rows, box_rows, n // box_cols, box_cols).transpose(0, 1, 3, 2, 4)
    digits = np.arange(1, n + 1)
    return np.all([np.all(np.sort(units.reshape(-1, n, n), axis=2) == digits, axis=(1, 2))
                   for units in (grids, grids.transpose(0, 2, 1), boxes)], axis=0)


def select_rows(rows: SudokuRows, keep: np.ndarray) -> SudokuRows:
    return SudokuRows([rows.sources[i] for i in keep], rows.questions[keep], rows.answers[keep], rows.ratings[keep])


def filter_difficulty(rows: SudokuRows, min_difficulty: int, path: Path) -> SudokuRows:
    if np.any(rows.ratings < 0):
        raise ValueError(f"{path}: --min-difficulty needs a rating on every row, but some ratings are empty")
    return select_rows(rows, np.flatnonzero(rows.ratings >= min_difficulty))


# ---------------------------------------------------------------------------------------------------------------------
# Validity-preserving symmetries of a b^2 x b^2 board with b x b boxes


def line_permutations(box: int) -> np.ndarray:
    """Every permutation of the n = box^2 rows that keeps bands intact: [box! * box!^box, n]."""
    small = list(itertools.permutations(range(box)))
    perms = []
    for bands in small:
        for inner in itertools.product(small, repeat=box):
            perms.append([band * box + inner[i][j] for i, band in enumerate(bands) for j in range(box)])
    return np.asarray(perms, dtype=np.int64)


def _random_line_perms(rng: np.random.Generator, count: int, box: int) -> np.ndarray:
    bands = rng.permuted(np.tile(np.arange(box), (count, 1)), axis=1)
    inner = rng.permuted(np.tile(np.arange(box), (count, box, 1)), axis=2)
    return (bands[:, :, None] * box + inner).reshape(count, box * box)


def augment(board: np.ndarray, solution: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` random symmetric copies of one puzzle (official build_sudoku_dataset.py, `shuffle_sudoku`): digit
    permutation, transpose with p = 0.5, band/row and stack/column permutations; the transpose is applied first, then
    new[r, c] = old[row_perm[r], col_perm[c]], then the digit map. Returns [count, n*n] puzzles and solutions."""
    n = int(round(np.sqrt(board.size)))
    box = int(round(np.sqrt(n)))
    digit_map = np.concatenate(
        [np.zeros((count, 1), dtype=np.int64), rng.permuted(np.tile(np.arange(1, n + 1), (count, 1)), axis=1)], axis=1
    )
    transpose = rng.random(count) < 0.5
    rows, cols = _random_line_perms(rng, count, box), _random_line_perms(rng, count, box)
    out = []
    for grid in (board.reshape(n, n), solution.reshape(n, n)):
        grids = np.where(transpose[:, None, None], grid.T[None], grid[None])
        moved = np.take_along_axis(np.take_along_axis(grids, rows[:, :, None], axis=1), cols[:, None, :], axis=2)
        out.append(np.take_along_axis(digit_map, moved.reshape(count, n * n), axis=1).astype(np.uint8))
    return out[0], out[1]


def symmetry_invariant(board: np.ndarray) -> bytes:
    """A key equal for equivalent puzzles (under the symmetries above and digit relabelling): the sorted per-given
    (row, column, box, band, stack clue counts, frequency of its digit), minimised over transpose. Different keys prove
    inequivalence; equal keys are settled by `equivalent`."""
    n = int(round(np.sqrt(board.size)))
    box = int(round(np.sqrt(n)))
    grid = board.reshape(n, n)
    mask = grid > 0
    digit_freq = np.bincount(grid[mask], minlength=n + 1)[grid]
    keys = []
    for m, freq in ((mask, digit_freq), (mask.T, digit_freq.T)):
        rc, cc = m.sum(1), m.sum(0)
        boxes = m.reshape(box, box, box, box).sum((1, 3))
        r, c = np.nonzero(m)
        table = np.stack(
            [rc[r], cc[c], boxes[r // box, c // box], boxes.sum(1)[r // box], boxes.sum(0)[c // box], freq[r, c]], axis=1
        )
        keys.append(table[np.lexsort(table.T[::-1])].astype(np.uint8).tobytes())
    return min(keys)


def equivalent(a: np.ndarray, b: np.ndarray, perms: np.ndarray | None = None) -> bool:
    """Exact test: is puzzle `a` a symmetric copy (transpose, line permutations, digit relabelling) of puzzle `b`?"""
    n = int(round(np.sqrt(a.size)))
    perms = line_permutations(int(round(np.sqrt(n)))) if perms is None else perms
    target = b.reshape(n, n)
    t_mask = target > 0
    for grid in (a.reshape(n, n), a.reshape(n, n).T):
        mask = grid > 0
        # Clue counts per row (column) only move with the row (column) permutation, so they prune each side alone.
        row_ok = perms[np.all(mask.sum(1)[perms] == t_mask.sum(1), axis=1)]
        col_ok = perms[np.all(mask.sum(0)[perms] == t_mask.sum(0), axis=1)]
        for rp in row_ok:
            moved = grid[rp][:, col_ok].transpose(1, 0, 2)  # [cols, n, n] candidates for this row permutation
            hits = np.all((moved > 0) == t_mask, axis=(1, 2))
            for cand in moved[hits]:
                pairs = np.unique(np.stack([cand[t_mask], target[t_mask]]), axis=1)
                if len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1])):
                    return True
    return False


def equivalent_to_any(puzzles: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """mask[i] = puzzles[i] is equivalent to some reference puzzle."""
    perms = line_permutations(int(round(np.sqrt(np.sqrt(puzzles.shape[1])))))
    by_key: dict[bytes, list[int]] = {}
    for j, ref in enumerate(reference):
        by_key.setdefault(symmetry_invariant(ref), []).append(j)
    found = np.zeros(len(puzzles), dtype=bool)
    for i, puzzle in enumerate(tqdm(puzzles, desc="equivalence check", leave=False)):
        found[i] = any(equivalent(puzzle, reference[j], perms) for j in by_key.get(symmetry_invariant(puzzle), ()))
    return found


# ---------------------------------------------------------------------------------------------------------------------
# Writing


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


def build_tdoku_test(
    rows: SudokuRows, train_questions: np.ndarray, rng: np.random.Generator, size: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """A test set from solved tdoku lists: exact duplicates dropped, shuffled, each puzzle given one random symmetry,
    puzzles equivalent to any training puzzle removed, then the first `size` kept."""
    _, first = np.unique(rows.questions, axis=0, return_index=True)
    order = rng.permutation(np.sort(first))
    questions, answers = [], []
    for i in order:
        q, a = augment(rows.questions[i], rows.answers[i], 1, rng)
        questions.append(q[0])
        answers.append(a[0])
    questions, answers = np.stack(questions), np.stack(answers)
    keep = ~equivalent_to_any(questions, train_questions)
    questions, answers = questions[keep][:size], answers[keep][:size]
    return questions, answers


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source-repo", default=HUB_REPO, help="Hub dataset used when a CSV path is not a local file")
    parser.add_argument("--train-file", default="train.csv", help="training CSV (source,question,answer,rating)")
    test = parser.add_mutually_exclusive_group()
    test.add_argument("--test-file", help="test CSV in the same layout, used as is (never augmented)")
    test.add_argument("--test-tdoku", nargs="+", help="solved tdoku CSVs to build a test set from (shuffled, "
                      "randomly permuted, puzzles equivalent to a training puzzle removed)")
    parser.add_argument("--test-size", type=int, help="keep at most this many test puzzles")
    parser.add_argument("--subsample-size", type=int, help="seeded random subset of the training puzzles")
    parser.add_argument("--min-difficulty", type=int, help="keep puzzles with rating >= this (both splits)")
    parser.add_argument("--num-aug", type=int, default=0, help="augmented copies per training puzzle")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")


def _load(name: str, repo: str, min_difficulty: int | None) -> SudokuRows:
    path = resolve_hub_csv(name, repo)
    rows = read_sudoku_csv(path)
    return rows if min_difficulty is None else filter_difficulty(rows, min_difficulty, path)


def build_from_args(args: argparse.Namespace) -> Path:
    rng = np.random.default_rng(args.seed)
    train = _load(args.train_file, args.source_repo, args.min_difficulty)
    if args.subsample_size is not None:
        if not 0 < args.subsample_size <= len(train.questions):
            raise ValueError(f"--subsample-size {args.subsample_size} must be in 1..{len(train.questions)} (rows available)")
        train = select_rows(train, rng.choice(len(train.questions), args.subsample_size, replace=False))
    if args.num_aug < 0:
        raise ValueError(f"--num-aug {args.num_aug} must be >= 0")

    if args.test_file:
        test = _load(args.test_file, args.source_repo, args.min_difficulty)
        test_q, test_a = test.questions[: args.test_size], test.answers[: args.test_size]
    elif args.test_tdoku:
        tdoku = [_load(name, args.source_repo, None) for name in args.test_tdoku]
        merged = SudokuRows(
            sum((t.sources for t in tdoku), []),
            np.concatenate([t.questions for t in tdoku]),
            np.concatenate([t.answers for t in tdoku]),
            np.concatenate([t.ratings for t in tdoku]),
        )
        test_q, test_a = build_tdoku_test(merged, train.questions, rng, args.test_size)

    with atomic_output_dir(args.output_dir, overwrite=args.overwrite) as out:
        groups = []
        for q, a in tqdm(zip(train.questions, train.answers), total=len(train.questions), desc="sudoku train"):
            aug_q, aug_a = augment(q, a, args.num_aug, rng)
            groups.append((np.concatenate([q[None], aug_q]), np.concatenate([a[None], aug_a])))
        write_sudoku_split(out, "train", groups, 9)
        if args.test_file or args.test_tdoku:
            write_sudoku_split(out, "test", [(q[None], a[None]) for q, a in zip(test_q, test_a)], 9)
        write_identifiers(out, ["<blank>"])
    return args.output_dir


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


def add_gen_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, choices=sorted(BOXES), default=6, help="board side n (boxes 2x2, 2x3, 3x3)")
    parser.add_argument("--givens", type=int, required=True, help="target number of givens (the difficulty knob)")
    parser.add_argument("--min-effort", type=int, default=0, help="minimum solver branching nodes per puzzle")
    parser.add_argument("--train-size", type=int, required=True)
    parser.add_argument("--test-size", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")


def build_gen_from_args(args: argparse.Namespace) -> Path:
    if args.train_size < 1 or args.test_size < 0:
        raise ValueError(f"--train-size {args.train_size} must be >= 1 and --test-size {args.test_size} >= 0")
    box_rows, box_cols = BOXES[args.size]
    common = dict(box_rows=box_rows, box_cols=box_cols, givens=args.givens, min_effort=args.min_effort,
                  seed=args.seed, workers=args.workers)
    train_q, train_a = generate_puzzles(args.train_size, **common, desc="sudoku-gen train")
    # Test puzzles use indices after the training ones, so they are independent draws; exact repeats are dropped.
    test_q, test_a = generate_puzzles(args.test_size, **common, first_index=args.train_size, desc="sudoku-gen test")
    seen = {q.tobytes() for q in train_q}
    fresh = np.asarray([q.tobytes() not in seen for q in test_q], dtype=bool)
    with atomic_output_dir(args.output_dir, overwrite=args.overwrite) as out:
        write_sudoku_split(out, "train", [(q[None], a[None]) for q, a in zip(train_q, train_a)], args.size)
        if args.test_size:
            write_sudoku_split(out, "test", [(q[None], a[None]) for q, a in zip(test_q[fresh], test_a[fresh])], args.size)
        write_identifiers(out, ["<blank>"])
    return args.output_dir
