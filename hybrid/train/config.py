"""Config sections shared by the training recipes (pure and hybrid), and the recipe -> config-class registry.

Names follow the official `cfg_pretrain.yaml` where a key exists there, so a paper run reads the same in both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from hybrid.config import from_dict
from hybrid.models.pure import PureConfig


@dataclass
class RunConfig:
    output_dir: str  # the run folder: checkpoints, metrics.jsonl, config.yaml, curves.png
    seed: int = 0
    overwrite: bool = False  # replace an existing run folder (never done otherwise)
    resume: str = "no"  # "no", "auto" (latest complete checkpoint in output_dir, if any) or a checkpoint folder
    log_every: int = 10  # optimiser steps between train-metric records
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])  # accelerate trackers: tensorboard, wandb
    project: str = "hybrid"
    progress_bar: bool = True
    stop_at_step: int | None = None  # leave the run at this step with a checkpoint (time-limited jobs); resume later

    def __post_init__(self):
        _at_least(self, log_every=0, stop_at_step=1)
        if not self.resume:
            raise ValueError("resume must be 'no', 'auto' or a checkpoint folder, got an empty string")


@dataclass
class OptimConfig:
    global_batch_size: int = 768
    epochs: int = 1  # passes over the groups; sets total_steps unless that is given
    total_steps: int | None = None  # optimiser steps; overrides epochs
    epochs_per_iter: int = 1  # official loader iteration = this many epochs drawn in one permutation stream
    lr: float = 1e-4
    lr_min_ratio: float = 1.0  # 1.0 = constant after warm-up (the official default)
    lr_warmup_steps: int = 2000
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.1
    puzzle_emb_lr: float = 1e-2
    puzzle_emb_weight_decay: float = 0.1
    ema: bool = False
    ema_rate: float = 0.999

    def __post_init__(self):
        _at_least(self, global_batch_size=1, total_steps=1, epochs=1, epochs_per_iter=1, lr_warmup_steps=0,
                  weight_decay=0.0, puzzle_emb_lr=0.0, puzzle_emb_weight_decay=0.0)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("lr_min_ratio", "beta1", "beta2", "ema_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class EvalConfig:
    interval: int = 1000  # optimiser steps between evaluations (0 = only at the end)
    halt_max_steps: int | None = None  # supervision steps at evaluation (default: as trained)
    max_examples: int | None = None  # evaluate on the first N test examples only (quick checks)
    evaluators: list[str] = field(default_factory=list)  # extra evaluators: "arc"
    arc_scoring: Literal["trm_fraction", "hrm_all_or_nothing"] = "trm_fraction"

    def __post_init__(self):
        _at_least(self, interval=0, halt_max_steps=1, max_examples=1)


@dataclass
class CheckpointConfig:
    every: int = 0  # optimiser steps between checkpoints (0 = at every evaluation)
    keep_last: int = 3  # complete checkpoints kept; older ones are deleted after each save

    def __post_init__(self):
        _at_least(self, every=0, keep_last=1)


def _at_least(section, **minimum) -> None:
    """Raise ValueError naming the first field below its minimum (None, where allowed, means "not set")."""
    for name, low in minimum.items():
        value = getattr(section, name)
        if value is not None and value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")


@dataclass
class PureDataConfig:
    path: str  # a folder with train/ and test/ in the official format (recipes/build_data.py writes one)


@dataclass
class PureTrainConfig:
    """`recipes/train_pure.py`: TRM / HRM trained from scratch on a grid task."""

    run: RunConfig
    data: PureDataConfig
    arch: dict  # hybrid.models.pure.PureConfig keys; seq_len, vocab_size, num_puzzle_identifiers default to the data's
    training: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self):
        # Check the arch keys and types now (with placeholder sizes), so a typo fails at load time, not after the
        # dataset is read.
        from_dict(PureConfig, {"seq_len": 1, "vocab_size": 2, "num_puzzle_identifiers": 1, **self.arch})

    def arch_config(self, data_sizes: dict[str, int]) -> PureConfig:
        """The model config: sizes the config leaves out come from the dataset; sizes it states must agree."""
        arch = dict(self.arch)
        for key, value in data_sizes.items():
            stated = arch.setdefault(key, value)
            if stated != value:
                raise ValueError(f"arch.{key}={stated} contradicts the dataset, which has {key}={value}")
        return from_dict(PureConfig, arch, origin="section 'arch'")


def config_class_for(launch_line: str):
    """The config dataclass of the recipe named in a config file's launch-command header."""
    registry = recipe_configs()
    for name, cls in registry.items():
        if f"recipes/{name}.py" in launch_line:
            return cls
    raise ValueError(f"no known recipe in {launch_line!r}; known: {', '.join(sorted(registry))}")


def recipe_configs() -> dict:
    from hybrid.train.hybrid_config import HybridTrainConfig

    return {"train_pure": PureTrainConfig, "train_hybrid": HybridTrainConfig}


def asdict(config) -> dict:
    return dataclasses.asdict(config)
