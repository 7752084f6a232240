"""Recursive head vs non-recursive heads on the same frozen backbone: the hybrid-mode results table.

    python bench/hybrid_heads.py --task sudoku            # configs/hybrid/default.yaml (4x4 text Sudoku)
    python bench/hybrid_heads.py --task chain             # configs/hybrid/chain.yaml (train on 2 hops, test 2..6)
    python bench/hybrid_heads.py --task sudoku --heads recursive transformer --set training.total_steps=300

Each head is one `recipes/train_hybrid.py` run with `model.head=...` (LoRA: a linear head with rank-8 adapters on
the backbone, features recomputed every step); the table (markdown) goes to stdout and to
runs/heads/<task>/table.md, the raw numbers to runs/heads/<task>/results.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = {"sudoku": REPO / "configs" / "hybrid" / "default.yaml", "chain": REPO / "configs" / "hybrid" / "chain.yaml"}
HEADS = {
    "recursive": ["model.head=recursive"],
    "transformer": ["model.head=transformer"],
    "mlp": ["model.head=mlp"],
    "linear": ["model.head=linear"],
    "lora+linear": ["model.head=linear", "model.lora_r=8", "feature_cache=none"],
}


def load_recipe():
    spec = importlib.util.spec_from_file_location("train_hybrid", REPO / "recipes" / "train_hybrid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table(rows: list[dict]) -> str:
    sets = list(rows[0]["results"])
    # Sequence labels have one "token" per example, so token accuracy would repeat the exact column.
    token_sets = [s for s in sets if any(r["results"][s]["accuracy"] != r["results"][s]["exact_accuracy"] for r in rows)]
    head = ["head", "trainable params", "steps"] + [f"{s} exact" for s in sets] + [f"{s} token" for s in token_sets]
    head.append("wall s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["head"], f"{r['trainable_parameters']:,}", str(r["steps"])]
        cells += [f"{100 * r['results'][s]['exact_accuracy']:.1f}" for s in sets]
        cells += [f"{100 * r['results'][s]['accuracy']:.1f}" for s in token_sets]
        cells.append(f"{r['wall_seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--heads", nargs="+", choices=list(HEADS), default=list(HEADS))
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every run")
    parser.add_argument("--reuse", action="store_true", help="keep a head's finished run (its results.json) instead "
                        "of training it again; only for runs made with the same config and overrides")
    args = parser.parse_args()

    recipe = load_recipe()
    out = REPO / "runs" / "heads" / args.task
    rows = []
    for head in args.heads:
        run_dir = out / head.replace("+", "_")
        overrides = [f"run.output_dir={run_dir}", "run.overwrite=true", "run.progress_bar=false", *HEADS[head],
                     *args.set]
        if not (args.reuse and (run_dir / "results.json").is_file()):
            recipe.main(["--config", str(TASKS[args.task]), *overrides])
        result = json.loads((run_dir / "results.json").read_text())
        result["head"] = head
        rows.append(result)
    markdown = table(rows)
    (out / "table.md").write_text(markdown + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
