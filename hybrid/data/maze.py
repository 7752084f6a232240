"""Maze data: Maze-Hard 30x30 (official dataset/build_maze_dataset.py) and a generator of k x k mazes.

A maze is a k x k grid of characters "# SGo" (wall, open, start, goal, path) stored as ids 1..5 (0 = pad), vocab 6,
all puzzle identifiers 0. The label is the input with one shortest start-goal path drawn in `o`.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hybrid.data.format import (
    DatasetMetadata, atomic_output_dir, iter_hub_csv, read_split, resolve_hub_csv, write_identifiers, write_split,
)

HUB_REPO = "sapientinc/maze-30x30-hard-1k"
CHARSET = "# SGo"
WALL, OPEN, START, GOAL, PATH = range(1, 6)


def dihedral(grid: np.ndarray, t: int) -> np.ndarray:
    """t0..t7 = identity, rot90, rot180, rot270, fliplr, flipud, transpose, fliplr(rot90) (numpy rot90: counter-clockwise)."""
    transforms = (
        lambda x: x,
        lambda x: np.rot90(x, 1),
        lambda x: np.rot90(x, 2),
        lambda x: np.rot90(x, 3),
        np.fliplr,
        np.flipud,
        lambda x: x.T,
        lambda x: np.fliplr(np.rot90(x, 1)),
    )
    if not 0 <= t < len(transforms):
        raise ValueError(f"dihedral transform id {t} must be in 0..7")
    return np.ascontiguousarray(transforms[t](grid))


def encode(text: str, where: str) -> np.ndarray:
    side = int(round(len(text) ** 0.5))
    if side * side != len(text) or not text:
        raise ValueError(f"{where}: maze has {len(text)} cells, expected a square number (900 for 30x30)")
    lookup = np.zeros(256, dtype=np.uint8)
    for i, ch in enumerate(CHARSET):
        lookup[ord(ch)] = i + 1
    ids = lookup[np.frombuffer(text.encode("latin-1", errors="replace"), dtype=np.uint8)]
    if np.any(ids == 0):
        bad = sorted({ch for ch in text if ch not in CHARSET})
        raise ValueError(f"{where}: characters {bad} are not in the maze charset {CHARSET!r}")
    return ids


def decode(ids: np.ndarray) -> str:
    return "".join(CHARSET[i - 1] for i in np.asarray(ids).ravel())


def read_maze_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Hub layout `source,question,answer,rating` -> (inputs, labels) as [N, k*k] uint8 ids."""
    inputs, labels = [], []
    for where, row in iter_hub_csv(path):
        q, a = encode(row[1], where), encode(row[2], where)
        if q.shape != a.shape or (inputs and q.shape != inputs[0].shape):
            raise ValueError(f"{where}: question/answer sizes {q.size}/{a.size} differ from the file's first maze")
        inputs.append(q)
        labels.append(a)
    if not inputs:
        raise ValueError(f"{path}: no mazes")
    return np.stack(inputs), np.stack(labels)


def _neighbours(grid: np.ndarray, cell: tuple[int, int]):
    r, c = cell
    for nxt in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
        if 0 <= nxt[0] < grid.shape[0] and 0 <= nxt[1] < grid.shape[1] and grid[nxt] != WALL:
            yield nxt


def _bfs(grid: np.ndarray, start: tuple[int, int]) -> dict:
    """parent of every reachable non-wall cell (start -> start), in BFS order."""
    parent = {start: start}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        for nxt in _neighbours(grid, cell):
            if nxt not in parent:
                parent[nxt] = cell
                queue.append(nxt)
    return parent


