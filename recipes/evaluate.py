"""Evaluate a train_pure.py checkpoint on a dataset: exact / token accuracy, and ARC pass@k with a submission.json.

    python recipes/evaluate.py --checkpoint runs/sudoku4x4 [--data data_build/sudoku4x4] [--halt-max-steps 32]
    python recipes/evaluate.py --checkpoint runs/trm_arc1/checkpoints/step_00518226 --arc --submission sub.json
    accelerate launch --num_processes 2 recipes/evaluate.py --checkpoint ...

`--checkpoint` takes a run folder (its latest complete checkpoint) or one checkpoint folder; the weights evaluated
are the saved ones (EMA weights when the run used EMA). `--halt-max-steps` may differ from the trained value.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hybrid.core.losses import ACTLoss
from hybrid.data.format import DatasetFormatError, read_split
from hybrid.data.sampler import eval_batches
from hybrid.eval.loop import evaluate
from hybrid.eval.research import check_data_shape
from hybrid.restore import load_pure_run
from hybrid.utils import UserError, run_main


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    parser.add_argument("--data", help="dataset folder with test/ (default: the run's data.path)")
    parser.add_argument("--halt-max-steps", type=int, help="supervision steps (default: as trained)")
    parser.add_argument("--batch-size", type=int, help="global batch (default: the run's)")
    parser.add_argument("--max-examples", type=int, help="evaluate the first N test examples only")
    parser.add_argument("--arc", action="store_true", help="ARC voting: pass@k over augmented variants")
    parser.add_argument("--scoring", choices=["trm_fraction", "hrm_all_or_nothing"], default="trm_fraction")
    parser.add_argument("--submission", help="with --arc: write an ARC Prize submission.json here")
    parser.add_argument("--out", help="write the metrics as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    for flag in ("halt_max_steps", "batch_size", "max_examples"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} {value} must be >= 1")
    if args.submission and not args.arc:
        raise UserError("--submission needs --arc")
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    run = load_pure_run(args.checkpoint)
    data = Path(args.data or run.config["data"]["path"])
    try:
        test = read_split(data, "test")
    except (DatasetFormatError, FileNotFoundError) as err:
        raise UserError(f"--data {data}: {err}") from None
    arch = run.arch
    check_data_shape(test.metadata, arch, data / "test" / "dataset.json")
    batch = args.batch_size or run.config["training"]["global_batch_size"]
    if batch % state.num_processes:
        raise UserError(f"batch size {batch} is not divisible by {state.num_processes} processes; pass --batch-size")
    evaluators = []
    if args.arc:
        from hybrid.eval.arc import ARCLoopEvaluator

        evaluators.append(ARCLoopEvaluator(data, scoring=args.scoring, submission_path=args.submission))
    act_loss = ACTLoss(run.act, loss_type=arch.loss_type).to(state.device)
    metrics = evaluate(
        act_loss,
        eval_batches(test, global_batch_size=batch, rank=state.process_index, world_size=state.num_processes),
        halt_max_steps=args.halt_max_steps or arch.halt_max_steps,
        device=state.device,
        evaluators=evaluators,
        max_examples=args.max_examples,
        world_size=state.num_processes,
    )
    if state.is_main_process:
        report = {"checkpoint": str(run.checkpoint), "data": str(data),
                  "halt_max_steps": args.halt_max_steps or arch.halt_max_steps, **metrics}
        print(json.dumps(report, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    run_main(main)
