"""Sudoku-Extreme, the papers' Sudoku data (official dataset/build_sudoku_dataset.py): reading the Hub CSVs, the
validity-preserving symmetries used for augmentation and for the test/train equivalence check, and the build recipe.

Board layout and the on-disk encoding are those of `hybrid.data.sudoku`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hybrid.data.format import atomic_output_dir, iter_hub_csv, resolve_hub_csv, write_identifiers
from hybrid.data.sudoku import valid_solutions, write_sudoku_split

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
# Building


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


def _load(name: str, repo: str, min_difficulty: int | None) -> SudokuRows:
    path = resolve_hub_csv(name, repo)
    rows = read_sudoku_csv(path)
    return rows if min_difficulty is None else filter_difficulty(rows, min_difficulty, path)


def build_sudoku_extreme(
    output_dir: Path, *, train_file: str = "train.csv", test_file: str | None = None,
    test_tdoku: list[str] | None = None, test_size: int | None = None, subsample_size: int | None = None,
    min_difficulty: int | None = None, num_aug: int = 0, source_repo: str = HUB_REPO, seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Build Sudoku-Extreme in `output_dir` (train/, test/ when a test source is given, identifiers.json) as official
    build_sudoku_dataset.py does; return `output_dir`.

    train_file, test_file, test_tdoku: CSVs (source,question,answer,rating); a path that is not a local file is
        fetched from the Hub dataset `source_repo`. test_file is used as is (never augmented); test_tdoku lists solved
        tdoku CSVs to build a test set from (shuffled, randomly permuted, puzzles equivalent to a training puzzle
        removed). Give at most one of them.
    test_size: keep at most this many test puzzles.
    subsample_size: a random subset of this many training puzzles.
    min_difficulty: keep puzzles with rating >= this (both splits).
    num_aug: augmented copies per training puzzle.
    Every random choice comes from `numpy.random.default_rng(seed)`.
    overwrite: replace an existing `output_dir` (else FileExistsError).
    Raises ValueError / OSError for a malformed or missing CSV or an out-of-range number, before anything is written.
    """
    if test_file and test_tdoku:
        raise ValueError(f"give test_file ({test_file}) or test_tdoku ({test_tdoku}), not both")
    rng = np.random.default_rng(seed)
    train = _load(train_file, source_repo, min_difficulty)
    if subsample_size is not None:
        if not 0 < subsample_size <= len(train.questions):
            raise ValueError(f"--subsample-size {subsample_size} must be in 1..{len(train.questions)} (rows available)")
        train = select_rows(train, rng.choice(len(train.questions), subsample_size, replace=False))
    if num_aug < 0:
        raise ValueError(f"--num-aug {num_aug} must be >= 0")

    if test_file:
        test = _load(test_file, source_repo, min_difficulty)
        test_q, test_a = test.questions[:test_size], test.answers[:test_size]
    elif test_tdoku:
        tdoku = [_load(name, source_repo, None) for name in test_tdoku]
        merged = SudokuRows(
            sum((t.sources for t in tdoku), []),
            np.concatenate([t.questions for t in tdoku]),
            np.concatenate([t.answers for t in tdoku]),
            np.concatenate([t.ratings for t in tdoku]),
        )
        test_q, test_a = build_tdoku_test(merged, train.questions, rng, test_size)

    with atomic_output_dir(output_dir, overwrite=overwrite) as out:
        groups = []
        for q, a in tqdm(zip(train.questions, train.answers), total=len(train.questions), desc="sudoku train"):
            aug_q, aug_a = augment(q, a, num_aug, rng)
            groups.append((np.concatenate([q[None], aug_q]), np.concatenate([a[None], aug_a])))
        write_sudoku_split(out, "train", groups, 9)
        if test_file or test_tdoku:
            write_sudoku_split(out, "test", [(q[None], a[None]) for q, a in zip(test_q, test_a)], 9)
        write_identifiers(out, ["<blank>"])
    return Path(output_dir)
