"""Hybrid mode: a recursive reasoning head (TRM / HRM) on top of any Hugging Face backbone.

The model holds the same reasoner as pure mode (`hybrid.models.reasoner`: encoder -> core -> output heads) with a
backbone encoder in front: backbone (frozen, or LoRA) -> chosen hidden states -> projection to the head's width ->
[register; tokens] at unit RMS. The register is one learned vector put before the tokens, like TRM's puzzle-embedding
prefix: the core attends bidirectionally, so position 0 sees the whole text whatever the backbone (encoder or
decoder-only) and the padding side; the Q head and the sequence classifier read it.

Two ways to run a model:
- through the shared ACT wrapper and training loop, one supervision step per call: `model.act_loss()`;
- through the ordinary Hugging Face `forward(input_ids, attention_mask, labels)`, which rolls the whole deep
  supervision out from a fresh carry with the same rollout and loss as training and evaluation (the entry point of
  `transformers.Trainer`, pipelines and users).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedModel,
)
from transformers.utils import ModelOutput, cached_file

from hybrid.core.act import Batch, ReasonerOutput
from hybrid.core.layers import PERSON_KEYS, CastedLinear, RotaryEmbedding, trunc_normal_init_
from hybrid.core.losses import ACTLoss
from hybrid.core.recursion import Carry, HRMCore, SingleZCore, TRMCore
from hybrid.core.rollout import rollout
from hybrid.models.backbones import BackboneEncoder, load_backbone
from hybrid.models.configuration_hybrid import HybridRecursiveConfig
from hybrid.models.people import ChainCore, GraphCore, PersonEncoder
from hybrid.models.reasoner import CoreSpec, OutputHeads, QHead, Reasoner, act_for, build_core

WEIGHTS_NAME = "model.safetensors"
ADAPTER_FOLDER = "adapter"  # LoRA adapters, in PEFT's own format (adapter_config.json, adapter_model.safetensors)
# RoPE table length of the head; sequences are the backbone's length plus the register, far below this.
MAX_POSITIONS = 8192
# Hub arguments honoured when resolving a saved model's files; the Auto classes also pass these bookkeeping ones.
_HUB_ARGUMENTS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
_AUTO_BOOKKEEPING = {"_from_auto", "_commit_hash", "adapter_kwargs", "trust_remote_code", "_from_pipeline"}


@dataclass
class HybridRecursiveOutput(ModelOutput):
    """loss (with labels), logits of the last supervision step ([B, L, C] token / [B, C] sequence), Q logits."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    q_halt_logits: Tensor | None = None
    q_continue_logits: Tensor | None = None


def is_adapter_key(key: str) -> bool:
    return "lora_" in key


class TextReasoner(Reasoner):
    """The reasoner on padded text: trailing columns that are padding in every row are cut before the core runs.

    The training carry is padded to the longest training text, while the rows in its slots are usually much shorter
    (CLUTRR: median 60 tokens, longest 195). Cutting changes no result: the core ignores padded keys and its norms and
    MLPs act per position, so the real positions, the register and every logit read from them are the same; the cut
    positions keep their carried latents, which nothing reads. Only a suffix is cut, so RoPE positions stay put (with
    left padding the last column is real and nothing is cut). The length is read on the host: one sync per step.
    """

    cut_padding = True  # False runs every column (bench/bench_hybrid.py times both)

    def forward(self, carry: Carry, batch: Batch, **cycles) -> ReasonerOutput:
        real = batch["attention_mask"].any(0)  # columns holding a token of some row
        length = int(real.nonzero().max()) + 1 if real.any() else 1
        full = real.shape[0]
        if length == full or not self.cut_padding:
            return super().forward(carry, batch, **cycles)
        cut = {k: v[:, :length] if v.ndim >= 2 and v.shape[1] == full else v for k, v in batch.items()}
        # The latents hold the register first, then one position per token.
        out = super().forward(tuple(z[:, : 1 + length] for z in carry), cut, **cycles)
        z = tuple(torch.cat([new, old[:, 1 + length :]], dim=1) for new, old in zip(out.z, carry))
        logits = out.logits
        if self.heads.level == "token":
            logits = torch.cat([logits, logits.new_zeros(logits.shape[0], full - length, logits.shape[2])], dim=1)
        return ReasonerOutput(carry=tuple(t.detach() for t in z), logits=logits, q_halt_logits=out.q_halt_logits,
                              q_continue_logits=out.q_continue_logits, z=z)


