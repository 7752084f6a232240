"""The pure grid model of the papers: embeddings -> recursive core (TRM, HRM or single-z) -> lm and Q heads.

Field names of `PureConfig` are the official ones (official config/arch/trm.yaml and hrm.yaml, read by the model
configs in official trm.py and hrm.py), so official configs map onto it directly.
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from hybrid.core.act import ACT, Batch
from hybrid.core.layers import CastedEmbedding, CastedSparseEmbedding, RotaryEmbedding
from hybrid.core.losses import LOSS_FUNCTIONS
from hybrid.models.reasoner import RECURSIVE_KINDS, CoreSpec, OutputHeads, Reasoner, act_for, build_core

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FAMILIES = RECURSIVE_KINDS
POS_ENCODINGS = ("rope", "learned", "none")
# Learned positions are mixed as (x + pos) / sqrt(2), the official constant.
LEARNED_POS_SCALE = 0.707106781


@dataclass
class PureConfig:
    seq_len: int  # grid tokens, without the puzzle prefix
    vocab_size: int
    num_puzzle_identifiers: int
    family: Literal["trm", "hrm", "trm_singlez"] = "trm"
    H_cycles: int = 3  # T
    L_cycles: int = 6  # n
    H_layers: int = 0  # HRM's H network; TRM ignores it
    L_layers: int = 2
    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    puzzle_emb_ndim: int = 512
    puzzle_emb_len: int = 16  # prefix positions P; 0 = ceil(puzzle_emb_ndim / hidden_size)
    pos_encodings: Literal["rope", "learned", "none"] = "rope"
    mlp_t: bool = False
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    forward_dtype: str = "bfloat16"
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1
    loss_type: str = "stablemax_cross_entropy"
    no_ACT_continue: bool | None = None  # None: True for TRM families, False for HRM
    # Ablations of TRM's Table 1 (arXiv 2510.04871), ours: not in the official configs; off, the model is the paper's.
    separate_networks: bool = False  # family trm: f_H and f_L as two networks, both of L_layers layers
    one_step_gradient: bool = False  # family trm: gradient through the last f_L and f_H calls only (HRM's)
    carry_latents: bool = True  # False: every supervision step starts from the initial latents

    def __post_init__(self):
        def fail(msg: str):
            raise ValueError(f"PureConfig: {msg}")

        if self.family not in FAMILIES:
            fail(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.pos_encodings not in POS_ENCODINGS:
            fail(f"pos_encodings must be one of {POS_ENCODINGS}, got {self.pos_encodings!r}")
        if self.forward_dtype not in DTYPES:
            fail(f"forward_dtype must be one of {sorted(DTYPES)}, got {self.forward_dtype!r}")
        if self.loss_type not in LOSS_FUNCTIONS:
            fail(f"loss_type must be one of {sorted(LOSS_FUNCTIONS)}, got {self.loss_type!r}")
        for name in ("seq_len", "vocab_size", "num_puzzle_identifiers", "hidden_size", "num_heads", "L_layers"):
            if getattr(self, name) < 1:
                fail(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.H_cycles < 1 or self.L_cycles < 1:
            fail(f"H_cycles and L_cycles must be >= 1, got {self.H_cycles} and {self.L_cycles}")
        if self.hidden_size % self.num_heads:
            fail(f"num_heads={self.num_heads} does not divide hidden_size={self.hidden_size}")
        if self.pos_encodings == "rope" and (self.hidden_size // self.num_heads) % 2:
            fail(f"rope needs an even head dim, got hidden_size/num_heads = {self.hidden_size // self.num_heads}")
        if self.puzzle_emb_ndim < 0 or self.puzzle_emb_len < 0:
            fail(f"puzzle_emb_ndim and puzzle_emb_len must be >= 0, got {self.puzzle_emb_ndim}, {self.puzzle_emb_len}")
        if self.puzzle_emb_ndim > self.prefix_len * self.hidden_size:
            fail(
                f"puzzle_emb_ndim={self.puzzle_emb_ndim} does not fit in puzzle_emb_len={self.puzzle_emb_len} prefix "
                f"positions of hidden_size={self.hidden_size}"
            )
        if self.family == "hrm":
            if self.H_layers < 1:
                fail(f"HRM needs H_layers >= 1, got {self.H_layers}")
            if self.pos_encodings == "none":
                fail("HRM supports pos_encodings 'rope' or 'learned', not 'none' (the official code rejects it too)")
        if self.family != "trm" and (self.separate_networks or self.one_step_gradient):
            fail(
                f"separate_networks and one_step_gradient are ablations of family 'trm', not {self.family!r} "
                "(HRM has two networks and the 1-step gradient already)"
            )
        if self.separate_networks and self.H_layers not in (0, self.L_layers):
            fail(f"separate_networks gives f_H the L_layers={self.L_layers} layers of f_L; H_layers={self.H_layers} "
                 "is HRM's (leave it 0)")
        if self.halt_max_steps < 1:
            fail(f"halt_max_steps must be >= 1, got {self.halt_max_steps}")
        if not 0.0 <= self.halt_exploration_prob <= 1.0:
            fail(f"halt_exploration_prob must be in [0, 1], got {self.halt_exploration_prob}")
        if self.no_ACT_continue is None:
            self.no_ACT_continue = self.family != "hrm"

    @property
    def prefix_len(self) -> int:
        """P, the puzzle-prefix positions in front of the grid tokens."""
        if self.puzzle_emb_len == 0:
            return math.ceil(self.puzzle_emb_ndim / self.hidden_size)
        return self.puzzle_emb_len

    @property
    def total_len(self) -> int:
        """S = P + grid tokens: the length of every latent."""
        return self.prefix_len + self.seq_len

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.forward_dtype]


class GridEncoder(nn.Module):
    """Grid tokens and the per-puzzle sparse embedding -> x = sqrt(D) * [puzzle prefix; token embeddings] (+ learned
    positions), [B, P + L, D] in the forward dtype (official trm.py / hrm_act_v1.py, `_input_embeddings`). Batch keys:
    `inputs` [B, L], `puzzle_identifiers` [B]."""

    def __init__(self, cfg: PureConfig):
        super().__init__()
        self.cfg = cfg
        D, dtype = cfg.hidden_size, cfg.dtype
        self.embed_scale = math.sqrt(D)
        self.embed_tokens = CastedEmbedding(cfg.vocab_size, D, init_std=1 / math.sqrt(D), cast_to=dtype)
        if cfg.puzzle_emb_ndim > 0:
            self.puzzle_emb = CastedSparseEmbedding(cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim, cast_to=dtype)
        if cfg.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(cfg.total_len, D, init_std=1 / math.sqrt(D), cast_to=dtype)

    def latent_shape(self, batch: Batch) -> tuple[int, int]:
        return batch["inputs"].shape[0], self.cfg.total_len

    def _check_batch(self, batch: Batch):
        for key in ("inputs", "puzzle_identifiers"):
            if key not in batch:
                raise ValueError(f"pure-model batch needs {key!r}; it has {sorted(batch)}")
        inputs, ids = batch["inputs"], batch["puzzle_identifiers"]
        if inputs.ndim != 2 or inputs.shape[1] != self.cfg.seq_len:
            raise ValueError(f"batch['inputs'] must be [B, {self.cfg.seq_len}], got {tuple(inputs.shape)}")
        if ids.shape != inputs.shape[:1]:
            raise ValueError(f"batch['puzzle_identifiers'] must be [{inputs.shape[0]}], got {tuple(ids.shape)}")
        if inputs.device.type != "cpu":
            # Value checks would stop an accelerator four times per call; datasets are checked when read
            # (hybrid.data.format.read_split), so on a GPU only shapes are checked here.
            return
        if inputs.numel() and (inputs.min() < 0 or inputs.max() >= self.cfg.vocab_size):
            raise ValueError(
                f"batch['inputs'] holds token ids in [{int(inputs.min())}, {int(inputs.max())}], "
                f"expected [0, {self.cfg.vocab_size - 1}] (vocab_size={self.cfg.vocab_size})"
            )
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.cfg.num_puzzle_identifiers):
            raise ValueError(
                f"batch['puzzle_identifiers'] holds ids in [{int(ids.min())}, {int(ids.max())}], expected "
                f"[0, {self.cfg.num_puzzle_identifiers - 1}] (num_puzzle_identifiers={self.cfg.num_puzzle_identifiers})"
            )

    def forward(self, batch: Batch) -> tuple[Tensor, None]:
        self._check_batch(batch)
        cfg, inputs = self.cfg, batch["inputs"]
        B = inputs.shape[0]
        x = self.embed_tokens(inputs)
        P = cfg.prefix_len
        if P:
            prefix = x.new_zeros(B, P * cfg.hidden_size)
            if cfg.puzzle_emb_ndim > 0:
                prefix[:, : cfg.puzzle_emb_ndim] = self.puzzle_emb(batch["puzzle_identifiers"])
            x = torch.cat([prefix.view(B, P, cfg.hidden_size), x], dim=1)
        if cfg.pos_encodings == "learned":
            x = LEARNED_POS_SCALE * (x + self.embed_pos.weight.to(x.dtype))
        return self.embed_scale * x, None


class PureReasoner(Reasoner):
    """The grid model of the papers: grid encoder -> TRM / HRM / single-z core -> lm head and Q head (on the first
    prefix position)."""

    def __init__(self, cfg: PureConfig):
        # Built in the official order (embeddings, networks, initial latents, heads), so a seed gives the same weights.
        encoder = GridEncoder(cfg)
        rotary = (
            RotaryEmbedding(cfg.hidden_size // cfg.num_heads, cfg.total_len, base=cfg.rope_theta)
            if cfg.pos_encodings == "rope"
            else None
        )
        spec = CoreSpec.from_config(
            cfg,
            cfg.family,
            forward_dtype=cfg.dtype,
            mlp_t_seq_len=cfg.total_len if cfg.mlp_t else None,
            separate_networks=cfg.separate_networks,
            one_step_gradient=cfg.one_step_gradient,
        )
        core = build_core(spec, rotary)
        heads = OutputHeads(cfg.hidden_size, cfg.vocab_size, skip=cfg.prefix_len)
        super().__init__(encoder, core, heads)
        self.cfg = cfg


def build_pure_model(cfg: PureConfig, *, generator: torch.Generator | None = None) -> tuple[PureReasoner, ACT]:
    """The reasoner and its ACT wrapper: TRM halts on q_halt > 0; HRM (or no_ACT_continue=False) on q_halt >
    q_continue with the bootstrapped continue target."""
    reasoner = PureReasoner(cfg)
    act = act_for(
        reasoner,
        cfg.family,
        halt_max_steps=cfg.halt_max_steps,
        halt_exploration_prob=cfg.halt_exploration_prob,
        halt_rule="q_halt" if cfg.no_ACT_continue else "q_halt_vs_continue",
        carry_latents=cfg.carry_latents,
        generator=generator,
    )
    return reasoner, act
