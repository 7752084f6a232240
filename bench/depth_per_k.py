"""Depth per k: does a trained recursive head use more supervision steps on longer chains, and does more help?

    python bench/depth_per_k.py --run runs/heads/clutrr/recursive/seed0 --steps 1 2 4 8 16 --max-examples 64

For a `recipes/train_hybrid.py` run folder (its `model/` and the saved held-out sets `data/k=<k>`), per k: the
fixed-depth sweep over `--steps` (as `recipes/depth_sweep.py`, at the trained T and n) and adaptive halting at the
trained step limit (q_halt > `--threshold`, TRM's rule at 0: the mean steps taken per k answers "does it think longer
on harder problems?"). Writes <run>/depth_per_k/depth_per_k.json and depth_per_k.md (or --out). A trace of one story:
`recipes/trace.py --checkpoint <run>/model --data <run>/data/k=6 --examples 0 --steps 16`.

A person-graph chain head (`model.person_graph`, core "chain") answers in one supervision step; its depth is the
number of people it walks out from A. For it, per k: the steps it takes to reach B (the A-B distance in its person
graph; "unreached" where B is not connected to A), and the accuracy with the walk capped at each of `--hops` steps
(does a longer chain need more steps, and do more steps help?) and uncapped:

    python bench/depth_per_k.py --run runs/heads/clutrr/people-chain/seed0 --hops 1 2 3 4 6 8
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from hybrid.eval.depth import adaptive_evaluate, depth_sweep
from hybrid.eval.loop import evaluate, take_examples
from hybrid.eval.research import load_research_model, research_batches
from hybrid.models.people import hops_to_b
from hybrid.utils import UserError, get_logger, run_main

log = get_logger("hybrid.depth_per_k")


def k_sets(run: Path) -> dict[int, Path]:
    """k -> the saved held-out set data/k=<k>, in k order."""
    found = {int(m[1]): p for p in (run / "data").glob("k=*") if (m := re.fullmatch(r"k=(\d+)", p.name))}
    if not found:
        raise UserError(f"{run / 'data'}: no held-out set k=<k> (a train_hybrid.py run of a task with k groups saves them)")
    return dict(sorted(found.items()))


def markdown(rows: list[dict], steps: list[int], threshold: float) -> str:
    head = ["k", "examples"] + [f"{s} steps" for s in steps] + [f"adaptive (q_halt>{threshold:g}) acc", "mean steps taken"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["k"]), str(r["count"])] + [f"{100 * r['fixed'][str(s)]:.1f}" for s in steps]
        cells += [f"{100 * r['adaptive']['exact_accuracy']:.1f}", f"{r['adaptive']['steps']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def hop_rows(model, sets: dict[int, Path], hops: list[int], batch_size: int, max_examples: int | None) -> list[dict]:
    """Per k, for a chain head: the steps to B (mean over reached stories, share unreached) and the accuracy with the
    walk capped at each of `hops` steps and uncapped."""
    encoder, rows = model.hf_model.reasoner.encoder, []
    for k, data in sets.items():
        # Held once: each batch carries its sentence-local features, computed once for every cap.
        batches = list(take_examples(research_batches(model, data, global_batch_size=batch_size), max_examples, 1))
        with torch.no_grad():
            to_b = torch.cat([hops_to_b(encoder(batch)[0]) for batch, _ in batches])
        accuracy = {str(cap): evaluate(model.act_loss, batches, halt_max_steps=1, max_hops=cap)["exact_accuracy"]
                    for cap in [*hops, None]}
        reached = to_b[to_b > 0].float()
        rows.append({"k": k, "count": len(to_b), "mean_hops": reached.mean().item() if len(reached) else 0.0,
                     "unreached": (to_b == 0).float().mean().item(), "capped": accuracy})
        log.info(f"k={k}: {rows[-1]['mean_hops']:.2f} steps to B; " +
                 ", ".join(f"{'uncapped' if c == 'None' else f'<= {c} steps'} {100 * v:.1f}" for c, v in accuracy.items()))
    return rows


def hop_markdown(rows: list[dict], hops: list[int]) -> str:
    head = ["k", "examples", "mean steps to B", "B unreached"] + [f"<= {h} steps" for h in hops] + ["uncapped"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["k"]), str(r["count"]), f"{r['mean_hops']:.2f}", f"{100 * r['unreached']:.1f} %"]
        cells += [f"{100 * r['capped'][str(h)]:.1f}" for h in [*hops, None]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a train_hybrid.py run folder (model/, data/k=<k>)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--threshold", type=float, default=0.0, help="adaptive halting: stop when q_halt > this")
    parser.add_argument("--max-examples", type=int, default=None, help="first N examples of each k (quick looks)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hops", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8],
                        help="person-graph chain heads: caps on the steps out from A")
    parser.add_argument("--out", type=Path, default=None, help="default: <run>/depth_per_k")
    args = parser.parse_args(argv)
    if not (args.run / "model").is_dir():
        raise UserError(f"--run {args.run}: no model/ folder (a finished train_hybrid.py run has one)")
    sets = k_sets(args.run)
    model = load_research_model(args.run / "model")
    if model.hf_model.config.head != "recursive":
        raise UserError(f"{args.run / 'model'}: a {model.hf_model.config.head!r} head has no depth to sweep")
    out = args.out or args.run / "depth_per_k"
    if model.hf_model.config.person_graph:
        rows = hop_rows(model, sets, sorted(set(args.hops)), args.batch_size, args.max_examples)
        write(out, {"model": str(args.run / "model"), "max_examples": args.max_examples, "rows": rows},
              hop_markdown(rows, sorted(set(args.hops))))
        return
    rows = []
    for k, data in sets.items():
        def batches():
            return research_batches(model, data, global_batch_size=args.batch_size)

        sweep = depth_sweep(model.act_loss, batches(), steps=args.steps, max_examples=args.max_examples)
        adaptive = adaptive_evaluate(model.act_loss, batches(), max_steps=model.trained_steps,
                                     threshold=args.threshold, max_examples=args.max_examples)
        rows.append({"k": k, "count": int(sweep[0]["count"]),
                     "fixed": {str(r["steps"]): r["exact_accuracy"] for r in sweep},
                     "adaptive": {key: adaptive[key] for key in ("exact_accuracy", "steps", "halted_early")}})
        log.info(f"k={k}: " + ", ".join(f"{s} steps {100 * v:.1f}" for s, v in rows[-1]["fixed"].items())
                 + f"; adaptive {100 * adaptive['exact_accuracy']:.1f} in {adaptive['steps']:.2f} steps")
    summary = {"model": str(args.run / "model"), "trained_steps": model.trained_steps, "threshold": args.threshold,
               "max_examples": args.max_examples, "rows": rows}
    write(out, summary, markdown(rows, sorted(set(args.steps)), args.threshold))


def write(out: Path, summary: dict, table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "depth_per_k.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "depth_per_k.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    run_main(main)
