"""Depth sweep and adaptive halting of a trained model (pure run folder or saved hybrid model).

    python recipes/depth_sweep.py --checkpoint runs/sudoku4x4 --data data_build/sudoku4x4 --out runs/sudoku4x4/depth
    python recipes/depth_sweep.py --checkpoint runs/sudoku4x4 --data data_build/sudoku4x4 --steps 1 2 4 8 16 \\
        --H-cycles 1 2 4 --L-cycles 2 --thresholds 0 2 --patience 1 2
    python -m torch.distributed.run --standalone --nproc_per_node 2 recipes/depth_sweep.py ...   # several processes

--data: a build_data.py folder for pure runs; for hybrid models a tokenized `datasets` folder (save_to_disk of
hybrid.data.text_tasks.tokenize_dataset output, a Dataset or a DatasetDict with the --split).
Writes to --out: sweep.json and sweep.png (accuracy vs steps, one line per (T, n)); with --thresholds / --patience also
adaptive.json and adaptive.png (accuracy vs mean steps, adaptive rules against the fixed-depth curve). Adaptive runs
use the trained (T, n), which every sweep includes as their baseline.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

import torch

from hybrid.cli import check_model_and_data, model_data_parser
from hybrid.eval.compute import cycle_counts
from hybrid.eval.depth import adaptive_evaluate, depth_sweep
from hybrid.eval.plots import plot_adaptive, plot_sweep
from hybrid.eval.research import check_grid_data, load_research_model, research_batches
from hybrid.utils import UserError, get_logger, run_main

log = get_logger("hybrid.depth_sweep")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = model_data_parser(__doc__)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--H-cycles", type=int, nargs="+", default=None, help="T values (default: the trained T)")
    parser.add_argument("--L-cycles", type=int, nargs="+", default=None, help="n values (default: the trained n)")
    parser.add_argument("--max-examples", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=256, help="global batch size")
    parser.add_argument("--thresholds", type=float, nargs="*", default=[], help="adaptive halting: q_halt > threshold")
    parser.add_argument("--patience", type=int, nargs="*", default=[], help="adaptive halting: k unchanged steps")
    parser.add_argument(
        "--adaptive-max-steps", type=int, default=None, help="step limit of adaptive runs (default: trained)"
    )
    parser.add_argument("--out", type=Path, default=Path("depth_sweep"))
    return parser.parse_args(argv)


def init_processes() -> tuple[int, int]:
    """(rank, world size); several processes (torch.distributed.run) talk over gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return (torch.distributed.get_rank(), world) if world > 1 else (0, 1)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    check_model_and_data(args)
    rank, world = init_processes()
    model = load_research_model(args.checkpoint)
    check_grid_data(model, args.data, args.split)
    if args.batch_size % world:
        raise UserError(f"--batch-size {args.batch_size} is not divisible by {world} processes")

    def batches():
        return research_batches(
            model, args.data, global_batch_size=args.batch_size, rank=rank, world_size=world, split=args.split
        )

    # The trained (T, n) is always swept: it is the fixed-depth baseline of the adaptive runs.
    trained = cycle_counts(model.act_loss)
    cycles = [trained] + [
        c for c in itertools.product(args.H_cycles or [trained[0]], args.L_cycles or [trained[1]]) if c != trained
    ]
    common = {"max_examples": args.max_examples, "world_size": world}
    rows = depth_sweep(model.act_loss, batches(), steps=args.steps, cycles=cycles, **common)
    log.info(f"{'T':>3} {'n':>3} {'steps':>5} {'exact':>7} {'token':>7} {'q_acc':>7} {'ece':>6} {'calls':>6}")
    for r in rows:
        log.info(
            f"{r['H_cycles']!s:>3} {r['L_cycles']!s:>3} {r['steps']:>5} {r['exact_accuracy']:>7.4f} {r['accuracy']:>7.4f} "
            f"{r['q_halt_accuracy']:>7.4f} {r['ece']:>6.3f} {r['net_calls']!s:>6}"
        )
    summary = {"checkpoint": str(model.source), "kind": model.kind, "trained_steps": model.trained_steps, "rows": rows}

    fixed = [r for r in rows if (r["H_cycles"], r["L_cycles"]) == trained]
    rules = [("threshold", t) for t in args.thresholds] + [("patience", k) for k in args.patience]
    adaptive = []
    if rules:
        max_steps = args.adaptive_max_steps or model.trained_steps
        for rule, value in rules:
            result = adaptive_evaluate(model.act_loss, batches(), max_steps=max_steps, **{rule: value}, **common)
            adaptive.append({"rule": f"{rule}={value:g}", "max_steps": max_steps, **result})
            log.info(
                f"adaptive {rule}={value:g} (max {max_steps}): exact {result['exact_accuracy']:.4f}, token "
                f"{result['accuracy']:.4f}, mean steps {result['steps']:.2f}, halted early {result['halted_early']:.3f}"
            )

    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sweep.json").write_text(json.dumps(summary, indent=1))
        plot_sweep(rows, args.out / "sweep.png", trained_steps=model.trained_steps)
        if adaptive:
            (args.out / "adaptive.json").write_text(json.dumps(adaptive, indent=1))
            plot_adaptive(fixed, adaptive, args.out / "adaptive.png")
        log.info(f"wrote {args.out}")
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run_main(main)
