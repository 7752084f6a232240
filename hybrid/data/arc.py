"""ARC-AGI-1, ARC-AGI-2 and ConceptARC as grid datasets, as official TRM dataset/build_arc_dataset.py builds them.

Reads the Kaggle layout `<prefix>_<subset>_challenges.json` / `<prefix>_<subset>_solutions.json`. Every task becomes
one group per split it appears in; the group's puzzles are the original task plus up to `num_aug` distinct variants
(colour permutation fixing black, then a dihedral transform). Demonstration pairs always go to train; test pairs go
to test for the subset named by `test_set_name`, else to train. A variant keeps one puzzle identifier across splits,
so the embedding learned from an evaluation task's demos is the one its test inputs use.

Tokens: 0 PAD, 1 EOS, 2..11 colours 0..9, on a 30x30 canvas. Every random choice comes from one
`numpy.random.Generator(seed)`, so a rebuild with the same seed and input gives identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hybrid.data.format import BLANK_IDENTIFIER, DatasetMetadata, atomic_output_dir, write_identifiers, write_split

MAX_GRID = 30
SEQ_LEN = MAX_GRID * MAX_GRID
PAD, EOS, COLOUR_OFFSET = 0, 1, 2
VOCAB_SIZE = COLOUR_OFFSET + 10
NUM_DIHEDRAL = 8
AUGMENT_RETRIES_FACTOR = 5  # tries per wanted variant before giving up on a low-colour task, as the official builder
VARIANT_SEPARATOR = "|||"
ARC1_SUBSETS = ("training", "evaluation", "concept")  # official build_arc_dataset.py's default

# Inverse of each dihedral transform t0..t7 in numpy's rot90 (counter-clockwise) convention (official
# dataset/common.py, `dihedral_transform` / `inverse_dihedral_transform`).
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)


class ARCDataError(ValueError):
    """Malformed or missing ARC input: the message names the file, the task and the pair."""


class AugmentationShortfallWarning(UserWarning):
    """Some tasks have fewer distinct variants than asked for (at most 2 non-black colours, or symmetric grids).

    `shortfall` maps each such task id to the number of variants found."""

    def __init__(self, shortfall: dict[str, int], num_aug: int):
        self.shortfall = shortfall
        found = ", ".join(f"{task} ({n})" for task, n in shortfall.items())
        super().__init__(f"{len(shortfall)} tasks have fewer than {num_aug} distinct augmentations (variants found): "
                         + found)


Pair = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ARCTask:
    task_id: str
    subset: str
    demos: list[Pair]
    tests: list[Pair]  # test input with its solution


# ---------------------------------------------------------------------------------------------------------------------
# Augmentations and their inverses


# t0..t7 = identity, rot90, rot180, rot270, fliplr, flipud, transpose, fliplr(rot90) (the anti-diagonal reflection),
# with numpy's counter-clockwise rot90, written as strided views (np.rot90 itself costs microseconds per call).
_DIHEDRAL = (
    lambda g: g,
    lambda g: g.T[::-1],
    lambda g: g[::-1, ::-1],
    lambda g: g.T[:, ::-1],
    lambda g: g[:, ::-1],
    lambda g: g[::-1],
    lambda g: g.T,
    lambda g: g.T[::-1, ::-1],
)


def dihedral(grid: np.ndarray, t: int) -> np.ndarray:
    if not 0 <= t < NUM_DIHEDRAL:
        raise ValueError(f"dihedral transform id must be in 0..7, got {t}")
    return _DIHEDRAL[t](grid)


def inverse_dihedral(grid: np.ndarray, t: int) -> np.ndarray:
    if not 0 <= t < NUM_DIHEDRAL:
        raise ValueError(f"dihedral transform id must be in 0..7, got {t}")
    return dihedral(grid, DIHEDRAL_INVERSE[t])


def colour(grid: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Recolour with `perm` (length 10, perm[0] == 0 so black stays black)."""
    return perm[grid]


def inverse_colour(grid: np.ndarray, perm: np.ndarray) -> np.ndarray:
    return np.argsort(perm).astype(grid.dtype)[grid]


