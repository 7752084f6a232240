"""Hybrid mode: a recursive reasoning head (TRM / HRM) on top of any Hugging Face backbone.

backbone (frozen, or LoRA) -> chosen hidden states -> projection to the head's width -> [register; tokens] ->
head (recursive core or baseline) -> output layer (+ Q head on the register).

The register is one learned vector put before the tokens, like TRM's puzzle-embedding prefix: the head attends
bidirectionally, so position 0 sees the whole text whatever the backbone (encoder or decoder-only) and the padding
side. The Q head reads it, as in TRM, and so does the sequence classifier.

Two ways to run a model:
- as a reasoner (docs/design.md) driven by the shared ACT wrapper and training loop, one supervision step per call:
  `HybridReasoner(model)` or simply `model.act_loss_head()`;
- through the ordinary Hugging Face `forward(input_ids, attention_mask, labels)`, which runs the whole deep-supervision
  rollout from a fresh carry (the entry point for `transformers.Trainer` and users).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedModel,
)
from transformers.utils import ModelOutput

from hybrid.core.act import ACT, Batch, ReasonerOutput
from hybrid.core.layers import CastedLinear, rms_norm, trunc_normal_init_
from hybrid.core.losses import ACTLossHead, correctness, per_sequence_lm_loss, q_halt_loss
from hybrid.core.recursion import HRMCore, SingleZCore, TRMCore
from hybrid.models.backbones import backbone_hidden_size, backbone_hidden_states, load_backbone
from hybrid.models.baselines import build_head
from hybrid.models.configuration_hybrid import HybridRecursiveConfig

WEIGHTS_NAME = "model.safetensors"
# safetensors metadata key recording whether the backbone's own weights are in the file.
_BACKBONE_SAVED = "hybrid_backbone_saved"
# Keyword arguments the Auto classes pass to from_pretrained that a local safetensors load has no use for.
_AUTO_KWARGS = {"_from_auto", "_commit_hash", "adapter_kwargs", "trust_remote_code", "revision", "cache_dir", "local_files_only", "token", "subfolder"}


@dataclass
class HybridRecursiveOutput(ModelOutput):
    """loss (with labels), logits of the last supervision step ([B, L, C] token / [B, C] sequence), Q logits."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    q_halt_logits: Tensor | None = None
    q_continue_logits: Tensor | None = None


def _is_adapter_key(key: str) -> bool:
    return "lora_" in key


def _freeze(backbone: nn.Module) -> None:
    backbone.requires_grad_(False)
    backbone.eval()


def _with_lora(backbone: nn.Module, config: HybridRecursiveConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    # No dropout: the backbone always runs in eval mode, so cached and live features agree across steps.
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules=config.lora_target_modules
    )
    return get_peft_model(backbone, lora)


