"""Build a dataset in the official on-disk format: one sub-command per data builder; the builder does the work.

    python recipes/build_data.py sudoku --train-file ../shared/data/sudoku-extreme/real-train-1k/train.csv \
        --test-tdoku ../shared/data/sudoku-extreme/upstream-tdoku-solved/*.csv --num-aug 1000 --output-dir data/sudoku-1k
    python recipes/build_data.py sudoku-gen --size 6 --givens 12 --train-size 100000 --test-size 1000 --output-dir data/s6
    python recipes/build_data.py maze --input-dir ../shared/data/maze-30x30-hard-1k --aug --output-dir data/maze-aug
    python recipes/build_data.py maze-gen --train-size 1000 --test-size 1000 --output-dir data/maze-gen
    python recipes/build_data.py arc --input-file-prefix ../shared/data/arc/arc-agi --subsets training evaluation \
        concept --test-set-name evaluation --output-dir data/arc1
"""

import argparse
from pathlib import Path

from hybrid.data import arc, maze, sudoku_extreme
from hybrid.data.sudoku import BOXES, generate_sudoku_dataset
from hybrid.utils import UserError, run_main


def _output_flags(parser: argparse.ArgumentParser, seed: int = 0, output_dir: str | None = None) -> None:
    """--output-dir, --seed and --overwrite, which every builder takes."""
    if output_dir is None:
        parser.add_argument("--output-dir", type=Path, required=True)
    else:
        parser.add_argument("--output-dir", default=output_dir)
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--overwrite", action="store_true")


def sudoku_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source-repo", default=sudoku_extreme.HUB_REPO,
                        help="Hub dataset used when a CSV path is not a local file")
    parser.add_argument("--train-file", default="train.csv", help="training CSV (source,question,answer,rating)")
    test = parser.add_mutually_exclusive_group()
    test.add_argument("--test-file", help="test CSV in the same layout, used as is (never augmented)")
    test.add_argument("--test-tdoku", nargs="+", help="solved tdoku CSVs to build a test set from (shuffled, "
                      "randomly permuted, puzzles equivalent to a training puzzle removed)")
    parser.add_argument("--test-size", type=int, help="keep at most this many test puzzles")
    parser.add_argument("--subsample-size", type=int, help="seeded random subset of the training puzzles")
    parser.add_argument("--min-difficulty", type=int, help="keep puzzles with rating >= this (both splits)")
    parser.add_argument("--num-aug", type=int, default=0, help="augmented copies per training puzzle")
    _output_flags(parser)


def sudoku_gen_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, choices=sorted(BOXES), default=6, help="board side n (boxes 2x2, 2x3, 3x3)")
    parser.add_argument("--givens", type=int, required=True, help="target number of givens (the difficulty knob)")
    parser.add_argument("--min-effort", type=int, default=0, help="minimum solver branching nodes per puzzle")
    parser.add_argument("--train-size", type=int, required=True)
    parser.add_argument("--test-size", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    _output_flags(parser)


def maze_flags(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input-dir", type=Path, help="an official npy folder (train/, test/) to read instead of CSVs")
    source.add_argument("--input-file-prefix", default="", help="CSV path prefix: <prefix>train.csv, <prefix>test.csv; "
                        "files not found locally come from --source-repo on the Hub")
    parser.add_argument("--source-repo", default=maze.HUB_REPO)
    parser.add_argument("--aug", action="store_true", help="add the 8 dihedral transforms (8 puzzles per group)")
    parser.add_argument("--subsample-size", type=int, help="seeded random subset of the training mazes")
    _output_flags(parser)


def maze_gen_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=30)
    parser.add_argument("--wall-density", type=float, default=0.37, help="Maze-Hard averages 37%% walls")
    parser.add_argument("--min-path-len", type=int, default=110, help="minimum shortest-path cells (Maze-Hard: 110)")
    parser.add_argument("--train-size", type=int, required=True)
    parser.add_argument("--test-size", type=int, default=0)
    parser.add_argument("--aug", action="store_true", help="add the 8 dihedral transforms to the training split")
    parser.add_argument("--path-rule", choices=sorted(maze.PATH_RULES), default="maze-hard",
                        help="which shortest path the label draws: Maze-Hard's (default) or BFS parent pointers")
    _output_flags(parser)


def arc_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-file-prefix", required=True, help="e.g. ../shared/data/arc/arc-agi")
    parser.add_argument("--subsets", nargs="+", default=list(arc.ARC1_SUBSETS))
    parser.add_argument("--test-set-name", default="evaluation")
    parser.add_argument("--num-aug", type=int, default=1000)
    parser.add_argument("--subsample-size", type=int, default=None, help="keep N tasks per subset (small builds)")
    _output_flags(parser, seed=42, output_dir="data/arc1concept-aug-1000")


# sub-command -> (function adding its flags, the builder); every flag is one keyword argument of the builder
COMMANDS = {
    "sudoku": (sudoku_flags, sudoku_extreme.build_sudoku_extreme),
    "sudoku-gen": (sudoku_gen_flags, generate_sudoku_dataset),
    "maze": (maze_flags, maze.build_maze),
    "maze-gen": (maze_gen_flags, maze.generate_maze_dataset),
    "arc": (arc_flags, arc.build_arc),
}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_flags, build) in COMMANDS.items():
        add_flags(sub.add_parser(name, help=f"{build.__module__}.{build.__name__}"))
    kwargs = vars(parser.parse_args(argv))
    command = kwargs.pop("command")
    try:
        out = COMMANDS[command][1](**kwargs)
    except (ValueError, OSError) as err:  # the builders' input checks: a file, a row or a flag that is wrong
        raise UserError(f"build_data.py {command}: {err}") from None
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(main)
