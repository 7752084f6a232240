"""Train a recursive head (or a baseline head) on a Hugging Face backbone: hybrid mode, the framework's main job.

    accelerate launch recipes/train_hybrid.py        # the default: all-MiniLM-L6-v2 + TRM head on 4x4 text Sudoku
    accelerate launch recipes/train_hybrid.py --config configs/hybrid/clutrr.yaml [key=value ...]
    python recipes/train_hybrid.py --config ...      # one process, same thing

The run folder gets metrics.jsonl, curves.png, checkpoints/ (resumable with run.resume=auto), results.json (accuracy
on every held-out set), and model/ (a `save_pretrained` folder with its tokenizer:
`AutoModelForSequenceClassification.from_pretrained(...)` after `import hybrid.models`; class names in id2label).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed

from hybrid.config import load_config, split_cli
from hybrid.data.feature_cache import FeatureCache
from hybrid.data.streams import ShuffledBatches, padded_batches
from hybrid.data.tasks import make_task
from hybrid.data.text_tasks import TextCollator, tokenize_dataset
from hybrid.eval.loop import evaluate
from hybrid.models.backbones import BackboneNotFoundError, backbone_max_length, load_backbone
from hybrid.models.modeling_hybrid import hybrid_model_for
from hybrid.train.config import HybridTrainConfig
from hybrid.train.loop import LoopParts, Trainer, check_schedule
from hybrid.train.tracking import check_run, prepare_run, release_run_dir, resolve_resume
from hybrid.utils import UserError, get_logger, run_main

log = get_logger("hybrid.train_hybrid")
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "hybrid" / "default.yaml"


def tokenize_sets(cfg, datasets: dict, tokenizer, backbone, level, single_token_words, model_config) -> dict:
    """Every set tokenised (with the entity or person graph's ids when the head reads them), with every length and
    label check done before any training."""
    limit = backbone_max_length(backbone.config, tokenizer)
    graph = model_config.entity_graph or model_config.person_graph
    out = {}
    for name, dataset in datasets.items():
        try:
            out[name] = tokenize_dataset(dataset, tokenizer, level=level, max_length=limit,
                                         single_token_words=single_token_words, entity_graph=graph,
                                         join_sentences=model_config.person_graph)
        except ValueError as err:
            raise UserError(f"task {cfg.task.name}, {name} set: {err}") from None
    return out


def check_readout_tokens(model_config, tokenized: dict) -> None:
    """Every text must hold each readout token: a missing marker would silently read as zeros."""
    for name, dataset in tokenized.items():
        for token, token_id in zip(model_config.readout_tokens, model_config.readout_token_ids):
            lacking = [i for i, ids in enumerate(dataset["input_ids"]) if token_id not in ids]
            if lacking:
                raise UserError(f"model.readout_tokens: {len(lacking)} of {len(dataset)} texts of the {name} set have "
                                f"no {token!r} (first: row {lacking[0]}); every text needs each readout token "
                                "(CLUTRR: set task.mark_query=true)")


def with_features(cfg, model_config, tokenized: dict, tokenizer, backbone, accelerator) -> dict:
    """The sets with cached backbone features attached (frozen backbones), each rank computing its share."""
    if cfg.feature_cache == "none":
        return dict(tokenized)
    cache = FeatureCache(
        backbone, tokenizer, layers=model_config.backbone_layers, backbone_name=model_config.backbone_name_or_path,
        cache_dir=cfg.cache_dir if cfg.feature_cache == "disk" else None, dtype=cfg.feature_cache_dtype,
        rank=accelerator.process_index, world_size=accelerator.num_processes, barrier=accelerator.wait_for_everyone,
        progress=accelerator.is_main_process, sentence_local=model_config.person_graph,
    )
    out = {name: cache.attach(dataset) for name, dataset in tokenized.items()}
    log.info(f"feature cache: {cache.misses} computed, {cache.hits} reused ({cache.nbytes() / 2**20:.1f} MiB)")
    return out


def main(argv: list[str]) -> None:
    path, overrides = split_cli(argv)
    cfg = load_config(HybridTrainConfig, path or DEFAULT_CONFIG, overrides)
    # The run folder (exists? another writer?) is checked before the data, the backbone and its features cost time.
    check_run(cfg.run)
    started = time.perf_counter()

    task = make_task(cfg.task)
    id2label = None if task.id2label is None else dict(enumerate(task.id2label))
    try:  # what the data decides (token or sequence labels, classes) can conflict with the model section
        m = cfg.model_config(task=task.level, num_labels=task.num_labels, id2label=id2label)
    except ValueError as err:
        raise UserError(f"task {cfg.task.name}: {err}") from None
    # Everything knowable from the config and the raw data is checked before the backbone runs.
    batch = cfg.training.global_batch_size
    steps = cfg.training.total_steps or cfg.training.epochs * len(task.train) // batch
    if steps < 1:
        raise UserError(f"training.epochs={cfg.training.epochs} gives no optimiser step for {len(task.train)} examples")
    check_schedule(cfg.training, steps)
    if batch > len(task.train):
        raise UserError(f"training.global_batch_size={batch} is larger than the {len(task.train)} training examples")
    set_seed(cfg.run.seed)
    try:
        backbone, tokenizer = load_backbone(m.backbone_name_or_path, dtype=getattr(torch, cfg.backbone_dtype))
    except BackboneNotFoundError as err:
        raise UserError(str(err)) from None
    if m.readout_tokens:
        try:
            m.resolve_readout_tokens(tokenizer)
        except ValueError as err:
            raise UserError(f"model: {err}") from None
    model = hybrid_model_for(m, backbone=backbone)
    tokenized = tokenize_sets(cfg, {"train": task.train, **task.tests}, tokenizer, backbone, task.level,
                              task.single_token_words, m)
    if m.readout_tokens:
        check_readout_tokens(m, tokenized)

    accelerator, run_dir = prepare_run(cfg.run)
    rank, world = accelerator.process_index, accelerator.num_processes
    examples = with_features(cfg, m, tokenized, tokenizer, backbone, accelerator)
    train = examples.pop("train")
    # Training slots keep their rows across steps, so training batches share one length; held-out batches each
    # start a fresh carry and are padded only to their own longest text (longest first).
    train_collate = TextCollator(tokenizer.pad_token_id, pad_to=max(len(ids) for ids in tokenized["train"]["input_ids"]))
    eval_collate = TextCollator(tokenizer.pad_token_id)

    def held_out(name: str):
        lengths = [len(ids) for ids in tokenized[name]["input_ids"]]
        return padded_batches(examples[name], eval_collate, global_batch_size=batch, rank=rank, world_size=world,
                              lengths=lengths)

    act = model.act_loss(generator=torch.Generator().manual_seed(cfg.run.seed + rank)).act
    set_seed(cfg.run.seed, device_specific=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if m.person_graph:
        head = "person-graph " + ("recursive head (chain core)" if m.head == "recursive" else f"{m.head} head "
                                  f"({m.L_layers} graph layers)")
    else:
        head = f"recursive head ({m.core}, T={m.H_cycles}, n={m.L_cycles})" if m.head == "recursive" else f"{m.head} head"
    tuning = "trained backbone" if m.train_backbone else f"LoRA r={m.lora_r} backbone" if m.lora_r else "frozen backbone"
    log.info(f"{head} on a {tuning}: {trainable:,} trainable parameters; "
             f"{len(train)} train examples, {steps} steps of {batch} on {world} process(es)")

    main_test = next(iter(examples))
    parts = LoopParts(
        reasoner=model,
        act=act,
        loss_type=m.loss_type,
        train_stream=ShuffledBatches(train, train_collate, global_batch_size=batch, seed=cfg.run.seed, rank=rank,
                                     world_size=world),
        eval_batches=lambda: held_out(main_test),
        total_steps=steps,
        global_batch_size=batch,
        config=cfg,
        checkpoint_keys=model.is_checkpointed_key,
    )
    trainer = Trainer(parts, run=cfg.run, optim=cfg.training, eval_cfg=cfg.eval, checkpoint=cfg.checkpoint,
                      accelerator=accelerator, run_dir=run_dir)
    resume = resolve_resume(cfg.run, run_dir)
    if resume is not None:
        trainer.resume_from(resume)
    final = trainer.fit()
    if not final:  # stopped early (run.stop_at_step): the checkpoint is the output
        accelerator.end_training()
        release_run_dir(run_dir)
        return

    results = {main_test: final}
    eval_steps = cfg.eval.halt_max_steps or m.halt_max_steps
    swap = trainer.ema.apply_to(model) if trainer.ema is not None else contextlib.nullcontext()
    with swap:
        for name in list(examples)[1:]:
            log.info(f"evaluating held-out set {name} ({len(examples[name])} examples)")
            results[name] = evaluate(trainer.act_loss, held_out(name), device=accelerator.device, world_size=world,
                                     halt_max_steps=eval_steps)
        if accelerator.is_main_process:
            model.save_pretrained(run_dir / "model", save_backbone=cfg.save_backbone)
            tokenizer.save_pretrained(run_dir / "model")
            # The held-out sets, tokenized, for the research tools (recipes/depth_sweep.py --data run/data/<set>).
            for name in examples:
                tokenized[name].save_to_disk(str(run_dir / "data" / name))
    if accelerator.is_main_process:
        # A baseline head has no recursive core: naming one (the config's default) would mislabel its results; the
        # chain core has no T and n (it walks until it reaches B).
        if m.head != "recursive":
            recursion = {}
        elif m.person_graph:
            recursion = {"core": m.core}
        else:
            recursion = {"core": m.core, "H_cycles": m.H_cycles, "L_cycles": m.L_cycles}
        summary = {
            "head": m.head, "person_graph": m.person_graph, **recursion, "halt_max_steps": m.halt_max_steps,
            "eval_halt_max_steps": eval_steps,
            "trainable_parameters": trainable, "task": cfg.task.name,
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
    release_run_dir(run_dir)


if __name__ == "__main__":
    run_main(main)