class HybridRecursivePreTrainedModel(PreTrainedModel):
    """Backbone + projection + register + head + output layer + Q head. Subclasses fix the task."""

    config_class = HybridRecursiveConfig
    base_model_prefix = "hybrid"
    main_input_name = "input_ids"
    task: str = ""

    def __init__(self, config: HybridRecursiveConfig, backbone: nn.Module | None = None):
        """backbone: an already-loaded model (e.g. from `load_backbone`); None loads `config.backbone_name_or_path`
        (or builds an untrained one from `config.backbone_model_config` when no name is set)."""
        if config.task != self.task:
            raise ValueError(
                f"{type(self).__name__} is a {self.task}-level model but config.task is {config.task!r}; "
                f"set HybridRecursiveConfig(task={self.task!r}) or use hybrid_model_for(config)"
            )
        super().__init__(config)
        if backbone is None:
            if config.backbone_name_or_path is not None:
                backbone, _ = load_backbone(config.backbone_name_or_path)
            else:
                backbone = AutoModel.from_config(config.backbone_model_config)
        config.backbone_model_config = backbone.config
        _freeze(backbone)
        if config.lora_r > 0:
            backbone = _with_lora(backbone, config)
        # The backbone's weights are pretrained: flag them so post_init's weight initialisation never touches them.
        for module in backbone.modules():
            module._is_hf_initialized = True
        self.backbone = backbone

        width = config.hidden_size
        self.proj = CastedLinear(backbone_hidden_size(backbone.config) * len(config.backbone_layers), width)
        self.register_token = nn.Parameter(torch.empty(width))
        self.head = build_head(config.head, config)
        self.output = CastedLinear(width, config.num_labels)
        self.q_head = CastedLinear(width, 2, bias=True) if self.head.learns_halting else None
        self.post_init()

    # --- weights -------------------------------------------------------------------------------------------------

    def _init_weights(self, module: nn.Module) -> None:
        """Initialises the head only (the spec's init, section 1.4); every other module is left as it is."""
        if module is self:
            trunc_normal_init_(self.register_token.data, std=1.0)
        elif module is self.q_head:
            # Start far from halting: P(halt) = sigmoid(-5), as in TRM/HRM.
            module.weight.data.zero_()
            module.bias.data.fill_(-5.0)
        elif isinstance(module, CastedLinear):
            trunc_normal_init_(module.weight.data, std=module.weight.shape[1] ** -0.5)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, (TRMCore, HRMCore, SingleZCore)):
            for name in module.init_names:
                trunc_normal_init_(getattr(module, name), std=1.0)

    def train(self, mode: bool = True):
        """The backbone stays in eval mode (no dropout), frozen or LoRA-tuned."""
        super().train(mode)
        self.backbone.eval()
        return self

    @property
    def backbone_is_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    # --- the reasoner protocol -----------------------------------------------------------------------------------

    def empty_carry(self, batch: Batch) -> tuple[Tensor, ...]:
        batch_size, seq_len = batch["input_ids"].shape
        return self.head.empty_carry(batch_size, seq_len + 1, batch["input_ids"].device)

    def reset_carry(self, reset: Tensor, carry: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return self.head.reset_carry(reset, carry)

    def backbone_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """[B, L, D_backbone * len(backbone_layers)]; without gradient when the backbone is frozen."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_is_frozen):
            return backbone_hidden_states(self.backbone, input_ids, attention_mask, self.config.backbone_layers)

    def step(self, carry: tuple[Tensor, ...], batch: Batch, **cycles) -> ReasonerOutput:
        """One supervision step. batch: input_ids, attention_mask, optional features (then the backbone is skipped).
        cycles: H_cycles / L_cycles overrides for the recursive core."""
        mask = batch["attention_mask"].bool()
        features = batch.get("features")
        if features is None:
            features = self.backbone_features(batch["input_ids"], batch["attention_mask"])
        # Unit RMS per token, as pure mode's sqrt(D)-scaled embeddings: backbones' hidden states differ in scale by
        # orders of magnitude (MiniLM about 0.5, GPT-2's last layers in the hundreds), and input injection needs x
        # comparable to the carried latents (init RMS 1); at RMS 0.5 the recursive head never left chance on chain
        # reasoning while the transformer head learned it (docs/results.md).
        x = rms_norm(self.proj(features.float()), self.config.rms_norm_eps)
        x = torch.cat([self.register_token.expand(x.shape[0], 1, -1), x], dim=1)
        mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        z = self.head(carry, x, mask, **cycles)
        readout = z[0]
        logits = self.output(readout[:, 1:] if self.task == "token" else readout[:, :1])
        if self.q_head is None:
            # Constant zeros never halt early under either rule (q_halt > 0, q_halt > q_continue).
            q = readout.new_zeros(readout.shape[0], 2, dtype=torch.float32)
        else:
            q = self.q_head(readout[:, 0]).float()
        return ReasonerOutput(
            carry=tuple(t.detach() for t in z), logits=logits, q_halt_logits=q[:, 0], q_continue_logits=q[:, 1], z=z
        )

    def act_loss_head(self, *, generator: torch.Generator | None = None) -> ACTLossHead:
        """The shared ACT wrapper and loss around this model, configured from the config (HRM computes its Q-continue
        target)."""
        act = ACT(
            HybridReasoner(self),
            halt_max_steps=self.config.halt_max_steps,
            halt_exploration_prob=self.config.halt_exploration_prob,
            halt_rule=self.config.effective_halt_rule,
            compute_target_q=self.config.core == "hrm" and self.head.learns_halting,
            generator=generator,
        )
        return ACTLossHead(act, loss_type=self.config.loss_type)

    # --- the Hugging Face entry point ----------------------------------------------------------------------------

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        features: Tensor | None = None,
        **kwargs,
    ) -> HybridRecursiveOutput:
        """All `halt_max_steps` supervision steps from a fresh carry, the carry detached between steps; the backbone
        runs once. With labels, the loss is the mean of the per-step losses in training (each step's: mean over the
        batch of the token loss + 0.5 * BCE of q_halt), and the last step's loss in evaluation. HRM's Q-continue loss
        needs the ACT loop and is not part of this loss."""
        if kwargs:
            raise ValueError(f"{type(self).__name__}.forward got unexpected arguments {sorted(kwargs)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if features is None:
            features = self.backbone_features(input_ids, attention_mask)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "features": features}
        carry = self.empty_carry(batch)
        losses = []
        for _ in range(self.config.halt_max_steps):
            out = self.step(carry, batch)
            carry = out.carry
            if labels is not None:
                _, seq_correct, _ = correctness(out.logits, labels)
                lm_loss = per_sequence_lm_loss(out.logits, labels, self.config.loss_type).mean()
                losses.append(lm_loss + 0.5 * q_halt_loss(out.q_halt_logits, seq_correct) / labels.shape[0])
        loss = None
        if losses:
            loss = torch.stack(losses).mean() if self.training else losses[-1]
        logits = out.logits if self.task == "token" else out.logits[:, 0]
        return HybridRecursiveOutput(
            loss=loss, logits=logits, q_halt_logits=out.q_halt_logits, q_continue_logits=out.q_continue_logits
        )

    # --- save / load ---------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | Path, *, save_backbone: bool = False, **kwargs) -> None:
        """config.json, model.safetensors and a README.md model card. The weights hold the head and the LoRA adapter;
        the backbone is referenced by `config.backbone_name_or_path` unless `save_backbone=True` stores it too."""
        if kwargs:
            raise ValueError(f"save_pretrained got unsupported arguments {sorted(kwargs)}")
        if not save_backbone and self.config.backbone_name_or_path is None:
            raise ValueError("the backbone has no name or path to refer to; save it with save_backbone=True")
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        self.config.save_pretrained(path)
        state = {
            key: value.detach().contiguous().clone()  # clones: tied backbone tensors share storage
            for key, value in self.state_dict().items()
            if save_backbone or not key.startswith("backbone.") or _is_adapter_key(key)
        }
        save_file(state, str(path / WEIGHTS_NAME), metadata={"format": "pt", _BACKBONE_SAVED: json.dumps(save_backbone)})
        (path / "README.md").write_text(self._model_card(save_backbone))

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        backbone: nn.Module | None = None,
        config: HybridRecursiveConfig | None = None,
        **kwargs,
    ):
        """Restore a model saved by `save_pretrained` (a local folder). The backbone comes from the file when it was
        saved with it, else from `backbone` or `config.backbone_name_or_path`. Returns the model in eval mode."""
        unsupported = set(kwargs) - _AUTO_KWARGS
        if unsupported:
            raise ValueError(f"{cls.__name__}.from_pretrained got unsupported arguments {sorted(unsupported)}")
        path = Path(pretrained_model_name_or_path)
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise ValueError(f"{path}: no {WEIGHTS_NAME}; expected a folder written by save_pretrained")
        if config is None:
            config = HybridRecursiveConfig.from_pretrained(path)
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
        if _BACKBONE_SAVED not in metadata:
            raise ValueError(f"{weights}: missing the {_BACKBONE_SAVED!r} metadata written by save_pretrained")
        backbone_saved = json.loads(metadata[_BACKBONE_SAVED])
        if backbone is None and backbone_saved:
            # Built untrained, then overwritten by the file's weights below.
            backbone = AutoModel.from_config(config.backbone_model_config)
        model = cls(config, backbone=backbone)
        missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        missing = [k for k in missing if backbone_saved or not k.startswith("backbone.") or _is_adapter_key(k)]
        if missing or unexpected:
            raise ValueError(f"{weights}: does not match {cls.__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return model.eval()

    def _model_card(self, backbone_saved: bool) -> str:
        c = self.config
        head_params = sum(p.numel() for n, p in self.named_parameters() if not n.startswith("backbone."))
        adapter_params = sum(p.numel() for n, p in self.named_parameters() if _is_adapter_key(n))
        where = "stored in this folder" if backbone_saved else f"loaded from `{c.backbone_name_or_path}`"
        auto = "AutoModelForTokenClassification" if self.task == "token" else "AutoModelForSequenceClassification"
        return f"""---
library_name: transformers
tags: [hybrid-recursive, {c.core}, recursive-reasoning]
---
# {type(self).__name__}

A recursive reasoning head (`{c.head}` head, core `{c.core}`: T = H_cycles = {c.H_cycles}, n = L_cycles = {c.L_cycles},
{c.L_layers} L layers, width {c.hidden_size}) on the backbone `{c.backbone_name_or_path}` (hidden states
{c.backbone_layers}), for {c.task}-level classification into {c.num_labels} classes, trained with deep supervision
(up to {c.halt_max_steps} steps, loss `{c.loss_type}`).

- Backbone: {where}; {"LoRA rank " + str(c.lora_r) + f" ({adapter_params} adapter parameters)" if c.lora_r else "frozen"}.
- Head parameters (projection, register, head, output and Q layers): {head_params}.

```python
import hybrid.models.modeling_hybrid  # registers the model type with the Auto classes
from transformers import {auto}
model = {auto}.from_pretrained("path/to/this/folder")
```
"""


class HybridReasoner(nn.Module):
    """The reasoner protocol of docs/design.md over a hybrid model, for the shared ACT wrapper (its `forward` is one
    supervision step, while the model's own `forward` is the Hugging Face entry point)."""

    def __init__(self, model: HybridRecursivePreTrainedModel):
        super().__init__()
        self.model = model

    def empty_carry(self, batch: Batch) -> tuple[Tensor, ...]:
        return self.model.empty_carry(batch)

    def reset_carry(self, reset: Tensor, carry: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return self.model.reset_carry(reset, carry)

    def forward(self, carry: tuple[Tensor, ...], batch: Batch, **cycles) -> ReasonerOutput:
        return self.model.step(carry, batch, **cycles)


class HybridRecursiveForTokenClassification(HybridRecursivePreTrainedModel):
    """One label per token: logits [B, L, num_labels], read from the latent at each token."""

    task = "token"


class HybridRecursiveForSequenceClassification(HybridRecursivePreTrainedModel):
    """One label per text, read from the register (position 0); inside the reasoner protocol the logits are
    [B, 1, num_labels], as the shared loss expects."""

    task = "sequence"


MODEL_FOR_TASK = {"token": HybridRecursiveForTokenClassification, "sequence": HybridRecursiveForSequenceClassification}


def hybrid_model_for(config: HybridRecursiveConfig, backbone: nn.Module | None = None) -> HybridRecursivePreTrainedModel:
    """The model class matching `config.task`, built on `backbone` (or on the backbone the config names)."""
    return MODEL_FOR_TASK[config.task](config, backbone=backbone)


def register() -> None:
    """Make the Auto classes know "hybrid_recursive" (no trust_remote_code needed). Idempotent."""
    AutoConfig.register(HybridRecursiveConfig.model_type, HybridRecursiveConfig, exist_ok=True)
    AutoModelForTokenClassification.register(HybridRecursiveConfig, HybridRecursiveForTokenClassification, exist_ok=True)
    AutoModelForSequenceClassification.register(
        HybridRecursiveConfig, HybridRecursiveForSequenceClassification, exist_ok=True
    )


register()

__all__ = [
    "HybridReasoner",
    "HybridRecursiveForSequenceClassification",
    "HybridRecursiveForTokenClassification",
    "HybridRecursiveOutput",
    "HybridRecursivePreTrainedModel",
    "hybrid_model_for",
    "register",
]
