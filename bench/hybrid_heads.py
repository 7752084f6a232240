"""Recursive head vs non-recursive heads and fine-tuning on the same backbone: the hybrid-mode results table.

    python bench/hybrid_heads.py --task sudoku            # configs/hybrid/default.yaml (4x4 text Sudoku)
    python bench/hybrid_heads.py --task chain             # configs/hybrid/chain.yaml (train on 1-2 hops, test 1..6)
    python bench/hybrid_heads.py --task clutrr --seeds 0 1 2 --steps 1500  # CLUTRR: train k=2,3, test k=2..10, noise
    python bench/hybrid_heads.py --task clutrr --quick    # smoke run: every head, a few steps, small training set

Every head is one `recipes/train_hybrid.py` run, one flag apart (`HEADS`), all at the same number of optimiser steps
and batch size: the recursive TRM and HRM heads, the equal-size transformer head (the same blocks applied once), MLP,
linear, LoRA (rank 8) + linear, and full fine-tuning of the backbone + linear (the baseline of the CLUTRR paper);
for CLUTRR also the person-graph heads (`PERSON_HEADS`, configs/hybrid/clutrr_people.yaml): the recursive chain core
and the graph transformer over the same people.
Frozen heads share one on-disk feature cache (cache_dir, computed by the first run); LoRA and full fine-tuning recompute the
backbone every step. Full fine-tuning runs at lr 1e-4 (`FULL_FINE_TUNING_LR`: the head's 1e-3 moves a pretrained
backbone too far); every other setting is the task config's.

Seeds run outermost (every head at seed 0, then seed 1, ...), so an interrupted study still has whole rows; `--reuse`
keeps finished runs. Writes runs/heads/<task>/: table.md (accuracy as mean +- sample std over seeds, the mean over
k=4..10 where the task has k=<k> sets; trainable parameters, wall time, training FLOPs per example), results.json
(every run), accuracy_vs_k.png (tasks with k=<k> sets: one line per head, mean with a +-1 std band), and flops.json.

FLOPs: torch's FlopCounterMode (matmuls and attention, forward + backward) on one training supervision step of a
batch of real training examples padded as training pads them, divided by the batch size; the head's share, and the
backbone's where it is trained (LoRA, full fine-tuning) and so recomputed with gradients every step. A frozen
backbone's features are computed once per example (feature cache) and not counted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = {
    "sudoku": REPO / "configs" / "hybrid" / "default.yaml",
    "chain": REPO / "configs" / "hybrid" / "chain.yaml",
    "clutrr": REPO / "configs" / "hybrid" / "clutrr.yaml",
}
FULL_FINE_TUNING_LR = 1e-4
HEADS = {
    "recursive": ["model.head=recursive", "model.core=trm"],
    # HRM's two networks at one block each: the nearest it gets to the TRM head's one block (twice its parameters).
    "recursive-hrm": ["model.head=recursive", "model.core=hrm", "model.H_layers=1"],
    "transformer": ["model.head=transformer"],
    "mlp": ["model.head=mlp"],
    "linear": ["model.head=linear"],
    "lora+linear": ["model.head=linear", "model.lora_r=8", "feature_cache=none"],
    "full-ft+linear": ["model.head=linear", "model.train_backbone=true", "feature_cache=none",
                       f"training.lr={FULL_FINE_TUNING_LR}"],
}
# CLUTRR only: heads over the story's people (hybrid.models.people), from their own config: the recursive chain core
# and the non-recursive graph transformer over the same people and relation vectors (4 layers: more than the
# chain core's parameters, and as deep as the longest training chain plus one).
PERSON_CONFIG = REPO / "configs" / "hybrid" / "clutrr_people.yaml"
PERSON_HEADS = {
    "people-chain": ["model.head=recursive", "model.core=chain"],
    "people-graph": ["model.head=transformer", "model.L_layers=4"],
}
RECURSIVE_HEADS = ("recursive", "recursive-hrm", "people-chain")
# Baseline heads carry nothing between supervision steps, so every step gives the same answer: they are evaluated at
# one step (the same numbers, a quarter of the held-out cost; with LoRA / full fine-tuning the backbone runs each step).
ONE_STEP_EVAL = ["eval.halt_max_steps=1"]
EXTRAPOLATION_K = range(4, 11)  # the CLUTRR protocol's held-out depths (training has k = 2, 3)
QUICK = ["training.total_steps=6", "training.lr_warmup_steps=2", "task.num_train=64", "eval.interval=0"]


def load_recipe():
    spec = importlib.util.spec_from_file_location("train_hybrid", REPO / "recipes" / "train_hybrid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _k(name: str) -> int | None:
    match = re.fullmatch(r"k=(\d+)", name)
    return int(match[1]) if match else None


def _cell(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean = scale * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def by_head(rows: list[dict]) -> dict[str, list[dict]]:
    """The runs of each head (one per seed), heads in first-seen order."""
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["head"], []).append(row)
    return grouped


def extrapolation_mean(result: dict) -> float | None:
    """Mean exact accuracy over the held-out sets k=4..k=10 that a run has (each set weighs the same), or None."""
    values = [r["exact_accuracy"] for name, r in result["results"].items() if _k(name) in EXTRAPOLATION_K]
    return statistics.fmean(values) if values else None


def table(rows: list[dict]) -> str:
    """Markdown: one line per head; accuracies in % as mean (+- sample std over seeds when there are several)."""
    groups = by_head(rows)
    sets = list(rows[0]["results"])
    # Sequence labels have one "token" per example, so token accuracy would repeat the exact column.
    token_sets = [s for s in sets if any(r["results"][s]["accuracy"] != r["results"][s]["exact_accuracy"] for r in rows)]
    seeded = any(len(runs) > 1 for runs in groups.values())
    extrapolates = any(_k(s) in EXTRAPOLATION_K for s in sets)
    flops = any("flops" in r for r in rows)
    head = ["head", "trainable params", "steps"] + (["seeds"] if seeded else [])
    head += [f"{s} exact" for s in sets] + [f"{s} token" for s in token_sets]
    head += ["mean k=4..10"] if extrapolates else []
    head += ["wall s"] + (["head GFLOPs/ex", "backbone GFLOPs/ex"] if flops else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in groups.items():
        first = runs[0]
        cells = [name, f"{first['trainable_parameters']:,}", str(first["steps"])]
        cells += [str(len(runs))] if seeded else []
        cells += [_cell([r["results"][s]["exact_accuracy"] for r in runs]) for s in sets]
        cells += [_cell([r["results"][s]["accuracy"] for r in runs]) for s in token_sets]
        cells += [_cell([extrapolation_mean(r) for r in runs])] if extrapolates else []
        cells.append(f"{statistics.fmean(r['wall_seconds'] for r in runs):.0f}")
        if flops:
            f = first.get("flops") or {}
            cells += [f"{f['head'] / 1e9:.3f}" if f else "", f"{f['backbone'] / 1e9:.3f}" if f.get("backbone") else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def k_curves(rows: list[dict]) -> dict[str, dict[int, list[float]]]:
    """head -> k -> exact accuracy of each seed, for the held-out sets named k=<k>."""
    curves: dict[str, dict[int, list[float]]] = {}
    for name, runs in by_head(rows).items():
        for run in runs:
            for set_name, result in run["results"].items():
                if _k(set_name) is not None:
                    curves.setdefault(name, {}).setdefault(_k(set_name), []).append(result["exact_accuracy"])
    return curves


def training_flops(run_dir: Path, examples: int = 8) -> dict[str, float]:
    """Training FLOPs per example of one supervision step, measured (see the module docstring): {"head": ...,
    "backbone": ... (0 for a frozen backbone)}."""
    import torch

    from hybrid.config import load_config
    from hybrid.core.rollout import rollout
    from hybrid.data.tasks import make_task
    from hybrid.data.text_tasks import TextCollator, tokenize_dataset
    from hybrid.eval.compute import flop_counter
    from hybrid.models.backbones import backbone_max_length, load_backbone
    from hybrid.models.modeling_hybrid import hybrid_model_for
    from hybrid.train.config import HybridTrainConfig

    cfg = load_config(HybridTrainConfig, run_dir / "config.yaml")
    task = make_task(cfg.task)
    m = cfg.model_config(task=task.level, num_labels=task.num_labels)
    backbone, tokenizer = load_backbone(m.backbone_name_or_path)
    if m.readout_tokens:
        m.resolve_readout_tokens(tokenizer)
    model = hybrid_model_for(m, backbone=backbone).train()
    train = tokenize_dataset(task.train, tokenizer, level=task.level, max_length=backbone_max_length(backbone.config, tokenizer),
                             single_token_words=task.single_token_words, entity_graph=m.entity_graph or m.person_graph,
                             join_sentences=m.person_graph)
    pad_to = max(len(ids) for ids in train["input_ids"])  # training pads every batch to the longest training text
    batch = TextCollator(tokenizer.pad_token_id, pad_to=pad_to)(list(train.select(range(examples))))

    def step_flops(batch) -> int:
        counter = flop_counter()
        with counter:
            step = next(rollout(model.act_loss(), batch, max_steps=m.halt_max_steps))
            step.result.loss.backward()
        model.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    with torch.no_grad():
        features = model.reasoner.encoder.batch_features(batch)
    head = step_flops({**batch, "features": features})
    total = head if model.backbone_is_frozen else step_flops(batch)
    return {"head": head / examples, "backbone": (total - head) / examples}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--heads", nargs="+", choices=[*HEADS, *PERSON_HEADS], default=None,
                        help="default: every head the task has (the person-graph heads are CLUTRR's)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="run.seed of each run (one run per head per seed)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps of every run (default: the config's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 6 steps on 64 training examples")
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every run")
    parser.add_argument("--out", type=Path, default=None, help="default: runs/heads/<task>")
    parser.add_argument("--reuse", action="store_true", help="keep a run's finished results.json instead of training "
                        "it again; only for runs made with the same config and overrides")
    args = parser.parse_args(argv)

    heads = args.heads or [*HEADS, *(PERSON_HEADS if args.task == "clutrr" else ())]
    if args.task != "clutrr" and set(heads) & set(PERSON_HEADS):
        parser.error(f"the person-graph heads {sorted(PERSON_HEADS)} read CLUTRR stories; --task {args.task} has none")
    recipe = load_recipe()
    out = args.out or REPO / "runs" / "heads" / args.task
    common = (QUICK if args.quick else []) + ([f"training.total_steps={args.steps}"] if args.steps else []) + args.set
    cache = ["feature_cache=disk"]  # frozen heads: one on-disk cache (the config's cache_dir) for all runs
    rows, run_dirs = [], {}
    for seed in args.seeds:
        for head in heads:
            run_dir = out / head.replace("+", "_") / f"seed{seed}"
            flags = {**HEADS, **PERSON_HEADS}[head]
            frozen = [] if "feature_cache=none" in flags else cache
            overrides = [f"run.output_dir={run_dir}", "run.overwrite=true", "run.progress_bar=false", "run.trackers=[]",
                         f"run.seed={seed}", *frozen, *flags, *([] if head in RECURSIVE_HEADS else ONE_STEP_EVAL),
                         *common]
            config = PERSON_CONFIG if head in PERSON_HEADS else TASKS[args.task]
            if not (args.reuse and (run_dir / "results.json").is_file()):
                print(f"== {head}, seed {seed}: {run_dir}", flush=True)
                recipe.main(["--config", str(config), *overrides])
            rows.append({**json.loads((run_dir / "results.json").read_text()), "head": head, "seed": seed})
            run_dirs.setdefault(head, run_dir)
    flops_file = out / "flops.json"
    flops = json.loads(flops_file.read_text()) if args.reuse and flops_file.is_file() else {}
    for head, run_dir in run_dirs.items():
        if head not in flops:
            flops[head] = training_flops(run_dir)
    flops_file.write_text(json.dumps(flops, indent=1) + "\n")
    for row in rows:
        row["flops"] = flops[row["head"]]

    markdown = table(rows)
    (out / "table.md").write_text(markdown + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    curves = k_curves(rows)
    if curves:
        from hybrid.eval.plots import plot_accuracy_vs_k

        print(f"plot: {plot_accuracy_vs_k(curves, out / 'accuracy_vs_k.png', trained_k=[2, 3])}")
    print(markdown)


if __name__ == "__main__":
    main()