def bfs_distances(grid: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """Moves from `start` to every cell; -1 for walls and unreachable cells."""
    dist = np.full(grid.shape, -1, dtype=np.int64)
    parent = _bfs(grid, start)
    for cell, prev in parent.items():  # BFS order: a parent's distance is set before its children's
        dist[cell] = 0 if cell == start else dist[prev] + 1
    return dist


def shortest_path(grid: np.ndarray) -> list[tuple[int, int]] | None:
    """One shortest S-to-G path (cells, S and G included) by BFS over non-wall cells, or None when unreachable."""
    start = tuple(int(v) for v in np.argwhere(grid == START)[0])
    goal = tuple(int(v) for v in np.argwhere(grid == GOAL)[0])
    parent = _bfs(grid, start)
    if goal not in parent:
        return None
    path = [goal]
    while path[-1] != start:
        path.append(parent[path[-1]])
    return path[::-1]


# Maze-Hard's labels walk from S to G, each move to a neighbour one step closer to G, trying down, left, right, up in
# that order (checked against all 2000 official mazes by tests/test_maze.py). Maze-Hard mazes have millions of shortest
# paths, so which one is drawn is part of the task; this rule is local (a greedy descent of the distance to G), whereas
# BFS parent pointers depend on the global visiting order.
MAZE_HARD_MOVES = ((1, 0), (0, -1), (0, 1), (-1, 0))


def maze_hard_path(grid: np.ndarray) -> list[tuple[int, int]] | None:
    """The shortest S-to-G path Maze-Hard draws (cells, S and G included), or None when G is unreachable."""
    start = tuple(int(v) for v in np.argwhere(grid == START)[0])
    goal = tuple(int(v) for v in np.argwhere(grid == GOAL)[0])
    to_goal = bfs_distances(grid, goal)
    if to_goal[start] < 0:
        return None
    path = [start]
    while path[-1] != goal:
        r, c = path[-1]
        path.append(next((r + dr, c + dc) for dr, dc in MAZE_HARD_MOVES
                          if 0 <= r + dr < grid.shape[0] and 0 <= c + dc < grid.shape[1]
                          and to_goal[r + dr, c + dc] == to_goal[r, c] - 1))
    return path


PATH_RULES = {"maze-hard": maze_hard_path, "bfs": shortest_path}


def augment_dihedral(inputs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, k*k] -> [N, 8, k*k]: the 8 dihedral copies of every maze, t0 first."""
    n, cells = inputs.shape
    side = int(round(cells**0.5))
    out = []
    for arr in (inputs, labels):
        grids = arr.reshape(n, side, side)
        out.append(np.stack([np.stack([dihedral(g, t).ravel() for t in range(8)]) for g in grids]))
    return out[0], out[1]


def write_maze_split(root: Path, split: str, inputs: np.ndarray, labels: np.ndarray) -> None:
    """inputs/labels [groups, variants, k*k]: one group per maze, one puzzle of one example per variant."""
    groups, variants, cells = inputs.shape
    write_split(
        root,
        split,
        inputs=inputs.reshape(-1, cells),
        labels=labels.reshape(-1, cells),
        puzzle_identifiers=np.zeros(groups * variants, dtype=np.int32),
        puzzle_indices=np.arange(groups * variants + 1),
        group_indices=np.arange(0, groups * variants + 1, variants),
        metadata=DatasetMetadata(
            seq_len=cells,
            vocab_size=len(CHARSET) + 1,
            pad_id=0,
            ignore_label_id=0,
            blank_identifier_id=0,
            num_puzzle_identifiers=1,
            total_groups=groups,
            mean_puzzle_examples=1.0,
            total_puzzles=groups,  # as official build_maze_dataset.py: the group count
            sets=["all"],
        ),
    )


def _read_source(split: str, input_dir: Path | None, input_file_prefix: str, source_repo: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    if input_dir is not None:
        ds = read_split(input_dir, split, mmap=False)
        if ds.num_groups != ds.num_puzzles:
            raise ValueError(f"{input_dir}/{split}: already augmented ({ds.num_puzzles} puzzles in {ds.num_groups} groups)")
        return np.asarray(ds.inputs), np.asarray(ds.labels)
    return read_maze_csv(resolve_hub_csv(f"{input_file_prefix}{split}.csv", source_repo))


def build_maze(
    output_dir: Path, *, input_dir: Path | None = None, input_file_prefix: str = "", source_repo: str = HUB_REPO,
    aug: bool = False, subsample_size: int | None = None, seed: int = 0, overwrite: bool = False,
) -> Path:
    """Build Maze-Hard in `output_dir` (train/, test/, identifiers.json) as official build_maze_dataset.py does;
    return `output_dir`.

    input_dir: an official npy folder (train/, test/, not augmented) to read instead of CSVs.
    input_file_prefix: CSV path prefix, read as `<prefix>train.csv` and `<prefix>test.csv`; a file not found locally
        comes from the Hub dataset `source_repo`. Give one of input_dir and input_file_prefix.
    aug: add the 8 dihedral transforms to the training split (8 puzzles per group).
    subsample_size: keep a random subset of this many training mazes, drawn from `numpy.random.default_rng(seed)`.
    overwrite: replace an existing `output_dir` (else FileExistsError).
    Raises ValueError for a malformed source or an out-of-range subsample_size, before anything is written.
    """
    if input_dir is not None and input_file_prefix:
        raise ValueError(f"give input_dir ({input_dir}) or input_file_prefix ({input_file_prefix!r}), not both")
    rng = np.random.default_rng(seed)
    splits = {split: _read_source(split, input_dir, input_file_prefix, source_repo) for split in ("train", "test")}
    if subsample_size is not None:
        total = len(splits["train"][0])
        if not 0 < subsample_size <= total:
            raise ValueError(f"--subsample-size {subsample_size} must be in 1..{total} (mazes available)")
        keep = rng.choice(total, subsample_size, replace=False)
        splits["train"] = (splits["train"][0][keep], splits["train"][1][keep])
    with atomic_output_dir(output_dir, overwrite=overwrite) as out:
        for split, (inputs, labels) in tqdm(splits.items(), desc="maze"):
            if aug and split == "train":
                inputs, labels = augment_dihedral(inputs, labels)
            else:
                inputs, labels = inputs[:, None], labels[:, None]
            write_maze_split(out, split, inputs, labels)
        write_identifiers(out, ["<blank>"])
    return Path(output_dir)


# ---------------------------------------------------------------------------------------------------------------------
# Generator


def generate_maze(rng: np.random.Generator, size: int, *, wall_density: float, min_path_len: int,
                  path_rule: str = "maze-hard", max_tries: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """Random walls at `wall_density`, S at the far end of a random component, and G drawn among the cells at least
    `min_path_len` cells away (S and G included); retried until such a cell exists. Returns (input, label)
    [size, size] ids, label = input + the shortest path chosen by `path_rule` ("maze-hard": Maze-Hard's own choice,
    see maze_hard_path; "bfs": BFS parent pointers, this generator's first behaviour)."""
    if path_rule not in PATH_RULES:
        raise ValueError(f"path_rule {path_rule!r} must be one of {sorted(PATH_RULES)}")
    for _ in range(max_tries):
        grid = np.where(rng.random((size, size)) < wall_density, WALL, OPEN).astype(np.uint8)
        open_cells = np.argwhere(grid == OPEN)
        if len(open_cells) < 2:
            continue
        # S at the far end of a random cell's component (a double-sweep BFS), so long paths are found in few tries.
        probe = bfs_distances(grid, tuple(open_cells[rng.integers(len(open_cells))]))
        ends = np.argwhere(probe == probe.max())
        start = tuple(ends[rng.integers(len(ends))])
        far = np.argwhere(bfs_distances(grid, start) >= min_path_len - 1)
        if len(far) == 0:
            continue
        grid[start], grid[tuple(far[rng.integers(len(far))])] = START, GOAL
        label = grid.copy()
        for cell in PATH_RULES[path_rule](grid)[1:-1]:
            label[cell] = PATH
        return grid, label
    raise ValueError(f"no {size}x{size} maze with a path of >= {min_path_len} cells at wall density {wall_density} "
                     f"in {max_tries} tries; lower --min-path-len or change --wall-density")


def generate_mazes(count: int, *, size: int, wall_density: float, min_path_len: int, seed: int, first_index: int = 0,
                   path_rule: str = "maze-hard", desc: str = "maze-gen") -> tuple[np.ndarray, np.ndarray]:
    """[count, size*size] inputs and labels; maze i depends only on (seed, first_index + i)."""
    inputs, labels = [], []
    for index in tqdm(range(first_index, first_index + count), desc=desc):
        q, a = generate_maze(np.random.default_rng([seed, index]), size, wall_density=wall_density,
                             min_path_len=min_path_len, path_rule=path_rule)
        inputs.append(q.ravel())
        labels.append(a.ravel())
    return np.asarray(inputs).reshape(count, size * size), np.asarray(labels).reshape(count, size * size)


def generate_maze_dataset(
    output_dir: Path, *, train_size: int, test_size: int = 0, size: int = 30, wall_density: float = 0.37,
    min_path_len: int = 110, aug: bool = False, seed: int = 0, path_rule: str = "maze-hard", overwrite: bool = False,
) -> Path:
    """Write `train_size` (and `test_size`) generated `size` x `size` mazes to `output_dir` in the official format;
    return `output_dir`.

    wall_density: the fraction of wall cells drawn (Maze-Hard averages 37%).
    min_path_len: the fewest cells on the shortest start-goal path, S and G included (Maze-Hard: 110).
    aug: add the 8 dihedral transforms to the training split. Maze-Hard's path choice prefers moves in a fixed
        order, so with aug the labels follow 8 different move orders and which one a maze got is not visible in
        its input.
    path_rule: which shortest path the label draws ("maze-hard" or "bfs", see generate_maze).
    Maze i depends only on (seed, i); test mazes take the indices after the training ones.
    overwrite: replace an existing `output_dir` (else FileExistsError).
    Raises ValueError for a size below 1 (train) / 0 (test) or when no maze with such a path is found.
    """
    if train_size < 1 or test_size < 0:
        raise ValueError(f"--train-size {train_size} must be >= 1 and --test-size {test_size} >= 0")
    common = dict(size=size, wall_density=wall_density, min_path_len=min_path_len, seed=seed, path_rule=path_rule)
    train = generate_mazes(train_size, **common, desc="maze-gen train")
    test = generate_mazes(test_size, **common, first_index=train_size, desc="maze-gen test")
    with atomic_output_dir(output_dir, overwrite=overwrite) as out:
        inputs, labels = augment_dihedral(*train) if aug else (train[0][:, None], train[1][:, None])
        write_maze_split(out, "train", inputs, labels)
        if test_size:
            write_maze_split(out, "test", test[0][:, None], test[1][:, None])
        write_identifiers(out, ["<blank>"])
    return Path(output_dir)