def augment(grid: np.ndarray, t: int, perm: np.ndarray) -> np.ndarray:
    """The builder's order: colour map first, then the dihedral transform."""
    return dihedral(colour(grid, perm), t)


def undo_augment(grid: np.ndarray, t: int, perm: np.ndarray) -> np.ndarray:
    """Inverse of `augment`: inverse dihedral first, then inverse colour map (official build_arc_dataset.py,
    `inverse_aug`)."""
    return inverse_colour(np.ascontiguousarray(inverse_dihedral(grid, t)), perm)


IDENTITY_PERM = np.arange(10, dtype=np.uint8)
IDENTITY_PERM.flags.writeable = False  # shared by every original puzzle


def variant_name(task_id: str, t: int, perm: np.ndarray) -> str:
    """The original keeps the bare task id; a variant is `<task>|||t<t>|||<10 colour digits>` (TRM naming)."""
    if t == 0 and np.array_equal(perm, IDENTITY_PERM):
        return task_id
    return VARIANT_SEPARATOR.join((task_id, f"t{t}", "".join(str(int(c)) for c in perm)))


def parse_variant_name(name: str) -> tuple[str, int, np.ndarray]:
    """Inverse of `variant_name`: (task id, dihedral id, colour permutation)."""
    parts = name.split(VARIANT_SEPARATOR)
    if len(parts) == 1:
        return name, 0, IDENTITY_PERM
    bad = len(parts) != 3 or not parts[1].startswith("t") or not parts[1][1:].isdigit()
    digits = parts[2] if len(parts) == 3 else ""
    if bad or len(digits) != 10 or sorted(digits) != list("0123456789") or digits[0] != "0":
        raise ValueError(f"puzzle name {name!r} is not '<task>|||t<0..7>|||<permutation of 0..9 starting with 0>'")
    t = int(parts[1][1:])
    if not 0 <= t < NUM_DIHEDRAL:
        raise ValueError(f"puzzle name {name!r}: dihedral id must be in 0..7")
    return parts[0], t, np.array([int(c) for c in digits], dtype=np.uint8)


def grid_hash(grid: np.ndarray) -> str:
    """sha256 over shape and C-order bytes: equal grids and only equal grids share a hash."""
    grid = np.ascontiguousarray(grid, dtype=np.uint8)
    return hashlib.sha256(bytes(grid.shape) + grid.tobytes()).hexdigest()


def pairs_hash(pairs: list[Pair]) -> str:
    """Order-free hash of a set of pairs, used to tell augmentation variants apart."""
    keys = sorted(f"{grid_hash(x)}|{grid_hash(y)}" for x, y in pairs)
    return hashlib.sha256("|".join(keys).encode()).hexdigest()


