"""Train TRM / HRM from scratch on a grid task (Sudoku, Maze, ARC) with the official semantics.

    python recipes/train_pure.py --config configs/cpu/sudoku4x4.yaml [key=value ...]
    accelerate launch --num_processes 2 recipes/train_pure.py --config configs/pure/trm_sudoku_mlp.yaml

Overrides use dotted keys: `training.lr=3e-4 arch.L_cycles=4 run.resume=auto`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from accelerate.utils import set_seed

from hybrid.config import load_config, split_cli
from hybrid.data.format import DatasetFormatError, read_split
from hybrid.data.sampler import TrainSampler, eval_batches, global_batch_plan
from hybrid.models.pure import build_pure_model
from hybrid.train.config import PureTrainConfig
from hybrid.train.loop import LoopParts, Trainer, check_schedule, prepare_run, resolve_resume
from hybrid.train.tracking import release_run_dir
from hybrid.utils import UserError, get_logger, run_main, world_size

log = get_logger("hybrid.train_pure")


def load_data(cfg: PureTrainConfig):
    root = Path(cfg.data.path)
    if not root.is_dir():
        raise UserError(
            f"data.path={root} does not exist; build it with `python recipes/build_data.py ...` "
            "(the config's header shows the command)"
        )
    try:
        train, test = read_split(root, "train"), read_split(root, "test")
    except (DatasetFormatError, FileNotFoundError) as err:
        raise UserError(f"data.path={root}: {err}") from None
    for split, ds in (("train", train), ("test", test)):
        if ds.num_examples == 0:
            raise UserError(f"data.path={root}: the {split} split holds no examples")
    return train, test


def check_batch(cfg: PureTrainConfig, train) -> None:
    """The global batch must split evenly over the processes and fit the data (the sampler drops a ragged batch)."""
    batch, world = cfg.training.global_batch_size, world_size()
    if batch % world:
        raise UserError(f"training.global_batch_size={batch} is not divisible by {world} processes")
    plan = global_batch_plan(train, global_batch_size=batch, seed=cfg.run.seed, iteration=1,
                             epochs_per_iter=cfg.training.epochs_per_iter)
    if not plan:
        raise UserError(f"training.global_batch_size={batch} is larger than one pass over the training data "
                        f"({train.num_examples} examples in {train.num_groups} groups of {cfg.data.path}); lower it "
                        "or raise training.epochs_per_iter")


def total_steps(cfg: PureTrainConfig, train) -> int:
    """The official count: int(epochs * groups * mean examples per puzzle / global batch), unless given."""
    if cfg.training.total_steps is not None:
        return cfg.training.total_steps
    meta = train.metadata
    steps = int(cfg.training.epochs * meta.total_groups * meta.mean_puzzle_examples / cfg.training.global_batch_size)
    if steps < 1:
        raise UserError(f"training.epochs={cfg.training.epochs} gives no optimiser step on this dataset")
    return steps


def build_evaluators(cfg: PureTrainConfig, test_root: Path):
    names = set(cfg.eval.evaluators)
    unknown = names - {"arc"}
    if unknown:
        raise UserError(f"eval.evaluators: unknown {sorted(unknown)}; available: arc")
    if not names:
        return list
    from hybrid.eval.arc import ARCLoopEvaluator

    return lambda: [ARCLoopEvaluator(test_root, scoring=cfg.eval.arc_scoring)]


def main(argv: list[str]) -> None:
    path, overrides = split_cli(argv)
    if path is None:
        raise UserError("train_pure.py needs --config FILE (see configs/cpu and configs/pure)")
    cfg = load_config(PureTrainConfig, path, overrides)
    train, test = load_data(cfg)
    meta = train.metadata
    try:
        arch = cfg.arch_config(
            {"seq_len": meta.seq_len, "vocab_size": meta.vocab_size, "num_puzzle_identifiers": meta.num_puzzle_identifiers}
        )
    except ValueError as err:
        raise UserError(f"{path}: {err} (data.path={cfg.data.path})") from None

    cfg.arch = dataclasses.asdict(arch)  # saved resolved, so the run can be rebuilt without its dataset
    steps = total_steps(cfg, train)
    check_schedule(cfg.training, steps)
    check_batch(cfg, train)
    accelerator, run_dir = prepare_run(cfg.run)
    rank, world = accelerator.process_index, accelerator.num_processes
    # Same weights on every rank (built from one seed), different exploration draws per rank (seed + rank).
    set_seed(cfg.run.seed)
    reasoner, act = build_pure_model(arch, generator=torch.Generator().manual_seed(cfg.run.seed + rank))
    set_seed(cfg.run.seed, device_specific=True)

    batch = cfg.training.global_batch_size
    parts = LoopParts(
        reasoner=reasoner,
        act=act,
        loss_type=arch.loss_type,
        train_stream=TrainSampler(
            train, global_batch_size=batch, seed=cfg.run.seed, rank=rank, world_size=world,
            epochs_per_iter=cfg.training.epochs_per_iter,
        ),
        eval_batches=lambda: eval_batches(test, global_batch_size=batch, rank=rank, world_size=world),
        total_steps=steps,
        global_batch_size=batch,
        sparse_embedding=getattr(reasoner.encoder, "puzzle_emb", None),
        evaluators=build_evaluators(cfg, Path(cfg.data.path)),
        config=cfg,
    )
    params = sum(p.numel() for p in reasoner.parameters() if p.requires_grad)
    log.info(f"{arch.family}: {params:,} dense parameters; {parts.total_steps} steps of {batch} on {world} process(es)")
    trainer = Trainer(
        parts, run=cfg.run, optim=cfg.training, eval_cfg=cfg.eval, checkpoint=cfg.checkpoint,
        accelerator=accelerator, run_dir=run_dir,
    )
    resume = resolve_resume(cfg.run, run_dir)
    if resume is not None:
        trainer.resume_from(resume)
    trainer.fit()
    accelerator.end_training()
    release_run_dir(run_dir)


if __name__ == "__main__":
    run_main(main)
