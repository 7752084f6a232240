"""The heads a hybrid model can put on its backbone: the recursive core, and baselines one config flag away.

Every head maps (carry, x [B, S, D], attn_mask [B, S] bool) to a tuple of latents whose first entry the output and Q
heads read; position 0 of x is the model's register token (see modeling_hybrid). Baselines carry nothing between
supervision steps (their carry is a zero latent that they ignore) and do not learn halting, so the same ACT loop
trains them with halt_max_steps = 1.

| kind          | what                                                                  | head parameters          |
|---------------|-----------------------------------------------------------------------|--------------------------|
| recursive     | TRM / HRM / single-z core, T * (n + 1) network calls per step         | blocks of its networks   |
| transformer   | the same blocks applied once, no recursion                            | equal to the recursive   |
| mlp           | a SwiGLU per position                                                 | one SwiGLU               |
| linear        | identity: logits are linear in the backbone features                  | none                     |

LoRA fine-tuning with a linear head is head="linear" with lora_r > 0 in the config.
"""

import abc

import torch
from torch import Tensor, nn

from hybrid.core.layers import Block, ReasoningModule, RotaryEmbedding, SwiGLU, rms_norm
from hybrid.core.recursion import HRMCore, SingleZCore, TRMCore

Carry = tuple[Tensor, ...]

# RoPE table length of the head; sequences are the backbone's length plus the register, far below this.
_MAX_POSITIONS = 8192


def _network(config, num_layers: int) -> ReasoningModule:
    return ReasoningModule(
        num_layers=num_layers,
        hidden_size=config.hidden_size,
        num_heads=config.num_heads,
        expansion=config.expansion,
        rms_norm_eps=config.rms_norm_eps,
    )


def _rotary(config) -> RotaryEmbedding:
    return RotaryEmbedding(config.hidden_size // config.num_heads, _MAX_POSITIONS)


def build_core(config) -> TRMCore | HRMCore | SingleZCore:
    """The recursive core named by `config.core`, with the config's T, n and layer counts."""
    common = dict(hidden_size=config.hidden_size, H_cycles=config.H_cycles, L_cycles=config.L_cycles, rotary=_rotary(config))
    if config.core == "trm":
        return TRMCore(net=_network(config, config.L_layers), **common)
    if config.core == "trm_singlez":
        return SingleZCore(net=_network(config, config.L_layers), **common)
    if config.core == "hrm":
        return HRMCore(H_net=_network(config, config.H_layers), L_net=_network(config, config.L_layers), **common)
    raise ValueError(f"unknown core {config.core!r}; expected 'trm', 'hrm' or 'trm_singlez'")


class RecursiveHead(nn.Module):
    """The recursive core as a head: its carry is the core's latents, and it learns when to halt."""

    learns_halting = True

    def __init__(self, config):
        super().__init__()
        self.core = build_core(config)

    def empty_carry(self, batch_size: int, seq_len: int, device: torch.device) -> Carry:
        return self.core.empty_carry(batch_size, seq_len, device)

    def reset_carry(self, reset: Tensor, carry: Carry) -> Carry:
        return self.core.reset_carry(reset, carry)

    def forward(self, carry: Carry, x: Tensor, attn_mask: Tensor, **cycles) -> Carry:
        return self.core(carry, x, attn_mask, **cycles)


class _StatelessHead(nn.Module, abc.ABC):
    """A baseline: a trivial carry (one zero latent, ignored) and constant Q logits."""

    learns_halting = False

    def __init__(self, config):
        super().__init__()
        self.hidden_size = config.hidden_size

    def empty_carry(self, batch_size: int, seq_len: int, device: torch.device) -> Carry:
        return (torch.zeros(batch_size, seq_len, self.hidden_size, device=device),)

    def reset_carry(self, reset: Tensor, carry: Carry) -> Carry:
        return carry

    def forward(self, carry: Carry, x: Tensor, attn_mask: Tensor, **cycles) -> Carry:
        if cycles:
            raise ValueError(f"a {type(self).__name__} has no cycles to override, got {sorted(cycles)}")
        return (self.transform(x, attn_mask),)

    @abc.abstractmethod
    def transform(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        """[B, S, D] -> [B, S, D]: the head's single, non-recursive pass."""


def pool_into_register(z: Tensor, attn_mask: Tensor) -> Tensor:
    """Position 0 replaced by the mean of the real tokens after it: heads without token mixing summarise the text
    there, where the sequence classifier and Q head read."""
    tokens = attn_mask[:, 1:, None].to(z.dtype)
    mean = (z[:, 1:] * tokens).sum(1) / tokens.sum(1).clamp_min(1)
    return torch.cat([mean[:, None], z[:, 1:]], dim=1)


class LinearHead(_StatelessHead):
    """No parameters: logits come from the projected backbone features by the output layer alone."""

    def transform(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        return pool_into_register(x, attn_mask)


class MLPHead(_StatelessHead):
    """A residual SwiGLU per position (post-norm, like the core's blocks), no token mixing."""

    def __init__(self, config):
        super().__init__(config)
        self.eps = config.rms_norm_eps
        self.mlp = SwiGLU(config.hidden_size, config.expansion)

    def transform(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        return pool_into_register(rms_norm(x + self.mlp(x), self.eps), attn_mask)


class TransformerHead(_StatelessHead):
    """The recursive head's blocks (L_layers, plus H_layers for HRM: the same parameter count) applied once."""

    def __init__(self, config):
        super().__init__(config)
        num_layers = config.L_layers + (config.H_layers if config.core == "hrm" else 0)
        self.rotary = _rotary(config)
        self.layers = nn.ModuleList(
            Block(
                hidden_size=config.hidden_size,
                num_heads=config.num_heads,
                expansion=config.expansion,
                rms_norm_eps=config.rms_norm_eps,
            )
            for _ in range(num_layers)
        )

    def transform(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        rope = self.rotary(x.shape[1])
        for layer in self.layers:
            x = layer(x, rope, attn_mask)
        return x


HEADS = {"recursive": RecursiveHead, "linear": LinearHead, "mlp": MLPHead, "transformer": TransformerHead}


def build_head(kind: str, config) -> nn.Module:
    """The head named `kind` ("recursive", "linear", "mlp", "transformer") built from a HybridRecursiveConfig."""
    if kind not in HEADS:
        raise ValueError(f"unknown head kind {kind!r}; expected one of {sorted(HEADS)}")
    return HEADS[kind](config)


__all__ = ["HEADS", "LinearHead", "MLPHead", "RecursiveHead", "TransformerHead", "build_core", "build_head"]
