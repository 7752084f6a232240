"""Time and peak memory of the data builders.

    python bench/bench_data.py                      # both tasks, each in its own process
    python bench/bench_data.py --task sudoku-gen --count 10000 --workers 2

sudoku-aug: build Sudoku-Extreme 1k x 1000 augmentations from the shared 1k CSV (1,001,000 training rows).
sudoku-gen: generate `--count` 6x6 puzzles with 12 givens.
Peak memory is the process's max resident set size (resource.getrusage).
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_task(args: argparse.Namespace) -> None:
    from hybrid.data import sudoku, sudoku_extreme

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        parser = argparse.ArgumentParser()
        if args.task == "sudoku-aug":
            data = Path(os.environ.get("HYBRID_DATA_DIR", REPO.parent / "shared" / "data"))
            sudoku_extreme.add_cli_arguments(parser)
            argv = ["--train-file", str(data / "sudoku-extreme/real-train-1k/train.csv"), "--num-aug", "1000"]
            build, items = sudoku_extreme.build_from_args, "rows"
            count = 1000 * 1001
        else:
            sudoku.add_gen_cli_arguments(parser)
            argv = ["--size", "6", "--givens", "12", "--train-size", str(args.count), "--workers", str(args.workers)]
            build, items = sudoku.build_gen_from_args, "puzzles"
            count = args.count
        build(parser.parse_args(argv + ["--output-dir", f"{tmp}/out"]))
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.task}: {seconds:.1f} s, {count / seconds:,.0f} {items}/s, peak RSS {peak_mib:,.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["sudoku-aug", "sudoku-gen"])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.task:
        run_task(args)
        return
    for task in ("sudoku-aug", "sudoku-gen"):
        cmd = [sys.executable, __file__, "--task", task, "--count", str(args.count), "--workers", str(args.workers)]
        subprocess.run(cmd, check=True, env={**os.environ, "TQDM_DISABLE": "1"})


if __name__ == "__main__":
    main()
