"""Config of `recipes/train_hybrid.py`: a recursive head (or a baseline head) on a Hugging Face backbone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hybrid.data.tasks import HybridTaskConfig
from hybrid.models.configuration_hybrid import DEFAULT_BACKBONE
from hybrid.train.config import CheckpointConfig, EvalConfig, OptimConfig, RunConfig


@dataclass
class HybridModelConfig:
    """Knobs of `hybrid.models.HybridRecursiveConfig` (see its docstring)."""

    backbone: str = DEFAULT_BACKBONE
    backbone_layers: list[int] = field(default_factory=lambda: [-1])
    head: Literal["recursive", "linear", "mlp", "transformer"] = "recursive"
    core: Literal["trm", "hrm", "trm_singlez"] = "trm"
    hidden_size: int = 128
    num_heads: int = 4
    expansion: float = 4.0
    H_cycles: int = 2  # T
    L_cycles: int = 2  # n
    L_layers: int = 1
    H_layers: int = 1
    halt_max_steps: int = 4
    halt_exploration_prob: float = 0.1
    loss_type: Literal["stablemax_cross_entropy", "softmax_cross_entropy"] = "softmax_cross_entropy"
    lora_r: int = 0
    lora_alpha: int = 16
    lora_target_modules: list[str] | None = None


@dataclass
class HybridTrainConfig:
    run: RunConfig
    task: HybridTaskConfig = field(default_factory=HybridTaskConfig)
    model: HybridModelConfig = field(default_factory=HybridModelConfig)
    training: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # Frozen backbones: compute each example's features once ("memory", or "disk" under cache_dir) instead of at
    # every supervision step and epoch. Must be "none" with LoRA (the backbone then changes while training).
    feature_cache: Literal["memory", "disk", "none"] = "memory"  # not "off": YAML reads off as false
    cache_dir: str = ".cache/hybrid-features"
    save_backbone: bool = False  # the exported model folder holds the backbone weights too

    def __post_init__(self):
        if self.model.lora_r > 0 and self.feature_cache != "none":
            raise ValueError("model.lora_r > 0 trains the backbone, so its features cannot be cached: set feature_cache=none")
