"""Build a dataset in the official on-disk format: one sub-command per dataset; each data module does the work.

    python recipes/build_data.py sudoku --train-file ../shared/data/sudoku-extreme/real-train-1k/train.csv \
        --test-tdoku ../shared/data/sudoku-extreme/upstream-tdoku-solved/*.csv --num-aug 1000 --output-dir data/sudoku-1k
    python recipes/build_data.py sudoku-gen --size 6 --givens 12 --train-size 100000 --test-size 1000 --output-dir data/s6
    python recipes/build_data.py maze --input-dir ../shared/data/maze-30x30-hard-1k --aug --output-dir data/maze-aug
    python recipes/build_data.py maze-gen --train-size 1000 --test-size 1000 --output-dir data/maze-gen
    python recipes/build_data.py arc --input-file-prefix ../shared/data/arc/arc-agi --subsets training evaluation \
        concept --test-set-name evaluation --output-dir data/arc1
"""

import argparse
import importlib

from hybrid.utils import UserError, run_main

# sub-command -> (module, function adding its flags, function building from the parsed flags)
COMMANDS = {
    "sudoku": ("hybrid.data.sudoku_extreme", "add_cli_arguments", "build_from_args"),
    "sudoku-gen": ("hybrid.data.sudoku", "add_gen_cli_arguments", "build_gen_from_args"),
    "maze": ("hybrid.data.maze", "add_cli_arguments", "build_from_args"),
    "maze-gen": ("hybrid.data.maze", "add_gen_cli_arguments", "build_gen_from_args"),
    "arc": ("hybrid.data.arc", "add_cli_arguments", "build_from_args"),
}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, add, build) in COMMANDS.items():
        mod = importlib.import_module(module)
        getattr(mod, add)(sub.add_parser(name, help=f"{module}.{build}"))
    args = parser.parse_args(argv)
    module, _, build = COMMANDS[args.command]
    try:
        out = getattr(importlib.import_module(module), build)(args)
    except (ValueError, OSError) as err:  # the builders' input checks: a file, a row or a flag that is wrong
        raise UserError(f"build_data.py {args.command}: {err}") from None
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(main)