def core_spec(config: HybridRecursiveConfig) -> CoreSpec:
    """The core a config asks for; the transformer baseline gets all the recursive core's blocks (equal size)."""
    kind = config.core if config.head == "recursive" else config.head
    layers = config.L_layers + (config.H_layers if config.head == "transformer" and config.core == "hrm" else 0)
    return CoreSpec.from_config(config, kind, L_layers=layers)


def _person_graph_parts(config: HybridRecursiveConfig, backbone: nn.Module) -> tuple[nn.Module, nn.Module, OutputHeads]:
    """Encoder, core and output layer of a person-graph head (`hybrid.models.people`); the output layer reads B's
    state, and nothing learns halting (one supervision step)."""
    if config.subject_possessive_ids is None:
        raise ValueError("person_graph's subject words have no ids yet: call config.resolve_readout_tokens(tokenizer)")
    encoder = PersonEncoder(backbone, config.backbone_layers, config.hidden_size, config.rms_norm_eps,
                            num_heads=config.num_heads, expansion=config.expansion, marks=config.readout_token_ids,
                            conjunctions=tuple(map(tuple, config.subject_conjunction_ids)),
                            possessives=tuple(config.subject_possessive_ids))
    core = ChainCore(config.hidden_size) if config.head == "recursive" else GraphCore(config.hidden_size, config.L_layers)
    return encoder, core, OutputHeads(config.hidden_size, config.num_labels, skip=1, level="sequence",
                                      learns_halting=False)


def _with_lora(backbone: nn.Module, config: HybridRecursiveConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    # No dropout: the backbone always runs in eval mode, so cached and live features agree across steps.
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules=config.lora_target_modules
    )
    return get_peft_model(backbone, lora)