def augmentation_plans(pairs: list[Pair], num_aug: int, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """The identity plus up to `num_aug` plans whose augmented pairs are distinct, from at most 5*num_aug draws."""
    plans = [(0, IDENTITY_PERM)]
    seen = {pairs_hash(pairs)}
    for _ in range(AUGMENT_RETRIES_FACTOR * num_aug):
        if len(plans) > num_aug:
            break
        t = int(rng.integers(0, NUM_DIHEDRAL))
        perm = np.concatenate(([0], rng.permutation(9) + 1)).astype(np.uint8)
        h = pairs_hash([(augment(x, t, perm), augment(y, t, perm)) for x, y in pairs])
        if h not in seen:
            seen.add(h)
            plans.append((t, perm))
    return plans


# ---------------------------------------------------------------------------------------------------------------------
# Grid <-> tokens


def write_grid(canvas: np.ndarray, grid: np.ndarray, row: int, col: int) -> None:
    """Write `grid` (colours) into a zeroed 30x30 `canvas` at (row, col), with the EOS row below it and the EOS column
    right of it where they fit; the corner cell stays PAD."""
    h, w = grid.shape
    canvas[row : row + h, col : col + w] = grid + COLOUR_OFFSET
    if row + h < MAX_GRID:
        canvas[row + h, col : col + w] = EOS
    if col + w < MAX_GRID:
        canvas[row : row + h, col + w] = EOS


def grid_to_tokens(grid: np.ndarray, *, row: int = 0, col: int = 0) -> np.ndarray:
    """A colour grid as the flat 900-token canvas (official build_arc_dataset.py)."""
    h, w = grid.shape
    if row < 0 or col < 0 or row + h > MAX_GRID or col + w > MAX_GRID:
        raise ValueError(f"a {h}x{w} grid at offset ({row}, {col}) does not fit the {MAX_GRID}x{MAX_GRID} canvas")
    canvas = np.zeros((MAX_GRID, MAX_GRID), dtype=np.uint8)
    write_grid(canvas, np.asarray(grid, dtype=np.uint8), row, col)
    return canvas.reshape(-1)


def crop(tokens: np.ndarray) -> np.ndarray:
    """The colour grid of a predicted canvas: the largest all-colour rectangle anchored at the top-left (official
    evaluators/arc.py, `_crop`).

    Rows are scanned top to bottom; the allowed width shrinks to the first non-colour cell seen so far. On equal area
    the first rectangle found (fewer rows) wins, as in the official code."""
    canvas = np.asarray(tokens).reshape(MAX_GRID, MAX_GRID)
    is_colour = (canvas >= COLOUR_OFFSET) & (canvas < VOCAB_SIZE)
    first_invalid = np.where(is_colour.all(axis=1), MAX_GRID, np.argmin(is_colour, axis=1))
    widths = np.minimum.accumulate(first_invalid)
    areas = np.arange(1, MAX_GRID + 1) * widths
    rows = int(np.argmax(areas)) + 1  # argmax returns the first maximum: fewer rows on a tie
    best = (rows, int(widths[rows - 1])) if areas[rows - 1] > 0 else (0, 0)
    return (canvas[: best[0], : best[1]] - COLOUR_OFFSET).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------------
# Reading the Kaggle files


def _grid(value, where: str) -> np.ndarray:
    if not isinstance(value, list) or not value or not all(isinstance(r, list) for r in value):
        raise ARCDataError(f"{where}: expected a non-empty list of rows (lists of colours), got {type(value).__name__}")
    widths = sorted({len(r) for r in value})
    if len(widths) != 1 or widths[0] == 0:
        raise ARCDataError(f"{where}: grid is not rectangular (row lengths {widths})")
    h, w = len(value), widths[0]
    if h > MAX_GRID or w > MAX_GRID:
        raise ARCDataError(f"{where}: grid is {h}x{w}, larger than {MAX_GRID}x{MAX_GRID}")
    for r, row in enumerate(value):
        for c, x in enumerate(row):
            if type(x) is not int or not 0 <= x <= 9:
                raise ARCDataError(f"{where}: cell ({r}, {c}) is {x!r}, expected a colour in 0..9")
    return np.array(value, dtype=np.uint8)


def _pair(pair, where: str, output: tuple | None = None) -> Pair:
    """A demo pair {input, output}, or a test pair {input} whose output (value, where) comes from the solutions."""
    if not isinstance(pair, dict) or "input" not in pair or (output is None and "output" not in pair):
        keys = "'input'" if output is not None else "'input' and 'output'"
        raise ARCDataError(f"{where}: expected an object with {keys} grids")
    y, y_where = output if output is not None else (pair["output"], f"{where} output")
    return _grid(pair["input"], f"{where} input"), _grid(y, y_where)


def _read_json(path: Path, what: str) -> dict:
    try:
        with path.open() as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ARCDataError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ARCDataError(f"{path}: expected a JSON object of {what} keyed by task id")
    return data


def subset_files(input_file_prefix: str | Path, subset: str) -> tuple[Path, Path]:
    prefix = str(input_file_prefix)
    return Path(f"{prefix}_{subset}_challenges.json"), Path(f"{prefix}_{subset}_solutions.json")


def load_subset(input_file_prefix: str | Path, subset: str) -> list[ARCTask]:
    """The tasks of one subset in file order, each grid validated."""
    challenges_path, solutions_path = subset_files(input_file_prefix, subset)
    if not challenges_path.is_file():
        raise ARCDataError(f"unknown subset {subset!r}: {challenges_path} does not exist")
    if not solutions_path.is_file():
        raise ARCDataError(f"subset {subset!r}: solutions file {solutions_path} does not exist")
    challenges = _read_json(challenges_path, "tasks")
    solutions = _read_json(solutions_path, "solution lists")
    tasks = []
    for task_id, task in challenges.items():
        where = f"{challenges_path}: task {task_id}"
        if not isinstance(task, dict) or not all(isinstance(task.get(k), list) and task[k] for k in ("train", "test")):
            raise ARCDataError(f"{where}: expected an object with non-empty 'train' and 'test' lists")
        outputs = solutions.get(task_id)
        if not isinstance(outputs, list) or len(outputs) != len(task["test"]):
            found = f"{len(outputs)} outputs" if isinstance(outputs, list) else "no list of outputs"
            raise ARCDataError(
                f"{solutions_path}: task {task_id} has {found}, expected {len(task['test'])} (one per test input)"
            )
        demos = [_pair(p, f"{where} train pair {i}") for i, p in enumerate(task["train"])]
        tests = [
            _pair(p, f"{where} test pair {i}", output=(y, f"{solutions_path}: task {task_id} test pair {i} output"))
            for i, (p, y) in enumerate(zip(task["test"], outputs))
        ]
        tasks.append(ARCTask(task_id=task_id, subset=subset, demos=demos, tests=tests))
    return tasks


# ---------------------------------------------------------------------------------------------------------------------
# Building


@dataclass
class _Group:
    """One task inside one split: the pairs routed there and the task's augmentation plans."""

    task_id: str
    pairs: list[Pair]
    plans: list[tuple[int, np.ndarray]]


def _encode_split(
    groups: list[_Group], *, translate: bool, rng: np.random.Generator, ids: dict[str, int], progress: bool
) -> dict[str, np.ndarray]:
    """Token arrays of one split; `ids` maps puzzle names to identifiers and grows with each new name."""
    num_rows = sum(len(g.pairs) * len(g.plans) for g in groups)
    inputs = np.zeros((num_rows, MAX_GRID, MAX_GRID), dtype=np.uint8)
    labels = np.zeros((num_rows, MAX_GRID, MAX_GRID), dtype=np.uint8)
    puzzle_identifiers, puzzle_indices, group_indices = [], [0], [0]
    row = 0
    for g in tqdm(groups, desc="encode", disable=not progress, leave=False):
        for t, perm in g.plans:
            puzzle_identifiers.append(ids.setdefault(variant_name(g.task_id, t, perm), len(ids) + 1))
            # One example of each translated puzzle stays at the origin (official build_arc_dataset.py).
            anchored = int(rng.integers(0, len(g.pairs))) if translate else -1
            for i, (x, y) in enumerate(g.pairs):
                x, y = augment(x, t, perm), augment(y, t, perm)
                r0 = c0 = 0
                if translate and i != anchored:
                    r0 = int(rng.integers(0, MAX_GRID - max(x.shape[0], y.shape[0]) + 1))
                    c0 = int(rng.integers(0, MAX_GRID - max(x.shape[1], y.shape[1]) + 1))
                write_grid(inputs[row], x, r0, c0)
                write_grid(labels[row], y, r0, c0)
                row += 1
            puzzle_indices.append(row)
        group_indices.append(len(puzzle_identifiers))
    return dict(
        inputs=inputs.reshape(num_rows, SEQ_LEN),
        labels=labels.reshape(num_rows, SEQ_LEN),
        puzzle_identifiers=np.array(puzzle_identifiers, dtype=np.int32),
        puzzle_indices=np.array(puzzle_indices, dtype=np.int32),
        group_indices=np.array(group_indices, dtype=np.int32),
    )


def _pairs_json(pairs: list[Pair]) -> list[dict]:
    return [{"input": x.tolist(), "output": y.tolist()} for x, y in pairs]


def build_arc(
    output_dir: str | Path,
    *,
    input_file_prefix: str | Path,
    subsets: Sequence[str] = ARC1_SUBSETS,
    test_set_name: str = "evaluation",
    num_aug: int = 1000,
    seed: int = 42,
    subsample_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Build `<output_dir>/{train,test}/`, `identifiers.json` and `test_puzzles.json`; return `output_dir`.

    input_file_prefix: the Kaggle files' prefix, e.g. ../shared/data/arc/arc-agi.
    subsets: the subsets to read; `test_set_name` is the one whose test pairs form the test split.
    num_aug: augmented variants per task (fewer for a task with too few colours; AugmentationShortfallWarning).
    subsample_size: keep the first N tasks of each subset after its shuffle (small builds for CPU runs).
    The defaults are official build_arc_dataset.py's (ARC-AGI-1 with ConceptARC, 1000 augmentations, seed 42).
    overwrite: replace an existing `output_dir` (else FileExistsError). progress: show tqdm bars.
    Raises ValueError (ARCDataError for the files' content) / OSError before anything is written."""
    subsets = list(subsets)
    if test_set_name not in subsets:
        raise ValueError(
            f"--test-set-name {test_set_name!r} is not one of --subsets {subsets} (the test split would be empty)"
        )
    if len(set(subsets)) != len(subsets):
        raise ValueError(f"--subsets {subsets} names a subset twice")
    if num_aug < 0:
        raise ValueError(f"--num-aug must be >= 0, got {num_aug}")
    if subsample_size is not None and subsample_size < 1:
        raise ValueError(f"--subsample-size must be >= 1, got {subsample_size}")
    loaded = {s: load_subset(input_file_prefix, s) for s in subsets}  # validate everything before drawing or writing
    empty = [s for s, tasks in loaded.items() if not tasks]
    if empty:
        raise ARCDataError(f"subset(s) {empty} hold no tasks ({subset_files(input_file_prefix, empty[0])[0]} is empty)")
    owner: dict[str, str] = {}
    for s, tasks in loaded.items():
        for task in tasks:
            if task.task_id in owner:
                raise ARCDataError(f"task id {task.task_id} is in both subsets {owner[task.task_id]!r} and {s!r}")
            owner[task.task_id] = s

    rng = np.random.default_rng(seed)
    splits: dict[str, list[_Group]] = {"train": [], "test": []}
    test_puzzles: dict[str, dict] = {}
    shortfall: dict[str, int] = {}
    for subset in subsets:
        tasks = loaded[subset]
        tasks = [tasks[i] for i in rng.permutation(len(tasks))]
        if subsample_size is not None:
            tasks = tasks[:subsample_size]
        for task in tqdm(tasks, desc=f"augment {subset}", disable=not progress, leave=False):
            plans = augmentation_plans(task.demos + task.tests, num_aug, rng)
            if len(plans) < num_aug + 1:
                shortfall[task.task_id] = len(plans) - 1
            if subset == test_set_name:
                splits["train"].append(_Group(task.task_id, task.demos, plans))
                splits["test"].append(_Group(task.task_id, task.tests, plans))
                test_puzzles[task.task_id] = {"train": _pairs_json(task.demos), "test": _pairs_json(task.tests)}
            else:
                splits["train"].append(_Group(task.task_id, task.demos + task.tests, plans))
    if shortfall:
        warnings.warn(AugmentationShortfallWarning(shortfall, num_aug), stacklevel=2)

    # Identifiers are given in iteration order, train first, so a test puzzle reuses its variant's train id.
    ids: dict[str, int] = {}
    encoded = {
        split: _encode_split(groups, translate=split == "train", rng=rng, ids=ids, progress=progress)
        for split, groups in splits.items()
    }
    names = [BLANK_IDENTIFIER] + list(ids)
    output_dir = Path(output_dir)
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        for split, arrays in encoded.items():
            num_puzzles = len(arrays["puzzle_identifiers"])
            metadata = DatasetMetadata(
                pad_id=PAD,
                ignore_label_id=PAD,
                blank_identifier_id=0,
                vocab_size=VOCAB_SIZE,
                seq_len=SEQ_LEN,
                num_puzzle_identifiers=len(names),
                total_groups=len(arrays["group_indices"]) - 1,
                mean_puzzle_examples=len(arrays["inputs"]) / num_puzzles,
                total_puzzles=num_puzzles,
                sets=["all"],
            )
            write_split(tmp, split, metadata=metadata, **arrays)
        write_identifiers(tmp, names)
        (tmp / "test_puzzles.json").write_text(json.dumps(test_puzzles))
    return output_dir
