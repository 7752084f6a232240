"""The reasoner of both modes: encoder -> core -> output heads, driven one supervision step at a time by the ACT
wrapper (docs/design.md). Pure mode puts a grid encoder in front (`hybrid.models.pure`), hybrid mode a Hugging Face
backbone encoder (`hybrid.models.modeling_hybrid`); the cores and the output heads are the same objects.

- encoder: batch -> (x [B, S, D], attention mask [B, S] or None). Position 0 of x is where the Q head reads (the
  first puzzle-prefix position in pure mode, the register in hybrid mode).
- core: (carry, x, mask) -> new latents; recursive (TRM, HRM, single-z) or a non-recursive baseline.
- output heads: the latent the core reads out first -> label logits (per token, or one per sequence from position
  0) and the Q head's (halt, continue) logits.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hybrid.core.act import ACT, Batch, ReasonerOutput, halting_rule
from hybrid.core.layers import CastedLinear, ReasoningModule, RotaryEmbedding
from hybrid.core.recursion import Carry, HRMCore, SingleZCore, TRMCore
from hybrid.models.baselines import LinearCore, MLPCore, TransformerCore

RECURSIVE_KINDS = ("trm", "hrm", "trm_singlez")
BASELINE_KINDS = ("transformer", "mlp", "linear")
# The Q head starts far from halting: P(halt) = sigmoid(-5) ~ 0.0067 (TRM/HRM official models, q_head init).
Q_HEAD_INIT_BIAS = -5.0


@dataclass(frozen=True)
class CoreSpec:
    """Everything a core is built from. `kind`: a recursive core ("trm", "hrm", "trm_singlez") or a baseline
    ("transformer": `L_layers` blocks applied once; "mlp": one SwiGLU per position; "linear": identity)."""

    kind: str
    hidden_size: int
    num_heads: int
    expansion: float
    rms_norm_eps: float
    H_cycles: int = 1  # T
    L_cycles: int = 1  # n
    L_layers: int = 1
    H_layers: int = 0  # HRM's H network only
    forward_dtype: torch.dtype = torch.float32
    mlp_t_seq_len: int | None = None  # the token-mixing MLP instead of attention (fixed sequence length)
    # TRM's Table 1 ablations (arXiv 2510.04871), "trm" only: f_H and f_L as two networks of L_layers layers each;
    # HRM's 1-step gradient instead of the whole last cycle's.
    separate_networks: bool = False
    one_step_gradient: bool = False

    def __post_init__(self):
        if self.kind not in RECURSIVE_KINDS + BASELINE_KINDS:
            raise ValueError(f"unknown core {self.kind!r}; expected one of {RECURSIVE_KINDS + BASELINE_KINDS}")
        if self.kind != "trm" and (self.separate_networks or self.one_step_gradient):
            raise ValueError(f"separate_networks and one_step_gradient are ablations of the 'trm' core, not {self.kind!r}")

    @property
    def recursive(self) -> bool:
        return self.kind in RECURSIVE_KINDS

    @classmethod
    def from_config(cls, config, kind: str, **overrides) -> "CoreSpec":
        """From any config that uses the shared field names (PureConfig, HybridRecursiveConfig)."""
        shared = ("hidden_size", "num_heads", "expansion", "rms_norm_eps", "H_cycles", "L_cycles", "L_layers", "H_layers")
        return cls(kind=kind, **{**{name: getattr(config, name) for name in shared}, **overrides})


def build_core(spec: CoreSpec, rotary: RotaryEmbedding | None) -> nn.Module:
    """The core named by `spec.kind`. Networks are built before the core's initial latents (HRM: H before L), the
    order the official models draw their initial weights in."""

    def network(num_layers: int) -> ReasoningModule:
        return ReasoningModule(
            num_layers=num_layers,
            hidden_size=spec.hidden_size,
            num_heads=spec.num_heads,
            expansion=spec.expansion,
            rms_norm_eps=spec.rms_norm_eps,
            mlp_t_seq_len=spec.mlp_t_seq_len,
        )

    if not spec.recursive:
        baseline = {"transformer": TransformerCore, "mlp": MLPCore, "linear": LinearCore}[spec.kind]
        return baseline(spec, rotary)
    common = dict(
        hidden_size=spec.hidden_size,
        H_cycles=spec.H_cycles,
        L_cycles=spec.L_cycles,
        forward_dtype=spec.forward_dtype,
        rotary=rotary,
    )
    if spec.kind == "hrm":
        return HRMCore(H_net=network(spec.H_layers), L_net=network(spec.L_layers), **common)
    if spec.kind == "trm" and spec.separate_networks:
        # HRM's two networks, both of TRM's size, under TRM's gradient (or the 1-step one when both ablations are on)
        return HRMCore(H_net=network(spec.L_layers), L_net=network(spec.L_layers),
                       one_step_gradient=spec.one_step_gradient, **common)
    if spec.kind == "trm":
        return TRMCore(net=network(spec.L_layers), one_step_gradient=spec.one_step_gradient, **common)
    return SingleZCore(net=network(spec.L_layers), **common)


class QHead(CastedLinear):
    """(q_halt, q_continue) logits from one latent position."""

    def __init__(self, hidden_size: int):
        super().__init__(hidden_size, 2, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.zero_()
            self.bias.fill_(Q_HEAD_INIT_BIAS)


class OutputHeads(nn.Module):
    """Label logits and Q logits from the core's readout latent z [B, S, D].

    level "token": logits for positions `skip`.. (the tokens after the prefix / register), [B, S - skip, C];
    level "sequence": one logit vector from position 0, [B, 1, C] (a sequence of length one for the shared loss).
    readout_ids (sequence level): the classifier also reads, for each of these token ids, the mean latent over the
    positions holding it, concatenated after position 0's: the entity-start readout of relation classification
    (Baldini Soares et al., ACL 2019, "Matching the Blanks"), for marker tokens put before the entities a question
    is about. A text without the token contributes zeros for it.
    learns_halting False (baseline cores): no Q head; constant zero Q logits, which never halt early under either
    rule (q_halt > 0, q_halt > q_continue).
    """

    def __init__(
        self,
        hidden_size: int,
        num_outputs: int,
        *,
        skip: int,
        level: str = "token",
        learns_halting: bool = True,
        readout_ids: tuple[int, ...] = (),
    ):
        super().__init__()
        if level not in ("token", "sequence"):
            raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")
        if readout_ids and level != "sequence":
            raise ValueError("readout_ids are read by a sequence-level classifier; token-level heads read every token")
        self.skip, self.level, self.readout_ids = skip, level, tuple(readout_ids)
        self.output = CastedLinear(hidden_size * (1 + len(self.readout_ids)), num_outputs)
        self.q_head = QHead(hidden_size) if learns_halting else None

    def forward(self, z: Tensor, input_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """input_ids [B, S - skip]: the tokens under z's positions `skip`.., needed with readout_ids only."""
        if self.level == "token":
            read = z[:, self.skip :]
        else:
            read = z[:, :1]
            if self.readout_ids:
                if input_ids is None:
                    raise ValueError("OutputHeads with readout_ids needs the batch's input_ids")
                tokens = z[:, self.skip :]
                read = torch.cat([read, *(_mean_where(tokens, input_ids == i) for i in self.readout_ids)], dim=-1)
        logits = self.output(read)
        if self.q_head is None:
            return logits, z.new_zeros(z.shape[0], 2, dtype=torch.float32)
        return logits, self.q_head(z[:, 0]).float()


