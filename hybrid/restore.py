"""Rebuild a trained pure-mode model from its run folder (or one checkpoint folder), for evaluation and analysis.
Below both training and evaluation: it reads the run's config.yaml as data and imports neither."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from hybrid.checkpoint import MODEL_FILE, find_checkpoint, load_model_state
from hybrid.config import ConfigError, from_dict
from hybrid.core.act import ACT
from hybrid.models.pure import PureConfig, PureReasoner, build_pure_model
from hybrid.utils import UserError


@dataclass
class RestoredRun:
    config: dict  # the run's config.yaml as saved (sections run, data, arch, training, eval, checkpoint)
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
    config = yaml.safe_load(config_file.read_text())
    if not isinstance(config, dict) or not isinstance(config.get("arch"), dict):
        raise UserError(f"{config_file} has no 'arch' section; is it a train_pure.py run folder?")
    try:
        # train_pure.py saves the arch with the sizes it took from the dataset, so no dataset is needed here.
        arch = from_dict(PureConfig, config["arch"], origin=f"{config_file}, section 'arch'")
    except (ConfigError, ValueError) as err:
        raise UserError(str(err)) from None
    seed = int(config.get("run", {}).get("seed", 0))
    reasoner, act = build_pure_model(arch, generator=torch.Generator().manual_seed(seed))
    load_model_state(reasoner, load_file(checkpoint / MODEL_FILE), source=checkpoint)
    reasoner.eval()
    act.eval()
    return RestoredRun(config=config, arch=arch, reasoner=reasoner, act=act, checkpoint=checkpoint)


__all__ = ["RestoredRun", "load_pure_run"]
