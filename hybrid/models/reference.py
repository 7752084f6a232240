"""Loading official TRM / HRM checkpoints into `PureReasoner` (official pretrain.py, `save_train_state` /
`load_checkpoint`; HRM's evaluate.py).

Official keys look like `_orig_mod.model.inner.L_level.layers.0.self_attn.qkv_proj.weight`; ours name the parts after
the paper (`core.net.layers.0.attn.qkv.weight`). The tensors themselves need no reordering: both fuse [q; k; v] and
[gate; up] in the same order.
"""

import re
from pathlib import Path

import torch
from torch import Tensor

from hybrid.models.pure import PureConfig, PureReasoner, build_pure_model
from hybrid.core.act import ACT

# Outer wrappers of an official checkpoint: torch.compile, the loss head, the ACT wrapper.
_PREFIXES = ("_orig_mod.", "model.", "inner.")

# Official name inside a layer -> ours.
_LAYER_RENAMES = {
    "self_attn.qkv_proj.": "attn.qkv.",
    "self_attn.o_proj.": "attn.o.",
    "mlp_t.gate_up_proj.": "mlp_t.mlp.gate_up.",
    "mlp_t.down_proj.": "mlp_t.mlp.down.",
    "mlp.gate_up_proj.": "mlp.gate_up.",
    "mlp.down_proj.": "mlp.down.",
}
_TOP_RENAMES = {
    "embed_tokens.embedding_weight": "encoder.embed_tokens.weight",
    "embed_pos.embedding_weight": "encoder.embed_pos.weight",
    "puzzle_emb.weights": "encoder.puzzle_emb.weights",
    "H_init": "core.H_init",
    "L_init": "core.L_init",
    "lm_head.weight": "heads.output.weight",
    "q_head.weight": "heads.q_head.weight",
    "q_head.bias": "heads.q_head.bias",
}
_LAYER_KEY = re.compile(r"^(H_level|L_level)\.layers\.(\d+)\.(.+)$")

# Official config keys that describe the run rather than the model.
_RUN_KEYS = {"batch_size", "name", "loss"}


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model; the message lists missing, unexpected and mis-shaped keys."""


def strip_official_prefix(key: str) -> str:
    while key.startswith(_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def official_to_ours(key: str, family: str) -> str:
    """Our parameter name for an official key (with or without its wrapper prefixes)."""
    key = strip_official_prefix(key)
    if key in _TOP_RENAMES:
        return _TOP_RENAMES[key]
    match = _LAYER_KEY.match(key)
    if match is None:
        return key
    level, index, rest = match.groups()
    for old, new in _LAYER_RENAMES.items():
        if rest.startswith(old):
            rest = new + rest[len(old) :]
            break
    if family == "hrm":
        net = "H_net" if level == "H_level" else "L_net"
    elif level == "L_level":
        net = "net"  # TRM's single network is stored under L_level
    else:
        return key  # TRM has no H network: left as is, it is reported as unexpected
    return f"core.{net}.layers.{index}.{rest}"


def load_official_state_dict(model: PureReasoner, state_dict: dict[str, Tensor], official_cfg: dict | None = None):
    """Copy an official checkpoint into `model`, strictly: every persistent tensor must be matched exactly once.

    official_cfg may carry `family`; otherwise the model's config decides how level names map.
    """
    family = (official_cfg or {}).get("family", model.cfg.family)
    mapped: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        ours = official_to_ours(key, family)
        if ours in mapped:
            raise CheckpointMismatchError(f"checkpoint key {key!r} maps to {ours!r}, which another key already filled")
        mapped[ours] = value

    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(mapped)
        if mapped[k].shape != expected[k].shape
    )
    if missing or unexpected or mis_shaped:
        raise CheckpointMismatchError(
            "official checkpoint does not match the model:\n"
            f"  missing keys: {missing}\n  unexpected keys: {unexpected}\n  shape mismatches: {mis_shaped}"
        )
    model.load_state_dict(mapped, strict=True)


def config_from_official(official_cfg: dict, *, family: str | None = None, loss_type: str | None = None) -> PureConfig:
    """PureConfig from an official arch config dict (unknown keys raise, so nothing is silently dropped)."""
    cfg = dict(official_cfg)
    family = family or cfg.pop("family", None)
    if family is None:
        name = str(cfg.get("name", ""))
        family = "hrm" if "hrm" in name else "trm_singlez" if "singlez" in name else "trm"
    cfg.pop("family", None)
    loss = cfg.get("loss")
    if loss_type is None and isinstance(loss, dict):
        loss_type = loss.get("loss_type")
    if family == "hrm":
        # HRM always derives its prefix from the width and always trains the continue head.
        cfg.setdefault("puzzle_emb_len", 0)
        cfg.setdefault("no_ACT_continue", False)
    cfg.setdefault("mlp_t", False)
    fields = set(PureConfig.__dataclass_fields__)
    unknown = sorted(set(cfg) - fields - _RUN_KEYS)
    if unknown:
        raise ValueError(f"official config has keys PureConfig does not know: {unknown}")
    kwargs = {k: v for k, v in cfg.items() if k in fields}
    if loss_type is not None:
        kwargs["loss_type"] = loss_type
    return PureConfig(family=family, **kwargs)


def from_official(
    official_cfg: dict,
    state_dict: dict[str, Tensor],
    *,
    family: str | None = None,
    loss_type: str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[PureReasoner, ACT]:
    """Build our model from an official config dict and load the official weights into it."""
    cfg = config_from_official(official_cfg, family=family, loss_type=loss_type)
    reasoner, act = build_pure_model(cfg, generator=generator)
    load_official_state_dict(reasoner, state_dict, {"family": cfg.family})
    return reasoner, act


def load_official_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """An official `step_N` file: a plain dict of tensors, read with weights_only=True."""
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state_dict).__name__}")
    return state_dict
