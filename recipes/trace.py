"""Reasoning traces of chosen examples: the prediction after every supervision step and how far z_H / z_L move.

    python recipes/trace.py --checkpoint runs/sudoku4x4 --data data_build/sudoku4x4 --kind sudoku --examples 0 1 2 \\
        --steps 16 --format gif --out runs/sudoku4x4/traces
    python recipes/trace.py --checkpoint my_hybrid_model --data my_tokenized_test_set --examples 0 1

Writes to --out: trace.json (per example and step: q_halt, all right, wrong tokens, latent changes), changes.png, and
per example a PNG strip / GIF (grid tasks, --kind sudoku|maze|arc) or an HTML token table (hybrid text tasks).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hybrid.cli import check_model_and_data, model_data_parser
from hybrid.eval.research import check_grid_data, load_research_model, research_batches
from hybrid.eval.pictures import KINDS
from hybrid.eval.traces import (
    plot_changes,
    record_trace,
    render_grid_trace,
    render_token_table,
)
from hybrid.utils import UserError, get_logger, run_main

log = get_logger("hybrid.trace")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = model_data_parser(__doc__)
    parser.add_argument("--examples", type=int, nargs="+", default=[0, 1, 2, 3], help="indices into the split")
    parser.add_argument("--steps", type=int, default=None, help="supervision steps (default: the trained number)")
    parser.add_argument("--H-cycles", type=int, default=None, help="override T")
    parser.add_argument("--L-cycles", type=int, default=None, help="override n")
    parser.add_argument("--kind", choices=KINDS, default=None, help="grid kind of a pure model's data")
    parser.add_argument("--format", choices=("png", "gif"), default="png", help="grid traces: strip or animation")
    parser.add_argument("--out", type=Path, default=Path("traces"))
    return parser.parse_args(argv)


def pick_examples(model, args) -> dict[int, dict[str, torch.Tensor]]:
    """Example index -> a one-row batch (text examples differ in length, so each is traced on its own)."""
    wanted, found, start = set(args.examples), {}, 0
    for batch, mask in research_batches(model, args.data, global_batch_size=256, split=args.split):
        for row in range(int(mask.sum())):
            if start + row in wanted:
                found[start + row] = {k: v[row : row + 1] for k, v in batch.items()}
        start += int(mask.sum())
    missing = sorted(wanted - set(found))
    if missing:
        raise UserError(f"--examples {missing} are outside the {start} examples of {args.data} ({args.split})")
    return found


def load_tokenizer(model):
    """The tokenizer saved next to a hybrid model (train_hybrid.py writes it into model/), else the backbone's from a
    local folder or the local Hub cache: never a download, so traces work offline."""
    from transformers import AutoTokenizer

    backbone = model.hf_model.config.backbone_name_or_path
    for source in (model.source, backbone):
        try:
            return AutoTokenizer.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError):
            continue
    raise UserError(f"no tokenizer in {model.source} and backbone {backbone!r} is not available locally; "
                    f"save one there with tokenizer.save_pretrained({str(model.source)!r})")


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A one-row text batch without its padding positions."""
    if "attention_mask" not in batch:
        return batch
    length = int(batch["attention_mask"].sum())
    return {k: v[:, :length] if v.ndim >= 2 else v for k, v in batch.items()}  # sequence labels [1] stay


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    check_model_and_data(args)
    model = load_research_model(args.checkpoint)
    if model.kind == "pure" and args.kind is None:
        raise UserError(f"--kind ({', '.join(KINDS)}) is needed to draw the grids of a pure model")
    check_grid_data(model, args.data, args.split, args.kind)
    steps = args.steps or model.trained_steps
    cycles = {k: v for k, v in (("H_cycles", args.H_cycles), ("L_cycles", args.L_cycles)) if v is not None}
    tokenizer = load_tokenizer(model) if model.kind == "hybrid" else None

    summary, changes = {}, {}
    for index, batch in sorted(pick_examples(model, args).items()):
        trace = record_trace(model.act_loss, trim_padding(batch), steps=steps, **cycles)
        summary[index] = trace.to_dict(0)
        for name, change in trace.changes.items():
            changes.setdefault(name, []).append(change)
        if model.kind == "pure":
            path = render_grid_trace(trace, 0, args.kind, args.out / f"example_{index}.{args.format}")
        else:
            tokens = tokenizer.convert_ids_to_tokens(trace.batch["input_ids"][0].tolist())
            path = render_token_table(trace, 0, tokens, args.out / f"example_{index}.html")
        right = [s + 1 for s, ok in enumerate(summary[index]["correct"]) if ok]
        log.info(f"example {index}: right at steps {right or 'none'}; wrote {path}")
    plot_changes({name: torch.cat(values, dim=1) for name, values in changes.items()}, args.out / "changes.png")
    meta = {"checkpoint": str(model.source), "steps": steps, **cycles}
    (args.out / "trace.json").write_text(json.dumps({**meta, "examples": summary}, indent=1))
    log.info(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
