"""Building blocks of the recursive network (official models/layers.py and models/recursive_reasoning/trm.py).

Dtype policy, as in the official code: master weights are float32 and every layer casts them to the dtype of its input
on each call, so the forward dtype is decided once, where the embeddings are cast (`forward_dtype`), and there is no
autocast. RMSNorm and RoPE compute in float32 internally and cast back.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Truncation bound in standard-normal units, and the factor that makes the truncated samples' std equal the requested
# std: the variance of a standard normal truncated to [-a, a] is 1 - 2 a phi(a) / Z with Z = erf(a / sqrt 2).
_TRUNC_BOUND = 2.0
_TRUNC_Z = math.erf(_TRUNC_BOUND / math.sqrt(2))
_TRUNC_PDF = math.exp(-0.5 * _TRUNC_BOUND**2) / math.sqrt(2 * math.pi)
_TRUNC_STD_CORRECTION = 1.0 / math.sqrt(1.0 - 2 * _TRUNC_BOUND * _TRUNC_PDF / _TRUNC_Z)


@torch.no_grad()
def trunc_normal_init_(tensor: Tensor, std: float = 1.0) -> Tensor:
    """JAX-style truncated normal in place: cut at +-2 standard units, rescaled so the samples' std equals `std`."""
    if std == 0:
        return tensor.zero_()
    scale = std * _TRUNC_STD_CORRECTION
    # Inverse-CDF sampling: uniform over the erf image of [-2, 2], then erfinv maps back to a truncated normal.
    tensor.uniform_(-_TRUNC_Z, _TRUNC_Z)
    tensor.erfinv_()
    tensor.mul_(math.sqrt(2) * scale)
    return tensor.clamp_(-_TRUNC_BOUND * scale, _TRUNC_BOUND * scale)


def rms_norm(x: Tensor, eps: float) -> Tensor:
    """Weightless RMSNorm over the last axis, computed in float32 and cast back to the input dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)).to(x.dtype)


class CastedLinear(nn.Module):
    """Linear map with a float32 master weight cast to the input's dtype on every call; truncated LeCun-normal init."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_init_(torch.empty(out_features, in_features), std=in_features**-0.5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastedEmbedding(nn.Module):
    """Embedding table in float32; the whole table is cast to `cast_to` before the lookup (official models/layers.py,
    `CastedEmbedding`)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.weight = nn.Parameter(trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std))

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight.to(self.cast_to))


class CastedSparseEmbedding(nn.Module):
    """The per-puzzle table: a zero-initialised buffer trained by a sparse optimiser, never by autograd directly.

    In training the batch's rows are copied into `local_weights` (a leaf with requires_grad) and their ids into
    `local_ids`; the gradient lands on `local_weights` and `hybrid.optim.SparseSignSGD` applies it to the touched rows
    of `weights`. Both local buffers are non-persistent, so checkpoints hold only `weights`.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.register_buffer("weights", torch.zeros(num_embeddings, embedding_dim), persistent=True)
        self.register_buffer("local_weights", torch.zeros(0, embedding_dim, requires_grad=True), persistent=False)
        self.register_buffer("local_ids", torch.zeros(0, dtype=torch.long), persistent=False)

    def forward(self, ids: Tensor) -> Tensor:
        if not self.training:
            return self.weights[ids].to(self.cast_to)
        with torch.no_grad():
            rows = self.weights[ids]
            reusable = self.local_weights.is_leaf and self.local_weights.device == rows.device
            if reusable and self.local_weights.shape == rows.shape:
                # In place, so a graph built by an earlier forward on the same batch (HRM's extra target step) keeps
                # pointing at the tensor whose .grad the optimiser reads.
                self.local_weights.copy_(rows)
                self.local_ids.copy_(ids)
            else:
                self.local_weights = rows.clone().requires_grad_(True)
                self.local_ids = ids.to(torch.long).clone()
            # A buffer is not cleared by Module.zero_grad, and a gradient left from other rows means nothing here.
            self.local_weights.grad = None
        return self.local_weights.to(self.cast_to)


def swiglu_intermediate_size(width: int, expansion: float) -> int:
    """Official rounding: 2/3 * expansion * width, rounded (Python's round), then up to a multiple of 256."""
    return 256 * math.ceil(round(expansion * width * 2 / 3) / 256)


class SwiGLU(nn.Module):
    """down(SiLU(gate) * up) with a fused [gate; up] projection, no biases."""

    def __init__(self, width: int, expansion: float):
        super().__init__()
        intermediate = swiglu_intermediate_size(width, expansion)
        self.gate_up = CastedLinear(width, 2 * intermediate)
        self.down = CastedLinear(intermediate, width)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class RotaryEmbedding(nn.Module):
    """Float32 cos/sin tables for the half-rotation RoPE convention, positions 0..max_positions-1."""

    def __init__(self, head_dim: int, max_positions: int, *, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        self.max_positions = max_positions
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, seq_len: int) -> tuple[Tensor, Tensor]:
        if seq_len > self.max_positions:
            raise ValueError(f"sequence length {seq_len} exceeds the RoPE table built for {self.max_positions} positions")
        return self.cos[:seq_len], self.sin[:seq_len]


def _rotate_half(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [B, S, heads, head_dim] in float32 with tables [S, head_dim]; returns x's dtype."""
    x32 = x.float()
    cos, sin = cos[:, None, :], sin[:, None, :]
    return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)


# Per-token batch keys of entity-graph attention: the sentence a token is in and the bracketed name it belongs to.
GRAPH_KEYS = ("segment_ids", "entity_ids")
# The person graph (hybrid.models.people) also reads each token's sentence as written, before one-person sentences
# are joined to the one before (its segment_ids are the joined sentences).
PERSON_KEYS = (*GRAPH_KEYS, "sentence_ids")


