"""Depth per k: does a trained recursive head use more supervision steps on longer chains, and does more help?

    python bench/depth_per_k.py --run runs/heads/clutrr/recursive/seed0 --steps 1 2 4 8 16 --max-examples 64

For a `recipes/train_hybrid.py` run folder (its `model/` and the saved held-out sets `data/k=<k>`), per k: the
fixed-depth sweep over `--steps` (as `recipes/depth_sweep.py`, at the trained T and n) and adaptive halting at the
trained step limit (q_halt > `--threshold`, TRM's rule at 0: the mean steps taken per k answers "does it think longer
on harder problems?"). Writes <run>/depth_per_k/depth_per_k.json and depth_per_k.md (or --out). A trace of one story:
`recipes/trace.py --checkpoint <run>/model --data <run>/data/k=6 --examples 0 --steps 16`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from hybrid.eval.depth import adaptive_evaluate, depth_sweep
from hybrid.eval.research import load_research_model, research_batches
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a train_hybrid.py run folder (model/, data/k=<k>)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--threshold", type=float, default=0.0, help="adaptive halting: stop when q_halt > this")
    parser.add_argument("--max-examples", type=int, default=None, help="first N examples of each k (quick looks)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="default: <run>/depth_per_k")
    args = parser.parse_args(argv)
    if not (args.run / "model").is_dir():
        raise UserError(f"--run {args.run}: no model/ folder (a finished train_hybrid.py run has one)")
    sets = k_sets(args.run)
    model = load_research_model(args.run / "model")
    if model.hf_model.config.head != "recursive":
        raise UserError(f"{args.run / 'model'}: a {model.hf_model.config.head!r} head has no depth to sweep")
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
    out = args.out or args.run / "depth_per_k"
    out.mkdir(parents=True, exist_ok=True)
    summary = {"model": str(args.run / "model"), "trained_steps": model.trained_steps, "threshold": args.threshold,
               "max_examples": args.max_examples, "rows": rows}
    (out / "depth_per_k.json").write_text(json.dumps(summary, indent=1) + "\n")
    table = markdown(rows, sorted(set(args.steps)), args.threshold)
    (out / "depth_per_k.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    run_main(main)
