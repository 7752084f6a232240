"""Rebuild a trained pure-mode model from its run folder (or one checkpoint folder) for evaluation and analysis."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from hybrid.checkpoint import find_checkpoint, load_model_state
from hybrid.config import load_config
from hybrid.core.act import ACT
from hybrid.models.pure import PureConfig, PureReasoner, build_pure_model
from hybrid.train.config import PureTrainConfig
from hybrid.utils import UserError


@dataclass
class RestoredRun:
    config: PureTrainConfig
    arch: PureConfig
    reasoner: PureReasoner
    act: ACT
    checkpoint: Path


def load_pure_run(path: str | Path) -> RestoredRun:
    """Rebuild the model of a `train_pure.py` run with the weights of its checkpoint (EMA weights when the run used
    EMA, as saved in model.safetensors)."""
    run_dir, checkpoint = find_checkpoint(path)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise UserError(f"{run_dir} has no config.yaml; is it a train_pure.py run folder?")
    cfg = load_config(PureTrainConfig, config_file)
    # train_pure.py saves the arch with the sizes it took from the dataset, so no dataset is needed here.
    arch = cfg.arch_config({})
    reasoner, act = build_pure_model(arch, generator=torch.Generator().manual_seed(cfg.run.seed))
    load_model_state(reasoner, load_file(checkpoint / "model.safetensors"), source=checkpoint)
    reasoner.eval()
    act.eval()
    return RestoredRun(config=cfg, arch=arch, reasoner=reasoner, act=act, checkpoint=checkpoint)