def entity_graph_mask(attention_mask: Tensor, segment_ids: Tensor, entity_ids: Tensor) -> Tensor:
    """[B, 1 + L, 1 + L] bool, True where query i may attend to key j (the register first): tokens of one sentence
    see each other, mentions of one entity see each other across sentences, the register sees every real token and
    is seen by none. Every position sees itself, so no row is empty (padding's rows are never read)."""
    real = attention_mask.bool()
    entity = entity_ids[:, :, None]
    tokens = (segment_ids[:, :, None] == segment_ids[:, None, :]) | ((entity == entity_ids[:, None, :]) & (entity > 0))
    tokens = (tokens & real[:, None, :]) | torch.eye(real.shape[1], dtype=torch.bool, device=real.device)
    register_row = torch.cat([real.new_ones(real.shape[0], 1), real], dim=1)
    unseen_register = real.new_zeros(*real.shape, 1)
    return torch.cat([register_row[:, None], torch.cat([unseen_register, tokens], dim=2)], dim=1)


class Attention(nn.Module):
    """Non-causal multi-head self-attention with a fused [q; k; v] projection, RoPE and an optional key-padding mask."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv = CastedLinear(hidden_size, 3 * hidden_size)
        self.o = CastedLinear(hidden_size, hidden_size)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None, attn_mask: Tensor | None = None) -> Tensor:
        """attn_mask: [B, S] bool, True for real tokens (padded keys are ignored by every query), or [B, S, S] bool,
        True where query i may attend to key j (each row needs one True)."""
        B, S, _ = x.shape
        H = self.num_heads
        qkv = self.qkv(x).view(B, S, 3 * H, self.head_dim)
        if rope is not None:
            # q and k rotate in one pass: half the element-wise kernels, the same values.
            q, k = apply_rotary(qkv[:, :, : 2 * H], *rope).split(H, dim=2)
            v = qkv[:, :, 2 * H :]
        else:
            q, k, v = qkv.split(H, dim=2)
        mask = None if attn_mask is None else attn_mask[:, None] if attn_mask.ndim == 3 else attn_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return self.o(y.transpose(1, 2).reshape(B, S, -1))


class TokenMixer(nn.Module):
    """The `mlp_t` mix: a SwiGLU across positions, so its norm runs over the sequence axis (official trm.py,
    `TinyRecursiveReasoningModel_ACTV1Block` with `mlp_t`; the TRM paper does not say so).

    Its weights have the sequence length as a dimension, so it only accepts the length it was built for.
    """

    def __init__(self, seq_len: int, expansion: float, *, rms_norm_eps: float):
        super().__init__()
        self.seq_len = seq_len
        self.eps = rms_norm_eps
        self.mlp = SwiGLU(seq_len, expansion)

    def forward(self, h: Tensor) -> Tensor:
        if h.shape[1] != self.seq_len:
            raise ValueError(
                f"the mlp_t token mixer was built for sequence length {self.seq_len} (prefix included), got {h.shape[1]}"
            )
        h_t = h.transpose(1, 2)
        return rms_norm(h_t + self.mlp(h_t), self.eps).transpose(1, 2)


class Block(nn.Module):
    """Post-norm block: h <- norm(h + Mix(h)); h <- norm(h + SwiGLU(h)). Mix is attention, or the token mixer when
    `mlp_t_seq_len` is given."""

    def __init__(
        self,
        *,
        hidden_size: int,
        num_heads: int,
        expansion: float,
        rms_norm_eps: float,
        mlp_t_seq_len: int | None = None,
    ):
        super().__init__()
        self.eps = rms_norm_eps
        if mlp_t_seq_len is None:
            self.attn = Attention(hidden_size, num_heads)
        else:
            self.mlp_t = TokenMixer(mlp_t_seq_len, expansion, rms_norm_eps=rms_norm_eps)
        self.mlp = SwiGLU(hidden_size, expansion)

    def forward(self, h: Tensor, rope: tuple[Tensor, Tensor] | None = None, attn_mask: Tensor | None = None) -> Tensor:
        if hasattr(self, "mlp_t"):
            if attn_mask is not None:
                raise ValueError("an mlp_t block mixes every position with fixed weights; it cannot take an attn_mask")
            h = self.mlp_t(h)
        else:
            h = rms_norm(h + self.attn(h, rope, attn_mask), self.eps)
        return rms_norm(h + self.mlp(h), self.eps)


class ReasoningModule(nn.Module):
    """The network f(h, injection): add the injection once, then run the block stack (official trm.py,
    `TinyRecursiveReasoningModel_ACTV1ReasoningModule.forward`)."""

    def __init__(
        self,
        *,
        num_layers: int,
        hidden_size: int,
        num_heads: int,
        expansion: float,
        rms_norm_eps: float,
        mlp_t_seq_len: int | None = None,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"a reasoning module needs at least one layer, got num_layers={num_layers}")
        self.layers = nn.ModuleList(
            Block(
                hidden_size=hidden_size,
                num_heads=num_heads,
                expansion=expansion,
                rms_norm_eps=rms_norm_eps,
                mlp_t_seq_len=mlp_t_seq_len,
            )
            for _ in range(num_layers)
        )

    def forward(
        self,
        h: Tensor,
        injection: Tensor | None,
        rope: tuple[Tensor, Tensor] | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        if injection is not None:
            h = h + injection
        for layer in self.layers:
            h = layer(h, rope, attn_mask)
        return h
