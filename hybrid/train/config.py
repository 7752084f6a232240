"""Configs of the training recipes: the sections they share, and one config per mode (`PureTrainConfig`,
`HybridTrainConfig`), whose model section is checked against the model's own config class.

Names follow the official `cfg_pretrain.yaml` where a key exists there, so a paper run reads the same in both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from hybrid.config import from_dict
from hybrid.data.tasks import HybridTaskConfig
from hybrid.models.configuration_hybrid import HybridRecursiveConfig
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
    # torch.compile of the training step's forward (the ACT loss). Off by default: on CPU it gained 1.27x on the tiny
    # config after a compile time of tens of seconds (bench/README.md); worth it for long runs, not for short ones.
    compile: bool = False

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
    # Early exit (hybrid.core.rollout.ExitRules): an example leaves the batch once q_halt > exit_threshold, or once
    # its prediction has not changed for exit_patience steps; null = run every step (the official evaluation).
    exit_threshold: float | None = None
    exit_patience: int | None = None

    def __post_init__(self):
        _at_least(self, interval=0, halt_max_steps=1, max_examples=1, exit_patience=1)


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


# Model keys that come from the data (task, classes) or are written by save_pretrained, never from a recipe config.
_DERIVED_MODEL_KEYS = {"task", "num_labels", "id2label", "label2id", "backbone_model_config", "backbone_in_checkpoint"}


def hybrid_model_keys() -> list[str]:
    """The keys a hybrid recipe's `model:` section may set: the fields of HybridRecursiveConfig itself."""
    # Its own fields only: the ones it inherits from PreTrainedConfig (architectures, dtype, ...) are transformers'.
    return sorted(set(HybridRecursiveConfig.__annotations__) - _DERIVED_MODEL_KEYS)


@dataclass
class HybridTrainConfig:
    """`recipes/train_hybrid.py`: a recursive head (or a baseline head) on a Hugging Face backbone."""

    run: RunConfig
    task: HybridTaskConfig = field(default_factory=HybridTaskConfig)
    # HybridRecursiveConfig keys (see its docstring), with its defaults; task and classes come from the data.
    model: dict = field(default_factory=dict)
    training: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # Frozen backbones: compute each example's features once ("memory", or "disk" under cache_dir) instead of at
    # every supervision step and epoch. Must be "none" with LoRA or model.train_backbone (the backbone then changes
    # while training).
    feature_cache: Literal["memory", "disk", "none"] = "memory"  # not "off": YAML reads off as false
    # Stored precision of cached features: half the memory of float32; the head computes in float32 either way.
    feature_cache_dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    # Precision the frozen backbone runs in while features are computed (bfloat16: about 2-4x faster matmuls on CPUs
    # with AVX-512 BF16 and on GPUs). The saved model reloads its backbone in float32.
    backbone_dtype: Literal["float32", "bfloat16"] = "float32"
    cache_dir: str = ".cache/hybrid-features"
    save_backbone: bool = False  # the exported model folder holds the backbone weights too

    def __post_init__(self):
        unknown = sorted(set(self.model) - set(hybrid_model_keys()))
        if unknown:
            raise ValueError(f"unknown key 'model.{unknown[0]}'. Valid keys in model: {', '.join(hybrid_model_keys())}")
        # Checked now (placeholder classes), so a bad value fails at load time, before any backbone is loaded.
        model = self.model_config(task="sequence", num_labels=2)
        if model.person_graph and self.task.name == "clutrr" and self.task.question != "none":
            raise ValueError(f"model.person_graph needs task.question=none, got {self.task.question!r}: a question "
                             "naming A and B links them in one hop (task.mark_query already says who they are)")
        trained = "model.lora_r > 0" if model.lora_r > 0 else "model.train_backbone=true" if model.train_backbone else None
        if trained is not None and self.backbone_dtype != "float32":
            raise ValueError(f"backbone_dtype applies to a frozen backbone; with {trained} keep it float32")
        if trained is not None and self.feature_cache != "none":
            raise ValueError(f"{trained} trains the backbone, so its features cannot be cached: set feature_cache=none")

    def model_config(self, *, task: str, num_labels: int, id2label: dict[int, str] | None = None) -> HybridRecursiveConfig:
        """The model's config: this section plus what the data decides."""
        names = {} if id2label is None else {"id2label": dict(id2label), "label2id": {v: k for k, v in id2label.items()}}
        return HybridRecursiveConfig(**self.model, task=task, num_labels=num_labels, **names)


def asdict(config) -> dict:
    return dataclasses.asdict(config)
