"""Reasoning traces of chosen examples: the prediction after every supervision step and how far z_H / z_L move.

    python recipes/trace.py --checkpoint runs/sudoku4x4 --data data_build/sudoku4x4 --kind sudoku --examples 0 1 2 \\
        --steps 16 --format gif --out runs/sudoku4x4/traces
    python recipes/trace.py --checkpoint my_hybrid_model --data my_tokenized_test_set --examples 0 1

Writes to --out: trace.json (per example and step: q_halt, all right, wrong tokens, latent changes), changes.png, and
per example a PNG strip / GIF (grid tasks, --kind sudoku|maze|arc) or an HTML token table (hybrid text tasks).

A person-graph chain head (configs/hybrid/clutrr_people.yaml) answers in one supervision step; its trace is its walk
out from A instead: per step, the people first reached and the relation to A read from each one's state, in
walk.md and trace.json:

    python recipes/trace.py --checkpoint runs/heads/clutrr/people-chain/seed0/model \
        --data runs/heads/clutrr/people-chain/seed0/data/k=6 --examples 0 --out runs/traces/people-chain
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
    walk_trace,
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


def first_mention(tokenizer, ids: torch.Tensor, entities: torch.Tensor, entity: int) -> str:
    """The text of an entity's first mention (its first run of consecutive tokens)."""
    at = (entities == entity).nonzero().flatten().tolist()
    span = [p for i, p in enumerate(at) if p == at[0] + i]
    return tokenizer.decode(ids[span]).strip()


def trace_walks(model, args, tokenizer) -> None:
    """The chain head's walk for each picked example (see the module docstring)."""
    config = model.hf_model.config
    if config.head != "recursive":
        raise UserError(f"{args.checkpoint}: a person-graph {config.head!r} head updates every person at once; only the "
                        "chain core walks step by step")
    if any(v is not None for v in (args.steps, args.H_cycles, args.L_cycles)):
        raise UserError("--steps, --H-cycles, --L-cycles: a chain head answers in one supervision step and walks until "
                        "it reaches B; there is nothing of them to set")
    summary, lines = {}, []
    for index, batch in sorted(pick_examples(model, args).items()):
        batch = trim_padding(batch)
        ids, entities = batch["input_ids"][0], batch["entity_ids"][0]
        name = {e: first_mention(tokenizer, ids, entities, e) for e in entities.unique().tolist() if e > 0}
        walk = walk_trace(model.hf_model, batch)
        predicted = model.hf_model(**batch).logits.argmax(-1).item()
        summary[index] = {"label": config.id2label[int(batch["labels"][0])], "predicted": config.id2label[predicted],
                          "steps": [[{"person": name[p], "relation": config.id2label[r]}
                                     for p, r in zip(s["people"], s["relations"])] for s in walk]}
        lines += [f"## example {index}: answer {summary[index]['label']}, predicted {summary[index]['predicted']}", ""]
        lines += [f"{step}. " + ", ".join(f"{p['person']}: {p['relation']}" for p in people)
                  for step, people in enumerate(summary[index]["steps"], start=1)] + [""]
        log.info(f"example {index}: {len(walk)} steps; answer {summary[index]['label']}, "
                 f"predicted {summary[index]['predicted']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "walk.md").write_text("\n".join(lines))
    (args.out / "trace.json").write_text(json.dumps({"checkpoint": str(model.source), "examples": summary}, indent=1))
    log.info(f"wrote {args.out}")


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
    if model.kind == "hybrid" and model.hf_model.config.person_graph:
        return trace_walks(model, args, tokenizer)

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