def _mean_where(z: Tensor, where: Tensor) -> Tensor:
    """[B, 1, D]: the mean of z [B, L, D] over the positions where `where` [B, L] is true (zeros where none is)."""
    weights = where.to(z.dtype)
    total = torch.einsum("bl,bld->bd", weights, z)
    return (total / weights.sum(1, keepdim=True).clamp(min=1)).unsqueeze(1)


class Reasoner(nn.Module):
    """encoder -> core -> output heads; one supervision step per call (the reasoner protocol of docs/design.md)."""

    def __init__(self, encoder: nn.Module, core: nn.Module, heads: OutputHeads):
        super().__init__()
        self.encoder, self.core, self.heads = encoder, core, heads

    def empty_carry(self, batch: Batch) -> Carry:
        batch_size, length = self.encoder.latent_shape(batch)
        return self.core.empty_carry(batch_size, length, next(iter(batch.values())).device)

    def reset_carry(self, reset: Tensor, carry: Carry) -> Carry:
        return self.core.reset_carry(reset, carry)

    def forward(self, carry: Carry, batch: Batch, **cycles) -> ReasonerOutput:
        """cycles: H_cycles / L_cycles overrides of a recursive core for this call."""
        x, mask = self.encoder(batch)
        z = self.core(carry, x, mask, **cycles)
        logits, q = self.heads(z[0], batch.get("input_ids"))
        return ReasonerOutput(
            carry=tuple(t.detach() for t in z), logits=logits, q_halt_logits=q[:, 0], q_continue_logits=q[:, 1], z=z
        )


def act_for(
    reasoner: Reasoner,
    core_kind: str,
    *,
    halt_max_steps: int,
    halt_exploration_prob: float,
    halt_rule: str | None = None,
    carry_latents: bool = True,
    generator: torch.Generator | None = None,
) -> ACT:
    """The ACT wrapper around `reasoner`, its halting rule and Q-continue target decided by `halting_rule`."""
    rule, trains_continue = halting_rule(core_kind, halt_rule, learns_halting=reasoner.heads.q_head is not None)
    return ACT(
        reasoner,
        halt_max_steps=halt_max_steps,
        halt_exploration_prob=halt_exploration_prob,
        halt_rule=rule,
        compute_target_q=trains_continue,
        carry_latents=carry_latents,
        generator=generator,
    )


__all__ = [
    "BASELINE_KINDS",
    "CoreSpec",
    "OutputHeads",
    "QHead",
    "RECURSIVE_KINDS",
    "Reasoner",
    "act_for",
    "build_core",
]
