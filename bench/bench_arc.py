"""Time and peak memory of the ARC-AGI-1 build (subsets training evaluation concept, test set evaluation).

    python bench/bench_arc.py [--num-aug 1000] [--input-file-prefix ../shared/data/arc/arc-agi] [--keep DIR]

Writes to a temporary folder (deleted afterwards unless --keep). Peak memory is the process's maximum resident set
size from resource.getrusage, which includes the interpreter and numpy.
"""

import argparse
import os
import resource
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from hybrid.data.arc import AugmentationShortfallWarning, build_arc
from hybrid.data.format import read_split

DATA_DIR = Path(os.environ.get("HYBRID_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
DEFAULT_PREFIX = DATA_DIR / "arc" / "arc-agi"


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-aug", type=int, default=1000)
    parser.add_argument("--input-file-prefix", default=str(DEFAULT_PREFIX))
    parser.add_argument("--keep", default=None, help="build into this folder and keep it")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench_arc_"))
    out = Path(args.keep) if args.keep else scratch / "arc1concept"
    try:
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", AugmentationShortfallWarning)
            build_arc(
                input_file_prefix=args.input_file_prefix,
                subsets=["training", "evaluation", "concept"],
                test_set_name="evaluation",
                output_dir=out,
                num_aug=args.num_aug,
                progress=False,
            )
        seconds = time.perf_counter() - start
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
        train, test = read_split(out, "train"), read_split(out, "test")
        short = sum(len(w.message.shortfall) for w in caught if isinstance(w.message, AugmentationShortfallWarning))
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        print(f"num_aug {args.num_aug}: {seconds:.1f} s wall, {cpu.ru_utime + cpu.ru_stime:.1f} s CPU, "
              f"peak RSS {peak_gib:.2f} GiB, output {folder_bytes(out) / 2**30:.2f} GiB")
        print(f"train: {train.num_examples} examples, {train.num_puzzles} puzzles, {train.num_groups} groups, "
              f"mean_puzzle_examples {train.metadata.mean_puzzle_examples:.4f}")
        print(f"test: {test.num_examples} examples, {test.num_puzzles} puzzles; "
              f"puzzle identifiers incl. blank: {train.metadata.num_puzzle_identifiers}; "
              f"tasks short of num_aug: {short}")
    finally:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
