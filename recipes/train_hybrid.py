"""Train a recursive head (or a baseline head) on a Hugging Face backbone: hybrid mode, the framework's main job.

    accelerate launch recipes/train_hybrid.py        # the default: all-MiniLM-L6-v2 + TRM head on 4x4 text Sudoku
    accelerate launch recipes/train_hybrid.py --config configs/hybrid/chain_trm.yaml [key=value ...]
    python recipes/train_hybrid.py --config ...      # one process, same thing

The run folder gets metrics.jsonl, curves.png, checkpoints/ (resumable with run.resume=auto), results.json and
model/ (a `save_pretrained` folder: `AutoModelForTokenClassification.from_pretrained(...)` after `import hybrid.models`).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch

from hybrid.config import load_config, split_cli
from hybrid.data.feature_cache import FeatureCache
from hybrid.data.tasks import make_task
from hybrid.data.text_tasks import TextCollator, tokenize_dataset
from hybrid.eval.loop import evaluate
from hybrid.models.backbones import BackboneNotFoundError, backbone_max_length, load_backbone
from hybrid.models.configuration_hybrid import HybridRecursiveConfig
from hybrid.models.modeling_hybrid import hybrid_model_for
from hybrid.train.hybrid_config import HybridTrainConfig
from hybrid.train.loop import LoopParts, Trainer, check_schedule, prepare_run, resolve_resume
from hybrid.data.streams import ShuffledBatches, padded_batches
from hybrid.utils import UserError, get_logger, run_main, seed_everything

log = get_logger("hybrid.train_hybrid")
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "hybrid" / "default.yaml"


def prepare_examples(cfg, datasets: dict, tokenizer, backbone, level, single_token_words, *, keep_tokenized=None):
    """Tokenise (with every check done before training) and attach cached backbone features when asked.
    `keep_tokenized` (a dict) receives the tokenized sets without features."""
    limit = backbone_max_length(backbone.config, tokenizer)
    out = {}
    cache = None
    if cfg.feature_cache != "none":
        cache_dir = cfg.cache_dir if cfg.feature_cache == "disk" else None
        cache = FeatureCache(backbone, tokenizer, layers=cfg.model.backbone_layers, backbone_name=cfg.model.backbone,
                             cache_dir=cache_dir)
    for name, dataset in datasets.items():
        try:
            tokenized = tokenize_dataset(dataset, tokenizer, level=level, max_length=limit,
                                         single_token_words=single_token_words)
        except ValueError as err:
            raise UserError(f"task {cfg.task.name}, {name} set: {err}") from None
        out[name] = cache.attach(tokenized) if cache is not None else tokenized
        if keep_tokenized is not None:
            keep_tokenized[name] = tokenized
    if cache is not None:
        log.info(f"feature cache: {cache.misses} computed, {cache.hits} reused")
    return out


def main(argv: list[str]) -> None:
    path, overrides = split_cli(argv)
    cfg = load_config(HybridTrainConfig, path or DEFAULT_CONFIG, overrides)
    started = time.perf_counter()

    seed_everything(cfg.run.seed, rank_offset=False)
    try:
        backbone, tokenizer = load_backbone(cfg.model.backbone)
    except BackboneNotFoundError as err:
        raise UserError(str(err)) from None
    task = make_task(cfg.task)
    train_raw, tests_raw, level, num_labels, one_token = (
        task.train, task.tests, task.level, task.num_labels, task.single_token_words
    )
    m = cfg.model
    model_config = HybridRecursiveConfig(
        backbone_name_or_path=m.backbone, backbone_layers=m.backbone_layers, head=m.head, core=m.core,
        hidden_size=m.hidden_size, num_heads=m.num_heads, expansion=m.expansion, H_cycles=m.H_cycles,
        L_cycles=m.L_cycles, L_layers=m.L_layers, H_layers=m.H_layers, halt_max_steps=m.halt_max_steps,
        halt_exploration_prob=m.halt_exploration_prob, loss_type=m.loss_type, task=level, num_labels=num_labels,
        lora_r=m.lora_r, lora_alpha=m.lora_alpha, lora_target_modules=m.lora_target_modules,
    )
    model = hybrid_model_for(model_config, backbone=backbone)
    tokenized: dict = {}
    examples = prepare_examples(cfg, {"train": train_raw, **tests_raw}, tokenizer, backbone, level, one_token,
                                keep_tokenized=tokenized)
    train = examples.pop("train")
    pad_to = max(len(examples_set[i]["input_ids"]) for examples_set in (train, *examples.values())
                 for i in range(len(examples_set)))
    collate = TextCollator(pad_token_id=tokenizer.pad_token_id, pad_to=pad_to)

    batch = cfg.training.global_batch_size
    steps = cfg.training.total_steps or cfg.training.epochs * len(train) // batch
    if steps < 1:
        raise UserError(f"training.epochs={cfg.training.epochs} gives no optimiser step for {len(train)} examples")
    check_schedule(cfg.training, steps)
    accelerator, run_dir = prepare_run(cfg.run)
    rank, world = accelerator.process_index, accelerator.num_processes

    act = model.act_loss_head(generator=torch.Generator().manual_seed(cfg.run.seed + rank)).act
    seed_everything(cfg.run.seed)
    head_params = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    log.info(f"{m.head} head ({m.core}, T={m.H_cycles}, n={m.L_cycles}): {head_params:,} trainable parameters; "
             f"{len(train)} train examples, {steps} steps of {batch} on {world} process(es)")

    main_test = next(iter(examples.values()))
    parts = LoopParts(
        reasoner=model,
        act=act,
        loss_type=m.loss_type,
        train_stream=ShuffledBatches(train, collate, global_batch_size=batch, seed=cfg.run.seed, rank=rank,
                                     world_size=world),
        eval_batches=lambda: padded_batches(main_test, collate, global_batch_size=batch, rank=rank, world_size=world),
        total_steps=steps,
        global_batch_size=batch,
        config=cfg,
        checkpoint_keys=lambda key: not key.startswith("backbone.") or "lora_" in key,
    )
    trainer = Trainer(parts, run=cfg.run, optim=cfg.training, eval_cfg=cfg.eval, checkpoint=cfg.checkpoint,
                      accelerator=accelerator, run_dir=run_dir)
    resume = resolve_resume(cfg.run, run_dir)
    if resume is not None:
        trainer.resume_from(resume)
    final = trainer.fit()
    if not final:  # stopped early (run.stop_at_step): the checkpoint is the output
        accelerator.end_training()
        return

    results = {next(iter(examples)): final}
    swap = trainer.ema.apply_to(model) if trainer.ema is not None else contextlib.nullcontext()
    with swap:
        for name, dataset in list(examples.items())[1:]:
            results[name] = evaluate(
                trainer.loss_head, padded_batches(dataset, collate, global_batch_size=batch, rank=rank,
                                                  world_size=world),
                halt_max_steps=cfg.eval.halt_max_steps or m.halt_max_steps, device=accelerator.device,
                world_size=world,
            )
        if accelerator.is_main_process:
            model.save_pretrained(run_dir / "model", save_backbone=cfg.save_backbone)
            tokenizer.save_pretrained(run_dir / "model")
            # The held-out sets, tokenized, for the research tools (recipes/depth_sweep.py --data run/data/<set>).
            for name in examples:
                tokenized[name].save_to_disk(str(run_dir / "data" / name))
    if accelerator.is_main_process:
        summary = {
            "head": m.head, "core": m.core, "H_cycles": m.H_cycles, "L_cycles": m.L_cycles,
            "halt_max_steps": m.halt_max_steps, "trainable_parameters": head_params, "task": cfg.task.name,
            "steps": steps, "wall_seconds": time.perf_counter() - started, "world_size": world,
            "results": {name: {k: r[k] for k in ("exact_accuracy", "accuracy", "count") if k in r}
                        for name, r in results.items()},
        }
        (run_dir / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
        for name, r in results.items():
            print(f"held-out {name}: exact accuracy {r.get('exact_accuracy', 0):.4f}, "
                  f"token accuracy {r.get('accuracy', 0):.4f} ({int(r.get('count', 0))} examples)")
        print(f"model saved to {run_dir / 'model'}; curves in {run_dir / 'curves.png'}")
    accelerator.end_training()


if __name__ == "__main__":
    run_main(main)