class HybridRecursivePreTrainedModel(PreTrainedModel):
    """Backbone encoder + core + output heads. Subclasses fix the task (token or sequence labels)."""

    config_class = HybridRecursiveConfig
    base_model_prefix = "reasoner"
    main_input_name = "input_ids"
    task: str = ""

    def __init__(self, config: HybridRecursiveConfig, backbone: nn.Module | None = None):
        """backbone: an already-loaded model (e.g. from `load_backbone`); None loads `config.backbone_name_or_path`
        (or builds an untrained one from `config.backbone_model_config` when no name is set or the weights are in the
        checkpoint)."""
        if config.task != self.task:
            raise ValueError(
                f"{type(self).__name__} is a {self.task}-level model but config.task is {config.task!r}; "
                f"set HybridRecursiveConfig(task={self.task!r}) or use hybrid_model_class(config)"
            )
        super().__init__(config)
        if backbone is None:
            if config.backbone_name_or_path is not None and not config.backbone_in_checkpoint:
                backbone, _ = load_backbone(config.backbone_name_or_path)
            else:
                backbone = AutoModel.from_config(config.backbone_model_config)
        config.backbone_model_config = backbone.config
        backbone.requires_grad_(config.train_backbone)
        backbone.eval()
        if config.lora_r > 0:
            backbone = _with_lora(backbone, config)
        # The backbone's weights are pretrained: flag them so post_init's weight initialisation never touches them.
        for module in backbone.modules():
            module._is_hf_initialized = True

        if config.readout_tokens and config.readout_token_ids is None:
            raise ValueError(f"readout_tokens {config.readout_tokens} have no ids yet: call "
                             "config.resolve_readout_tokens(tokenizer) before building the model")
        if config.person_graph:
            self.reasoner = TextReasoner(*_person_graph_parts(config, backbone))
        else:
            spec = core_spec(config)
            encoder = BackboneEncoder(backbone, config.backbone_layers, config.hidden_size, config.rms_norm_eps,
                                      entity_graph=config.entity_graph)
            core = build_core(spec, RotaryEmbedding(config.hidden_size // config.num_heads, MAX_POSITIONS))
            heads = OutputHeads(config.hidden_size, config.num_labels, skip=1, level=self.task,
                                learns_halting=spec.recursive, readout_ids=tuple(config.readout_token_ids or ()))
            self.reasoner = TextReasoner(encoder, core, heads)
        self.post_init()

    # --- weights -------------------------------------------------------------------------------------------------

    def _init_weights(self, module: nn.Module) -> None:
        """Initialises the head only (the official TRM/HRM initialisation); the backbone is left as it is."""
        if isinstance(module, QHead):
            module.reset_parameters()
        elif isinstance(module, CastedLinear):
            trunc_normal_init_(module.weight.data, std=module.weight.shape[1] ** -0.5)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, BackboneEncoder):
            trunc_normal_init_(module.register_token.data, std=1.0)
        elif isinstance(module, (TRMCore, HRMCore, SingleZCore)):
            for name in module.init_names:
                trunc_normal_init_(getattr(module, name), std=1.0)

    @property
    def backbone(self) -> nn.Module:
        return self.reasoner.encoder.backbone

    @property
    def backbone_is_frozen(self) -> bool:
        return self.reasoner.encoder.frozen

    @property
    def pad_token_id(self) -> int | None:
        return getattr(self.backbone.config, "pad_token_id", None)

    def backbone_features(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        return self.reasoner.encoder.features(input_ids, attention_mask, token_type_ids)

    def is_checkpointed_key(self, key: str) -> bool:
        """State-dict entries a training checkpoint holds: everything but a frozen backbone (rebuilt from its name);
        a LoRA adapter inside it is kept, and so is a backbone that is trained (`train_backbone`)."""
        if self.config.train_backbone:
            return True
        return not key.startswith(f"{self.base_model_prefix}.encoder.backbone.") or is_adapter_key(key)

    def act_loss(self, *, generator: torch.Generator | None = None) -> ACTLoss:
        """The shared ACT wrapper and loss around this model's reasoner (`halting_rule` decides the rule)."""
        c = self.config
        act = act_for(
            self.reasoner,
            c.core,
            halt_max_steps=c.halt_max_steps,
            halt_exploration_prob=c.halt_exploration_prob,
            halt_rule=c.halt_rule,
            generator=generator,
        )
        return ACTLoss(act, loss_type=c.loss_type)

    # --- the Hugging Face entry point ----------------------------------------------------------------------------

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
        features: Tensor | None = None,
        segment_ids: Tensor | None = None,
        entity_ids: Tensor | None = None,
        sentence_ids: Tensor | None = None,
    ) -> HybridRecursiveOutput:
        """All `halt_max_steps` supervision steps from a fresh carry (`hybrid.core.rollout`), the carry detached
        between steps; the backbone runs once. With labels, the loss is the training loss (`ACTLoss`: token loss +
        0.5 * (Q-halt + Q-continue) BCE) divided by the batch size: its mean over the steps in training, the last
        step's in evaluation. segment_ids, entity_ids (and sentence_ids): the entity or person graph, per token."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        graph = (("segment_ids", segment_ids), ("entity_ids", entity_ids), ("sentence_ids", sentence_ids))
        batch |= {k: v for k, v in graph + (("token_type_ids", token_type_ids),) if v is not None}
        batch["features"] = self.reasoner.encoder.batch_features(batch) if features is None else features
        if labels is not None:
            batch["labels"] = labels
        act_loss = self.act_loss()
        act_loss.train(self.training)
        losses = []
        for step in rollout(act_loss, batch, max_steps=self.config.halt_max_steps):
            if step.result.loss is not None:
                losses.append(step.result.loss / input_ids.shape[0])
        loss = None
        if losses:
            loss = torch.stack(losses).mean() if self.training else losses[-1]
        outputs = step.result.outputs
        logits = outputs["logits"] if self.task == "token" else outputs["logits"][:, 0]
        return HybridRecursiveOutput(
            loss=loss, logits=logits, q_halt_logits=outputs["q_halt_logits"], q_continue_logits=outputs["q_continue_logits"]
        )

    # --- save / load ---------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, *, save_backbone: bool = False, state_dict=None, **kwargs):
        """`PreTrainedModel.save_pretrained` (config.json, model.safetensors, `push_to_hub=True` and every other
        argument it takes) with the backbone kept by reference: its name is in the config and its weights are left
        out unless `save_backbone=True`. A trained backbone (`train_backbone`) is always saved: its name refers to
        the weights before training. A LoRA adapter goes to `adapter/` in PEFT's format. Adds a model card."""
        save_backbone = save_backbone or self.config.train_backbone
        if not save_backbone and self.config.backbone_name_or_path is None:
            raise ValueError("the backbone has no name or path to refer to; save it with save_backbone=True")
        path = Path(save_directory)
        prefix = f"{self.base_model_prefix}.encoder.backbone."
        state = self.state_dict() if state_dict is None else state_dict
        state = {
            key: value
            for key, value in state.items()
            if not is_adapter_key(key) and (save_backbone or not key.startswith(prefix))
        }
        self.config.backbone_in_checkpoint = save_backbone
        self.config.architectures = [type(self).__name__]
        super().save_pretrained(path, state_dict=state, **kwargs)
        if self.config.lora_r > 0:
            self.backbone.save_pretrained(path / ADAPTER_FOLDER)
        if not (path / "README.md").exists():
            (path / "README.md").write_text(self._model_card())

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args,
        backbone: nn.Module | None = None,
        config: HybridRecursiveConfig | None = None,
        **kwargs,
    ):
        """Restore a model saved by `save_pretrained`, from a local folder or a Hub repository (offline from the
        Hub cache): `revision`, `cache_dir`, `token`, `local_files_only`, `force_download`, `subfolder` are honoured
        as transformers does. The backbone comes from the checkpoint when it was saved with it, else from `backbone`
        or `config.backbone_name_or_path`. Returns the model in eval mode."""
        hub = {k: kwargs.pop(k) for k in _HUB_ARGUMENTS if k in kwargs}
        dtype = kwargs.pop("dtype", None)
        if dtype not in (None, "auto", "float32", torch.float32):
            # The head keeps float32 master weights and casts at its own points; no silent conversion.
            raise ValueError(f"{cls.__name__}.from_pretrained: dtype={dtype!r} is not supported; the model loads in float32")
        unsupported = set(kwargs) - _AUTO_BOOKKEEPING
        if model_args or unsupported:
            raise ValueError(f"{cls.__name__}.from_pretrained got unsupported arguments {sorted(unsupported)}")
        name = str(pretrained_model_name_or_path)
        if config is None:
            config = HybridRecursiveConfig.from_pretrained(name, **hub)
        weights = cached_file(name, WEIGHTS_NAME, **hub)
        model = hybrid_model_class(config)(config, backbone=backbone)
        state = load_file(weights)
        if config.lora_r > 0:
            from peft import set_peft_model_state_dict

            sub = os.path.join(hub.get("subfolder", ""), ADAPTER_FOLDER)
            adapter = cached_file(name, "adapter_model.safetensors", **{**hub, "subfolder": sub})
            set_peft_model_state_dict(model.backbone, load_file(adapter))
        own = {k for k in model.state_dict() if config.backbone_in_checkpoint or model.is_checkpointed_key(k)}
        own = {k for k in own if not is_adapter_key(k)}
        missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
        if missing or unexpected:
            raise ValueError(f"{weights}: does not match {cls.__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.load_state_dict(state, strict=False)
        return model.eval()

    def _model_card(self) -> str:
        c = self.config
        head_params = sum(p.numel() for n, p in self.named_parameters() if ".backbone." not in n)
        adapter_params = sum(p.numel() for n, p in self.named_parameters() if is_adapter_key(n))
        where = "stored in this folder" if c.backbone_in_checkpoint else f"loaded from `{c.backbone_name_or_path}`"
        if c.train_backbone:
            where = f"fine-tuned from `{c.backbone_name_or_path}`, stored in this folder"
        auto = "AutoModelForTokenClassification" if self.task == "token" else "AutoModelForSequenceClassification"
        shape = f"core `{c.core}`: T = H_cycles = {c.H_cycles}, n = L_cycles = {c.L_cycles}, {c.L_layers} L layers"
        readout = ""
        if c.person_graph:
            shape = ("the chain core, one shared step per person out from A" if c.head == "recursive"
                     else f"{c.L_layers} graph layers") + " over the text's people"
            readout += (f"\n- Person-graph head: A and B are the people marked {c.readout_tokens}; inputs need "
                        f"{', '.join(f'`{k}`' for k in PERSON_KEYS)} (`hybrid.data.text_tasks.tokenize_dataset`).")
        elif c.entity_graph:
            readout += "\n- Entity-graph attention: inputs need `segment_ids` and `entity_ids` (`entity_graph_ids`)."
        if c.readout_tokens and not c.person_graph:
            readout += f"\n- The classifier reads the register and the mean latent at each of the tokens {c.readout_tokens}."
        lora = f"LoRA rank {c.lora_r} ({adapter_params} adapter parameters, in `{ADAPTER_FOLDER}/`)" if c.lora_r else "frozen"
        lora = "every weight trained" if c.train_backbone else lora
        return f"""---
library_name: transformers
tags: [hybrid-recursive, {c.core}, recursive-reasoning]
---
# {type(self).__name__}

A recursive reasoning head (`{c.head}` head, {shape}, width {c.hidden_size}) on the backbone `{c.backbone_name_or_path}` (hidden states
{c.backbone_layers}), for {c.task}-level classification into {c.num_labels} classes, trained with deep supervision
(up to {c.halt_max_steps} steps, loss `{c.loss_type}`).

- Backbone: {where}; {lora}.
- Head parameters (projection, register, core, output and Q layers): {head_params}.{readout}

```python
import hybrid.models  # registers the model type with the Auto classes
from transformers import {auto}
model = {auto}.from_pretrained("path/to/this/folder")
```
"""


class HybridRecursiveForTokenClassification(HybridRecursivePreTrainedModel):
    """One label per token: logits [B, L, num_labels], read from the latent at each token."""

    task = "token"


class HybridRecursiveForSequenceClassification(HybridRecursivePreTrainedModel):
    """One label per text, read from the register (position 0) and, with `config.readout_tokens`, from the mean latent
    at each readout token; inside the reasoner the logits are [B, 1, num_labels], as the shared loss expects."""

    task = "sequence"


MODEL_FOR_TASK = {"token": HybridRecursiveForTokenClassification, "sequence": HybridRecursiveForSequenceClassification}


def hybrid_model_class(config: HybridRecursiveConfig) -> type[HybridRecursivePreTrainedModel]:
    """The model class matching `config.task`."""
    return MODEL_FOR_TASK[config.task]


def hybrid_model_for(config: HybridRecursiveConfig, backbone: nn.Module | None = None) -> HybridRecursivePreTrainedModel:
    """The model class matching `config.task`, built on `backbone` (or on the backbone the config names)."""
    return hybrid_model_class(config)(config, backbone=backbone)


def register() -> None:
    """Make the Auto classes know "hybrid_recursive" (no trust_remote_code needed). Idempotent."""
    AutoConfig.register(HybridRecursiveConfig.model_type, HybridRecursiveConfig, exist_ok=True)
    AutoModelForTokenClassification.register(HybridRecursiveConfig, HybridRecursiveForTokenClassification, exist_ok=True)
    AutoModelForSequenceClassification.register(
        HybridRecursiveConfig, HybridRecursiveForSequenceClassification, exist_ok=True
    )


register()

__all__ = [
    "BackboneEncoder",
    "HybridRecursiveForSequenceClassification",
    "HybridRecursiveForTokenClassification",
    "HybridRecursiveOutput",
    "HybridRecursivePreTrainedModel",
    "core_spec",
    "hybrid_model_class",
    "hybrid_model_for",
    "register",
]
