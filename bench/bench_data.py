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
        if args.task == "sudoku-aug":
            data = Path(os.environ.get("HYBRID_DATA_DIR", REPO.parent / "shared" / "data"))
            csv = data / "sudoku-extreme/real-train-1k/train.csv"
            sudoku_extreme.build_sudoku_extreme(f"{tmp}/out", train_file=str(csv), num_aug=1000)
            items, count = "rows", 1000 * 1001
        else:
            sudoku.generate_sudoku_dataset(f"{tmp}/out", size=6, givens=12, train_size=args.count, workers=args.workers)
            items, count = "puzzles", args.count
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
