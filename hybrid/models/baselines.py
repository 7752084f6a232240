"""Non-recursive baseline cores, one config flag away from the recursive ones (`hybrid.models.reasoner.build_core`).

Every core maps (carry, x [B, S, D], attention mask [B, S] bool or None) to a tuple of latents whose first entry the
output heads read. Baselines carry nothing between supervision steps (their carry is one zero latent that they ignore)
and do not learn halting, so the same ACT loop trains them and they run every supervision step.

| kind          | what                                                                  | parameters               |
|---------------|-----------------------------------------------------------------------|--------------------------|
| transformer   | the recursive core's blocks applied once, no recursion                | equal to the recursive   |
| mlp           | a SwiGLU per position                                                 | one SwiGLU               |
| linear        | identity: logits are linear in the encoder's output                   | none                     |

In hybrid mode, LoRA fine-tuning with a linear head is head="linear" with lora_r > 0 in the config.
"""

import abc

import torch
from torch import Tensor, nn

from hybrid.core.layers import Block, RotaryEmbedding, SwiGLU, rms_norm
from hybrid.core.recursion import Carry


class _BaselineCore(nn.Module, abc.ABC):
    """A trivial carry (one zero latent, ignored) and one pass of `transform`."""

    def __init__(self, spec, rotary: RotaryEmbedding | None):
        super().__init__()
        self.hidden_size = spec.hidden_size

    def empty_carry(self, batch_size: int, seq_len: int, device: torch.device | None = None) -> Carry:
        return (torch.zeros(batch_size, seq_len, self.hidden_size, device=device),)

    def reset_carry(self, reset: Tensor, carry: Carry) -> Carry:
        return carry

    def forward(self, carry: Carry, x: Tensor, attn_mask: Tensor | None = None, **cycles) -> Carry:
        if cycles:
            raise ValueError(f"a {type(self).__name__} has no cycles to override, got {sorted(cycles)}")
        if attn_mask is None:
            attn_mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return (self.transform(x, attn_mask),)

    @abc.abstractmethod
    def transform(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        """[B, S, D] -> [B, S, D]: the core's single, non-recursive pass."""


def pool_into_register(z: Tensor, attn_mask: Tensor) -> Tensor:
    """Position 0 replaced by the mean of the real tokens after it: cores without token mixing summarise the text
    there, where the sequence classifier and Q head read."""
    tokens = attn_mask[:, 1:, None].to(z.dtype)
    mean = (z[:, 1:] * tokens).sum(1) / tokens.sum(1).clamp_min(1)
    return torch.cat([mean[:, None], z[:, 1:]], dim=1)


class LinearCore(_BaselineCore):
    """No parameters: logits come from the encoder's output by the output layer alone."""

    def transform(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        return pool_into_register(x, attn_mask)


class MLPCore(_BaselineCore):
    """A residual SwiGLU per position (post-norm, like the recursive cores' blocks), no token mixing."""

    def __init__(self, spec, rotary: RotaryEmbedding | None):
        super().__init__(spec, rotary)
        self.eps = spec.rms_norm_eps
        self.mlp = SwiGLU(spec.hidden_size, spec.expansion)

    def transform(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        return pool_into_register(rms_norm(x + self.mlp(x), self.eps), attn_mask)


class TransformerCore(_BaselineCore):
    """`spec.L_layers` blocks of the recursive core applied once (give it the recursive core's total block count
    for an equal-size baseline)."""

    def __init__(self, spec, rotary: RotaryEmbedding | None):
        super().__init__(spec, rotary)
        self.rotary = rotary
        self.layers = nn.ModuleList(
            Block(
                hidden_size=spec.hidden_size,
                num_heads=spec.num_heads,
                expansion=spec.expansion,
                rms_norm_eps=spec.rms_norm_eps,
            )
            for _ in range(spec.L_layers)
        )

    def transform(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        rope = None if self.rotary is None else self.rotary(x.shape[1])
        for layer in self.layers:
            x = layer(x, rope, attn_mask)
        return x


__all__ = ["LinearCore", "MLPCore", "TransformerCore", "pool_into_register"]
